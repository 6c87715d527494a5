"""Coarse-to-fine refinement: PriorSAM's semantic masks → per-organ boxes → the pretrained SAM
binary path → final masks, with conflicts between organs settled by the semantic probabilities.

Shapes (N slices, C classes incl. background, model space 256²):

    semantic scores (N,C,256,256), presence logits (N,C) --gating, localiser boxes--> coarse (N,256,256)
    per organ k: coarse == k --box (+margin)--> (n,4) --BinaryPromptPath(embedding (n,256,64,64))--> (n,256,256)
    → (N,C,256,256) one-hot labels

``guide`` (N,C,4) carries a 3D localiser's boxes per slice and class in model pixels: NaN where
the class is not expected in that slice, +inf for a class the localiser did not find anywhere
(the 2D heads then decide alone, as without a localiser). A located organ is looked for only
inside its box, and its presence comes from the localiser.

:meth:`priorsam.models.priorsam.PriorSAM.segment_slices` is the public entry; the engine calls it.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


@dataclass
class RefineOptions:
    """The per-slice decisions (the engine's ``SegmentOptions`` fill these)."""

    presence_gating: bool = True
    presence_threshold: float = 0.5
    sam_refine: bool = True             # coarse-to-fine through the pretrained binary path
    refine_iterations: int = 1          # box → mask → box rounds of the binary path
    mask_round: int | None = None       # which iterative-optimizer round to use (None: last)
    min_pixels: int = 12                # coarse masks smaller than this (model px) are dropped
    box_source: str = "semantic"        # box prompt per organ: "semantic" (coarse mask inside the localiser
                                        # box, else that box) or "localiser" (always the localiser box)
    box_margin: float = 3.0             # model pixels added around a mask's box


def boxes_from_masks(masks: torch.Tensor, margin: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, H, W) bool → (N, 4) float boxes [x0, y0, x1, y1] (x = column) grown by ``margin`` and kept
    inside the image, and (N,) whether each mask has any pixel (the box of an empty mask is meaningless)."""
    n, h, w = masks.shape
    rows, cols = masks.any(2), masks.any(1)
    valid = rows.any(1)
    ar = torch.arange(h, device=masks.device)
    ac = torch.arange(w, device=masks.device)
    big = 10 ** 6
    y0 = torch.where(rows, ar, big).amin(1)
    y1 = torch.where(rows, ar, -1).amax(1)
    x0 = torch.where(cols, ac, big).amin(1)
    x1 = torch.where(cols, ac, -1).amax(1)
    boxes = torch.stack([x0 - margin, y0 - margin, x1 + margin, y1 + margin], 1).float()
    return boxes.clamp(0, max(h, w) - 1), valid


def mask_box(mask: np.ndarray) -> np.ndarray | None:
    """One (H, W) bool mask → its box [x0, y0, x1, y1] in pixels (float32), or None when empty."""
    boxes, valid = boxes_from_masks(torch.from_numpy(np.ascontiguousarray(mask, dtype=bool))[None])
    return boxes[0].numpy() if bool(valid[0]) else None


def box_masks(boxes: torch.Tensor, size) -> torch.Tensor:
    """(N, C, 4) boxes [x0, y0, x1, y1] (NaN: none) → (N, C, H, W) bool masks of their insides."""
    h, w = size
    ys = torch.arange(h, dtype=boxes.dtype).view(1, 1, h, 1)
    xs = torch.arange(w, dtype=boxes.dtype).view(1, 1, 1, w)
    b = torch.nan_to_num(boxes, nan=-1.0)
    inside = (xs >= b[..., 0, None, None]) & (xs <= b[..., 2, None, None]) & \
             (ys >= b[..., 1, None, None]) & (ys <= b[..., 3, None, None])
    return inside & ~torch.isnan(boxes[..., :1, None])


def refine_to_labels(out: dict, embedding: torch.Tensor, binary, guide: torch.Tensor | None = None,
                     options: RefineOptions | None = None) -> torch.Tensor:
    """PriorSAM's output dict for N slices → (N, C, 256, 256) one-hot labels in model space.

    Args:
        out: :meth:`PriorSAM.forward` output (semantic/round logits, presence logits).
        embedding: (N, 256, 64, 64) image embedding on the heads' grid (the binary path's input).
        binary: the pretrained :class:`~priorsam.models.binary_path.BinaryPromptPath`, or None
            (then the coarse semantic masks are the answer).
        guide: optional (N, C, 4) localiser boxes (see the module docstring).
    """
    o = options or RefineOptions()
    logits = out["semantic_logits"] if o.mask_round is None else out["round_logits"][o.mask_round]
    probs = logits.float().softmax(1)
    c = probs.shape[1]
    region = None
    unguided = torch.ones(c, dtype=torch.bool)
    if guide is not None:
        unguided = torch.isinf(guide[0, :, 0])
        unguided[0] = False
        region = box_masks(torch.where(torch.isinf(guide), torch.nan, guide), probs.shape[-2:])
        region[:, 0] = True
        region[:, unguided] = True
    if o.presence_gating:
        present = out["presence_logits"].float().sigmoid() >= o.presence_threshold
        present[:, 0] = True
        present[:, ~unguided] = True
        probs = probs * present[:, :, None, None]
    if region is not None:
        probs = probs * region
    coarse = probs.argmax(1)
    if not o.sam_refine or binary is None:
        return F.one_hot(coarse, c).permute(0, 3, 1, 2).float()
    fg = torch.zeros_like(probs)
    for k in range(1, c):
        masks = coarse == k
        keep = masks.flatten(1).sum(1) >= o.min_pixels
        start = None
        if guide is not None and not unguided[k]:
            # The localiser's box stands in where the 2D heads found nothing (or always, on request).
            expected = ~torch.isnan(guide[:, k, 0])
            start = guide[:, k].clone()
            use_sem = keep & expected & (o.box_source == "semantic")
            if use_sem.any():
                sem, _ = boxes_from_masks(masks[use_sem], margin=o.box_margin)
                start[use_sem] = sem
            keep = expected
        if not keep.any():
            continue
        idx = torch.nonzero(keep).flatten()
        cur = masks[idx]
        for r in range(max(1, o.refine_iterations)):
            if r == 0 and start is not None:
                boxes, valid = start[idx], torch.ones(len(idx), dtype=torch.bool)
            else:
                boxes, valid = boxes_from_masks(cur, margin=o.box_margin)
            logits_b, _ = binary(embedding[idx], boxes)
            cur = logits_b[:, 0] > 0
            if region is not None:
                cur &= region[idx, k]
            if not valid.all():
                cur[~valid] = False
        fg[idx, k] = cur.float()
    # Conflicts between organs: the semantic probability decides; no organ → background.
    score = fg * (probs + 1e-6)
    score[:, 0] = (fg[:, 1:].amax(1) == 0).float()
    return F.one_hot(score.argmax(1), c).permute(0, 3, 1, 2).float()
