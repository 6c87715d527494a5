"""On a tight field of view: the localiser's masks (the engine's answer), the per-slice path, and a hybrid of the
two — the per-slice path for organs the field does not cut (bench/results/tight_field_hybrid_decision.md).

    python bench/tight_field_hybrid.py --bank BANK --cases btcv_0001 ... --out ROWS.json [--settings cta_crop]

Per volume the engine runs twice: with its defaults (L: a tight field takes the localiser's masks) and with
``tight_fov_mm`` 0 and ``localiser_shifts`` 4 (P: the per-slice path, guided by the same four-pass localiser).
H starts from P; every organ whose mask in L reaches the field's in-plane edge takes L's mask instead. The
rows have ``anatomy_holdout``'s format, runs L, P and H, each with the organs that touched the edge.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import crop_parser  # noqa: E402


def touching_edge(labels: np.ndarray) -> list[int]:
    """Label ids with a voxel in the first or last row or column of any slice of an (X, Y, Z) label map."""
    ring = np.concatenate([labels[0].ravel(), labels[-1].ravel(), labels[:, 0].ravel(), labels[:, -1].ravel()])
    return sorted(int(k) for k in np.unique(ring) if k)


def hybrid(per_slice: np.ndarray, localiser: np.ndarray, edge: list[int]) -> np.ndarray:
    """The per-slice labels with every organ in ``edge`` replaced by the localiser's mask of it."""
    out = per_slice.copy()
    for k in edge:
        out[out == k] = 0
    for k in edge:
        out[localiser == k] = k
    return out


def main(argv=None) -> int:
    ap = crop_parser(__doc__)
    a = ap.parse_args(argv)

    from priorsam.engine.segment import Segmenter, SegmentOptions
    from priorsam.evaluation.anatomy_holdout import _scores, rendered

    seg_l = Segmenter(a.weights, "cpu", SegmentOptions())
    seg_p = Segmenter(model=seg_l.model, device="cpu", options=SegmentOptions(tight_fov_mm=0.0, localiser_shifts=4))
    rows = []
    for cid, setting, pp, crop, vol in rendered(a.bank, a.cases, a.settings):
        gt, support = np.ascontiguousarray(pp.ours[crop]), np.ascontiguousarray(pp.supported()[crop])
        t0 = time.time()
        res_l = seg_l.segment(vol, show_bar=False)
        t1 = time.time()
        res_p = seg_p.segment(vol, show_bar=False)
        t2 = time.time()
        edge = touching_edge(res_l.labels)
        answers = {"L": (res_l.labels, t1 - t0), "P": (res_p.labels, t2 - t1),
                   "H": (hybrid(res_p.labels, res_l.labels, edge), t2 - t0)}
        for name, (labels, seconds) in answers.items():
            row = _scores(labels, gt, support, pp.spacing, cid)
            row.update(run=name, case=cid, setting=setting, seconds=round(seconds, 1), edge_organs=edge,
                       slices_run=res_p.slices_run if name != "L" else 0, slices=int(vol.shape[2]))
            rows.append(row)
            mean = float(np.nanmean([v["dice"] for v in row["organs"].values()]))
            print(f"[tight] {name} {cid} {setting}: mean Dice {mean:.4f}, {row['seconds']} s, edge {edge}", flush=True)
        Path(a.out).write_text(json.dumps({"cases": a.cases, "settings": a.settings,
                                           "runs": [{"name": n} for n in answers], "rows": rows},
                                          separators=(",", ":")))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
