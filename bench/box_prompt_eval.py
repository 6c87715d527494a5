"""Dice of the box-prompted binary path (pretrained LiteMedSAM), per organ.

For every organ of every case: (a) one box per slice, taken from the labels (the decoder's ceiling);
(b) one 3D box around the organ's labelled extent, propagated from the box's middle slice as
``priorsam segment-box`` does; and the name PriorSAM's semantic decoder gives the object
(``segment-box --label auto``), asked of the propagated mask and of the labelled one.
(bench/results/box_prompt.md also has a column (c), a start at the slice the box fits best, measured
with commit 56d8dad and not adopted.) Cases: the sample CT (its labels are TotalSegmentator output,
not manual ground truth) and, with ``--bank``,
pseudo-patients of the anatomy bank rendered as :mod:`priorsam.evaluation.anatomy_holdout` renders
them, scored where they have an image. Nothing of the box path is trained, so every anatomy is
unseen by it; the pseudo-patients share the sample CT's texture (anatomy transfer only).

    python bench/box_prompt_eval.py --out bench/results/box_prompt.md \
        [--bank CACHE --cases btcv_0005 ... --settings native portal_venous]

Embeddings are computed once per case and shared by the organs and both ways, so the seconds are
decoder-and-propagation time; whole-box times come from ``priorsam segment-box``.
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np

from priorsam.data.registration import dice_per_label
from priorsam.engine.box_segment import LiteMedSAMBoxPredictor, propagate_box
from priorsam.engine.boxes import box_to_display
from priorsam.engine.naming import name_prompted_organ
from priorsam.engine.segment import Segmenter
from priorsam.io import display_spacing, from_display, read_label_map, read_volume, to_display
from priorsam.labels import labels
from priorsam.models.refinement import mask_box


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice of two bool masks (NaN when both are empty)."""
    return dice_per_label(a, b, [1])[1]


def cases(bank: str | None, case_ids: list[str], settings: list[str]):
    """(name, Volume, canonical label map, canonical support mask or None) per case."""
    from priorsam.data.samples import sample_ct

    s = sample_ct()
    yield "example_ct", read_volume(s.image), read_label_map(s.label).array, None
    if not bank:
        return
    from priorsam.data.pseudo_patients import list_bank, load
    from priorsam.data.samples import totalsegmentator_class_names
    from priorsam.evaluation.anatomy_holdout import as_volume, render

    names = totalsegmentator_class_names()
    recs = {r["case_id"]: r for r in list_bank(bank, kept_only=False)}
    for cid in case_ids:
        pp = load(recs[cid]["folder"])
        for setting in settings:
            yield f"{cid}/{setting}", as_volume(render(pp, setting, names), pp), pp.ours, pp.supported()


def organ_boxes(vol, lab: np.ndarray, support: np.ndarray | None):
    """Per organ present: (label, its (Z, H, W) display mask where the image is, the 3D box of that extent,
    the display support mask)."""
    lab_d = to_display(lab.astype(np.uint8))
    sup_d = np.ones(lab_d.shape, bool) if support is None else to_display(support.astype(np.uint8)) > 0
    for L in labels():
        idx = np.argwhere((lab == L.id) if support is None else (lab == L.id) & support)
        if len(idx) == 0:
            continue
        dbox = box_to_display(vol, np.r_[idx.min(0), idx.max(0)].astype(float), "voxel")
        yield L, (lab_d == L.id) & sup_d, dbox, sup_d


def box_predictor(vol) -> LiteMedSAMBoxPredictor:
    row_mm, col_mm = display_spacing(vol)
    return LiteMedSAMBoxPredictor(vol.axial_slices(), "cpu", row_mm=row_mm, col_mm=col_mm)


def per_organ(rows: list[dict], keys: tuple[str, ...]) -> tuple[list[tuple[str, list[dict], dict]], dict]:
    """Per organ present (in label order): (name, its rows, the mean of each key over them); and per key the mean
    of the organ means."""
    per, means = [], {k: [] for k in keys}
    for o in [L.name for L in labels()]:
        rs = [r for r in rows if r["organ"] == o]
        if not rs:
            continue
        m = {k: float(np.nanmean([r[k] for r in rs])) for k in keys}
        for k in keys:
            means[k].append(m[k])
        per.append((o, rs, m))
    return per, {k: float(np.mean(v)) for k, v in means.items()}


