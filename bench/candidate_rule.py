"""Does a candidate checkpoint beat the shipped one on the held-out anatomies by a rule fixed before it ran?
Reads the rows ``python -m priorsam.evaluation.anatomy_holdout`` wrote for each side — from one file or several
(rows measured at another stop on the same build and code, say), each given as FILE RUN — and applies an adoption
rule of the kind bench/results/*_decision.md write down first: the candidate's mean Dice, averaged over the
``--averaged`` settings, gains at least ``--gain`` over the base, and no setting it was scored in is lower than the
base's by more than ``--worst`` (or that setting's own ``--worst-for SETTING VALUE``); with ``--organ-worst``, no
organ's Dice averaged over the ``--averaged`` settings is lower than the base's by more than that either.

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


def organ_means(rows: list[dict], settings: list[str]) -> dict[str, float]:
    """Each organ's Dice averaged over ``settings`` (per setting the tables' per-organ mean over the cases)."""
    from priorsam.evaluation.anatomy_holdout import per_setting
    from priorsam.labels import labels

    organs = [lab.name for lab in labels()]
    per = [s["organs"] for _, _, s in per_setting(rows, rows[0]["run"], settings, organs)]
    return {o: float(np.mean([p[o]["dice"] for p in per])) for o in organs} if per else {}


def judge(base: list[dict], candidate: list[dict], averaged: list[str], gain: float, worst: float,
          worst_for: dict[str, float] | None = None, organ_worst: float | None = None) -> dict:
    v = compare(base, candidate)
    per = v["per_setting"]
    missing = sorted(set(averaged) - set(per))
    complete = pairs(base) == pairs(candidate) and not missing
    diffs = {st: s["difference"] for st, s in per.items()}
    mean_gain = float(np.mean([diffs[st] for st in averaged if st in diffs])) if diffs else float("nan")
    allowed = {st: (worst_for or {}).get(st, worst) for st in diffs}
    lower = sorted(st for st, d in diffs.items() if d < -allowed[st])
    organs = {}
    if organ_worst is not None:
        b, c = organ_means(base, averaged), organ_means(candidate, averaged)
        organs = {o: {"base": b[o], "candidate": c[o], "difference": c[o] - b[o]} for o in b}
    organs_lower = sorted(o for o, d in organs.items() if d["difference"] < -organ_worst) if organs else []
    adopt = bool(complete and mean_gain >= gain and not lower and not organs_lower)
    return {**v, "complete": complete, "averaged": averaged, "missing_averaged": missing, "gain_needed": gain,
            "worst_allowed": worst, "worst_allowed_for": dict(worst_for or {}), "mean_gain": mean_gain,
            "lower_than_allowed": lower, "organ_worst_allowed": organ_worst, "organs_over_averaged": organs,
            "organs_lower_than_allowed": organs_lower, "adopt": adopt}


def text(v: dict) -> str:
    if not v["complete"]:
        unmeasured = v["missing_averaged"]
        verdict = ("**Not judged**: the two sides do not have the same (case, setting) pairs"
                   + (f" (averaged settings not measured: {', '.join(unmeasured)})" if unmeasured else "") + ".")
    else:
        own = "".join(f", {st} {w}" for st, w in v["worst_allowed_for"].items())
        verdict = (f"Averaged over {', '.join(v['averaged'])}: **{v['mean_gain']:+.4f}** "
                   f"(needed ≥ {v['gain_needed']:+.3f}); settings lower by more than {v['worst_allowed']}{own}: "
                   f"{', '.join(v['lower_than_allowed']) or 'none'}")
        if v["organ_worst_allowed"] is not None:
            verdict += (f"; organs lower, averaged over those settings, by more than {v['organ_worst_allowed']}: "
                        f"{', '.join(v['organs_lower_than_allowed']) or 'none'}")
        verdict += f". **{'Adopt' if v['adopt'] else 'Do not adopt'}** by this rule."
    lines = table(v, ("base", "candidate"))
    if v["organs_over_averaged"]:
        lines += ["", "| organ, mean over the averaged settings | base | candidate | difference |", "|---|---|---|---|"]
        lines += [f"| {o} | {d['base']:.4f} | {d['candidate']:.4f} | {d['difference']:+.4f} |"
                  for o, d in v["organs_over_averaged"].items()]
    return "\n".join(lines) + "\n\n" + verdict


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", nargs=2, action="append", required=True, metavar=("FILE", "RUN"))
    ap.add_argument("--candidate", nargs=2, action="append", required=True, metavar=("FILE", "RUN"))
    ap.add_argument("--averaged", nargs="+", required=True, help="the settings the gain is averaged over")
    ap.add_argument("--gain", type=float, required=True, help="the average gain needed")
    ap.add_argument("--worst", type=float, required=True, help="how much lower any one setting may be")
    ap.add_argument("--worst-for", nargs=2, action="append", default=[], metavar=("SETTING", "VALUE"),
                    help="that setting's own allowance instead of --worst")
    ap.add_argument("--organ-worst", type=float, default=None,
                    help="how much lower any organ's Dice averaged over the --averaged settings may be")
    ap.add_argument("--out", required=True, help="output prefix: writes OUT.json and OUT.md")
    a = ap.parse_args(argv)
    v = judge(side(a.base, "base"), side(a.candidate, "candidate"), a.averaged, a.gain, a.worst,
              {st: float(w) for st, w in a.worst_for}, a.organ_worst)
    write_verdict(a.out, {"base": a.base, "candidate": a.candidate, **v}, text(v))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
