"""Per-case 3D metrics with MONAI's DiceMetric and HausdorffDistanceMetric, Synapse averaging.

Conventions (stated in every report):
* Dice and HD95 per organ in 3D, on the label map's own grid.
* HD95 in millimetres (voxel spacing passed to MONAI) and in voxels (spacing 1), the
  latter only for comparison with papers that ignored spacing.
* An organ absent from the reference is left out of that case's averages (NaN); if the
  prediction has it anyway, ``false_positive`` is set. An organ present in the reference
  but missing in the prediction scores Dice 0 and has no HD95 (NaN, counted as ``missed``).
* Synapse averaging: for each organ the mean over cases, then the mean over organs.
"""
from __future__ import annotations

import csv
import math
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from monai.metrics import DiceMetric, HausdorffDistanceMetric

from ..io.writers import atomic_path
from ..labels import labels as label_table


def _crop_union(a: np.ndarray, b: np.ndarray, pad: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Both masks cropped to their joint bounding box plus ``pad`` (distances are unchanged)."""
    union = a | b
    idx = [np.flatnonzero(union.any(axis=tuple(j for j in range(union.ndim) if j != i))) for i in range(union.ndim)]
    sl = tuple(slice(max(0, int(ix[0]) - pad), int(ix[-1]) + pad + 1) for ix in idx)
    return np.pad(a[sl], pad), np.pad(b[sl], pad)


def _as_metric_input(mask: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(mask))[None, None].float()


def organ_metrics(pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float]) -> dict:
    """Binary masks of one organ → dice, hd95_mm, hd95_vox (NaN where undefined) and voxel counts."""
    pred, gt = pred.astype(bool), gt.astype(bool)
    out = {"dice": math.nan, "hd95_mm": math.nan, "hd95_vox": math.nan,
           "gt_voxels": int(gt.sum()), "pred_voxels": int(pred.sum()), "missed": False, "false_positive": False}
    if not gt.any():
        out["false_positive"] = bool(pred.any())
        return out
    if not pred.any():
        out.update(dice=0.0, missed=True)
        return out
    p, g = _crop_union(pred, gt)
    yp, yg = _as_metric_input(p), _as_metric_input(g)
    dice = DiceMetric(include_background=True, reduction="none")
    out["dice"] = float(dice(yp, yg)[0, 0])
    # MONAI 1.6's own Hausdorff code passes an argument it has deprecated, and every report printed the
    # deprecation once; nothing for our users to change.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*always_return_as_numpy")
        hd = HausdorffDistanceMetric(include_background=True, percentile=95, reduction="none")
        out["hd95_mm"] = float(hd(yp, yg, spacing=[float(s) for s in spacing])[0, 0])
        hd_vox = HausdorffDistanceMetric(include_background=True, percentile=95, reduction="none")
        out["hd95_vox"] = float(hd_vox(yp, yg)[0, 0])
    return out


def evaluate_case(pred_labels: np.ndarray, gt_labels: np.ndarray, spacing: Sequence[float],
                  case: str = "") -> dict:
    """Label maps (same grid, our label ids) and voxel spacing in mm → ``{"case", "organs": {name: metrics}}``."""
    if pred_labels.shape != gt_labels.shape:
        raise ValueError(f"prediction {pred_labels.shape} and reference {gt_labels.shape} are on different grids")
    if len(spacing) != pred_labels.ndim:
        raise ValueError(f"spacing {tuple(spacing)} does not match a {pred_labels.ndim}D label map")
    organs = {lab.name: organ_metrics(pred_labels == lab.id, gt_labels == lab.id, spacing) for lab in label_table()}
    return {"case": case, "organs": organs}


def _nanmean(values: list[float]) -> float:
    vals = [v for v in values if not math.isnan(v)]
    return float(np.mean(vals)) if vals else math.nan


def summarise(cases: list[dict], names: Sequence[str] | None = None) -> dict:
    """Synapse averaging: per organ the mean over cases (NaN skipped), then the mean over organs.

    ``names``: the organs to report and average (default: all of the label table).
    """
    names = list(names) if names is not None else [lab.name for lab in label_table()]
    per_organ = {}
    for n in names:
        per_organ[n] = {m: _nanmean([c["organs"][n][m] for c in cases]) for m in ("dice", "hd95_mm", "hd95_vox")}
        per_organ[n]["cases"] = sum(1 for c in cases if c["organs"][n]["gt_voxels"] > 0)
        per_organ[n]["missed"] = sum(1 for c in cases if c["organs"][n]["missed"])
    mean = {m: _nanmean([per_organ[n][m] for n in names]) for m in ("dice", "hd95_mm", "hd95_vox")}
    return {"organs": per_organ, "mean": mean, "num_cases": len(cases)}


def dice_intervals(cases: list[dict], names: Sequence[str] | None = None, confidence: float = 0.95,
                   n_resamples: int = 10_000, seed: int = 0) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap interval, over cases, of each organ's mean Dice and of the mean over organs
    (key ``"mean"``), averaged as :func:`summarise` does; the cases are resampled with replacement, the same
    draw for every organ (SciPy's ``stats.bootstrap``, deterministic for a ``seed``). With a few cases the
    interval says how far the means could move with other cases like these. Under two cases: NaN."""
    from scipy.stats import bootstrap

    names = list(names) if names is not None else [lab.name for lab in label_table()]
    nan = (math.nan, math.nan)
    if len(cases) < 2:
        return {**{n: nan for n in names}, "mean": nan}
    dice = np.array([[c["organs"][n]["dice"] for n in names] for c in cases], dtype=np.float64)   # (cases, organs)

    def statistic(*columns, axis=-1):
        x = np.stack(columns, axis=-1)                      # (..., cases, organs)
        organ = np.nanmean(x, axis=-2)                      # an organ no drawn case has: NaN, left out below
        both = np.concatenate([organ, np.nanmean(organ, axis=-1, keepdims=True)], axis=-1)
        return np.moveaxis(both, -1, 0)                     # (organs + 1, ...)

    # All resamples at once hold n_resamples × cases × organs values several times over (650 MB for 300
    # cases); in batches of about 4 million values a cohort of any size stays small, with the same interval.
    batch = max(1, int(4e6 // dice.size))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)     # "mean of empty slice": an organ absent from a draw
        ci = bootstrap(tuple(dice.T), statistic, paired=True, vectorized=True, confidence_level=confidence,
                       n_resamples=n_resamples, batch=batch if batch < n_resamples else None,
                       method="percentile", rng=np.random.default_rng(seed)).confidence_interval
    keys = names + ["mean"]
    return {k: (float(lo), float(hi)) for k, lo, hi in zip(keys, ci.low, ci.high)}


def _fmt(v: float, digits: int) -> str:
    return "n/a" if math.isnan(v) else f"{v:.{digits}f}"


def case_means(case: dict, names: Sequence[str]) -> dict:
    """One case's mean Dice / HD95 over the organs its reference has (NaN-skipping, as :func:`summarise`)."""
    return {m: _nanmean([case["organs"][n][m] for n in names]) for m in ("dice", "hd95_mm", "hd95_vox")}


def write_report(cases: list[dict], out_dir: str | Path, title: str = "PriorSAM evaluation",
                 note: str = "", names: Sequence[str] | None = None, per_case: bool = False) -> dict:
    """Write ``metrics_per_case.csv`` and ``report.md`` (per-organ table + conventions) into ``out_dir``.

    ``names`` restricts the organs (default: all); ``per_case`` adds a table of each case's mean Dice and HD95.
    Returns the two paths (``csv``, ``markdown``) and what the report shows: ``summary`` (:func:`summarise`)
    and ``intervals`` (:func:`dice_intervals`), so a caller that prints them does not bootstrap again.
    """
    out = Path(out_dir)
    names = list(names) if names is not None else [lab.name for lab in label_table()]
    csv_path = out / "metrics_per_case.csv"
    # The folder is made on demand; each file appears whole or not at all (a rerun never meets a cut-off table).
    with atomic_path(csv_path) as tmp, open(tmp, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["case", "organ", "dice", "hd95_mm", "hd95_vox", "gt_voxels", "pred_voxels", "missed",
                    "false_positive"])
        for c in cases:
            for n in names:
                m = c["organs"][n]
                w.writerow([c["case"], n, _fmt(m["dice"], 4), _fmt(m["hd95_mm"], 2), _fmt(m["hd95_vox"], 2),
                            m["gt_voxels"], m["pred_voxels"], int(m["missed"]), int(m["false_positive"])])
    s = summarise(cases, names)
    ci = dice_intervals(cases, names)
    span = lambda k: "n/a" if math.isnan(ci[k][0]) else f"{ci[k][0]:.3f}–{ci[k][1]:.3f}"  # noqa: E731
    lines = [f"# {title}", ""]
    if note:
        lines += [note, ""]
    lines += [f"Cases: {s['num_cases']}. Dice and HD95 per organ in 3D; HD95 in mm (voxel spacing) and in voxels. "
              "Averaging: per organ over cases, then over organs. Organs absent from a reference are left out "
              "of that case; organs missed by the prediction score Dice 0 and no HD95. The Dice interval is the "
              "95 % percentile bootstrap over cases (10,000 resamples, seed 0): how far the means could move "
              "with other cases like these (n/a under two cases).", "",
              "| organ | cases | Dice | Dice 95 % interval | HD95 (mm) | HD95 (vox) | missed |",
              "|---|---|---|---|---|---|---|"]
    for n in names:
        o = s["organs"][n]
        lines.append(f"| {n} | {o['cases']} | {_fmt(o['dice'], 3)} | {span(n)} | {_fmt(o['hd95_mm'], 1)} | "
                     f"{_fmt(o['hd95_vox'], 1)} | {o['missed']} |")
    m = s["mean"]
    lines.append(f"| **mean** | | **{_fmt(m['dice'], 3)}** | {span('mean')} | **{_fmt(m['hd95_mm'], 1)}** | "
                 f"**{_fmt(m['hd95_vox'], 1)}** | |")
    if per_case:
        lines += ["", "Per case (mean over the organs present in that case's reference):", "",
                  "| case | Dice | HD95 (mm) |", "|---|---|---|"]
        for c in cases:
            cm = case_means(c, names)
            lines.append(f"| {c['case']} | {_fmt(cm['dice'], 3)} | {_fmt(cm['hd95_mm'], 1)} |")
    md_path = out / "report.md"
    with atomic_path(md_path) as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    return {"csv": csv_path, "markdown": md_path, "summary": s, "intervals": ci}
