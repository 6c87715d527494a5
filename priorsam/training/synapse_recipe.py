"""The Synapse protocol in one command: convert, cache, train, evaluate on the 12 test cases.

    python -m priorsam.training.synapse_recipe --synapse_root SYNAPSE --work WORK [--views 8] [--steps 20000]

SYNAPSE is TransUNet's preprocessed Synapse folder (train_npz/, test_vol_h5/, lists/lists_Synapse/).
Steps: :func:`priorsam.data.synapse.prepare` → feature cache of every training case (clean + N
augmented views) → :func:`priorsam.training.trainer.train` with the recipe defaults → prompt-free inference
on the test cases → Dice and HD95 (mm and voxels)
per organ and case, Synapse averaging, ``WORK/eval/report.md``. Encoding, training and inference run on
``--device`` (auto: a CUDA GPU when one is usable, else the CPU).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..data.synapse import prepare
from ..engine.device import resolve_device
from ..engine.segment import Segmenter
from ..errors import one_line_errors
from ..evaluation.metrics import evaluate_case, write_report
from ..io import read_label_map, read_volume
from .build_cache import ENCODER_ID, cache_encoder, view_specs
from .cache import FeatureCache, build_cache
from .trainer import TrainConfig, train
from .views import Case


def run(synapse_root: str, work: str, views: int = 8, steps: int | None = None, device: str = "auto",
        pixel_mm: float = 0.76, slice_mm: float = 3.0, log=print) -> Path:
    work_dir = Path(work)
    datalist = prepare(synapse_root, work_dir / "nifti", pixel_mm, slice_mm)
    cases = [Case(c["case_id"], c["image"], c["label"]) for c in datalist["training"]]
    dev = str(resolve_device(device))   # one device for encoding, training and the test inference
    build_cache(cases, view_specs(views, 1.5, 0), FeatureCache(work_dir / "cache"), cache_encoder("auto", dev),
                ENCODER_ID, log=log)
    cfg = TrainConfig(cache=str(work_dir / "cache"), out_dir=str(work_dir / "run"), device=dev)
    if steps is not None:
        cfg.steps = steps
    weights = train(cfg, log=log)
    seg = Segmenter(str(weights), dev)
    results = []
    for c in datalist["validation"]:
        vol = read_volume(c["image"], force=True)  # clipped to [−125, 275] HU by TransUNet: no air
        pred = seg.segment(vol, show_bar=False).labels
        gt = read_label_map(c["label"]).array.astype("uint8")
        results.append(evaluate_case(pred, gt, vol.spacing, c["case_id"]))
        log(f"[synapse] evaluated {c['case_id']}")
    write_report(results, work_dir / "eval", title="PriorSAM on Synapse (TransUNet split)",
                 note=f"Spacing assumed: {pixel_mm} mm in-plane, {slice_mm} mm slices (the preprocessed files drop it).")
    (work_dir / "eval" / "datalist.json").write_text(json.dumps(datalist, indent=1))
    return work_dir / "eval" / "report.md"


@one_line_errors
def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--synapse_root", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--views", type=int, default=8)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--pixel_mm", type=float, default=0.76)
    ap.add_argument("--slice_mm", type=float, default=3.0)
    a = ap.parse_args(argv)
    print(run(a.synapse_root, a.work, a.views, a.steps, a.device, a.pixel_mm, a.slice_mm))


if __name__ == "__main__":
    raise SystemExit(main())
