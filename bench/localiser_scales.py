"""The localiser's probabilities averaged over passes at several scales, scored alone like ``anatomy_holdout``'s
localiser rows (bench/results/localiser_scales_decision.md).

    python bench/localiser_scales.py --bank BANK --cases btcv_0001 ... --out ROWS.json
        [--candidates control=1 S3=0.9,1,1.1 S3w=0.85,1,1.15] [--settings native ... cta_crop]

Each candidate wraps the engine's localiser (OpenVINO or PyTorch, whichever the engine loaded): its prepared
input on the 4 mm grid is resized by each factor, edge-padded to a multiple of 8, run, and its probabilities
resized back; the engine's own localise step and the tables' localiser-alone scoring do the rest. A tight
field (cta_crop) runs with 4 shifted passes, as the engine runs it, each of them at every scale.
``ROWS.json`` has ``anatomy_holdout``'s format, one run per candidate.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F


class ScaledPasses:
    """A localiser seen through several magnifications → the log of its mean probabilities on the input grid.

    x: (B, channels, X, Y, Z) prepared input (each axis a multiple of 8) → (B, C, X, Y, Z)."""

    def __init__(self, localiser, scales: list[float]) -> None:
        self.inner, self.scales = localiser, [float(s) for s in scales]
        self.num_classes, self.spacing_mm = localiser.num_classes, localiser.spacing_mm
        self.windows, self.min_shape = localiser.windows, localiser.min_shape

    def prepare(self, hu: torch.Tensor) -> torch.Tensor:
        return self.inner.prepare(hu)

    def _pass(self, x: torch.Tensor, s: float) -> torch.Tensor:
        if s == 1.0:
            return self.inner(x).float().softmax(1)
        shape = [max(8, int(round(n * s))) for n in x.shape[2:]]
        xs = F.interpolate(x, size=shape, mode="trilinear", align_corners=False)
        padded = [max(m, -(-n // 8) * 8) for n, m in zip(shape, self.min_shape)]
        before = [(p - n) // 2 for p, n in zip(padded, shape)]
        pads = []
        for b, p, n in reversed(list(zip(before, padded, shape))):
            pads += [b, p - n - b]
        xs = F.pad(xs, pads, mode="replicate")
        probs = self.inner(xs).float().softmax(1)
        probs = probs[(slice(None), slice(None)) + tuple(slice(b, b + n) for b, n in zip(before, shape))]
        return F.interpolate(probs, size=list(x.shape[2:]), mode="trilinear", align_corners=False)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        mean = torch.stack([self._pass(x, s) for s in self.scales]).mean(0)
        return mean.clamp_min(1e-12).log()


def main(argv=None) -> int:
    from priorsam.evaluation.anatomy_holdout import SETTINGS

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bank", required=True)
    ap.add_argument("--weights", default="bundle/models/model.pt")
    ap.add_argument("--candidates", nargs="+", default=["control=1", "S3=0.9,1,1.1", "S3w=0.85,1,1.15"],
                    help="NAME=s1,s2,... scale factors per candidate")
    ap.add_argument("--cases", nargs="+", required=True)
    ap.add_argument("--settings", nargs="+", default=[s for s in SETTINGS if not s.startswith("slab")])
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)

    from priorsam.engine.segment import Segmenter, SegmentOptions
    from priorsam.evaluation.anatomy_holdout import _localiser_only, rendered

    base = Segmenter(a.weights, "cpu", SegmentOptions())
    shifted = Segmenter(model=base.model, device="cpu", options=SegmentOptions(localiser_shifts=4))
    network = base.model.localiser
    candidates = {name: [float(v) for v in spec.split(",")]
                  for name, spec in (c.split("=", 1) for c in a.candidates)}
    rows = []
    for cid, setting, pp, crop, vol in rendered(a.bank, a.cases, a.settings):
        gt, support = np.ascontiguousarray(pp.ours[crop]), np.ascontiguousarray(pp.supported()[crop])
        seg = shifted if setting == "cta_crop" else base
        for name, scales in candidates.items():
            base.model.localiser = network if scales == [1.0] else ScaledPasses(network, scales)
            t0 = time.time()
            row = _localiser_only(seg, vol, gt, support, cid)
            row.update(run=name, case=cid, setting=setting, seconds=round(time.time() - t0, 1))
            rows.append(row)
            mean = float(np.nanmean([v["dice"] for v in row["organs"].values()]))
            print(f"[scales] {name} {cid} {setting}: mean Dice {mean:.4f}, {row['seconds']} s", flush=True)
        Path(a.out).write_text(json.dumps({"cases": a.cases, "settings": a.settings,
                                           "runs": [{"name": n, "scales": s, "localiser_only": True}
                                                    for n, s in candidates.items()], "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
