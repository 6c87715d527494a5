"""The bundle's ``network_def``: PriorSAM with a single-tensor output, for MONAI's
``verify_net_in_out`` and ``ckpt_export`` (both expect ``net(image) -> tensor``).

Same parameter names as :class:`~priorsam.models.priorsam.PriorSAM`, so a bundle checkpoint
(``trainable_state_dict`` + ``meta.config``) loads into it by name; the frozen pretrained
encoder comes from its package. Volume inference does not use this class: it runs the
full model (binary path, presence gating, 3D clean-up) through the library's engine.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..models.priorsam import PriorSAM


class PriorSAMSemanticNet(PriorSAM):
    """(B, 3, 256, 256) slices in [0, 1] → (B, C, 256, 256) semantic logits of the last refinement round.

    C = 9 (background + 8 organs, Synapse order) with the v1 priors.
    """

    def forward(self, images: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return super().forward(images=images)["semantic_logits"]


def build_semantic_network(ckpt_path: str | None = None, encoder: str = "lite", pretrained: bool = True,
                           **model_kwargs: Any) -> PriorSAMSemanticNet:
    """A :class:`PriorSAMSemanticNet` shaped like the checkpoint at ``ckpt_path``.

    The architecture (head sizes, refinement rounds, prior version) is read from the
    checkpoint's ``meta.config`` when the file exists, so the trained weights fit; without
    a checkpoint the constructor defaults apply. ``model_kwargs`` override either.
    """
    from ..engine.weights import read_checkpoint
    from ..priors.bank import load_prior_bank

    config: dict = {}
    if ckpt_path and Path(ckpt_path).is_file():
        _, config = read_checkpoint(ckpt_path)
    kwargs = {**config.get("model", {}), **model_kwargs, "binary_path": False}
    bank = load_prior_bank(config.get("prior_version", "v1"))
    net = PriorSAMSemanticNet(encoder=encoder, prior_bank=bank, pretrained=pretrained, **kwargs)
    return net.eval()
