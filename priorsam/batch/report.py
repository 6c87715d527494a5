"""Per-case measurements (organ volume, HU, extent, plausibility) and the batch's tables.

Everything here works on canonical RAS arrays: ``labels`` (X, Y, Z) uint8 with our label
ids, ``hu`` (X, Y, Z) float32 Hounsfield units, Z running inferior → superior.
"""
from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np

from ..io import atomic_path
from ..labels import labels as label_table
from ..labels import typical_volume_ml

CASE_SCHEMA = "priorsam.batch.case/1"


def organ_stats(hu: np.ndarray, labels: np.ndarray, affine: np.ndarray) -> dict[str, dict]:
    """Per organ: presence, voxels, volume (mL), mean/std HU and axial extent.

    ``slices`` is the [first, last] axial index (canonical Z: 0 is the most inferior slice of
    the scan) holding the organ; ``extent_mm`` is the superior–inferior length it spans.
    """
    voxel_ml = float(abs(np.linalg.det(affine[:3, :3]))) / 1000.0
    z_mm = float(np.sqrt((affine[:3, 2] ** 2).sum()))
    counts = np.bincount(labels.ravel(), minlength=len(label_table()) + 1)
    per_slice = None
    out = {}
    for lab in label_table():
        n = int(counts[lab.id])
        entry = {"label": lab.id, "display": lab.display, "present": n > 0, "voxels": n,
                 "volume_ml": round(n * voxel_ml, 3), "hu_mean": None, "hu_std": None,
                 "slices": None, "n_slices": 0, "extent_mm": 0.0}
        if n:
            values = hu[labels == lab.id].astype(np.float64)
            if per_slice is None:
                # (Z, C) voxel counts per slice and label, computed once for all organs.
                z_idx = np.broadcast_to(np.arange(labels.shape[2]), labels.shape).ravel()
                per_slice = np.zeros((labels.shape[2], counts.shape[0]), dtype=np.int64)
                np.add.at(per_slice, (z_idx, labels.ravel().astype(np.int64)), 1)
            zs = np.nonzero(per_slice[:, lab.id])[0]
            entry.update(hu_mean=round(float(values.mean()), 2), hu_std=round(float(values.std()), 2),
                         slices=[int(zs[0]), int(zs[-1])], n_slices=int(len(zs)),
                         extent_mm=round(float((zs[-1] - zs[0] + 1) * z_mm), 2))
        out[lab.name] = entry
    return out


def plausibility_warnings(organs: dict[str, dict], n_slices: int) -> list[str]:
    """Human-readable flags for a reader to check: volumes outside the typical adult range, and
    organs cut by the scan's first/last slice (their volume is then a lower bound)."""
    ranges = typical_volume_ml()
    warnings = []
    for name, o in organs.items():
        if not o["present"]:
            continue
        lo, hi = ranges.get(name, (None, None))
        if lo is not None and not lo <= o["volume_ml"] <= hi:
            warnings.append(f"implausible volume: {name} {o['volume_ml']:.2f} mL is outside the typical "
                            f"{lo:g}-{hi:g} mL")
        first, last = o["slices"]
        edges = [side for side, hit in (("inferior", first == 0), ("superior", last == n_slices - 1)) if hit]
        if edges:
            warnings.append(f"{name} touches the scan's {' and '.join(edges)} edge; its volume may be truncated")
    if not any(o["present"] for o in organs.values()):
        warnings.append("no organ found")
    return warnings


def write_json(path: str | os.PathLike, obj: dict) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    return Path(path)


def read_json(path: str | os.PathLike) -> dict | None:
    """The parsed file, or None if it is missing or not valid JSON (a partial case)."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def write_csv(path: str | os.PathLike, rows: list[dict], fields: list[str]) -> Path:
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=fields, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)
    return Path(path)


def read_csv(path: str | os.PathLike) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def summary_fields() -> list[str]:
    organs = [lab.name for lab in label_table()]
    return (["case_id", "status", "reused", "input", "rank", "device", "seconds"]
            + [f"{o}_ml" for o in organs] + [f"{o}_hu_mean" for o in organs] + ["n_warnings", "warnings", "error"])


FAILURE_FIELDS = ["case_id", "input", "rank", "error"]


def summary_row(record: dict, reused: bool) -> dict:
    """One summary.csv row from a case JSON."""
    row = {"case_id": record["case_id"], "status": record["status"], "reused": str(reused).lower(),
           "input": record["input"]["path"], "rank": record["job"]["rank"], "device": record["runtime"]["device"],
           "seconds": record["runtime"]["total_seconds"], "n_warnings": len(record["warnings"]),
           "warnings": "; ".join(record["warnings"]), "error": ""}
    for name, o in record["organs"].items():
        row[f"{name}_ml"] = o["volume_ml"]
        row[f"{name}_hu_mean"] = "" if o["hu_mean"] is None else o["hu_mean"]
    return row


def failure_row(case_id: str, input_path: str, rank: int, error: str) -> dict:
    return {"case_id": case_id, "input": input_path, "rank": rank, "error": error}
