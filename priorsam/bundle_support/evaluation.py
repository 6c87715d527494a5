"""Evaluation handler and label remapping for the bundle's ``evaluate.json``."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Hashable, Mapping

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import MapTransform

from ..errors import InputError
from ..evaluation.metrics import evaluate_case, write_report
from ..labels import mapping, organ_ids, remap
from .io_transforms import to_numpy
from .paths import case_name


class RemapLabelsd(MapTransform):
    """Map a dataset's raw label ids to ours (a mapping named in ``labels.json``, e.g. ``synapse_raw``,
    ``totalsegmentator``); ``label_map=None`` keeps ids as they are (already our convention)."""

    def __init__(self, keys: str = "label", label_map: str | None = None, allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.table = mapping(label_map) if label_map else None

    def __call__(self, data: Mapping[Hashable, Any]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            lab = d[key]
            arr = np.rint(to_numpy(lab)).astype(np.int64)
            if self.table is not None:
                arr = remap(arr, self.table)
            elif arr.min() < 0 or arr.max() > max(organ_ids()):
                raise ValueError(f"label ids {arr.min()}..{arr.max()} are not ours (0..{max(organ_ids())}); "
                                 f"set label_map")
            new = torch.as_tensor(arr.astype(np.uint8))
            if isinstance(lab, MetaTensor):  # keep the affine and the source geometry
                new = MetaTensor(new, meta=dict(lab.meta), applied_operations=list(lab.applied_operations))
            d[key] = new
        return d


def _plain_affine(t) -> np.ndarray:
    return to_numpy(t.affine if hasattr(t, "affine") else t).astype(np.float64).reshape(4, 4)


def _spacing(affine) -> np.ndarray:
    a = _plain_affine(affine)
    return np.sqrt((a[:3, :3] ** 2).sum(axis=0))


class CaseMetricsHandler:
    """Ignite handler: per case Dice and HD95 (mm, voxels) of ``pred`` against ``label`` (same grid),
    then a markdown + CSV report in ``output_dir`` when the run completes."""

    def __init__(self, output_dir: str, pred_key: str = "pred", label_key: str = "label",
                 title: str = "PriorSAM evaluation", note: str = ""):
        self.output_dir, self.pred_key, self.label_key = Path(output_dir), pred_key, label_key
        self.title, self.note = title, note
        from ..io import check_writable

        check_writable(self.output_dir / "report.md", suffixes=None)   # when the config is built, not after the run
        self.cases: list[dict] = []
        self.summary: dict | None = None

    def attach(self, engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.STARTED, lambda e: self.cases.clear())
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.COMPLETED, self._report)

    def _collect(self, engine) -> None:
        items = engine.state.output if isinstance(engine.state.output, list) else [engine.state.output]
        for item in items:
            pred, label = item[self.pred_key], item[self.label_key]
            p = to_numpy(pred)[0].astype(np.uint8)
            g = to_numpy(label)[0].astype(np.uint8)
            if p.shape != g.shape or not np.allclose(_plain_affine(pred), _plain_affine(label), atol=1e-3):
                raise InputError(f"{label.meta.get('filename_or_obj', 'label')}: the reference label map is not on "
                                 f"the image's grid ({g.shape} vs {p.shape})")
            name = case_name(str(pred.meta.get("filename_or_obj", f"case{len(self.cases)}")))
            result = evaluate_case(p, g, _spacing(pred.affine), case=name)
            self.cases.append(result)
            dice = [m["dice"] for m in result["organs"].values() if not np.isnan(m["dice"])]
            engine.logger.info(f"{name}: mean Dice {np.mean(dice) if dice else float('nan'):.3f} over {len(dice)} organs")

    def _report(self, engine) -> None:
        report = write_report(self.cases, self.output_dir, self.title, self.note)
        self.summary = report["summary"]
        engine.logger.info(f"evaluation report: {report['markdown']} (mean Dice {self.summary['mean']['dice']:.3f})")
