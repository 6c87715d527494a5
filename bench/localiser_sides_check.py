"""Does the localiser's anatomy guard fire on pseudo-patients? Counts, per setting, the volumes where the engine's
localiser step finds its organs on the wrong sides (``engine.localise.contradicted_sides``) and so runs the
per-slice model without it.

    python bench/localiser_sides_check.py --bank BANK --cases btcv_0005 ... --settings native cta_crop ...
        [--options '{"localiser_min_z_mm": 0}'] --out OUT

Each volume is rendered as the held-out tables render it (``priorsam.evaluation.anatomy_holdout``) and
goes through :meth:`Segmenter.locate`, the engine's own localiser step (its passes, thresholds and guard).
Writes ``OUT.json`` (per volume: usable, the reason when not) and ``OUT.md`` (counts per setting).
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import bank_check_main  # noqa: E402


def check(bank: str, cases: list[str], settings: list[str], options: dict, log=print) -> list[dict]:
    from priorsam.engine.segment import SegmentOptions, Segmenter
    from priorsam.evaluation.anatomy_holdout import rendered

    seg = Segmenter(None, "cpu", SegmentOptions(**options))
    rows = []
    for cid, setting, _, _, vol in rendered(bank, cases, settings):
        t0 = time.time()
        loc, tight, _ = seg.locate(vol)
        rows.append({"case": cid, "setting": setting, "slices": int(vol.shape[2]), "tight": bool(tight),
                     "usable": bool(loc.usable), "reason": loc.reason, "seconds": round(time.time() - t0, 1)})
        log(f"[sides] {cid} {setting}: {'usable' if loc.usable else loc.reason}")
    return rows


def table(rows: list[dict], settings: list[str]) -> str:
    out = ["| setting | volumes | localiser used | guard fired (organs on the wrong sides) | too thin |",
           "|---|---|---|---|---|"]
    for s in settings:
        rs = [r for r in rows if r["setting"] == s]
        fired = [r["case"] for r in rs if "contradict anatomy" in r["reason"]]
        thin = sum("too thin" in r["reason"] for r in rs)
        out.append(f"| {s} | {len(rs)} | {sum(r['usable'] for r in rs)} | {len(fired)}"
                   f"{' (' + ', '.join(fired) + ')' if fired else ''} | {thin} |")
    return "\n".join(out) + "\n"


def main(argv=None) -> int:
    return bank_check_main(__doc__, check, table, argv)


if __name__ == "__main__":
    raise SystemExit(main())
