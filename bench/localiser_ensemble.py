"""Several localisers averaged, scored alone on pseudo-patients like ``anatomy_holdout``'s localiser rows.

    python bench/localiser_ensemble.py --bank BANK --weights A.pt B.pt [...] --name NAME --out ROWS.json
        --cases btcv_0001 ... [--settings native arterial ...]

The localisers of the given checkpoints run as one network whose class probabilities are the mean of
theirs (it returns the log of that mean, so the engine's softmax gives the mean back), through the
engine's own localise step and the held-out tables' localiser-alone scoring (4 mm grid, 1 pass).
``ROWS.json`` has ``anatomy_holdout``'s format (``rows`` with ``run``, ``case``, ``setting``, ``organs``), so
its rows compare with stored ones such as docs/ablation_weights/localiser_ft_dev_seed2.json.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn


class MeanProbabilities(nn.Module):
    """Localisers sharing a grid and input windows → (B, C, X, Y, Z) log of their mean probabilities."""

    def __init__(self, members: list[nn.Module]) -> None:
        super().__init__()
        first = members[0]
        for m in members[1:]:
            if (m.num_classes, m.spacing_mm, list(m.windows)) != (first.num_classes, first.spacing_mm,
                                                                   list(first.windows)):
                raise SystemExit("localiser_ensemble.py: the localisers differ in classes, grid or windows")
        self.members = nn.ModuleList(members)
        self.num_classes, self.spacing_mm = first.num_classes, first.spacing_mm
        self.windows, self.min_shape = first.windows, first.min_shape

    def prepare(self, hu: torch.Tensor) -> torch.Tensor:
        return self.members[0].prepare(hu)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = torch.stack([m(x).float().softmax(1) for m in self.members]).mean(0)
        return mean.clamp_min(1e-12).log()


def main(argv=None) -> int:
    from priorsam.evaluation.anatomy_holdout import SETTINGS

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bank", required=True)
    ap.add_argument("--weights", nargs="+", required=True, help="checkpoints whose localisers are averaged")
    ap.add_argument("--name", required=True, help="the rows' run name")
    ap.add_argument("--cases", nargs="+", required=True)
    ap.add_argument("--settings", nargs="+", default=[s for s in SETTINGS if not s.startswith("slab")])
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)

    from priorsam.data.pseudo_patients import list_bank, load
    from priorsam.data.samples import totalsegmentator_class_names
    from priorsam.engine.segment import Segmenter, SegmentOptions
    from priorsam.engine.weights import load_priorsam
    from priorsam.evaluation.anatomy_holdout import _localiser_only, as_volume, field_of_view, render

    seg = Segmenter(a.weights[0], "cpu", SegmentOptions())
    seg.model.localiser = MeanProbabilities([load_priorsam(w, "cpu").localiser.eval() for w in a.weights]).eval()
    names = totalsegmentator_class_names()
    recs = {r["case_id"]: r for r in list_bank(a.bank, kept_only=False)}
    rows = []
    for cid in a.cases:
        pp = load(recs[cid]["folder"])
        for setting in a.settings:
            crop = field_of_view(pp, setting)
            vol = as_volume(render(pp, setting, names), pp, crop)
            gt, support = np.ascontiguousarray(pp.ours[crop]), np.ascontiguousarray(pp.supported()[crop])
            t0 = time.time()
            row = _localiser_only(seg, vol, gt, support, cid)
            row.update(run=a.name, case=cid, setting=setting, seconds=round(time.time() - t0, 1))
            rows.append(row)
            mean = float(np.nanmean([v["dice"] for v in row["organs"].values()]))
            print(f"[ensemble] {cid} {setting}: mean Dice {mean:.4f}, {row['seconds']} s", flush=True)
    Path(a.out).write_text(json.dumps({"cases": a.cases, "settings": a.settings,
                                       "runs": [{"name": a.name, "weights": a.weights, "localiser_only": True}],
                                       "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
