"""`priorsam train`: build the feature cache if needed, then train the heads from it."""
from __future__ import annotations

import json

from ..training.trainer import TrainConfig, train


def train_cli(cache: str, out_dir: str, config: str | None = None, build_views: int = 0, **overrides):
    """Train PriorSAM heads from a feature cache.

    Args:
        cache: feature-cache folder (see `python -m priorsam.training.build_cache`).
        out_dir: where model.pt (tensors-only weights), last.pt (resumable state), log.csv go.
        config: optional JSON file with TrainConfig fields.
        build_views: if > 0, first encode the clean view plus this many augmented views of the sample CT.
        overrides: any TrainConfig field, e.g. --steps 2000 --lr 5e-4.
    """
    fields = json.load(open(config)) if config else {}
    fields.update(overrides)
    if build_views:
        from ..training.build_cache import main as build

        build(["--cache", cache, "--views", str(build_views)])
    path = train(TrainConfig(cache=cache, out_dir=out_dir, **fields))
    return {"weights": str(path)}
