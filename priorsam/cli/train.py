"""`priorsam train`: build the feature cache if needed, then train the heads from it."""
from __future__ import annotations

import dataclasses
import json
import typing

from ..engine.option_values import hint_types, read_value
from ..errors import InputError
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
        overrides: any TrainConfig field, e.g. --steps 2000 --lr 5e-4.
    """
    fields = read_config(config) if config else {}
    fields.update(training_settings(overrides))
    settable = {f.name for f in dataclasses.fields(TrainConfig)} - {"cache", "out_dir"}
    unknown = sorted(set(fields) - settable)
    if unknown:
        raise InputError(f"unknown training setting(s) {', '.join(unknown)}; the settings are: {', '.join(sorted(settable))}")
    if build_views:
        from ..training.build_cache import main as build

        build(["--cache", cache, "--views", str(build_views)])
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


def read_config(path: str) -> dict:
    """The JSON object of TrainConfig fields in ``path``; one-line errors for a missing or malformed file."""
    try:
        with open(path) as fh:
            fields = json.load(fh)
    except OSError as exc:
        raise InputError(f"training config {path}: {exc.strerror or exc}") from exc
    except json.JSONDecodeError as exc:
        raise InputError(f"training config {path} is not valid JSON: {exc}") from exc
    if not isinstance(fields, dict):
        raise InputError(f"training config {path} must hold a JSON object of settings")
    return fields
