"""Which organ answers a box: the "extent" and "share" rules of priorsam.engine.box_organs, tight and loose boxes.

For every organ of every case the box is the organ's labelled extent where the image is (as
bench/box_organs_eval.py) and that box grown by ``--grow-mm`` on every side (clipped to the volume). Each rule
answers with an explicit label and with ``auto``; where it finds no organ the box is propagated
(LiteMedSAM from the middle slice, named by the "pixels" rule), as ``segment-box`` does, and the propagation
is computed only then. The engine runs once per case. Rule decided by these figures, written down first:
bench/results/box_organs_loose_decision.md.

    python bench/box_organs_loose_eval.py --out bench/results/box_organs_loose.md \
        --bank CACHE --cases btcv_0005 ... [--settings native portal_venous] [--grow-mm 0 10]
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from box_organs_eval import header, score_cases
from box_prompt_eval import box_predictor, case_arguments, dice, organ_boxes, per_organ

from priorsam.engine.box_organs import MATCH_RULES, organ_for_box
from priorsam.engine.box_segment import propagate_box
from priorsam.engine.boxes import DisplayBox
from priorsam.engine.naming import name_prompted_organ
from priorsam.engine.segment import Segmenter
from priorsam.io import from_display, to_display


def grown(box: DisplayBox, vol, mm: float) -> DisplayBox:
    """The box grown by ``mm`` on every side, clipped to the volume (display axes: z, rows = y, columns = x)."""
    sx, sy, sz = vol.spacing
    Z, H, W = vol.shape[2], vol.shape[1], vol.shape[0]
    return DisplayBox(max(0, box.z0 - round(mm / sz)), min(Z - 1, box.z1 + round(mm / sz)),
                      max(0.0, box.r0 - mm / sy), min(H - 1.0, box.r1 + mm / sy),
                      max(0.0, box.c0 - mm / sx), min(W - 1.0, box.c1 + mm / sx))


def score_case(vol, lab, support, seg: Segmenter, grow_mm: list[float],
               rules: tuple[str, ...] = ("extent", "share")) -> tuple[list[dict], float]:
    t = time.perf_counter()
    engine = seg.segment(vol, show_bar=False).labels
    engine_s = time.perf_counter() - t
    pred = box_predictor(vol)
    sx, sy, _ = vol.spacing
    rows = []
    for L, gt, tight, sup_d in organ_boxes(vol, lab, support):
        for mm in grow_mm:
            box = grown(tight, vol, mm) if mm else tight
            propagated = {}

            def propagation():
                if not propagated:
                    m = propagate_box(pred, box, (5.0 / sy, 5.0 / sx), show_bar=False)
                    propagated.update(dice=dice(m & sup_d, gt),
                                      name=name_prompted_organ(vol, from_display(m), segmenter=seg)[0])
                return propagated

            row = {"organ": L.name, "grow_mm": mm}
            for rule in rules:
                for key, organ in (("explicit", L.name), ("auto", None)):
                    found = organ_for_box(engine, box, organ, rule=rule)
                    col = f"{rule}_{key}"
                    if found is None:
                        row[col], row[f"{col}_route"] = propagation()["dice"], "propagate"
                        row[f"{col}_name"] = propagation()["name"] if organ is None else L.name
                    else:
                        answer = (to_display(found[0].astype(np.uint8)) > 0) & sup_d
                        row[col], row[f"{col}_route"] = dice(answer, gt), "organs"
                        row[f"{col}_name"] = found[1].name
                        row[f"{col}_iou"], row[f"{col}_share"] = found[1].iou, found[1].share
            rows.append(row)
    return rows, engine_s


def table(rows: list[dict], rules: tuple[str, ...] = ("extent", "share")) -> list[str]:
    names = " / ".join(rules)
    out = ["| organ | cases | extent, explicit | share, explicit | share − extent | propagated, explicit "
           f"({names}) | auto named right ({names}) |", "|---|---|---|---|---|---|---|"]
    per, mm = per_organ(rows, ("extent_explicit", "share_explicit"))
    for o, rs, m in per:
        fell = " / ".join(str(sum(r[f"{rule}_explicit_route"] == "propagate" for r in rs)) for rule in rules)
        named = " / ".join(str(sum(r[f"{rule}_auto_name"] == o for r in rs)) for rule in rules)
        out.append(f"| {o} | {len(rs)} | {m['extent_explicit']:.3f} | {m['share_explicit']:.3f} | "
                   f"{m['share_explicit'] - m['extent_explicit']:+.3f} | {fell} | {named} |")
    fell = " / ".join(str(sum(r[f"{rule}_explicit_route"] == "propagate" for r in rows)) for rule in rules)
    named = " / ".join(str(sum(r[f"{rule}_auto_name"] == r["organ"] for r in rows)) for rule in rules)
    out.append(f"| **mean of organ means** | {len(rows)} | **{mm['extent_explicit']:.3f}** | "
               f"**{mm['share_explicit']:.3f}** | **{mm['share_explicit'] - mm['extent_explicit']:+.3f}** | {fell} | "
               f"**{named}** |")
    return out


def main() -> None:
    ap = case_arguments("bench/results/box_organs_loose.md")
    ap.add_argument("--grow-mm", nargs="+", type=float, default=[0.0, 10.0])
    ap.add_argument("--skip-sample", action="store_true", help="leave the sample CT out (the heads trained on it)")
    ap.add_argument("--rules", nargs="+", choices=MATCH_RULES, default=["extent", "share"],
                    help="the rules compared (the tables need extent and share)")
    args = ap.parse_args()
    out = Path(args.out)
    seg = Segmenter(None, "cpu")
    rules = tuple(args.rules)
    rows, _ = score_cases(args, lambda vol, lab, sup: score_case(vol, lab, sup, seg, args.grow_mm, rules),
                          "box-loose", out)
    lines = header("box_organs_loose_eval.py", "Which organ answers a box: the \"extent\" and \"share\" rules, "
                   "tight and loose boxes", rows, "Dice in 3D where the image is; per organ the mean over cases, "
                   "then the mean of the organ means. Rule: box_organs_loose_decision.md.")
    for mm in args.grow_mm:
        lines += [f"Box grown by {mm:g} mm on every side:" if mm else "Tight box (the organ's labelled extent):", ""]
        lines += table([r for r in rows if r["grow_mm"] == mm], rules) + [""]
    out.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
