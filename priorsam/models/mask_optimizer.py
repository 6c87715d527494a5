"""Iterative mask optimizer: T rounds of M <- M + ΔM, ΔM predicted from [masks ‖ features].

The refiner is one small conv net shared by all classes and all rounds. It works on the
64² grid: per-class refinement at 256² costs B·C·hidden·256² activations per layer
(≈ 38 M for a batch of 8, 9 classes, 8 channels) and was ~10× over the CPU budget. Each
round's ΔM is added to the 64² logits and, upsampled bilinearly, to the 256² logits; the
256² logits keep their fine boundaries from the full-resolution kernels.

A conv on the concatenation [m_c ‖ F] is the sum of a conv on F and a conv on m_c, so the
feature part is computed once per image and only the 2-channel mask part runs per class.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class IterativeMaskOptimizer(nn.Module):
    """Args:
        feat_dim: channels of the 64² features.
        hidden: refiner hidden channels.
        rounds: T; 0 returns only the origin masks.

    Forward:
        low (B, C, h, w) origin logits on the feature grid, full (B, C, H, W) origin logits at
        full resolution, features (B, feat_dim, h, w) ->
        (low_rounds, full_rounds): two lists of T + 1 logit maps — the origin, then each round.
    """

    def __init__(self, feat_dim: int = 128, hidden: int = 16, rounds: int = 2) -> None:
        super().__init__()
        if rounds < 0:
            raise ValueError(f"refinement rounds must be >= 0, got {rounds}")
        self.rounds = rounds
        self.feat_conv = nn.Conv2d(feat_dim, hidden, kernel_size=3, padding=1)
        # 1×1 on the per-class mask (a 2-channel 3×3 conv has a very slow CPU backward);
        # spatial context comes from the 3×3 convs on the features and the hidden state.
        self.mask_conv = nn.Conv2d(2, hidden, kernel_size=1, bias=False)
        self.hidden_conv = nn.Conv2d(hidden, hidden, kernel_size=3, padding=1)
        self.out = nn.Conv2d(hidden, 1, kernel_size=1)
        self.act = nn.GELU()
        # Start close to the identity so the origin masks are not disturbed early in training.
        nn.init.normal_(self.out.weight, std=1e-3)
        nn.init.zeros_(self.out.bias)

    def forward(self, low: torch.Tensor, full: torch.Tensor,
                features: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        lows, fulls = [low], [full]
        if self.rounds == 0:
            return lows, fulls
        b, c, h, w = low.shape
        f = self.feat_conv(features).unsqueeze(1)  # (B, 1, hidden, h, w), shared across classes
        for _ in range(self.rounds):
            m = lows[-1]
            # Each class sees its softmax probability (what the other classes claim) and its logit.
            inp = torch.stack([m.softmax(dim=1), m], dim=2)  # (B, C, 2, h, w)
            mask_part = torch.einsum("bckhw,jk->bcjhw", inp, self.mask_conv.weight[:, :, 0, 0])
            hid = self.act(f + mask_part).reshape(b * c, -1, h, w)
            hid = self.act(self.hidden_conv(hid))
            delta = self.out(hid).reshape(b, c, h, w)
            lows.append(m + delta)
            fulls.append(fulls[-1] + F.interpolate(delta, size=full.shape[-2:], mode="bilinear", align_corners=False))
        return lows, fulls
