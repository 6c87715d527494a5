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


@lru_cache(maxsize=2)
def load_priorsam(path: str | None = None, device: str = "cpu", localiser_runtime: str = "torch"):
    """The trained model (heads, localiser if any, run by ``localiser_runtime``) in eval mode on ``device``,
    cached per path, device and runtime. The checkpoint format and the one model constructor live in
    :mod:`priorsam.models.spec`."""
    from ..models.spec import load_model

    return load_model(Path(path) if path else default_weights_path(), device, localiser_runtime=localiser_runtime)
