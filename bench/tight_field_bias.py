"""On a tight field of view: the localiser's masks with the background's score weighted by alpha before the
highest score is taken (bench/results/tight_field_bias_decision.md).

    python bench/tight_field_bias.py --bank BANK --cases btcv_0001 ... --out ROWS.json [--alphas 1 1.5 2]

Per volume the engine segments it as usual (a tight field: the localiser's masks), and the localiser's result
is taken again the way the engine takes it (``Segmenter.locate``: four shifted passes; a second pass, since
the engine keeps only the labels) and relabelled for each alpha; alpha 1 must equal the engine's answer
(checked). Rows have ``anatomy_holdout``'s format, one run per alpha ("alpha=1.5").
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import crop_parser  # noqa: E402


def weighted_labels(scores: np.ndarray, shape, alpha: float) -> np.ndarray:
    """The localiser's labels on a volume grid of ``shape`` from its interpolated scores (C, X', Y', Z'),
    the background's score multiplied by ``alpha`` first."""
    from priorsam.data.framed_volume import labels_from_fine_scores

    weighted = scores.copy()
    weighted[0] *= alpha
    return labels_from_fine_scores(weighted, shape)


def main(argv=None) -> int:
    ap = crop_parser(__doc__)
    ap.add_argument("--alphas", nargs="+", type=float, default=[1.0, 1.5, 2.0])
    a = ap.parse_args(argv)

    from priorsam.engine.segment import SegmentOptions, Segmenter
    from priorsam.evaluation.anatomy_holdout import _scores, rendered

    seg = Segmenter(a.weights, "cpu", SegmentOptions())
    rows = []
    for cid, setting, pp, crop, vol in rendered(a.bank, a.cases, a.settings):
        gt, support = np.ascontiguousarray(pp.ours[crop]), np.ascontiguousarray(pp.supported()[crop])
        t0 = time.time()
        engine = seg.segment(vol, show_bar=False)
        if engine.localiser.get("answer") is None:
            raise SystemExit(f"{cid} {setting}: the engine did not answer with the localiser (not a tight field)")
        loc, _, _ = seg.locate(vol)
        scores = loc.scores_on(vol.shape, seg.options.localiser_interpolation)
        seconds = time.time() - t0
        for alpha in a.alphas:
            labels = seg.model.to_label_ids(weighted_labels(scores, vol.shape, alpha))
            if alpha == 1.0 and not np.array_equal(labels, engine.labels):
                raise SystemExit(f"{cid} {setting}: alpha 1 differs from the engine's answer")
            row = _scores(labels, gt, support, pp.spacing, cid)
            row.update(run=f"alpha={alpha:g}", case=cid, setting=setting, seconds=round(seconds, 1))
            rows.append(row)
            mean = float(np.nanmean([v["dice"] for v in row["organs"].values()]))
            print(f"[bias] alpha={alpha:g} {cid} {setting}: mean Dice {mean:.4f}", flush=True)
        Path(a.out).write_text(json.dumps({"cases": a.cases, "settings": a.settings,
                                           "runs": [{"name": f"alpha={x:g}"} for x in a.alphas], "rows": rows},
                                          separators=(",", ":")))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
