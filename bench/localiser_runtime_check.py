"""Does the localiser's OpenVINO runtime give PyTorch's answer on real anatomies? Runs the engine's localiser
step (:meth:`Segmenter.locate`: its passes, thresholds and guard) with the localiser in PyTorch (encoder
backend ``torch``) and in OpenVINO (the CPU default) on every volume as the held-out tables render it, and
compares what the engine uses: usable or not and why, the organs present, their 3D boxes, the coarse labels
voxel by voxel, the organ volumes; and the seconds each took.

    python bench/localiser_runtime_check.py --bank BANK --cases btcv_0005 ... --settings native cta_crop ... --out OUT

Writes ``OUT.json`` (one row per volume) and ``OUT.md`` (per setting: volumes, identical answers, labels
that differ, seconds).
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import bank_check_main  # noqa: E402


def compare(bank: str, cases: list[str], settings: list[str], options: dict, log=print) -> list[dict]:
    from priorsam.engine.segment import SegmentOptions, Segmenter
    from priorsam.evaluation.anatomy_holdout import rendered

    segs = {rt: Segmenter(None, "cpu", SegmentOptions(**{**options, "encoder_backend": backend}))
            for rt, backend in (("torch", "torch"), ("openvino", "auto"))}
    assert type(segs["openvino"].model.localiser).__name__ == "OpenVinoLocaliser"
    rows = []
    for cid, setting, _, _, vol in rendered(bank, cases, settings):
        got, secs = {}, {}
        for rt, seg in segs.items():
            t0 = time.time()
            got[rt] = seg.locate(vol)[0]
            secs[rt] = round(time.time() - t0, 2)
        a, b = got["torch"], got["openvino"]
        row = {"case": cid, "setting": setting, "seconds": secs, "usable": [a.usable, b.usable],
               "same_reason": a.reason == b.reason, "same_present": a.present == b.present,
               "same_boxes": a.boxes == b.boxes}
        if a.coarse_labels is not None and b.coarse_labels is not None:
            row["labels_differ"] = int((a.coarse_labels != b.coarse_labels).sum())
            row["labels_voxels"] = int(a.coarse_labels.size)
            row["max_volume_ml_diff"] = max([abs(a.volume_ml.get(k, 0.0) - b.volume_ml.get(k, 0.0))
                                             for k in set(a.volume_ml) | set(b.volume_ml)] or [0.0])
        row["identical"] = (row["same_reason"] and row["same_present"] and row["same_boxes"]
                            and row.get("labels_differ", 0) == 0)
        rows.append(row)
        log(f"[runtime] {cid} {setting}: {'identical' if row['identical'] else 'DIFFERENT'} "
            f"(torch {secs['torch']} s, openvino {secs['openvino']} s)")
    return rows


def table(rows: list[dict], settings: list[str]) -> str:
    out = ["| setting | volumes | identical answers | coarse voxels that differ | seconds, PyTorch (median) "
           "| seconds, OpenVINO (median) |", "|---|---|---|---|---|---|"]
    for s in settings + ["all"]:
        rs = [r for r in rows if s == "all" or r["setting"] == s]
        if not rs:
            continue
        diff = sum(r.get("labels_differ", 0) for r in rs)
        total = sum(r.get("labels_voxels", 0) for r in rs)
        med = {rt: float(np.median([r["seconds"][rt] for r in rs])) for rt in ("torch", "openvino")}
        out.append(f"| {s} | {len(rs)} | {sum(r['identical'] for r in rs)} | {diff} of {total} "
                   f"| {med['torch']:.2f} | {med['openvino']:.2f} |")
    return "\n".join(out) + "\n"


def main(argv=None) -> int:
    return bank_check_main(__doc__, compare, table, argv)


if __name__ == "__main__":
    raise SystemExit(main())
