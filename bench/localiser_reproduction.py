"""Does a retrained part reproduce the shipped one? Reads the rows that
``python -m priorsam.evaluation.anatomy_holdout`` wrote for two runs (the shipped part and the retrained one,
same bank, cases and settings: the localiser alone, ``localiser_only``, or the heads alone, ``use_localiser``
off) and applies the rule fixed before training in bench/results/localiser_reproduction_plan.md and
heads_reproduction_plan.md: **reproduced** iff the retrained part's held-out mean Dice is within ±0.02 of the
shipped one's in every setting and within ±0.01 averaged over the settings.

    python bench/localiser_reproduction.py --holdout HOLDOUT.json --shipped "NAME" --reproduced "NAME" \\
        --out bench/results/localiser_reproduction

Writes ``OUT.json`` (per setting: both means and the difference; the verdict) and ``OUT.md``. The means are the
held-out tables' own (``anatomy_holdout.per_setting``: per organ over the cases, then over organs).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from common import write_verdict

PER_SETTING, AVERAGED = 0.02, 0.01


def setting_means(rows: list[dict], run: str) -> dict[str, float]:
    """Mean Dice over the 8 organs per setting for one run, as in the held-out tables."""
    from priorsam.evaluation.anatomy_holdout import per_setting
    from priorsam.labels import labels

    settings = list(dict.fromkeys(r["setting"] for r in rows if r["run"] == run))
    if not settings:
        raise SystemExit(f"error: no rows for the run {run!r} in the held-out file")
    organs = [lab.name for lab in labels()]
    return {st: float(s["mean"]["dice"]) for st, _, s in per_setting(rows, run, settings, organs)}


def verdict(shipped: dict[str, float], reproduced: dict[str, float]) -> dict:
    """The plan's rule over the settings both runs were scored in."""
    if set(shipped) != set(reproduced):
        raise SystemExit(f"error: the runs were scored in different settings: {sorted(shipped)} vs {sorted(reproduced)}")
    rows = {st: {"shipped": shipped[st], "reproduced": reproduced[st], "difference": reproduced[st] - shipped[st]}
            for st in shipped}
    for r in rows.values():
        r["within"] = abs(r["difference"]) <= PER_SETTING
    mean_diff = float(np.mean([r["difference"] for r in rows.values()]))
    mean_within = abs(mean_diff) <= AVERAGED
    return {"per_setting": rows, "mean_difference": mean_diff, "mean_within": mean_within,
            "reproduced": mean_within and all(r["within"] for r in rows.values())}


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
    write_verdict(a.out, {"holdout": a.holdout, "shipped": a.shipped, "reproduced": a.reproduced, **v}, table(v))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
