"""Does a candidate checkpoint beat the shipped one on the held-out anatomies by a rule fixed before it ran?
Reads the rows ``python -m priorsam.evaluation.anatomy_holdout`` wrote for each side — from one file or several
(rows measured at another stop on the same build and code, say), each given as FILE RUN — and applies an adoption
rule of the kind bench/results/*_decision.md write down first: the candidate's mean Dice, averaged over the
``--averaged`` settings, gains at least ``--gain`` over the base, and no setting it was scored in is lower than the
base's by more than ``--worst``.

    python bench/candidate_rule.py --base SHIPPED.json "RUN" --base SLABS.json "RUN" \\
        --candidate CANDIDATE.json "RUN" --candidate SLABS.json "RUN" \\
        --averaged native arterial portal_venous delayed portal_venous_arms_table unseen cta_crop \\
        --gain 0.005 --worst 0.005 --out bench/results/heads_v2_end_to_end

Per setting the held-out tables' own means (``holdout_builds_compare.compare``: per organ over the cases, then
over organs, on the (case, setting) pairs both sides have) and each case's mean. The rule is only judged when both
sides have every (case, setting) pair the other has. Writes ``OUT.json`` and ``OUT.md``.
"""
from __future__ import annotations

import argparse

import numpy as np
from common import write_verdict
from holdout_builds_compare import compare, load_rows, pairs, table


def side(sources: list[list[str]], name: str) -> list[dict]:
    """Every row of the named runs, under one name (files measured at different stops name the run differently)."""
    rows = [dict(r, run=name) for path, run in sources for r in load_rows(path, run)]
    seen = [(r["case"], r["setting"]) for r in rows]
    if len(seen) != len(set(seen)):
        raise SystemExit(f"error: the {name} side has a (case, setting) pair twice; give each pair once")
    return rows


def judge(base: list[dict], candidate: list[dict], averaged: list[str], gain: float, worst: float) -> dict:
    v = compare(base, candidate)
    per = v["per_setting"]
    missing = sorted(set(averaged) - set(per))
    complete = pairs(base) == pairs(candidate) and not missing
    diffs = {st: s["difference"] for st, s in per.items()}
    mean_gain = float(np.mean([diffs[st] for st in averaged if st in diffs])) if diffs else float("nan")
    lower = sorted(st for st, d in diffs.items() if d < -worst)
    adopt = bool(complete and mean_gain >= gain and not lower)
    return {**v, "complete": complete, "averaged": averaged, "missing_averaged": missing, "gain_needed": gain,
            "worst_allowed": worst, "mean_gain": mean_gain, "lower_than_allowed": lower, "adopt": adopt}


def text(v: dict) -> str:
    if not v["complete"]:
        unmeasured = v["missing_averaged"]
        verdict = ("**Not judged**: the two sides do not have the same (case, setting) pairs"
                   + (f" (averaged settings not measured: {', '.join(unmeasured)})" if unmeasured else "") + ".")
    else:
        verdict = (f"Averaged over {', '.join(v['averaged'])}: **{v['mean_gain']:+.4f}** "
                   f"(needed ≥ {v['gain_needed']:+.3f}); settings lower by more than {v['worst_allowed']}: "
                   f"{', '.join(v['lower_than_allowed']) or 'none'}. "
                   f"**{'Adopt' if v['adopt'] else 'Do not adopt'}** by this rule.")
    return "\n".join(table(v, ("base", "candidate"))) + "\n\n" + verdict


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", nargs=2, action="append", required=True, metavar=("FILE", "RUN"))
    ap.add_argument("--candidate", nargs=2, action="append", required=True, metavar=("FILE", "RUN"))
    ap.add_argument("--averaged", nargs="+", required=True, help="the settings the gain is averaged over")
    ap.add_argument("--gain", type=float, required=True, help="the average gain needed")
    ap.add_argument("--worst", type=float, required=True, help="how much lower any one setting may be")
    ap.add_argument("--out", required=True, help="output prefix: writes OUT.json and OUT.md")
    a = ap.parse_args(argv)
    v = judge(side(a.base, "base"), side(a.candidate, "candidate"), a.averaged, a.gain, a.worst)
    write_verdict(a.out, {"base": a.base, "candidate": a.candidate, **v}, text(v))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
