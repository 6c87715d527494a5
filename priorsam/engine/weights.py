"""Where the shipped weights are, and a cached loader for them (format: :mod:`priorsam.models.spec`)."""
from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path


def default_weights_path() -> Path:
    """``$PRIORSAM_WEIGHTS`` or the bundle's ``models/model.pt`` (installed copy, else the checkout's)."""
    env = os.environ.get("PRIORSAM_WEIGHTS")
    if env:
        return Path(env)
    from ..resources import data_dir

    return data_dir("bundle") / "models" / "model.pt"


def load_priorsam(path: str | None = None, device: str = "cpu", localiser_runtime: str = "torch"):
    """The trained model (heads, localiser if any, run by ``localiser_runtime``) in eval mode on ``device``,
    cached per checkpoint file, device and runtime. The checkpoint format and the one model constructor live
    in :mod:`priorsam.models.spec`."""
    import torch

    # One cache key per model actually loaded: the bundle passes no runtime where the engine passes "torch",
    # and callers spell the default weights as None or as their path; each spelling used to load the same
    # checkpoint once more (and an env change of PRIORSAM_WEIGHTS was ignored behind a cached None).
    where = Path(path) if path else default_weights_path()
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None and torch.cuda.is_available():
        dev = torch.device("cuda", torch.cuda.current_device())   # "cuda" is the current GPU: one key with "cuda:N"
    return _load_cached(str(where.resolve()), str(dev), localiser_runtime)


@lru_cache(maxsize=2)
def _load_cached(path: str, device: str, localiser_runtime: str):
    from ..models.spec import load_model

    return load_model(Path(path), device, localiser_runtime=localiser_runtime)


load_priorsam.cache_clear = _load_cached.cache_clear  # type: ignore[attr-defined]
