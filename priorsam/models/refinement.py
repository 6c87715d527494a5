"""Coarse-to-fine refinement: per-organ boxes (from a 3D localiser's own mask where the weights have
one, else from PriorSAM's semantic masks) → the pretrained SAM binary path → final masks, with
conflicts between organs settled by the binary path's logits (or the semantic probabilities).

Shapes (N slices, C classes incl. background, model space 256²):

    semantic scores (N,C,256,256), presence logits (N,C) --gating, localiser boxes--> coarse (N,256,256)
    per organ k: coarse == k --box (+margin)--> (n,4) --BinaryPromptPath(embedding (n,256,64,64))--> (n,256,256)
    → (N,C,256,256) one-hot labels

``guide`` (N,C,4) carries a 3D localiser's search boxes per slice and class in model pixels: NaN
where the class is not expected in that slice, +inf for a class the localiser did not find anywhere
(the 2D heads then decide alone, as without a localiser). A located organ is looked for only
inside its box, and its presence comes from the localiser. ``prompts`` (N,C,4) are the boxes of the
localiser's own mask per slice: by default the box prompt of a located organ, and the slices it is in.
Why: on training anatomies the one-scan heads' masks were the weak link inside the localiser's box
(stomach, pancreas, spleen), while the binary path given a fitting box draws the organ well.

:meth:`priorsam.models.priorsam.PriorSAM.segment_slices` is the public entry; the engine calls it.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..option_checks import at_least, fractions, one_of


@dataclass
class RefineOptions:
    """The per-slice decisions (the engine's ``SegmentOptions`` fill these)."""

    presence_gating: bool = True
    presence_threshold: float = 0.5
    sam_refine: bool = True             # coarse-to-fine through the pretrained binary path
    refine_iterations: int = 1          # box → mask → box rounds of the binary path
    mask_round: int | None = None       # which iterative-optimizer round to use (None: last)
    min_pixels: int = 12                # coarse masks smaller than this (model px) are dropped
    box_source: str = "localiser"       # box prompt per located organ: "localiser" (the box of the localiser's own
                                        # mask in the slice), "semantic" (the heads' coarse mask inside the
                                        # localiser's search box, else that box) or "agree" (the heads' box where
                                        # it overlaps the localiser's by IoU >= agree_iou, else the localiser's);
                                        # chosen on training anatomies (docs/generalisation.md)
    agree_iou: float = 0.5
    box_margin: float = 10.0            # model pixels added around the box of a heads' mask (15 mm at 1.5 mm/px):
                                        # the heads under-draw organs they know from few anatomies, and a tight box
                                        # makes the binary path cut the organ at its edge (thin slabs of training
                                        # anatomies: liver 0.856 → 0.883 against 3 px; docs/generalisation.md)
    localiser_box_margin: float = 3.0   # model pixels added around the box of the localiser's own mask
    conflicts: str = "binary"           # who wins a pixel two organs' masks claim: "binary" (the binary path's
                                        # own mask logit) or "semantic" (the heads' probability)
    heads_veto: float = 0.0             # without a localiser: a binary-path pixel of an organ the heads give that
                                        # organ under this becomes background (0: never)
    heads_fill: float = 0.0             # without a localiser: a background pixel the heads give an organ drawn in
                                        # that slice over this takes it (0: never)

    def __post_init__(self) -> None:
        fractions(self, ("presence_threshold", "agree_iou", "heads_veto", "heads_fill"))
        at_least(self, 0, ("refine_iterations", "min_pixels", "box_margin", "localiser_box_margin"))
        at_least(self, 0, ("mask_round",), none="the last round")
        one_of(self, "box_source", ("localiser", "semantic", "agree"))
        one_of(self, "conflicts", ("binary", "semantic"))


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
    ys = torch.arange(h, dtype=boxes.dtype, device=boxes.device).view(1, 1, h, 1)
    xs = torch.arange(w, dtype=boxes.dtype, device=boxes.device).view(1, 1, 1, w)
    b = torch.nan_to_num(boxes, nan=-1.0)
    inside = (xs >= b[..., 0, None, None]) & (xs <= b[..., 2, None, None]) & \
             (ys >= b[..., 1, None, None]) & (ys <= b[..., 3, None, None])
    return inside & ~torch.isnan(boxes[..., :1, None])


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(N, 4) and (N, 4) boxes [x0, y0, x1, y1] → (N,) intersection over union (0 where either is NaN)."""
    lo, hi = torch.maximum(a[:, :2], b[:, :2]), torch.minimum(a[:, 2:], b[:, 2:])
    inter = (hi - lo).clamp(min=0).prod(1)
    area = lambda x: (x[:, 2:] - x[:, :2]).clamp(min=0).prod(1)  # noqa: E731
    return torch.nan_to_num(inter / (area(a) + area(b) - inter).clamp(min=1e-6), nan=0.0)


def refine_to_labels(out: dict, embedding: torch.Tensor, binary, guide: torch.Tensor | None = None,
                     options: RefineOptions | None = None, prompts: torch.Tensor | None = None) -> torch.Tensor:
    """PriorSAM's output dict for N slices → (N, C, 256, 256) one-hot labels in model space.

    Args:
        out: :meth:`PriorSAM.forward` output (semantic/round logits, presence logits).
        embedding: (N, 256, 64, 64) image embedding on the heads' grid (the binary path's input).
        binary: the pretrained :class:`~priorsam.models.binary_path.BinaryPromptPath`, or None
            (then the coarse semantic masks are the answer).
        guide: optional (N, C, 4) localiser boxes (see the module docstring).
        prompts: optional (N, C, 4) boxes of the localiser's own mask per slice (NaN: none there), the
            prompts of ``box_source`` "localiser" and "agree".
    """
    o = options or RefineOptions()
    logits = out["semantic_logits"] if o.mask_round is None else out["round_logits"][o.mask_round]
    probs = logits.float().softmax(1)
    c = probs.shape[1]
    dev = probs.device
    # The engine builds the localiser's boxes on the CPU; the heads may run on a GPU.
    guide = guide.to(dev) if guide is not None else None
    prompts = prompts.to(dev) if prompts is not None else None
    region = None
    unguided = torch.ones(c, dtype=torch.bool, device=dev)
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
    if o.box_source not in ("semantic", "localiser", "agree"):
        raise ValueError(f"box_source must be semantic, localiser or agree, not {o.box_source!r}")
    if o.conflicts not in ("semantic", "binary"):
        raise ValueError(f"conflicts must be semantic or binary, not {o.conflicts!r}")
    fg = torch.zeros_like(probs)
    mask_logit = torch.full_like(probs, -float("inf"))
    drawn = torch.zeros(probs.shape[:2], dtype=torch.bool, device=dev)   # (N, C): organ k prompted in slice n
    for k in range(1, c):
        masks = coarse == k
        keep = masks.flatten(1).sum(1) >= o.min_pixels
        start = None
        if guide is not None and not unguided[k]:
            # A located organ: the prompt is the localiser's own box, the heads' mask box, or the heads'
            # box where it matches the localiser's (box_source); the search box stands in where neither exists.
            expected = ~torch.isnan(guide[:, k, 0])
            start = guide[:, k].clone()
            sem, _ = boxes_from_masks(masks, margin=o.box_margin)
            if o.box_source == "semantic" or prompts is None:
                use_sem = keep & expected
            else:
                own = prompts[:, k] + torch.tensor([-1.0, -1.0, 1.0, 1.0], device=dev) * o.localiser_box_margin
                has_own = ~torch.isnan(own[:, 0])
                start[has_own] = own[has_own].clamp(0, probs.shape[-1] - 1)
                use_sem = keep & expected & (o.box_source == "agree") & (box_iou(sem, own) >= o.agree_iou)
                # The localiser's mask decides in which slices the organ is (its search box spans more).
                expected = expected & has_own
            if use_sem.any():
                start[use_sem] = sem[use_sem]
            keep = expected
        if not keep.any():
            continue
        idx = torch.nonzero(keep).flatten()
        cur = masks[idx]
        for r in range(max(1, o.refine_iterations)):
            if r == 0 and start is not None:
                boxes, valid = start[idx], torch.ones(len(idx), dtype=torch.bool, device=dev)
            else:
                boxes, valid = boxes_from_masks(cur, margin=o.box_margin)
            logits_b, _ = binary(embedding[idx], boxes)
            cur = logits_b[:, 0] > 0
            mask_logit[idx, k] = logits_b[:, 0].float()
            if region is not None:
                cur &= region[idx, k]
            if not valid.all():
                cur[~valid] = False
        fg[idx, k] = cur.float()
        drawn[idx, k] = True
    # Conflicts between organs: the binary path's logit (or the heads' probability) decides; no organ →
    # background.
    score = fg * (probs + 1e-6) if o.conflicts == "semantic" else fg * (torch.sigmoid(mask_logit) + 1e-6)
    score[:, 0] = (fg[:, 1:].amax(1) == 0).float()
    labels = score.argmax(1)
    if guide is None and (o.heads_veto > 0 or o.heads_fill > 0):
        labels = correct_with_heads(labels, probs, drawn, o.heads_veto, o.heads_fill)
    return F.one_hot(labels, c).permute(0, 3, 1, 2).float()


def correct_with_heads(labels: torch.Tensor, probs: torch.Tensor, drawn: torch.Tensor, veto: float,
                       fill: float) -> torch.Tensor:
    """The binary path's (N, H, W) labels corrected where the heads' (N, C, H, W) probabilities are sure:
    an organ pixel they give that organ under ``veto`` becomes background, then a background pixel they give
    an organ over ``fill`` takes it, among the organs ``drawn`` (N, C) in that slice (0 turns a step off).
    Used where no localiser guides the slices (thin volumes), as the localiser's probabilities are in 3D."""
    out = labels.clone()
    if veto > 0:
        own = probs.gather(1, labels[:, None])[:, 0]
        out[(labels > 0) & (own < veto)] = 0
    if fill > 0:
        organ = probs * drawn[:, :, None, None]
        organ[:, 0] = 0
        best, which = organ.max(1)
        take = (out == 0) & (best > fill)
        out[take] = which[take]
    return out
