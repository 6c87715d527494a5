"""A box around an organ: propagated LiteMedSAM against the automatic engine's organ in the box.

For every organ of every case, with the same 3D box as bench/box_prompt_eval.py (the organ's labelled
extent where the image is):
- **propagate**: ``segment-box --method propagate`` (LiteMedSAM from the box's middle slice), and the
  name the "pixels" rule gives its mask (what ``--label auto`` printed before the organs route);
- **organs, explicit label**: :func:`priorsam.engine.box_organs.organ_for_box` with the organ's name and
  the "extent" rule (the engine's mask of it inside the box when its extent fits the box, IoU ≥ 0.5; else
  propagation; the command has used the "share" rule for a named organ since
  bench/results/box_organs_loose_decision.md);
- **organs, auto**: the same with no name (the best-fitting organ names the answer; else propagation
  named by the "pixels" rule).
The engine runs once per case with its defaults and the bundle's weights. The rule these figures decide
was written down first: bench/results/box_organs_decision.md.

    python bench/box_organs_eval.py --out bench/results/box_organs.md \
        [--bank CACHE --cases btcv_0005 ... --settings native portal_venous]
"""
from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import numpy as np
from box_prompt_eval import box_predictor, case_arguments, cases, dice, organ_boxes, per_organ

from priorsam.engine.box_organs import organ_for_box
from priorsam.engine.box_segment import propagate_box
from priorsam.engine.naming import name_prompted_organ
from priorsam.engine.segment import Segmenter
from priorsam.io import from_display, to_display


def score_case(vol, lab: np.ndarray, support: np.ndarray | None, seg: Segmenter) -> tuple[list[dict], float]:
    t = time.perf_counter()
    engine = seg.segment(vol, show_bar=False).labels
    engine_s = time.perf_counter() - t
    pred = box_predictor(vol)
    sx, sy, _ = vol.spacing
    eng_d = to_display(engine)
    rows = []
    for L, gt, dbox, sup_d in organ_boxes(vol, lab, support):
        m = propagate_box(pred, dbox, (5.0 / sy, 5.0 / sx), show_bar=False)
        named, _, p = name_prompted_organ(vol, from_display(m), segmenter=seg)
        row = {"organ": L.name, "propagate": dice(m & sup_d, gt), "named_propagate": named, "named_propagate_p": p,
               "engine_whole": dice((eng_d == L.id) & sup_d, gt)}
        for key, organ in (("explicit", L.name), ("auto", None)):
            found = organ_for_box(engine, dbox, organ, rule="extent")  # the rule this bench decided
            row[f"{key}_route"] = "organs" if found else "propagate"
            row[f"{key}_iou"] = found[1].iou if found else None
            row[key] = dice((to_display(found[0].astype(np.uint8)) > 0) & sup_d, gt) if found else row["propagate"]
            if key == "auto":
                row["auto_name"] = found[1].name if found else named
        rows.append(row)
    return rows, engine_s


def table(rows: list[dict]) -> list[str]:
    out = ["| organ | cases | propagate | organs, explicit label | difference | answered by propagation | "
           "organs, auto | auto named right | propagate + pixels rule named right | engine, whole organ (no box) |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    per, mm = per_organ(rows, ("propagate", "explicit", "auto", "engine_whole"))
    for o, rs, m in per:
        out.append(f"| {o} | {len(rs)} | {m['propagate']:.3f} | {m['explicit']:.3f} | "
                   f"{m['explicit'] - m['propagate']:+.3f} | {sum(r['explicit_route'] == 'propagate' for r in rs)} | "
                   f"{m['auto']:.3f} | {sum(r['auto_name'] == o for r in rs)} | "
                   f"{sum(r['named_propagate'] == o for r in rs)} | {m['engine_whole']:.3f} |")
    out.append(f"| **mean of organ means** | {len(rows)} | **{mm['propagate']:.3f}** | **{mm['explicit']:.3f}** | "
               f"**{mm['explicit'] - mm['propagate']:+.3f}** | {sum(r['explicit_route'] == 'propagate' for r in rows)} | "
               f"**{mm['auto']:.3f}** | **{sum(r['auto_name'] == r['organ'] for r in rows)}** | "
               f"**{sum(r['named_propagate'] == r['organ'] for r in rows)}** | {mm['engine_whole']:.3f} |")
    return out


def score_cases(args, score, tag: str, out: Path) -> tuple[list[dict], dict[str, float]]:
    """Every case of ``args`` through ``score(vol, labels, support) -> (rows, engine seconds)``: each row printed,
    and the rows so far with each case's engine seconds saved to ``out`` as .json after every case."""
    rows, engine_s = [], {}
    for name, vol, lab, support in cases(args.bank, args.cases, args.settings):
        if getattr(args, "skip_sample", False) and name == "example_ct":
            continue
        t = time.perf_counter()
        case_rows, engine_s[name] = score(vol, lab, support)
        for r in case_rows:
            rows.append({"case": name, **r})
            print(json.dumps(rows[-1]), flush=True)
        print(f"[{tag}] {name}: {time.perf_counter() - t:.0f} s (engine {engine_s[name]:.0f} s)", flush=True)
        out.with_suffix(".json").write_text(json.dumps({"engine_seconds": engine_s, "rows": rows}, indent=1))
    return rows, engine_s


def header(script: str, title: str, rows: list[dict], how: str) -> list[str]:
    return [f"# {title}", "", f"`python bench/{script}` on {platform.processor() or platform.machine()}, "
            f"{os.cpu_count()} cores, CPU only, {time.strftime('%Y-%m-%d')}. Cases: "
            f"{', '.join(dict.fromkeys(r['case'] for r in rows))}. {how}", ""]


def main() -> None:
    args = case_arguments("bench/results/box_organs.md").parse_args()
    out = Path(args.out)
    seg = Segmenter(None, "cpu")
    rows, engine_s = score_cases(args, lambda vol, lab, sup: score_case(vol, lab, sup, seg), "box-organs", out)
    held_out = [r for r in rows if r["case"] != "example_ct"]
    lines = header("box_organs_eval.py", "A box around an organ: propagated LiteMedSAM against the automatic "
                   "engine's organ in the box", rows, "The 3D box is each organ's labelled extent (where the image "
                   "is); Dice in 3D; per organ the mean over cases, then the mean of the organ means. Rule: "
                   "box_organs_decision.md.")
    if held_out:
        lines += ["Held-out pseudo-patients (the rule's cases):", ""] + table(held_out) + [""]
    lines += ["Sample CT (the engine's heads trained on it; not used by the rule):", ""]
    lines += table([r for r in rows if r["case"] == "example_ct"])
    lines += ["", f"Engine seconds per case, median: {float(np.median(list(engine_s.values()))):.0f} s.", ""]
    out.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
