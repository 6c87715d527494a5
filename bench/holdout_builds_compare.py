"""One run's held-out figures on two builds of the bank, on the (case, setting) pairs both have. Reads the rows
``python -m priorsam.evaluation.anatomy_holdout`` wrote (``OUT.json``, or the ``OUT.partial.json`` it saves after
each case when the evaluation has not finished) for a reference build and a new one:

    python bench/holdout_builds_compare.py --reference bench/results/bank_build_stability_stop43.json \\
        --reference-run "bundle 0.8.0 end to end" --new NEW.json --new-run "bundle 0.8.2 end to end" \\
        --out bench/results/bank_recipe_v2_holdout_end_to_end

Per setting: the held-out table's mean Dice (per organ over the cases, then over organs) on the cases both builds
have, and per case each build's mean over organs. The 0.85 clause of the stop-43 and v2 plans (a whole-volume
setting under 0.85 on the new build must be said in README.md and docs/generalisation.md) is only judged when the
new build has every whole-volume (case, setting) pair of the reference; settings the new build did not measure at
all (the slabs, say) are listed, and a set with whole-volume pairs missing is called partial. Writes ``OUT.json``
and ``OUT.md``.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from common import write_verdict

TARGET = 0.85
NOT_WHOLE_VOLUME = ("cta_crop", "slab_", "upper_")


def load_rows(path: str, run: str) -> list[dict]:
    """The rows of one run from a held-out file (a dict with ``rows`` or a bare list: the partial file)."""
    data = json.loads(Path(path).read_text())
    rows = [r for r in (data["rows"] if isinstance(data, dict) else data) if r["run"] == run]
    if not rows:
        raise SystemExit(f"error: no rows for the run {run!r} in {path}")
    return rows


def pairs(rows: list[dict]) -> set[tuple[str, str]]:
    return {(r["case"], r["setting"]) for r in rows}


def compare(ref: list[dict], new: list[dict]) -> dict:
    from priorsam.evaluation.anatomy_holdout import per_setting
    from priorsam.labels import labels

    organs = [lab.name for lab in labels()]
    ref_pairs = pairs(ref)
    key = ref_pairs & pairs(new)
    settings = list(dict.fromkeys(st for c, st in ((r["case"], r["setting"]) for r in ref) if (c, st) in key))
    both = {}
    for name, rows in (("reference", ref), ("new", new)):
        common = [r for r in rows if (r["case"], r["setting"]) in key]
        both[name] = {st: (float(s["mean"]["dice"]),
                           {r["case"]: float(np.nanmean([v["dice"] for v in r["organs"].values()]))
                            for r in sorted(mine, key=lambda r: r["case"])})
                      for st, mine, s in per_setting(common, rows[0]["run"], settings, organs)}
    out = {}
    for st in settings:
        (ref_mean, ref_cases), (new_mean, new_cases) = both["reference"][st], both["new"][st]
        out[st] = {"cases": len(new_cases), "reference": ref_mean, "new": new_mean, "difference": new_mean - ref_mean,
                   "per_case": {c: {"reference": ref_cases[c], "new": new_cases[c]} for c in new_cases}}
    # The clause is about whole volumes, so a reference setting the new build never measured (a slab) does not
    # stop it from being judged; a missing whole-volume pair does.
    complete = {p for p in ref_pairs if not p[1].startswith(NOT_WHOLE_VOLUME)} <= key
    under = sorted(st for st, s in out.items() if not st.startswith(NOT_WHOLE_VOLUME) and s["new"] < TARGET)
    return {"complete": complete, "pairs": len(key), "reference_pairs": len(ref_pairs),
            "not_measured": sorted({p[1] for p in ref_pairs - key}),
            "per_setting": out, "whole_volume_under_target": under if complete else None}


def table(v: dict, names: tuple[str, str] = ("reference", "new")) -> list[str]:
    """The per-setting lines of :func:`compare`'s result, its two sides headed ``names``."""
    a, b = names
    lines = [f"| setting | cases | {a} | {b} | difference | per case ({a} → {b}) |", "|---|---|---|---|---|---|"]
    for st, s in v["per_setting"].items():
        cases = "; ".join(f"{c} {p['reference']:.3f} → {p['new']:.3f}" for c, p in s["per_case"].items())
        lines.append(f"| {st} | {s['cases']} | {s['reference']:.4f} | {s['new']:.4f} | {s['difference']:+.4f} "
                     f"| {cases} |")
    return lines


def report(v: dict) -> str:
    lines = table(v)
    missing = (f" Reference settings with a pair not measured on the new build: {', '.join(v['not_measured'])}."
               if v["not_measured"] else "")
    if v["complete"]:
        under = v["whole_volume_under_target"]
        lines += ["", f"{v['pairs']} of the reference's {v['reference_pairs']} (case, setting) pairs were measured on "
                  f"the new build, every whole-volume one among them.{missing} Whole-volume settings under {TARGET} "
                  f"on the new build: {', '.join(under) or 'none'}."]
    else:
        lines += ["", f"**Partial**: {v['pairs']} of the reference's {v['reference_pairs']} (case, setting) pairs "
                  f"were measured on the new build, not every whole-volume one; the means above are over those "
                  f"only, and the {TARGET} clause is not judged.{missing}"]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reference", required=True, help="held-out rows on the reference build")
    ap.add_argument("--reference-run", required=True, help="the run's name in the reference file")
    ap.add_argument("--new", required=True, help="held-out rows (OUT.json or OUT.partial.json) on the new build")
    ap.add_argument("--new-run", required=True, help="the run's name in the new file")
    ap.add_argument("--out", required=True, help="output prefix: writes OUT.json and OUT.md")
    a = ap.parse_args(argv)
    v = compare(load_rows(a.reference, a.reference_run), load_rows(a.new, a.new_run))
    write_verdict(a.out, {"reference": a.reference, "reference_run": a.reference_run, "new": a.new,
                          "new_run": a.new_run, **v}, report(v))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
