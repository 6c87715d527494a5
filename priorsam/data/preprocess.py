"""Slice preprocessing: the one implementation used by training, inference, the bundle and Slicer.

Two framings map a display-oriented axial slice (H, W) in HU to the 256×256 model input and
back:

* :class:`UpstreamFrame` — exactly LiteMedSAM's: resize the longest side to 256 with area
  interpolation, zero-pad bottom/right. Used by the box-prompted path.
* :class:`FixedScaleFrame` — resample to one fixed in-plane spacing centred on the trunk,
  so every patient appears at the same physical scale (docs/architecture.md). Used by the
  prompt-free path.

Both share the intensity step: CT window L40/W400 → [0, 255], then per-image min-max to
[0, 1] (LiteMedSAM used no ImageNet mean/std).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

MODEL_SIZE = 256
WINDOW_LEVEL = 40.0
WINDOW_WIDTH = 400.0
BODY_HU = -500.0


def window(hu: np.ndarray, level: float = WINDOW_LEVEL, width: float = WINDOW_WIDTH) -> np.ndarray:
    """HU → [0, 255] float32 through a linear window."""
    lo = level - width / 2
    return (np.clip((hu - lo) / width, 0.0, 1.0) * 255.0).astype(np.float32)


def minmax(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Per-image min-max to [0, 1] over the last two axes of (N, C, H, W)."""
    lo = x.amin(dim=(-3, -2, -1), keepdim=True)
    hi = x.amax(dim=(-3, -2, -1), keepdim=True)
    return (x - lo) / (hi - lo).clamp_min(eps)


def stack_channels(windowed: np.ndarray, index: np.ndarray, context: int) -> np.ndarray:
    """(Z, H, W) windowed slices → (N, 3, H, W): the slice thrice (2D) or z−1, z, z+1 (2.5D, context=1)."""
    z = windowed.shape[0]
    if context == 0:
        s = windowed[index]
        return np.repeat(s[:, None], 3, axis=1)
    lo = np.clip(index - context, 0, z - 1)
    hi = np.clip(index + context, 0, z - 1)
    return np.stack([windowed[lo], windowed[index], windowed[hi]], axis=1)


@dataclass(frozen=True)
class UpstreamFrame:
    """LiteMedSAM's own framing for an (H, W) slice: longest side → 256, pad bottom/right."""

    height: int
    width: int
    size: int = MODEL_SIZE

    @property
    def scale(self) -> float:
        return self.size / max(self.height, self.width)

    @property
    def resized(self) -> tuple[int, int]:
        return int(self.height * self.scale + 0.5), int(self.width * self.scale + 0.5)

    def images(self, chans: np.ndarray) -> torch.Tensor:
        """(N, 3, H, W) windowed [0, 255] → (N, 3, 256, 256) in [0, 1]."""
        import cv2

        nh, nw = self.resized
        out = np.zeros((chans.shape[0], 3, self.size, self.size), dtype=np.float32)
        for i, img in enumerate(chans):
            r = cv2.resize(np.ascontiguousarray(img.transpose(1, 2, 0)), (nw, nh), interpolation=cv2.INTER_AREA)
            out[i, :, :nh, :nw] = r.transpose(2, 0, 1)
        t = torch.from_numpy(out)
        # Upstream normalises the resized image before padding, so min/max ignore the pad.
        lo = t[:, :, :nh, :nw].amin(dim=(1, 2, 3), keepdim=True)
        hi = t[:, :, :nh, :nw].amax(dim=(1, 2, 3), keepdim=True)
        t = (t - lo) / (hi - lo).clamp_min(1e-8)
        t[:, :, nh:, :] = 0
        t[:, :, :, nw:] = 0
        return t

    def box_to_model(self, box_xyxy: np.ndarray) -> np.ndarray:
        """Box [x0, y0, x1, y1] in slice pixels → model pixels."""
        return np.asarray(box_xyxy, dtype=np.float32) * self.scale

    def box_from_model(self, box_xyxy: np.ndarray) -> np.ndarray:
        """Box [x0, y0, x1, y1] in model pixels → slice pixels."""
        return np.asarray(box_xyxy, dtype=np.float32) / self.scale

    def labels_to_model(self, labels: np.ndarray) -> torch.Tensor:
        """(N, H, W) integer labels → (N, 256, 256): nearest resize, zero pad (training targets)."""
        import cv2

        nh, nw = self.resized
        out = np.zeros((labels.shape[0], self.size, self.size), dtype=np.int64)
        for i, lab in enumerate(labels):
            out[i, :nh, :nw] = cv2.resize(lab.astype(np.uint8), (nw, nh), interpolation=cv2.INTER_NEAREST)
        return torch.from_numpy(out)

    def maps_from_model(self, maps: torch.Tensor) -> torch.Tensor:
        """(N, C, 256, 256) logits or probabilities → (N, C, H, W): crop the pad, bilinear upsample."""
        nh, nw = self.resized
        return F.interpolate(maps[..., :nh, :nw], size=(self.height, self.width), mode="bilinear",
                             align_corners=False)


