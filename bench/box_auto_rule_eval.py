"""`--label auto`: "extent", "share", "extent, then share" (and "best" where recorded), from the per-box records of
bench/box_organs_loose_eval.py (nothing is run again: each box's answer under both rules came from one engine
run per volume, and "extent, then share" takes "extent"'s answer where it answered with an organ, else
"share"'s). Rule decided by these figures, written down first: bench/results/box_auto_rule_decision.md.

    python bench/box_auto_rule_eval.py --records bench/results/box_organs_loose_dev.json \
        bench/results/box_organs_loose.json --out bench/results/box_auto_rule.md
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from box_prompt_eval import per_organ

RULES = ("extent", "share", "extent, then share", "best")


def auto_answer(row: dict, rule: str) -> tuple[float, str, str]:
    """(Dice, route, name) of ``auto`` for one box record under ``rule``."""
    if rule == "extent, then share":
        rule = "extent" if row["extent_auto_route"] == "organs" else "share"
    return row[f"{rule}_auto"], row[f"{rule}_auto_route"], row[f"{rule}_auto_name"]


def summary(rows: list[dict]) -> dict[str, dict]:
    """Per rule: mean of organ means of auto's Dice, boxes named right, boxes propagated, organ means."""
    out = {}
    for rule in [r for r in RULES if r == "extent, then share" or f"{r}_auto" in rows[0]]:
        answers = [dict(zip(("organ", "dice", "route", "name"), (r["organ"], *auto_answer(r, rule)))) for r in rows]
        per, means = per_organ(answers, ("dice",))
        out[rule] = {"mean": means["dice"],
                     "named": sum(a["name"] == a["organ"] for a in answers),
                     "propagated": sum(a["route"] == "propagate" for a in answers),
                     "organs": {o: m["dice"] for o, _, m in per}, "boxes": len(rows)}
    return out


def table(title: str, s: dict[str, dict]) -> list[str]:
    organs = list(s["extent"]["organs"])
    lines = [f"**{title}** ({s['extent']['boxes']} boxes)", "",
             "| rule | " + " | ".join(organs) + " | mean of organ means | named right | propagated |",
             "|---" * (len(organs) + 4) + "|"]
    for rule, v in s.items():
        lines.append(f"| {rule} | " + " | ".join(f"{v['organs'][o]:.3f}" for o in organs)
                     + f" | **{v['mean']:.3f}** | {v['named']} | {v['propagated']} |")
    return lines + [""]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", nargs="+", required=True, help="box_organs_loose_eval.py .json outputs")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    lines = ["# `--label auto`: which organ answers a box, by rule", "",
             "`python bench/box_auto_rule_eval.py` from the per-box records of bench/box_organs_loose_eval.py "
             "(auto's answer: Dice in 3D where the image is; per organ the mean over cases, then the mean of the "
             "organ means). Rules: bench/results/box_auto_rule_decision.md, box_auto_best_decision.md.", ""]
    result = {}
    for path in args.records:
        rows = json.loads(Path(path).read_text())["rows"]
        cases = list(dict.fromkeys(r["case"] for r in rows))
        lines += [f"## {path}: {len(cases)} volumes ({', '.join(cases)})", ""]
        for grow in sorted({r["grow_mm"] for r in rows}):
            s = summary([r for r in rows if r["grow_mm"] == grow])
            result[f"{path} grow {grow:g}"] = s
            lines += table("tight box (the organ's labelled extent)" if grow == 0 else f"box grown by {grow:g} mm", s)
    Path(args.out).write_text("\n".join(lines))
    Path(args.out).with_suffix(".json").write_text(json.dumps(result, indent=1))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
