"""How sure a held-out mean Dice is: a bootstrap interval over the anatomies it averages.

    python -m priorsam.evaluation.uncertainty --rows docs/anatomy_holdout.json --run "bundle 0.7.0 end to end"

The held-out tables average seven anatomies. Which seven were drawn matters as much as any rule or
recipe tried on them, so each mean gets the percentile bootstrap interval of the same statistic
(:func:`~.metrics.summarise`: per organ the mean over cases, then over organs) with the anatomies
resampled with replacement (SciPy's ``stats.bootstrap``). With so few cases the interval is itself
rough; it says how far the mean could move with other anatomies, not where the truth lies.
"""
from __future__ import annotations

import argparse
import math
from typing import Sequence

from ..config_files import read_json
from ..errors import InputError, one_line_errors
from ..labels import labels as label_table
from .metrics import case_means, dice_intervals, summarise


def mean_dice_interval(cases: list[dict], names: Sequence[str] | None = None, confidence: float = 0.95,
                       n_resamples: int = 10_000, seed: int = 0) -> tuple[float, float, float]:
    """(mean Dice as :func:`~.metrics.summarise` gives it, low, high): :func:`~.metrics.dice_intervals`'
    interval of the mean over organs (NaN under two cases)."""
    names = list(names) if names is not None else [lab.name for lab in label_table()]
    if not cases:
        raise ValueError("no cases to average")
    low, high = dice_intervals(cases, names, confidence, n_resamples, seed)["mean"]
    return summarise(cases, names)["mean"]["dice"], low, high


def interval_table(rows: list[dict], run: str, settings: Sequence[str] | None = None,
                   confidence: float = 0.95) -> str:
    """Markdown: per setting of ``run`` its cases, mean Dice, bootstrap interval and the range of the
    single cases' means (rows as ``anatomy_holdout`` stores them)."""
    names = [lab.name for lab in label_table()]
    mine = [r for r in rows if r.get("run") == run]
    if not mine:
        raise InputError(f"no rows of the run {run!r}")
    order = list(settings) if settings else list(dict.fromkeys(r["setting"] for r in mine))
    pct = f"{100 * confidence:g} %"
    lines = [f"| setting | cases | mean Dice | {pct} interval over anatomies | single anatomies' means |",
             "|---|---|---|---|---|"]
    for st in order:
        cases = [r for r in mine if r["setting"] == st]
        if not cases:
            continue
        mean, low, high = mean_dice_interval(cases, names, confidence)
        each = [case_means(c, names)["dice"] for c in cases]
        interval = "n/a" if math.isnan(low) else f"{low:.3f}–{high:.3f}"   # NaN: a single case
        lines.append(f"| {st} | {len(cases)} | {mean:.3f} | {interval} | {min(each):.3f}–{max(each):.3f} |")
    return "\n".join(lines) + "\n"


@one_line_errors
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", required=True, help="a JSON file anatomy_holdout wrote (its 'rows')")
    ap.add_argument("--run", required=True, help="the run's name, as in the file")
    ap.add_argument("--settings", nargs="*", default=None, help="settings in this order (default: the file's)")
    ap.add_argument("--confidence", type=float, default=0.95)
    a = ap.parse_args(argv)
    if not 0.5 <= a.confidence < 1.0:
        raise InputError(f"--confidence must lie in [0.5, 1), not {a.confidence}")
    data = read_json(a.rows, "held-out rows")
    rows = data.get("rows") if isinstance(data, dict) else data
    if not isinstance(rows, list):
        raise InputError(f"{a.rows}: expected anatomy_holdout's JSON (a 'rows' list)")
    print(interval_table(rows, a.run, a.settings, a.confidence), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
