"""``priorsam evaluate``: the adapter over :func:`priorsam.evaluation.folders.evaluate_folders`."""
from __future__ import annotations

import numpy as np

from .flags import typed_flags


@typed_flags
def evaluate_cli(pred: str, ref: str, labels=None, out: str = "evaluation"):
    """Dice and HD95 (mm) of every predicted label map against its reference, per case and on average.

    Args:
        pred: folder of predictions (<case>_seg.nii.gz as priorsam writes them, or <case>.nii.gz).
        ref: folder of reference label maps <case>.nii.gz (label ids as priorsam's: 1 spleen … 8 pancreas).
        labels: organs to evaluate, names or ids, comma-separated (default: all 8).
        out: folder for metrics_per_case.csv and report.md.
    """
    from pathlib import Path

    from ..evaluation.folders import evaluate_folders
    from ..evaluation.metrics import case_means, write_report
    from ..io import check_writable

    check_writable(Path(out) / "report.md", suffixes=None)   # before the cases are read and scored
    cases, names = evaluate_folders(pred, ref, labels)
    report = write_report(cases, out, title="PriorSAM evaluation", names=names, per_case=True,
                          note=f"Predictions `{pred}`, references `{ref}`.")
    s = report["summary"]
    r = lambda v, d: None if np.isnan(v) else round(float(v), d)  # noqa: E731 - JSON-friendly rounding
    low, high = report["intervals"]["mean"]
    return {"cases": len(cases), "organs": names,
            "mean_dice": r(s["mean"]["dice"], 4),
            "mean_dice_95_interval": None if np.isnan(low) else [r(low, 4), r(high, 4)],
            "mean_hd95_mm": r(s["mean"]["hd95_mm"], 2),
            "per_case_dice": {c["case"]: r(case_means(c, names)["dice"], 4) for c in cases},
            "csv": str(report["csv"]), "markdown": str(report["markdown"])}
