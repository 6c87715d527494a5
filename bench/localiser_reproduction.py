"""Does a retrained localiser reproduce the shipped one? Reads the rows that
``python -m priorsam.evaluation.anatomy_holdout`` wrote for two runs (the shipped localiser and the retrained
one, both ``localiser_only``, same bank, cases and settings) and applies the rule fixed in
bench/results/localiser_reproduction_plan.md before training: **reproduced** iff the retrained localiser's
held-out mean Dice is within ±0.02 of the shipped one's in every setting and within ±0.01 averaged over the
settings.

    python bench/localiser_reproduction.py --holdout HOLDOUT.json --shipped "NAME" --reproduced "NAME" \\
        --out bench/results/localiser_reproduction

Writes ``OUT.json`` (per setting: both means and the difference; the verdict) and ``OUT.md``. The means are the
held-out tables' own (``priorsam.evaluation.metrics.summarise``: per organ over the cases, then over organs).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

PER_SETTING, AVERAGED = 0.02, 0.01


def setting_means(rows: list[dict], run: str) -> dict[str, float]:
    """Mean Dice over the 8 organs per setting for one run, as in the held-out tables."""
    from priorsam.evaluation.metrics import summarise
    from priorsam.labels import labels

    organs = [lab.name for lab in labels()]
    mine = [r for r in rows if r["run"] == run]
    if not mine:
        raise SystemExit(f"error: no rows for the run {run!r} in the held-out file")
    out = {}
    for st in dict.fromkeys(r["setting"] for r in mine):
        s = summarise([{"case": r["case"], "organs": r["organs"]} for r in mine if r["setting"] == st], organs)
        out[st] = float(s["mean"]["dice"])
    return out


def verdict(shipped: dict[str, float], reproduced: dict[str, float]) -> dict:
    """The plan's rule over the settings both runs were scored in."""
    if set(shipped) != set(reproduced):
        raise SystemExit(f"error: the runs were scored in different settings: {sorted(shipped)} vs {sorted(reproduced)}")
    diffs = {st: reproduced[st] - shipped[st] for st in shipped}
    mean_diff = float(np.mean(list(diffs.values())))
    every = all(abs(d) <= PER_SETTING for d in diffs.values())
    return {"per_setting": {st: {"shipped": shipped[st], "reproduced": reproduced[st], "difference": diffs[st],
                                 "within": abs(diffs[st]) <= PER_SETTING} for st in shipped},
            "mean_difference": mean_diff, "mean_within": abs(mean_diff) <= AVERAGED,
            "reproduced": every and abs(mean_diff) <= AVERAGED}


def table(v: dict) -> str:
    lines = ["| setting | shipped | reproduced | difference | within ±0.02 |", "|---|---|---|---|---|"]
    for st, r in v["per_setting"].items():
        lines.append(f"| {st} | {r['shipped']:.4f} | {r['reproduced']:.4f} | {r['difference']:+.4f} | "
                     f"{'yes' if r['within'] else '**no**'} |")
    lines += ["", f"Averaged over the settings: {v['mean_difference']:+.4f} "
              f"({'within' if v['mean_within'] else '**outside**'} ±0.01).", "",
              f"**Verdict by the plan's rule: {'reproduced' if v['reproduced'] else 'not reproduced'}.**"]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--holdout", required=True, help="the JSON that anatomy_holdout wrote for both runs")
    ap.add_argument("--shipped", required=True, help="the shipped run's name in that file")
    ap.add_argument("--reproduced", required=True, help="the retrained run's name in that file")
    ap.add_argument("--out", required=True, help="output prefix: writes OUT.json and OUT.md")
    a = ap.parse_args(argv)
    rows = json.loads(Path(a.holdout).read_text())["rows"]
    v = verdict(setting_means(rows, a.shipped), setting_means(rows, a.reproduced))
    out = Path(a.out)
    out.with_suffix(".json").write_text(json.dumps({"holdout": a.holdout, "shipped": a.shipped,
                                                    "reproduced": a.reproduced, **v}, indent=1))
    out.with_suffix(".md").write_text(table(v) + "\n")
    print(table(v))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
