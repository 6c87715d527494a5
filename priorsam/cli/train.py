"""`priorsam train`: build the feature cache if needed, then train the heads from it."""
from __future__ import annotations

import typing

from ..config_files import check_setting_names, read_settings
from ..engine.option_values import hint_types, read_value
from ..training.trainer import TrainConfig, train
from .flags import typed_flags


@typed_flags
def train_cli(cache: str, out_dir: str, config: str | None = None, build_views: int = 0, **overrides):
    """Train PriorSAM heads from a feature cache.

    Args:
        cache: feature-cache folder (see `python -m priorsam.training.build_cache`).
        out_dir: where model.pt (tensors-only weights), last.pt (resumable state), log.csv go.
        config: optional JSON file with TrainConfig fields.
        build_views: if > 0, first encode the clean view plus this many augmented views of the sample CT.
        overrides: any TrainConfig field, e.g. --steps 2000 --lr 5e-4 --device cuda (where the heads train and
            the --build_views cache is encoded; default auto: a CUDA GPU when one is usable, else the CPU).
    """
    fields = read_settings(config, TrainConfig, "training config", fixed=("cache", "out_dir")) if config else {}
    overrides = training_settings(overrides)
    check_setting_names(overrides, TrainConfig, "priorsam train", fixed=("cache", "out_dir"))
    fields.update(overrides)
    if build_views:
        from ..training.build_cache import build_from_args

        build_from_args(["--cache", cache, "--views", str(build_views), "--device", str(fields.get("device", "auto"))])
    path = train(TrainConfig(cache=cache, out_dir=out_dir, **fields))
    return {"weights": str(path)}


def training_settings(overrides: dict) -> dict:
    """``--steps 2000``-style overrides read as their TrainConfig field's type where it is a plain one (a
    number, a switch, text); dicts and lists pass as fire parsed them."""
    hints = typing.get_type_hints(TrainConfig)
    out = {}
    for name, value in overrides.items():
        types = hint_types(hints[name]) if name in hints else ()
        plain = types and all(t in (int, float, bool, str, type(None)) for t in types)
        out[name] = read_value(f"--{name}", value, types) if plain and value is not None else value
    return out

