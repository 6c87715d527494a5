"""Multi-level fusion: upsample decoder features 64² -> 128² -> 256² with encoder skips and the guide.

Channel widths shrink as resolution grows (default 128 -> 32 -> 16) and the 3×3 mixing is
depthwise, because the heads train on two CPU cores from cached features.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from segment_anything.modeling.common import LayerNorm2d
from torch import nn


class _ResidualConv(nn.Module):
    """x + pointwise(GELU(depthwise3×3(x))): local mixing at a cost of ~(9 + ch) MAC per pixel and channel."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.dw = nn.Conv2d(ch, ch, kernel_size=3, padding=1, groups=ch)
        self.pw = nn.Conv2d(ch, ch, kernel_size=1)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.pw(self.act(self.dw(x)))


class _Skip(nn.Module):
    """Project a skip feature at its own resolution (cheap), then resize to the level's grid if needed."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_ch, out_ch, kernel_size=1)

    def forward(self, skip: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        y = self.proj(skip)
        if tuple(y.shape[-2:]) != size:
            y = F.interpolate(y, size=size, mode="bilinear", align_corners=False)
        return y


class MultiLevelFusion(nn.Module):
    """Pyramid upsampling path with encoder skips and the semantic guide injected at each level.

    Args:
        in_dim: channels of the decoder's image features at 64² (and of the low-res output).
        skip_channels: channels of the two encoder skips (lite: 128 @128², 160 @64²;
            vit_b: 768 each at img/16 — resized bilinearly to the level's grid).
        num_classes: C, channels of the guide matrix.
        mid_dim: channels at 128².
        out_dim: channels at 256² (the full-resolution mask features).

    Forward:
        x (B, in_dim, 64, 64), skips ((B, C0, H0, W0), (B, C1, H1, W1)), guide (B, C, 64, 64) ->
        low (B, in_dim, 64, 64), full (B, out_dim, 256, 256).
        (Generally low at the input grid h×w and full at 4h×4w.)
    """

    def __init__(self, in_dim: int = 128, skip_channels: Sequence[int] = (128, 160), num_classes: int = 9,
                 mid_dim: int = 32, out_dim: int = 16) -> None:
        super().__init__()
        if len(skip_channels) != 2:
            raise ValueError(f"MultiLevelFusion needs two skip features, got channels {tuple(skip_channels)}")
        self.out_dim = out_dim
        self.skip64 = _Skip(skip_channels[1], in_dim)
        self.guide64 = nn.Conv2d(num_classes, in_dim, kernel_size=1)
        self.mix64 = _ResidualConv(in_dim)

        self.up128 = nn.ConvTranspose2d(in_dim, mid_dim, kernel_size=2, stride=2)
        self.skip128 = _Skip(skip_channels[0], mid_dim)
        self.guide128 = nn.Conv2d(num_classes, mid_dim, kernel_size=1)
        self.norm128 = LayerNorm2d(mid_dim)
        self.mix128 = _ResidualConv(mid_dim)

        self.up256 = nn.ConvTranspose2d(mid_dim, out_dim, kernel_size=2, stride=2)
        self.guide256 = nn.Conv2d(num_classes, out_dim, kernel_size=1)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor, skips: Sequence[torch.Tensor],
                guide: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h, w = x.shape[-2:]
        low = self.mix64(x + self.skip64(skips[1], (h, w)) + self.guide64(guide))

        # A 1×1 projection commutes with bilinear upsampling, so the guide is projected on the
        # 64² grid and then upsampled: same result, a fraction of the cost.
        size = (2 * h, 2 * w)
        g = F.interpolate(self.guide128(guide), size=size, mode="bilinear", align_corners=False)
        mid = self.up128(self.act(low)) + self.skip128(skips[0], size) + g
        mid = self.mix128(self.act(self.norm128(mid)))

        size = (4 * h, 4 * w)
        g = F.interpolate(self.guide256(guide), size=size, mode="bilinear", align_corners=False)
        # At 256² every elementwise op touches B·out_dim·65536 values, so this level is one
        # transposed conv and one ReLU (cheaper than GELU); the per-class kernels do the rest.
        full = F.relu(self.up256(mid) + g)
        return low, full
