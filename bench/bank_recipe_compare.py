"""A bank built with one registration recipe against another's QA table, by the rule fixed in
bench/results/bank_recipe_v2_plan.md before the build was read: the new recipe stays iff (a) no case is
dropped, (b) the mean over the cases of the per-case mean Dice is not lower than the reference's by more
than 0.01, and (c) no case's mean Dice is more than 0.05 below its reference row. With ``--repeat``, a second
build of some of the cases (another empty cache, same machine) must give the same QA figures exactly.

    python bench/bank_recipe_compare.py --cache BANK --reference bench/results/bank_recipe_v1_table.md \\
        [--repeat BANK2] --out bench/results/bank_recipe_v2

``--reference``: a markdown QA table as ``priorsam.data.pseudo_patients.qa_table`` writes it (case, source,
8 organs, mean, affine mean, …), or an ``OUT.json`` this script wrote for another build; against the latter the
report also counts the cases whose figures are the same to the fourth decimal (a build of the same recipe on
another machine: Greedy is repeatable on one machine, not promised across machines). Writes ``OUT.json`` and
``OUT.md``.
"""
from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import numpy as np
from common import write_verdict

MEAN_DROP, CASE_DROP = 0.01, 0.05


def reference_rows(md: str) -> dict[str, dict]:
    """case id → mean Dice, affine mean and kept, from a QA table in markdown."""
    out = {}
    header = None
    for line in md.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells and cells[0] == "case":
            header = cells
        elif header and len(cells) == len(header) and not re.fullmatch(r"-+", cells[0]):
            row = dict(zip(header, cells))
            out[row["case"]] = {"mean": float(row["mean"]), "affine": float(row["affine mean"]),
                                "kept": row["kept"] == "yes"}
    if not out:
        raise SystemExit("error: no QA table rows in the reference file")
    return out


def reference_from(path: str) -> tuple[dict[str, dict], bool]:
    """Reference rows from a markdown QA table or a previous ``OUT.json``; True when the latter (4 decimals)."""
    text = Path(path).read_text()
    if path.endswith(".json"):
        return {c: {k: r[k] for k in ("mean", "affine", "kept")} for c, r in json.loads(text)["per_case"].items()}, True
    return reference_rows(text), False


def same_figures(new: dict[str, dict], ref: dict[str, dict]) -> list[str]:
    """Cases whose mean Dice and mean affine-step Dice equal the reference's (qa.json keeps 4 decimals)."""
    return [c for c in sorted(ref) if abs(new[c]["mean"] - ref[c]["mean"]) < 5e-5
            and abs(new[c]["affine"] - ref[c]["affine"]) < 5e-5]


def cache_rows(cache: str) -> dict[str, dict]:
    from priorsam.data.pseudo_patients import list_bank

    rows = {}
    for q in list_bank(cache, kept_only=False):
        rows[q["case_id"]] = {"mean": q["mean_dice"], "affine": float(np.mean(list(q["dice_affine"].values()))),
                              "kept": q["kept"], "tries": len(q.get("tries", [None])), "seconds": q["seconds"],
                              "qa": {k: q[k] for k in ("dice", "dice_affine", "folded_fraction")}}
    if not rows:
        raise SystemExit(f"error: no built case in {cache}")
    return rows


def verdict(new: dict[str, dict], ref: dict[str, dict]) -> dict:
    missing = sorted(set(ref) - set(new))
    if missing:
        raise SystemExit(f"error: the build lacks {len(missing)} reference cases: {' '.join(missing)}")
    cases = sorted(ref)
    dropped = [c for c in cases if not new[c]["kept"]]
    mean_new = float(np.mean([new[c]["mean"] for c in cases]))
    mean_ref = float(np.mean([ref[c]["mean"] for c in cases]))
    fallen = [c for c in cases if new[c]["mean"] < ref[c]["mean"] - CASE_DROP]
    return {"cases": len(cases), "dropped": dropped, "mean_dice": mean_new, "reference_mean_dice": mean_ref,
            "affine_mean": float(np.mean([new[c]["affine"] for c in cases])),
            "reference_affine_mean": float(np.mean([ref[c]["affine"] for c in cases])),
            "fallen_cases": fallen, "stays": not dropped and mean_new >= mean_ref - MEAN_DROP and not fallen}


def repeat_check(new: dict[str, dict], again: dict[str, dict]) -> dict[str, bool]:
    return {c: again[c]["qa"] == new[c]["qa"] for c in sorted(again)}


def report(new: dict, ref: dict, v: dict, repeat: dict | None, same: list[str] | None = None) -> str:
    lines = ["| case | mean Dice, reference | mean Dice, new | difference | affine, reference | affine, new | "
             "tries | s |", "|---|---|---|---|---|---|---|---|"]
    for c in sorted(ref):
        n, r = new[c], ref[c]
        lines.append(f"| {c} | {r['mean']:.3f} | {n['mean']:.3f}{'' if n['kept'] else ' (dropped)'} | "
                     f"{n['mean'] - r['mean']:+.3f} | {r['affine']:.3f} | {n['affine']:.3f} | {n['tries']} | "
                     f"{n['seconds']:.0f} |")
    lines += ["", f"Over the {v['cases']} cases: mean Dice {v['reference_mean_dice']:.4f} → {v['mean_dice']:.4f}, "
              f"after the affine step {v['reference_affine_mean']:.4f} → {v['affine_mean']:.4f}; dropped: "
              f"{', '.join(v['dropped']) or 'none'}; more than {CASE_DROP} below the reference: "
              f"{', '.join(v['fallen_cases']) or 'none'}."]
    if same is not None:
        lines += ["", f"The same mean and affine-step Dice as the reference build to the fourth decimal: {len(same)} of "
                  f"{v['cases']} cases"
                  + (f"; different: {', '.join(c for c in sorted(ref) if c not in same)}." if len(same) < v["cases"] else ".")]
    if repeat is not None:
        same = [c for c, ok in repeat.items() if ok]
        lines += ["", f"Built again into an empty cache: {len(same)} of {len(repeat)} cases gave the same QA "
                  f"figures exactly ({', '.join(f'{c} ' + ('same' if ok else '**different**') for c, ok in repeat.items())})."]
    lines += ["", f"**By the plan's rule the new recipe {'stays' if v['stays'] else 'does not stay'}.**"]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", required=True, help="the bank built with the new recipe")
    ap.add_argument("--reference", required=True,
                    help="markdown QA table of the reference recipe, or OUT.json of another build")
    ap.add_argument("--repeat", default=None, help="a second build of some cases with the new recipe")
    ap.add_argument("--out", required=True, help="output prefix: writes OUT.json and OUT.md")
    a = ap.parse_args(argv)
    new = cache_rows(a.cache)
    ref, exact = reference_from(a.reference)
    v = verdict(new, ref)
    same = same_figures(new, ref) if exact else None
    repeat = repeat_check(new, cache_rows(a.repeat)) if a.repeat else None
    write_verdict(a.out, {"cache": a.cache, "reference": a.reference, **v, "repeat_identical": repeat,
                          "same_as_reference": same,
                          "per_case": {c: {k: x for k, x in new[c].items() if k != "qa"} for c in sorted(new)}},
                  report(new, ref, v, repeat, same))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
