"""How the per-slice masks and the 3D localiser are fused, searched offline on pseudo-patients.

    python bench/fusion_rules.py --bank BANK --cases btcv_0001 ... --setting native --out DIR
        [--agreement 0.7 0.8 0.9] [--fill 0.8 0.7 0.6 0.5] [--veto 0.1 0.2 0.3]

Per case, the engine runs once with the fusion switched off (``localiser_agreement``, ``localiser_veto``,
``localiser_fill`` 0, no 3D clean-up), so its label map is the per-slice masks as the fusion receives them;
the localiser's own masks and probabilities come from the engine's own call (deterministic). Every
combination of agreement, fill and veto is then applied with the library's functions
(:mod:`priorsam.engine.consistency`, in the engine's order) and scored like the held-out tables (Dice per
organ where the pseudo-patient has an image; per organ the mean over cases, then over organs). The
engine's defaults are one combination, and the script checks that its offline result equals the engine's
own label map. Also written per case: the median HU inside the localiser's aorta (a contrast detector).

Writes ``DIR/fusion_rules.json`` (per combination and case the Dice per organ) and prints the combinations
best first with the worst single case against the defaults.
"""
from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import numpy as np


def per_slice_and_localiser(seg, vol):
    """The engine's label map before the fusion (class indices) and the localiser's masks, probabilities and
    located organs on the volume's grid, as :meth:`Segmenter.segment` computes them."""
    from dataclasses import replace

    keep = seg.options
    seg.options = replace(keep, localiser_agreement=0.0, localiser_veto=0.0, localiser_fill=0.0,
                          largest_component=False, fill_holes=False)
    try:
        pre = seg.segment(vol, show_bar=False).labels
    finally:
        seg.options = keep
    loc = seg.localise(vol)
    scores = loc.scores_on(vol.shape, keep.localiser_interpolation)
    loc_labels = loc.labels_on(vol.shape, keep.localiser_interpolation, scores)
    located = [k for k, found in loc.present.items() if found]
    return pre, loc_labels, scores, located


def fuse(pre, loc_labels, scores, located, agreement: float, fill: float, veto: float) -> np.ndarray:
    """The engine's 3D steps after the per-slice masks, with these three values (class indices)."""
    from priorsam.engine.consistency import agree_with_localiser, clean_labels, fuse_with_localiser

    labels = agree_with_localiser(pre, loc_labels, agreement) if agreement > 0 else pre
    if veto > 0 or fill > 0:
        labels = fuse_with_localiser(labels, loc_labels, scores, located, veto, fill)
    return clean_labels(labels, largest_component=True, fill_holes=True, localiser_labels=loc_labels)


def dice_per_organ(pred: np.ndarray, gt: np.ndarray, support: np.ndarray) -> dict[str, float]:
    """Dice per organ where the image is (NaN where the reference lacks the organ), as the held-out tables."""
    from priorsam.data.registration import dice_per_label
    from priorsam.labels import labels

    gt = np.where(support, gt, 0)
    dice = dice_per_label(np.where(support, pred, 0), gt, [lab.id for lab in labels()])
    return {lab.name: dice[lab.id] if (gt == lab.id).any() else float("nan") for lab in labels()}


def synapse_mean(per_case: dict[str, dict[str, float]]) -> float:
    organs = next(iter(per_case.values())).keys()
    return float(np.nanmean([np.nanmean([c[n] for c in per_case.values()]) for n in organs]))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bank", required=True)
    ap.add_argument("--cases", nargs="+", required=True)
    ap.add_argument("--setting", default="native")
    ap.add_argument("--weights", default=None)
    ap.add_argument("--agreement", nargs="+", type=float, default=[0.7, 0.8, 0.9])
    ap.add_argument("--fill", nargs="+", type=float, default=[0.8, 0.7, 0.6, 0.5])
    ap.add_argument("--veto", nargs="+", type=float, default=[0.1, 0.2, 0.3])
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)

    from priorsam.data.pseudo_patients import list_bank, load
    from priorsam.data.samples import totalsegmentator_class_names
    from priorsam.engine.segment import Segmenter, SegmentOptions
    from priorsam.evaluation.anatomy_holdout import as_volume, field_of_view, render
    from priorsam.labels import labels

    seg = Segmenter(a.weights, "cpu", SegmentOptions())
    if list(seg.model.label_ids) != list(range(seg.model.num_classes)):
        raise SystemExit("fusion_rules.py: these weights' label ids are not their class indices")
    o = seg.options
    default = (o.localiser_agreement, o.localiser_fill, o.localiser_veto)
    grid = sorted(set(itertools.product(a.agreement, a.fill, a.veto)) | {default})
    aorta = next(lab.id for lab in labels() if lab.name == "aorta")
    names = totalsegmentator_class_names()
    recs = {r["case_id"]: r for r in list_bank(a.bank, kept_only=False)}
    dice: dict[str, dict[str, dict]] = {str(c): {} for c in grid}
    cases = {}
    for cid in a.cases:
        t0 = time.time()
        pp = load(recs[cid]["folder"])
        crop = field_of_view(pp, a.setting)
        vol = as_volume(render(pp, a.setting, names), pp, crop)
        gt, support = np.ascontiguousarray(pp.ours[crop]), np.ascontiguousarray(pp.supported()[crop])
        engine = seg.segment(vol, show_bar=False).labels
        pre, loc_labels, scores, located = per_slice_and_localiser(seg, vol)
        for combo in grid:
            out = fuse(pre, loc_labels, scores, located, *combo)
            if combo == default and not np.array_equal(out, engine):
                raise SystemExit(f"fusion_rules.py: {cid}: the defaults applied offline differ from the engine "
                                 f"in {int((out != engine).sum())} voxels")
            dice[str(combo)][cid] = dice_per_organ(out, gt, support)
        in_aorta = vol.array[loc_labels == aorta]
        cases[cid] = {"aorta_median_hu": float(np.median(in_aorta)) if in_aorta.size else None,
                      "seconds": round(time.time() - t0, 1)}
        print(f"[fusion] {cid} {a.setting}: {cases[cid]}", flush=True)
    out_dir = Path(a.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "fusion_rules.json").write_text(json.dumps(
        {"setting": a.setting, "default": list(default), "cases": cases, "dice": dice}, indent=1))
    base = dice[str(default)]
    rows = []
    for combo in grid:
        pc = dice[str(combo)]
        worst = min(np.nanmean(list(pc[c].values())) - np.nanmean(list(base[c].values())) for c in pc)
        rows.append((synapse_mean(pc), combo, worst))
    ref = synapse_mean(base)
    for mean, combo, worst in sorted(rows, reverse=True):
        print(f"agreement {combo[0]:g}, fill {combo[1]:g}, veto {combo[2]:g}: mean Dice {mean:.4f} "
              f"({mean - ref:+.4f} against the defaults), worst case {worst:+.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