@dataclass(frozen=True)
class FixedScaleFrame:
    """Fixed in-plane spacing around a trunk centre, for (H, W) slices of a volume.

    Model pixel (u, v) samples slice position
    ``row = centre_row + (u − (size−1)/2) · spacing / row_mm`` (and likewise for columns),
    so 256 px always cover ``256 · spacing`` mm of the patient.
    """

    height: int
    width: int
    row_mm: float
    col_mm: float
    centre_row: float
    centre_col: float
    spacing: float = 1.5
    size: int = MODEL_SIZE

    def _grid(self, n: int, device=None) -> torch.Tensor:
        """Sampling grid (N, size, size, 2) in grid_sample's normalised coords (align_corners=True)."""
        half = (self.size - 1) / 2
        k = torch.arange(self.size, dtype=torch.float64, device=device) - half
        rows = self.centre_row + k * self.spacing / self.row_mm
        cols = self.centre_col + k * self.spacing / self.col_mm
        gy = 2 * rows / max(self.height - 1, 1) - 1
        gx = 2 * cols / max(self.width - 1, 1) - 1
        grid = torch.stack(torch.meshgrid(gy, gx, indexing="ij")[::-1], dim=-1).float()
        return grid.unsqueeze(0).expand(n, -1, -1, -1)

    def _inverse_grid(self, n: int, device=None) -> torch.Tensor:
        half = (self.size - 1) / 2
        u = (torch.arange(self.height, dtype=torch.float64, device=device) - self.centre_row) * self.row_mm / self.spacing + half
        v = (torch.arange(self.width, dtype=torch.float64, device=device) - self.centre_col) * self.col_mm / self.spacing + half
        gy = 2 * u / (self.size - 1) - 1
        gx = 2 * v / (self.size - 1) - 1
        grid = torch.stack(torch.meshgrid(gy, gx, indexing="ij")[::-1], dim=-1).float()
        return grid.unsqueeze(0).expand(n, -1, -1, -1)

    def images(self, chans: np.ndarray) -> torch.Tensor:
        """(N, 3, H, W) windowed [0, 255] → (N, 3, 256, 256) in [0, 1]; outside the slice is air (0)."""
        t = torch.from_numpy(np.ascontiguousarray(chans, dtype=np.float32))
        out = F.grid_sample(t, self._grid(t.shape[0]), mode="bilinear", padding_mode="zeros", align_corners=True)
        return minmax(out)

    def labels_to_model(self, labels: np.ndarray) -> torch.Tensor:
        """(N, H, W) integer labels → (N, 256, 256) by nearest neighbour (training targets)."""
        t = torch.from_numpy(np.ascontiguousarray(labels, dtype=np.float32))[:, None]
        out = F.grid_sample(t, self._grid(t.shape[0]), mode="nearest", padding_mode="zeros", align_corners=True)
        return out[:, 0].round().long()

    def labels_from_model(self, labels: torch.Tensor) -> torch.Tensor:
        """(N, 256, 256) integer labels → (N, H, W) by nearest neighbour; outside the frame is background."""
        t = labels[:, None].float()
        out = F.grid_sample(t, self._inverse_grid(t.shape[0], t.device), mode="nearest", padding_mode="zeros",
                            align_corners=True)
        return out[:, 0].round().long()

    def maps_from_model(self, probs: torch.Tensor) -> torch.Tensor:
        """(N, C, 256, 256) class probabilities → (N, C, H, W); outside the frame is background (class 0)."""
        grid = self._inverse_grid(probs.shape[0], probs.device)
        out = F.grid_sample(probs, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
        inside = F.grid_sample(torch.ones_like(probs[:, :1]), grid, mode="bilinear", padding_mode="zeros",
                               align_corners=True)
        out[:, :1] += 1 - inside
        return out

    def box_to_model(self, box_xyxy: np.ndarray) -> np.ndarray:
        """Box [x0, y0, x1, y1] in slice pixels (columns = x) → model pixels."""
        half = (self.size - 1) / 2
        b = np.asarray(box_xyxy, dtype=np.float64)
        x = (b[[0, 2]] - self.centre_col) * self.col_mm / self.spacing + half
        y = (b[[1, 3]] - self.centre_row) * self.row_mm / self.spacing + half
        return np.array([x[0], y[0], x[1], y[1]], dtype=np.float32)

    def box_from_model(self, box_xyxy: np.ndarray) -> np.ndarray:
        half = (self.size - 1) / 2
        b = np.asarray(box_xyxy, dtype=np.float64)
        x = (b[[0, 2]] - half) * self.spacing / self.col_mm + self.centre_col
        y = (b[[1, 3]] - half) * self.spacing / self.row_mm + self.centre_row
        return np.array([x[0], y[0], x[1], y[1]], dtype=np.float32)


def trunk_centre(slices_hu: np.ndarray, row_mm: float, col_mm: float, max_slices: int = 24) -> tuple[float, float]:
    """(row, col) centre of the trunk: the largest body component per slice, median over slices.

    Arms and the table form separate components (after a small opening), so they do not pull
    the centre; taking the median over slices keeps one centre for the whole volume.
    """
    from scipy import ndimage

    z = slices_hu.shape[0]
    picks = np.unique(np.linspace(0, z - 1, min(z, max_slices)).round().astype(int))
    radius = max(1, int(round(4.0 / min(row_mm, col_mm))))
    struct = ndimage.iterate_structure(ndimage.generate_binary_structure(2, 1), radius)
    centres = []
    for i in picks:
        body = ndimage.binary_opening(slices_hu[i] > BODY_HU, structure=struct)
        lab, n = ndimage.label(body)
        if n == 0:
            continue
        sizes = ndimage.sum_labels(body, lab, index=np.arange(1, n + 1))
        k = int(np.argmax(sizes)) + 1
        if sizes[k - 1] * row_mm * col_mm < 2500:  # < 25 cm²: no trunk in this slice
            continue
        sl = ndimage.find_objects((lab == k).astype(np.int8))[0]
        centres.append(((sl[0].start + sl[0].stop - 1) / 2, (sl[1].start + sl[1].stop - 1) / 2))
    if not centres:
        h, w = slices_hu.shape[1:]
        return (h - 1) / 2, (w - 1) / 2
    c = np.median(np.array(centres), axis=0)
    return float(c[0]), float(c[1])


def make_frame(framing: str, slices_hu: np.ndarray, row_mm: float, col_mm: float, spacing: float = 1.5):
    """The frame the prompt-free path uses: ``fixed`` (trunk-centred fixed spacing) or ``upstream``."""
    if framing == "fixed":
        return fixed_scale_frame(slices_hu, row_mm, col_mm, spacing)
    if framing == "upstream":
        return UpstreamFrame(slices_hu.shape[1], slices_hu.shape[2])
    raise ValueError(f"unknown framing {framing!r}: use fixed or upstream")


def fixed_scale_frame(slices_hu: np.ndarray, row_mm: float, col_mm: float, spacing: float = 1.5) -> FixedScaleFrame:
    """The :class:`FixedScaleFrame` for a (Z, H, W) HU stack."""
    cr, cc = trunk_centre(slices_hu, row_mm, col_mm)
    return FixedScaleFrame(slices_hu.shape[1], slices_hu.shape[2], row_mm, col_mm, cr, cc, spacing)
