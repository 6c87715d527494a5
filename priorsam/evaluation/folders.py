"""Dice and HD95 (mm) of a folder of predicted label maps against a folder of references (``priorsam
evaluate``, :mod:`priorsam.cli.evaluate`), per case and mean.

Cases are paired by name: ``REF/<case>.nii.gz`` with ``PRED/<case>_seg.nii.gz`` (what ``priorsam
segment``, batch and the MONAI bundle write) or ``PRED/<case>.nii.gz``. The metrics are MONAI's
(:mod:`priorsam.evaluation.metrics`), computed on the label maps' own grid in canonical RAS.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import InputError

_SUFFIXES = (".nii.gz", ".nii", ".nrrd")


def _cases(folder: Path, strip_seg: bool) -> dict[str, Path]:
    if not folder.is_dir():
        raise InputError(f"not a folder: {folder}")
    out: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        name = p.name
        suffix = next((s for s in _SUFFIXES if name.lower().endswith(s)), None)
        if not p.is_file() or suffix is None:
            continue
        case = name[: -len(suffix)]
        if strip_seg and case.endswith("_seg"):
            case = case[:-4]
        if case in out:
            raise InputError(f"{folder}: two label maps for case {case!r} ({out[case].name}, {name})")
        out[case] = p
    return out


def organ_names(labels) -> list[str]:
    """``--labels`` (names or ids, comma-separated or repeated) → organ names in label-id order."""
    from ..labels import labels as label_table

    table = label_table()
    if labels is None or labels == "":
        return [lab.name for lab in table]
    items = labels if isinstance(labels, (list, tuple)) else str(labels).split(",")
    by_key = {lab.name: lab for lab in table} | {str(lab.id): lab for lab in table}
    chosen = []
    for item in items:
        key = str(item).strip().lower()
        if key not in by_key:
            raise InputError(f"unknown organ {item!r} in --labels: use names or ids of "
                             + ", ".join(f"{lab.id} {lab.name}" for lab in table))
        chosen.append(by_key[key])
    return [lab.name for lab in sorted(set(chosen), key=lambda lab: lab.id)]


def organ_ids_of(values: np.ndarray, path: Path) -> np.ndarray:
    """A label map's voxels as priorsam's organ ids (uint8), refused in one line when it holds anything else:
    a CT given by mistake (its HU would wrap around in uint8 and score as labels) or another dataset's ids."""
    from ..labels import organ_ids

    top = max(organ_ids())
    finite = np.isfinite(values).all()
    if not finite or (values != np.round(values)).any() or values.min() < 0 or values.max() > top:
        span = f"{values.min():g} to {values.max():g}" if finite else "non-finite values"
        raise InputError(f"{path}: holds {span}, not organ ids 0–{top} (0 background, 1 spleen … {top} pancreas): "
                         "not a label map in priorsam's ids")
    return values.astype(np.uint8)


def evaluate_folders(pred: str | Path, ref: str | Path, labels=None) -> tuple[list[dict], list[str]]:
    """(per-case metric dicts, organ names) for every reference case."""
    from ..io import read_label_map
    from .metrics import evaluate_case

    names = organ_names(labels)
    preds, refs = _cases(Path(pred), strip_seg=True), _cases(Path(ref), strip_seg=False)
    if not refs:
        raise InputError(f"{ref}: no reference label maps (.nii.gz, .nii, .nrrd)")
    missing = sorted(set(refs) - set(preds))
    if missing:
        raise InputError(f"{pred}: no prediction for {len(missing)} reference case(s): {', '.join(missing[:5])}"
                         + (" …" if len(missing) > 5 else ""))
    cases = []
    for case in sorted(refs):
        p, r = read_label_map(preds[case]), read_label_map(refs[case])
        if p.shape != r.shape or not np.allclose(p.affine, r.affine, atol=1e-3):
            raise InputError(f"case {case}: prediction and reference are on different grids "
                             f"({p.shape} vs {r.shape})")
        result = evaluate_case(organ_ids_of(p.array, preds[case]), organ_ids_of(r.array, refs[case]),
                               [float(s) for s in r.spacing], case)
        result["organs"] = {n: result["organs"][n] for n in names}
        cases.append(result)
    return cases, names
