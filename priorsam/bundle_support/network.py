"""The bundle's ``network_def``: PriorSAM with a single-tensor output, for MONAI's
``verify_net_in_out`` and ``ckpt_export`` (both expect ``net(image) -> tensor``).

Same parameter names as :class:`~priorsam.models.priorsam.PriorSAM`, so a bundle checkpoint
(:mod:`priorsam.models.spec`) loads into it by name; the frozen pretrained
encoder comes from its package. Volume inference does not use this class: it runs the
full model (binary path, presence gating, 3D clean-up) through the library's engine.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..data.preprocess import WINDOW_LEVEL, WINDOW_WIDTH, minmax
from ..errors import InputError
from ..models.priorsam import PriorSAM


def window_tensor(hu: torch.Tensor, level: float = WINDOW_LEVEL, width: float = WINDOW_WIDTH) -> torch.Tensor:
    """Torch twin of :func:`priorsam.data.preprocess.window` (HU → [0, 255]); a test pins them equal."""
    lo = level - width / 2
    return ((hu - lo) / width).clamp(0.0, 1.0) * 255.0


class PriorSAMSemanticNet(PriorSAM):
    """(B, 1, 256, 256) axial CT slices in HU, already framed at the model's fixed in-plane spacing
    → (B, C, 256, 256) semantic logits of the last refinement round.

    The intensity step is the library's (window L40/W400, the slice thrice, per-image min-max);
    C = 9 (background + 8 organs, Synapse order) with the v1 priors.
    """

    def forward(self, images: torch.Tensor | None = None, features=None, boxes=None):  # type: ignore[override]
        """``net(hu)`` → semantic logits (MONAI's export/verify contract); ``net(features=…)`` → the full
        PriorSAM output dict, which is how the volume engine drives the bundle's ``network``."""
        if features is not None:
            return super().forward(features=features, boxes=boxes)
        if images is None or images.ndim != 4 or images.shape[1] != 1:
            raise InputError(f"expected (B,1,H,W) CT slices in HU, got {None if images is None else tuple(images.shape)}")
        x = minmax(window_tensor(images.float()).expand(-1, 3, -1, -1))
        return super().forward(images=x)["semantic_logits"]

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """A bundle checkpoint (it has ``meta.spec``) loads through :func:`priorsam.models.spec.load_state`,
        which checks the prior version/hash and the architecture and puts a fine-tuned box decoder (its file
        found beside ``net.weights_path``) into the binary path; the frozen pretrained parts are already in
        place. MONAI's ``ckpt_export`` loads strictly, so this is where that happens."""
        from ..models.spec import LEGACY_CONFIG_KEY, SPEC_KEY, load_state, spec_of, with_box_decoder_file

        spec = spec_of(state_dict)
        if spec is not None:
            # As the engine's loader does: heads and localiser checked by name, a fine-tuned box decoder (read
            # from its file beside the checkpoint, its digest checked) into the binary path.
            path = getattr(self, "weights_path", None)
            state = with_box_decoder_file({k: v for k, v in state_dict.items()
                                           if k not in (SPEC_KEY, LEGACY_CONFIG_KEY)}, spec, path)
            load_state(self, state, spec, path or "checkpoint")
            return nn.modules.module._IncompatibleKeys([], [])
        return super().load_state_dict(state_dict, strict=strict, assign=assign)


def build_semantic_network(ckpt_path: str | None = None, encoder: str = "lite", pretrained: bool = True,
                           binary_path: bool = False, **model_kwargs: Any) -> PriorSAMSemanticNet:
    """A :class:`PriorSAMSemanticNet` shaped like the checkpoint at ``ckpt_path`` (weights not loaded:
    MONAI's ``CheckpointLoader`` or ``load_state_dict`` does that).

    The architecture (head sizes, refinement rounds, prior version) is read from the
    checkpoint's spec when the file exists, so the trained weights fit; without
    a checkpoint the constructor defaults apply. ``model_kwargs`` override either.
    ``binary_path``: include LiteMedSAM's prompt encoder and mask decoder (the engine's
    coarse-to-fine step; inference.json asks for it, export/verify do not need it). The
    checkpoint's config (training spacing, context, framing) is kept on ``net.config`` for the engine.
    """
    from ..models.spec import ModelSpec, read_checkpoint
    from ..priors.bank import load_prior_bank

    spec = ModelSpec()
    if ckpt_path and Path(ckpt_path).is_file():
        _, spec = read_checkpoint(ckpt_path)
    config = {"prior_version": spec.prior_version, "model": dict(spec.heads), "spacing_mm": spec.spacing_mm,
              "context": spec.context, "framing": spec.framing}
    kwargs = {**spec.heads, **model_kwargs, "binary_path": bool(binary_path)}
    bank = load_prior_bank(spec.prior_version)
    net = PriorSAMSemanticNet(encoder=encoder, prior_bank=bank, pretrained=pretrained, **kwargs)
    if spec.localiser is not None:
        from ..models.spec import build_localiser

        net.localiser = build_localiser(spec.localiser)  # loaded with the heads by load_state_dict
    net.spec = spec
    net.config = config
    net.weights_path = str(ckpt_path) if ckpt_path else None
    return net.eval()
