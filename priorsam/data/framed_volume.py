"""FramedVolume: the axial slices of one CT as the 2D model sees them.

Every path that feeds slices to the encoder (prompt-free segmentation, naming a box-prompted
object, training views, the box-prompted LiteMedSAM path) goes through this one object, so the
window, the channel stacking and the frame cannot drift apart between them:

    slices (Z, H, W) HU --window (level, width)--> [0, 255] --channels (2D: slice ×3; 2.5D: z−1, z, z+1)
        --frame (fixed trunk-centred spacing, or LiteMedSAM's upstream resize)--> (N, 3, 256, 256) in [0, 1]

and back: model-space maps, labels and boxes to the slice grid and the other way. The 3D organ
localiser sees the whole volume instead, on a coarse isotropic grid: :func:`resample_to_grid` is that
step, for inference (:mod:`priorsam.engine.localise`) and for training alike.

:class:`Framing` holds the parameters (from the model spec); ``Framing.key()`` goes into the
feature cache's keys, with :data:`FRAMING_VERSION`, so features framed another way are never reused.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .preprocess import WINDOW_LEVEL, WINDOW_WIDTH, make_frame, stack_channels, window

# Bump when the pixels a given Framing produces change (a new interpolation, a new normalisation).
FRAMING_VERSION = 1


@dataclass(frozen=True)
class Framing:
    """How slices become model input: the spec's framing, in-plane spacing, channels and window."""

    framing: str = "fixed"              # "fixed" (trunk-centred, fixed spacing) or LiteMedSAM's "upstream"
    spacing_mm: float = 1.5             # in-plane spacing of the fixed framing
    context: int = 0                    # 0: 2D (the slice thrice), 1: 2.5D (z−1, z, z+1)
    level: float = WINDOW_LEVEL
    width: float = WINDOW_WIDTH

    @classmethod
    def upstream(cls) -> "Framing":
        """LiteMedSAM's own framing, which its pretrained box decoder expects."""
        return cls(framing="upstream", context=0)

    def key(self) -> str:
        """Short hash of the parameters and :data:`FRAMING_VERSION` (for cache keys)."""
        blob = json.dumps({**asdict(self), "version": FRAMING_VERSION}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


class FramedVolume:
    """(Z, H, W) display-oriented HU slices with their frame.

    Args:
        slices_hu: (Z, H, W) HU, anterior up, patient's right on the left (``Volume.axial_slices``).
        row_mm, col_mm: pixel size of those slices.
        framing: the :class:`Framing` of the model.
        frame: a frame to reuse (training views of an augmented scan keep the clean scan's frame);
            by default it is computed from ``slices_hu``.
    """

    def __init__(self, slices_hu: np.ndarray, row_mm: float, col_mm: float, framing: Framing = Framing(),
                 frame=None) -> None:
        if slices_hu.ndim != 3:
            raise ValueError(f"expected (Z, H, W) slices, got shape {slices_hu.shape}")
        self.slices = slices_hu
        self.row_mm, self.col_mm = float(row_mm), float(col_mm)
        self.framing = framing
        self.frame = frame if frame is not None else make_frame(framing.framing, slices_hu, row_mm, col_mm,
                                                                framing.spacing_mm)

    @classmethod
    def from_volume(cls, volume, framing: Framing = Framing()) -> "FramedVolume":
        """The framed axial slices of a :class:`~priorsam.io.Volume`."""
        from ..io import display_spacing

        row_mm, col_mm = display_spacing(volume)
        return cls(volume.axial_slices(), row_mm, col_mm, framing)

    def with_slices(self, slices_hu: np.ndarray) -> "FramedVolume":
        """The same frame over other slices of the same grid (an augmented copy of the scan)."""
        if slices_hu.shape != self.slices.shape:
            raise ValueError(f"slices {slices_hu.shape} do not fit the frame's {self.slices.shape}")
        return FramedVolume(slices_hu, self.row_mm, self.col_mm, self.framing, self.frame)

    def __len__(self) -> int:
        return len(self.slices)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.slices.shape)

    def images(self, index, level: float | None = None, width: float | None = None) -> torch.Tensor:
        """Slices ``index`` → (N, 3, 256, 256) model input in [0, 1].

        Only the slices needed (and their context neighbours) are windowed, so memory is one batch.
        ``level``/``width`` override the framing's window (training's window jitter).
        """
        idx = np.asarray(index, dtype=int).reshape(-1)
        ctx = self.framing.context
        lo, hi = max(0, int(idx.min()) - ctx), min(len(self.slices), int(idx.max()) + ctx + 1)
        windowed = window(self.slices[lo:hi], self.framing.level if level is None else level,
                          self.framing.width if width is None else width)
        return self.frame.images(stack_channels(windowed, idx - lo, ctx))

    def maps_from_model(self, maps: torch.Tensor) -> torch.Tensor:
        """(N, C, 256, 256) model-space scores → (N, C, H, W) on the slice grid."""
        return self.frame.maps_from_model(maps)

    def labels_to_model(self, labels: np.ndarray) -> torch.Tensor:
        """(N, H, W) integer labels on the slice grid → (N, 256, 256) model-space targets."""
        return self.frame.labels_to_model(labels)

    def box_to_model(self, box_xyxy) -> np.ndarray:
        """Box [x0, y0, x1, y1] in slice pixels (x = column) → model pixels."""
        return self.frame.box_to_model(np.asarray(box_xyxy))

    def box_from_model(self, box_xyxy) -> np.ndarray:
        """Box [x0, y0, x1, y1] in model pixels → slice pixels."""
        return self.frame.box_from_model(np.asarray(box_xyxy))