def case_arguments(out: str) -> argparse.ArgumentParser:
    """The arguments every box bench takes: --out (default ``out``), --bank, --cases, --settings."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=out)
    ap.add_argument("--bank", default=None, help="pseudo-patient cache (priorsam.data.pseudo_patients)")
    ap.add_argument("--cases", nargs="*", default=[])
    ap.add_argument("--settings", nargs="*", default=["native", "portal_venous"])
    return ap


def score_case(vol, lab: np.ndarray, support: np.ndarray | None, namer: Segmenter | None = None) -> list[dict]:
    pred = box_predictor(vol)
    sx, sy, _ = vol.spacing
    rows = []
    for L, gt, dbox, sup_d in organ_boxes(vol, lab, support):
        per_slice = np.zeros_like(gt)
        for z in np.flatnonzero(gt.any((1, 2))):
            per_slice[z] = pred.predict(int(z), mask_box(gt[z]))
        t = time.perf_counter()
        m = propagate_box(pred, dbox, (5.0 / sy, 5.0 / sx), show_bar=False)
        row = {"organ": L.name, "box_slices": dbox.z1 - dbox.z0 + 1, "per_slice": dice(per_slice & sup_d, gt),
               "middle": dice(m & sup_d, gt), "middle_s": time.perf_counter() - t}
        if namer is not None:
            for key, mask in (("named_box", from_display(m)), ("named_labels", from_display(gt))):
                name, _, prob = name_prompted_organ(vol, mask, segmenter=namer)
                row[key], row[f"{key}_p"] = name, prob
        rows.append(row)
    return rows


def table(rows: list[dict]) -> list[str]:
    out = ["| organ | cases | (a) box per slice | (b) 3D box, middle start | (b) − (a) |", "|---|---|---|---|---|"]
    per, mm = per_organ(rows, ("per_slice", "middle"))
    for o, rs, m in per:
        out.append(f"| {o} | {len(rs)} | {m['per_slice']:.3f} | {m['middle']:.3f} | {m['middle'] - m['per_slice']:+.3f} |")
    out.append(f"| **mean of organ means** | | **{mm['per_slice']:.3f}** | **{mm['middle']:.3f}** | "
               f"**{mm['middle'] - mm['per_slice']:+.3f}** |")
    return out


def naming_table(rows: list[dict]) -> list[str]:
    """How often the semantic decoder names the object right, per organ, from either mask."""
    out = ["| organ | cases | named right from the 3D-box mask | its probability when right, median | "
           "named right from the labelled mask | wrong names (3D-box mask) |", "|---|---|---|---|---|---|"]
    for o in [L.name for L in labels()]:
        rs = [r for r in rows if r["organ"] == o and "named_box" in r]
        if not rs:
            continue
        right = [r for r in rs if r["named_box"] == o]
        wrong = sorted({r["named_box"] for r in rs if r["named_box"] != o})
        p = f"{np.median([r['named_box_p'] for r in right]):.2f}" if right else "—"
        out.append(f"| {o} | {len(rs)} | {len(right)} | {p} | {sum(r['named_labels'] == o for r in rs)} | "
                   f"{', '.join(wrong) or '—'} |")
    n = [r for r in rows if "named_box" in r]
    out.append(f"| **all** | {len(n)} | **{sum(r['named_box'] == r['organ'] for r in n)}** | | "
               f"**{sum(r['named_labels'] == r['organ'] for r in n)}** | |")
    return out


def main() -> None:
    args = case_arguments("bench/results/box_prompt.md").parse_args()
    out = Path(args.out)
    rows = []
    namer = Segmenter(None, "cpu")   # the bundle's weights, loaded once for every name
    for name, vol, lab, support in cases(args.bank, args.cases, args.settings):
        t = time.perf_counter()
        for r in score_case(vol, lab, support, namer):
            rows.append({"case": name, **r})
            print(json.dumps(rows[-1]), flush=True)
        print(f"[box] {name}: {time.perf_counter() - t:.0f} s", flush=True)
        out.with_suffix(".json").write_text(json.dumps(rows, indent=1))
    per_case = list(dict.fromkeys(r["case"] for r in rows))
    lines = ["# Box-prompted LiteMedSAM: a box per slice, and a 3D box propagated", "",
             f"`python bench/box_prompt_eval.py` on {platform.processor() or platform.machine()}, "
             f"{__import__('os').cpu_count()} cores, CPU only, {time.strftime('%Y-%m-%d')}. "
             f"Cases: {', '.join(per_case)}. The 3D box is each organ's labelled extent (where the image is); "
             "Dice in 3D; per organ the mean over cases, then the mean of the organ means.", ""]
    lines += table(rows)
    lines += ["", "Sample CT alone:", ""] + table([r for r in rows if r["case"] == "example_ct"])
    lines += ["", "Naming (`segment-box --label auto`, the default rule of priorsam.engine.naming):", ""] + naming_table(rows)
    lines += ["", "Median seconds per organ box once the slices are embedded (decoder and propagation): "
              f"{float(np.median([r['middle_s'] for r in rows])):.2f} s.", ""]
    out.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
