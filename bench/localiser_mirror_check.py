"""Does the localiser tell a left–right mirrored image from a correctly oriented one? Per volume, as given and
flipped left–right, the engine's localiser step (:meth:`Segmenter.locate`, with ``mirror_check``) records how
surely the localiser reads the volume and its flipped copy (``engine.localise.organ_confidence``), the
difference the warning is decided on, and the kept liver and spleen volumes (reported only).

    python bench/localiser_mirror_check.py --bank BANK --cases btcv_0005 ... --settings native cta_crop ... \\
        [--options '{"mirror_margin": 0.05}'] --out OUT

Each volume is rendered as the held-out tables render it (``priorsam.evaluation.anatomy_holdout``); the case
``sample_ct`` is the sample CT itself (the one real whole-abdomen CT here; setting "real"). Writes ``OUT.json`` (per volume and orientation) and
``OUT.md`` (per setting: the largest difference among the volumes as given, the smallest among the flipped ones,
and how many of each the engine's margin calls mirrored). Plan and rule:
bench/results/localiser_mirror_check_plan.md.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import bank_check_main  # noqa: E402

LIVER, SPLEEN = 5, 1


def flipped(vol):
    """The same volume with its array mirrored left–right (canonical RAS x) and its header unchanged: what a
    header that swaps left and right makes of an abdomen."""
    from priorsam.io import Volume

    return Volume(np.ascontiguousarray(vol.array[::-1]), vol.affine, vol.source)


def _volumes(bank: str, cases: list[str], settings: list[str]):
    from priorsam.evaluation.anatomy_holdout import rendered

    if "sample_ct" in cases:
        from priorsam.data.samples import sample_ct
        from priorsam.io import read_volume

        yield "sample_ct", "real", read_volume(sample_ct().image)
    for cid, setting, _, _, vol in rendered(bank, [c for c in cases if c != "sample_ct"], settings):
        yield cid, setting, vol


def check(bank: str, cases: list[str], settings: list[str], options: dict, log=print) -> list[dict]:
    from priorsam.engine.segment import SegmentOptions, Segmenter

    seg = Segmenter(None, "cpu", SegmentOptions(**{"mirror_check": True, **options}))
    rows = []
    for cid, setting, vol in _volumes(bank, cases, settings):
        for orientation, v in (("as given", vol), ("flipped", flipped(vol))):
            t0 = time.time()
            loc, tight, _ = seg.locate(v)
            row = {"case": cid, "setting": setting, "orientation": orientation, "slices": int(v.shape[2]),
                   "tight": bool(tight), "usable": bool(loc.usable), "reason": loc.reason,
                   "confidence": loc.confidence, "flipped_confidence": loc.flipped_confidence,
                   "difference": None if loc.flipped_confidence is None else loc.flipped_confidence - loc.confidence,
                   "warned": any("mirrored" in w for w in loc.warnings),
                   "liver_ml": round(loc.volume_ml.get(LIVER, 0.0), 1), "spleen_ml": round(loc.volume_ml.get(SPLEEN, 0.0), 1),
                   "seconds": round(time.time() - t0, 1)}
            rows.append(row)
            log(f"[mirror] {cid} {setting} {orientation}: "
                + (f"{row['confidence']:.4f} -> flipped {row['flipped_confidence']:.4f}" if loc.usable else loc.reason))
    return rows


def table(rows: list[dict], settings: list[str]) -> str:
    out = ["| setting | volumes | localiser used (given / flipped) | largest difference, as given | smallest difference, "
           "flipped | called mirrored, as given | called mirrored, flipped | guard fired, flipped |",
           "|---|---|---|---|---|---|---|---|"]
    for s in (["real"] if any(r["setting"] == "real" for r in rows) else []) + list(settings):
        rs = {o: [r for r in rows if r["setting"] == s and r["orientation"] == o] for o in ("as given", "flipped")}
        d = {o: [r["difference"] for r in v if r["difference"] is not None] for o, v in rs.items()}
        out.append(f"| {s} | {len(rs['as given'])} | {sum(r['usable'] for r in rs['as given'])} / "
                   f"{sum(r['usable'] for r in rs['flipped'])} | "
                   f"{max(d['as given']) if d['as given'] else float('nan'):+.4f} | "
                   f"{min(d['flipped']) if d['flipped'] else float('nan'):+.4f} | "
                   f"{sum(r['warned'] for r in rs['as given'])} | {sum(r['warned'] for r in rs['flipped'])} | "
                   f"{sum('contradict anatomy' in r['reason'] for r in rs['flipped'])} |")
    return "\n".join(out) + "\n"


def main(argv=None) -> int:
    return bank_check_main(__doc__, check, table, argv)


if __name__ == "__main__":
    raise SystemExit(main())
