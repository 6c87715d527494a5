"""Box-prompted 3D segmentation of one organ with the pretrained LiteMedSAM (SEG-SAM's binary path).

Starts at the middle slice of the user's 3D box and propagates up and down: each next
slice is prompted with the previous slice's mask box plus a margin, and propagation stops
when the mask vanishes or leaves the box's slice range. Framing is LiteMedSAM's own
(:class:`~priorsam.data.preprocess.UpstreamFrame`), which the pretrained decoder expects.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from ..data.preprocess import UpstreamFrame, stack_channels, window
from ..errors import InputError
from ..io import Volume, from_display
from .device import resolve_device
from .progress import ProgressFn, ProgressReporter


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


class LiteMedSAMBoxPredictor:
    """Slice embeddings (cached per slice) and box → mask predictions with pretrained LiteMedSAM."""

    def __init__(self, slices_hu: np.ndarray, device: str = "auto"):
        from ..assets import load_litemedsam

        self.device = resolve_device(device)
        self.net = load_litemedsam(str(self.device))
        self.slices = slices_hu
        self.frame = UpstreamFrame(slices_hu.shape[1], slices_hu.shape[2])
        self._cache: dict[int, torch.Tensor] = {}

    @torch.inference_mode()
    def embed(self, zs: list[int]) -> None:
        todo = [z for z in zs if z not in self._cache]
        if not todo:
            return
        chans = stack_channels(window(self.slices[np.array(todo)]), np.arange(len(todo)), 0)
        emb = self.net.image_encoder(self.frame.images(chans).to(self.device))
        for z, e in zip(todo, emb):
            self._cache[z] = e[None]

    @torch.inference_mode()
    def predict(self, z: int, box_xyxy: np.ndarray) -> np.ndarray:
        """Binary mask (H, W) for slice ``z`` from a box [x0, y0, x1, y1] in slice pixels."""
        self.embed([z])
        box = torch.as_tensor(self.frame.box_to_model(box_xyxy), device=self.device)[None, None]
        sparse, dense = self.net.prompt_encoder(points=None, boxes=box, masks=None)
        logits, _ = self.net.mask_decoder(image_embeddings=self._cache[z], image_pe=self.net.prompt_encoder.get_dense_pe(),
                                          sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                          multimask_output=False)
        return (self.frame.maps_from_model(logits.float()).sigmoid()[0, 0] > 0.5).cpu().numpy()


def mask_box(mask: np.ndarray) -> np.ndarray | None:
    rows = np.flatnonzero(mask.any(1))
    cols = np.flatnonzero(mask.any(0))
    if rows.size == 0:
        return None
    return np.array([cols[0], rows[0], cols[-1], rows[-1]], dtype=np.float32)


def propagate_box(predictor: LiteMedSAMBoxPredictor, box: DisplayBox, margin_px: tuple[float, float],
                  min_pixels: int = 4, progress: ProgressFn | None = None, show_bar: bool = True) -> np.ndarray:
    """(Z, H, W) bool mask grown from the box's middle slice up and down (see module docstring)."""
    z_count, h, w = predictor.slices.shape
    out = np.zeros((z_count, h, w), dtype=bool)
    mid = (box.z0 + box.z1) // 2
    reporter = ProgressReporter(box.z1 - box.z0 + 1, "propagating", progress, show_bar)
    try:
        first = predictor.predict(mid, box.xyxy())
        reporter.advance(1)
        out[mid] = first
        for step in (1, -1):
            prev = first
            z = mid + step
            while box.z0 <= z <= box.z1:
                b = mask_box(prev) if prev.sum() >= min_pixels else None
                if b is None:
                    break
                grown = b + np.array([-margin_px[1], -margin_px[0], margin_px[1], margin_px[0]], dtype=np.float32)
                grown = np.clip(grown, 0, [w - 1, h - 1, w - 1, h - 1])
                prev = predictor.predict(z, grown)
                out[z] = prev
                reporter.advance(1)
                z += step
    finally:
        reporter.close()
    return out


def segment_box(volume: Volume, box, space: str = "voxel", device: str = "auto", margin_mm: float = 5.0,
                progress: ProgressFn | None = None, show_bar: bool = True,
                predictor: LiteMedSAMBoxPredictor | None = None) -> np.ndarray:
    """Segment one organ from a 3D box; returns a canonical-RAS bool mask of the volume's shape."""
    dbox = box_to_display(volume, parse_box(box), space)
    slices = volume.axial_slices()
    predictor = predictor or LiteMedSAMBoxPredictor(slices, device)
    sx, sy, _ = volume.spacing
    mask = propagate_box(predictor, dbox, (margin_mm / sy, margin_mm / sx), progress=progress, show_bar=show_bar)
    return from_display(mask)


def segment_box_cli(image: str, box: str, out: str, space: str = "voxel", label: str = "organ",
                    device: str = "auto", series: str | None = None, margin_mm: float = 5.0):
    """Segment one organ through the volume from a 3D box.

    Args:
        image: NIfTI/NRRD file or DICOM series folder.
        box: x0,y0,z0,x1,y1,z1 — voxel indices of the file as stored (--space voxel) or RAS mm (--space ras).
        out: output label map (.nii.gz or .nrrd), written on the input's grid.
        label: organ name; one of the 8 organs gives its label id in the output, anything else gives 1.
        device: auto, cuda or cpu.
        series: DICOM SeriesInstanceUID when the folder holds several series.
    """
    from ..io import check_writable, read_volume, write_label_map
    from ..labels import labels

    check_writable(out)
    parsed = parse_box(box)
    t0 = time.time()
    volume = read_volume(image, series_uid=series)
    ids = {lab.name: lab.id for lab in labels()}
    value = ids.get(str(label), 1)
    mask = segment_box(volume, parsed, space=space, device=device, margin_mm=margin_mm)
    write_label_map(volume, mask.astype(np.uint8) * value, out)
    vox_ml = float(np.prod(volume.spacing)) / 1000.0
    return {"output": str(out), "label": str(label), "value": value, "voxels": int(mask.sum()),
            "volume_ml": round(float(mask.sum()) * vox_ml, 2), "seconds": round(time.time() - t0, 1)}
