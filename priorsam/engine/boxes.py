"""User boxes for the box-prompted path: parsing and conversion to display coordinates (numpy only).

Kept free of torch so the command line can reject a bad box or image before loading any model.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import InputError
from ..io import Volume


@dataclass(frozen=True)
class DisplayBox:
    """A 3D box in display coordinates: slices z0..z1, rows r0..r1, columns c0..c1 (inclusive)."""

    z0: int
    z1: int
    r0: float
    r1: float
    c0: float
    c1: float

    def xyxy(self) -> np.ndarray:
        return np.array([self.c0, self.r0, self.c1, self.r1], dtype=np.float32)


def parse_box(text) -> np.ndarray:
    """``"x0,y0,z0,x1,y1,z1"`` (or a 6-sequence) → float array of 6."""
    vals = text if isinstance(text, (list, tuple, np.ndarray)) else str(text).replace(" ", "").split(",")
    try:
        box = np.array([float(v) for v in vals], dtype=np.float64)
    except ValueError as exc:
        raise InputError(f"box {text!r}: expected six numbers x0,y0,z0,x1,y1,z1") from exc
    if box.shape != (6,) or not np.isfinite(box).all():
        raise InputError(f"box {text!r}: expected six finite numbers x0,y0,z0,x1,y1,z1")
    return box


def box_to_display(volume: Volume, box: np.ndarray, space: str = "voxel") -> DisplayBox:
    """Convert a user box (stored-voxel indices or RAS mm corners) to display coordinates, clipped."""
    lo, hi = box[:3], box[3:]
    corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
    if space == "voxel":
        world = (volume.source.affine @ np.c_[corners, np.ones(len(corners))].T).T[:, :3]
    elif space == "ras":
        world = corners
    else:
        raise InputError(f"box space {space!r}: use voxel or ras")
    canon = (np.linalg.inv(volume.affine) @ np.c_[world, np.ones(len(world))].T).T[:, :3]
    cmin, cmax = canon.min(0), canon.max(0)
    shape = np.array(volume.shape)
    if np.any(cmax < -0.5) or np.any(cmin > shape - 0.5):
        raise InputError(f"box {box.tolist()} ({space}) lies outside the volume of shape {volume.source.shape}")
    cmin = np.clip(cmin, 0, shape - 1)
    cmax = np.clip(cmax, 0, shape - 1)
    if np.any(cmax - cmin < 1):
        raise InputError(f"box {box.tolist()} ({space}) is empty once clipped to the volume")
    X, Y, _ = volume.shape
    # display row = Y-1-y, column = X-1-x (see priorsam.io.volume.to_display)
    return DisplayBox(int(round(cmin[2])), int(round(cmax[2])), Y - 1 - cmax[1], Y - 1 - cmin[1],
                      X - 1 - cmax[0], X - 1 - cmin[0])
