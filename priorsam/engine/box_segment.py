"""Box-prompted 3D segmentation of one organ with the pretrained LiteMedSAM (SEG-SAM's binary path).

Starts at the middle slice of the user's 3D box and propagates up and down: each next
slice is prompted with the previous slice's mask box plus a margin, and propagation stops
when the mask vanishes or leaves the box's slice range. Framing is LiteMedSAM's own
(:meth:`~priorsam.data.framed_volume.Framing.upstream`), which the pretrained decoder expects.

The prompts depend on the previous slice's mask, the image embeddings do not: they are computed
a few slices ahead of the propagation in one encoder call, because the encoder runs a batch
faster per slice than single slices (on a 2-core CPU OpenVINO runs a batch's slices as parallel
requests; docs/benchmarks.md). At most ``prefetch - 1`` slices past where propagation stops are
encoded for nothing.
"""
from __future__ import annotations

import numpy as np
import torch

from ..data.framed_volume import FramedVolume, Framing
from ..io import Volume, display_spacing, from_display
from ..models.refinement import mask_box
from .boxes import DisplayBox, box_to_display, parse_box
from .device import resolve_device
from .progress import ProgressFn, ProgressReporter


class LiteMedSAMBoxPredictor:
    """Slice embeddings (cached per slice) and box → mask predictions with pretrained LiteMedSAM."""

    def __init__(self, slices_hu: np.ndarray, device: str = "auto", encoder_backend: str = "auto",
                 row_mm: float = 1.0, col_mm: float = 1.0):
        from ..assets import load_litemedsam
        from ..models.encoder_backend import cpu_encoder

        self.device = resolve_device(device)
        self.net = load_litemedsam(str(self.device))
        self.slices = slices_hu
        # The upstream framing ignores pixel size (longest side → 256), as LiteMedSAM was trained.
        self.framed = FramedVolume(slices_hu, row_mm, col_mm, Framing.upstream())
        self._cache: dict[int, torch.Tensor] = {}
        self.encoder = cpu_encoder(encoder_backend, self.device)  # None: the network's PyTorch encoder

    def has_embedding(self, z: int) -> bool:
        return z in self._cache

    @torch.inference_mode()
    def embed(self, zs: list[int]) -> None:
        todo = [z for z in zs if z not in self._cache]
        if not todo:
            return
        images = self.framed.images(np.array(todo))
        # A CPU runtime returns CPU tensors; the prompt encoder and mask decoder may sit on a GPU.
        emb = (self.encoder(images).embedding.to(self.device) if self.encoder is not None
               else self.net.image_encoder(images.to(self.device)))
        for z, e in zip(todo, emb):
            self._cache[z] = e[None]

    @torch.inference_mode()
    def predict(self, z: int, box_xyxy: np.ndarray) -> np.ndarray:
        """Binary mask (H, W) for slice ``z`` from a box [x0, y0, x1, y1] in slice pixels."""
        self.embed([z])
        box = torch.as_tensor(self.framed.box_to_model(box_xyxy), device=self.device)[None, None]
        sparse, dense = self.net.prompt_encoder(points=None, boxes=box, masks=None)
        logits, _ = self.net.mask_decoder(image_embeddings=self._cache[z], image_pe=self.net.prompt_encoder.get_dense_pe(),
                                          sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                          multimask_output=False)
        return (self.framed.maps_from_model(logits.float()).sigmoid()[0, 0] > 0.5).cpu().numpy()


def propagate_box(predictor: LiteMedSAMBoxPredictor, box: DisplayBox, margin_px: tuple[float, float],
                  min_pixels: int = 4, progress: ProgressFn | None = None, show_bar: bool = True,
                  rel_margin: float = 0.1, prefetch: int = 4) -> np.ndarray:
    """(Z, H, W) bool mask grown from the box's middle slice up and down (see module docstring).

    ``prefetch``: slices embedded per encoder call, ahead of the propagation (1: one at a time).
    """
    z_count, h, w = predictor.slices.shape
    out = np.zeros((z_count, h, w), dtype=bool)

    def embed_ahead(z: int, step: int) -> None:
        # Only when z itself is missing, so every call fills a whole batch rather than one slice.
        if not predictor.has_embedding(z):
            predictor.embed([z + i * step for i in range(max(1, prefetch)) if box.z0 <= z + i * step <= box.z1])

    reporter = ProgressReporter(box.z1 - box.z0 + 1, "propagating", progress, show_bar)
    try:
        mid = (box.z0 + box.z1) // 2
        embed_ahead(mid, 1)
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
                # The margin grows with the organ (organs widen fast between 3-mm slices), and the
                # user's box bounds it, so propagation cannot wander onto a neighbour outside it.
                mx = max(margin_px[1], rel_margin * (b[2] - b[0]))
                my = max(margin_px[0], rel_margin * (b[3] - b[1]))
                grown = b + np.array([-mx, -my, mx, my], dtype=np.float32)
                grown = np.clip(grown, [box.c0, box.r0, box.c0, box.r0], [box.c1, box.r1, box.c1, box.r1])
                embed_ahead(z, step)
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
    row_mm, col_mm = display_spacing(volume)
    predictor = predictor or LiteMedSAMBoxPredictor(slices, device, row_mm=row_mm, col_mm=col_mm)
    sx, sy, _ = volume.spacing
    mask = propagate_box(predictor, dbox, (margin_mm / sy, margin_mm / sx), progress=progress, show_bar=show_bar)
    return from_display(mask)

