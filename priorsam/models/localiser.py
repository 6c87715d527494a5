"""OrganLocaliser: a low-resolution 3D network that says where each organ is.

A MONAI SegResNet over the whole CT resampled to a coarse isotropic grid (default 4 mm, where
the sample CT's 3 mm slices are no longer a domain gap). It gives the per-slice PriorSAM the
3D anatomical context a 2D head lacks: per-organ presence, a probability map and 3D boxes.

Input: (B, 2, X, Y, Z) — HU through two windows, soft tissue (L40/W400) and wide (L0/W2000, so
gas, fat, contrast and bone stay apart), each to [0, 1]; canonical RAS axes. Output:
(B, C, X, Y, Z) logits, C = classes incl. background. X, Y, Z must be multiples of 8.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


def window_channels(hu: torch.Tensor, windows: Sequence[Sequence[float]]) -> torch.Tensor:
    """(B, X, Y, Z) HU → (B, len(windows), X, Y, Z): each (level, width) window mapped to [0, 1]."""
    return torch.stack([((hu - (lv - wd / 2)) / wd).clamp(0, 1) for lv, wd in windows], 1)


class OrganLocaliser(nn.Module):
    """Args:
        num_classes: output classes incl. background (9 for our organs).
        spacing_mm: the isotropic grid it was trained on.
        init_filters: SegResNet width.
        windows: (level, width) pairs in HU, one input channel each.
        min_shape: smallest input (voxels per axis); smaller volumes are edge-padded to it.
    """

    def __init__(self, num_classes: int = 9, spacing_mm: float = 4.0, init_filters: int = 16,
                 windows: Sequence[Sequence[float]] = ((40.0, 400.0), (0.0, 2000.0)),
                 min_shape: Sequence[int] = (48, 48, 48)) -> None:
        # Imported here, not at the top: the OpenVINO runtime of a trained localiser
        # (openvino_localiser) uses this module's window_channels without paying MONAI's import.
        from monai.networks.nets import SegResNet

        super().__init__()
        self.num_classes = int(num_classes)
        self.spacing_mm = float(spacing_mm)
        self.windows = [tuple(float(v) for v in w) for w in windows]
        self.min_shape = tuple(int(v) for v in min_shape)
        self.net = SegResNet(spatial_dims=3, in_channels=len(self.windows), out_channels=self.num_classes,
                             init_filters=int(init_filters))

    def prepare(self, hu: torch.Tensor) -> torch.Tensor:
        """(B, X, Y, Z) HU → (B, len(windows), X, Y, Z) network input."""
        return window_channels(hu, self.windows)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, len(windows), X, Y, Z) prepared input → (B, C, X, Y, Z) logits."""
        return self.net(x)