def resample_to_grid(hu: np.ndarray, spacing: np.ndarray, target_mm: float) -> np.ndarray:
    """(X,Y,Z) HU at ``spacing`` → the same field of view at ``target_mm``: area averaging along axes
    that shrink (anti-aliasing, and 5× faster than a Gaussian prefilter on a 512² × 150 CT), then
    trilinear along axes that grow; voxel edges aligned."""
    factors = np.asarray(spacing, float) / target_mm
    shape = tuple(int(v) for v in np.maximum(1, np.round(np.array(hu.shape) * factors)))
    t = torch.from_numpy(np.ascontiguousarray(hu, dtype=np.float32))[None, None]
    shrunk = tuple(min(n, m) for n, m in zip(hu.shape, shape))
    if shrunk != tuple(hu.shape):
        t = F.adaptive_avg_pool3d(t, shrunk)
    if shrunk != shape:
        t = F.interpolate(t, size=shape, mode="trilinear", align_corners=False)
    return t[0, 0].numpy()


def resample_labels(labels: np.ndarray, shape) -> np.ndarray:
    """A label map or mask (X,Y,Z) → ``shape`` by nearest neighbour, same dtype: each output voxel takes
    the input voxel holding its centre (PyTorch's ``nearest-exact``, by index so no float copy of a
    full-resolution volume is made). The companion of :func:`resample_to_grid` for labels, fields of
    view and masks, in both directions."""
    idx = [nearest_index(n, c) for n, c in zip(shape, labels.shape)]
    return np.ascontiguousarray(labels[np.ix_(*idx)])


def nearest_index(n_out: int, n_in: int) -> np.ndarray:
    """For each of ``n_out`` voxels along an axis, the index of the voxel of an ``n_in``-voxel axis (same
    extent) that holds its centre: :func:`resample_labels`'s alignment, for looking values up on a coarser grid."""
    return np.minimum(((np.arange(int(n_out)) + 0.5) * n_in / int(n_out)).astype(int), n_in - 1)


def upsample_scores(scores: np.ndarray, shape, factor: int = 2) -> np.ndarray:
    """Per-class scores (C, X, Y, Z) on a coarse grid → float32 (C, X', Y', Z') interpolated linearly to a grid
    ``factor`` times finer (each axis at most ``shape``'s, the volume the scores will be read on: a voxel of it
    looks its value up by :func:`nearest_index`). ×2 costs ~8× the coarse grid, not a (C, X, Y, Z) float copy
    at full resolution."""
    t = torch.from_numpy(np.ascontiguousarray(scores, dtype=np.float32))[None]
    size = tuple(min(int(n), int(c) * factor) for n, c in zip(shape, scores.shape[1:]))
    return F.interpolate(t, size=size, mode="trilinear", align_corners=False)[0].numpy()


def labels_from_fine_scores(fine: np.ndarray, shape) -> np.ndarray:
    """Scores (C, X', Y', Z') of :func:`upsample_scores` → the uint8 label map of ``shape``: each of their voxels
    takes its highest class, each output voxel the one holding its centre (:func:`resample_labels`). From
    coarse scores interpolated ×2 an organ's boundary falls where the scores cross, between coarse voxel
    centres, to within half a coarse voxel, instead of on the coarse grid's faces."""
    v = torch.from_numpy(fine)
    best, lab = v[0], torch.zeros(v.shape[1:], dtype=torch.uint8)
    for c in range(1, v.shape[0]):   # a running argmax: over a leading axis it is several times faster on CPU
        win = v[c] > best
        best = torch.where(win, v[c], best)
        lab[win] = c
    return resample_labels(lab.numpy(), shape)
