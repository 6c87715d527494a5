"""How often ``segment-box --label auto`` names a boxed organ right, for each naming rule.

Each organ's labelled mask is the prompt (so the figure is the naming's own, not the propagation's), on
the sample CT (labels: TotalSegmentator output) and, with ``--bank``, pseudo-patients rendered as
:mod:`priorsam.evaluation.anatomy_holdout` renders them (the sample CT's texture on other anatomies).

    python bench/naming_eval.py --out bench/results/naming.md [--bank CACHE --cases ... --settings ...]
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np

from priorsam.engine.naming import NAMING_RULES, prompted_organ_names
from priorsam.engine.segment import Segmenter
from priorsam.labels import labels

from box_prompt_eval import cases


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="bench/results/naming.md")
    ap.add_argument("--bank", default=None)
    ap.add_argument("--cases", nargs="*", default=[])
    ap.add_argument("--settings", nargs="*", default=["native", "portal_venous"])
    args = ap.parse_args()
    seg = Segmenter(None, "cpu")
    rows = []
    for name, vol, lab, support in cases(args.bank, args.cases, args.settings):
        for L in labels():
            mask = (lab == L.id) if support is None else (lab == L.id) & support
            if not mask.any():
                continue
            row = {"case": name, "organ": L.name}
            for rule, (named, _, p) in prompted_organ_names(vol, mask, seg).items():
                row[rule], row[f"{rule}_p"] = named, p
            rows.append(row)
            print(json.dumps(row), flush=True)
    out = Path(args.out)
    out.with_suffix(".json").write_text(json.dumps(rows, indent=1))
    vols = list(dict.fromkeys(r["case"] for r in rows))
    head = "| organ | cases | " + " | ".join(f"right: {r} | wrong names: {r}" for r in NAMING_RULES) + " |"
    lines = ["# Naming a boxed organ (`segment-box --label auto`), by rule", "",
             f"`python bench/naming_eval.py` on {platform.processor() or platform.machine()}, CPU, "
             f"{time.strftime('%Y-%m-%d')}; the bundle's weights. Each organ's labelled mask is the prompt. "
             f"Volumes: {', '.join(vols)}.", "", head, "|---|---|" + "---|---|" * len(NAMING_RULES)]
    for o in [L.name for L in labels()]:
        rs = [r for r in rows if r["organ"] == o]
        if not rs:
            continue
        cells = []
        for rule in NAMING_RULES:
            wrong = sorted({r[rule] for r in rs if r[rule] != o})
            cells += [str(sum(r[rule] == o for r in rs)), ", ".join(wrong) or "—"]
        lines.append(f"| {o} | {len(rs)} | " + " | ".join(cells) + " |")
    lines.append(f"| **all** | {len(rows)} | " + " | ".join(
        f"**{sum(r[rule] == r['organ'] for r in rows)}** | " for rule in NAMING_RULES) + "")
    for rule in NAMING_RULES:
        ok = [r[f"{rule}_p"] for r in rows if r[rule] == r["organ"]]
        bad = [r[f"{rule}_p"] for r in rows if r[rule] != r["organ"]]
        lines.append("")
        lines.append(f"`{rule}` probability, median: when right {np.median(ok) if ok else float('nan'):.2f}, "
                     f"when wrong {np.median(bad) if bad else float('nan'):.2f}.")
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
