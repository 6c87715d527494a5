"""A box around one of the eight organs, answered with the automatic engine's mask of that organ.

Propagating LiteMedSAM from a box's middle slice (:mod:`.box_segment`) sees one slice at a time and
nothing of the anatomy around it: where an organ narrows faster than the box, its mask spills onto
the neighbours. The automatic engine finds the organs with the 3D localiser's context. So when the
engine drew the organ the user boxed, its mask inside the box is the answer, and otherwise the caller
propagates (a lesion, or an organ the engine missed or drew elsewhere). Which organ fits the box
(``rule``): "extent" — the 3D bounding box of its mask overlaps the user's box with an IoU of at least
``min_iou``; "share" — at least ``min_share`` of its voxels lie inside the box (the default for a named
organ). Either way the fitting organ with the highest IoU answers. "best" (the default for ``auto``): the
organ the box matches best — the highest Ochiai coefficient of its mask and the box, voxels inside /
sqrt(organ's voxels x box's voxels) — answers if it fits by extent or by share, so a loose box gets its organ
while a box over part of a large organ is not answered by a small organ lying inside it. Measured on
pseudo-patients: bench/results/box_organs.md, box_organs_loose.md and box_auto_best.md.

Works in display coordinates (:func:`priorsam.io.to_display`), where :class:`.boxes.DisplayBox` lives.
Numpy only.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..io import from_display, to_display
from ..labels import labels
from .boxes import DisplayBox


@dataclass(frozen=True)
class OrganMatch:
    """The engine's organ that answers a box, and how well its extent fits the box."""

    name: str
    label_id: int
    iou: float     # of the user's box and the 3D bounding box of the organ's mask
    share: float   # of the organ's voxels that lie inside the box


MATCH_RULES = ("extent", "share", "best")


def voxel_extent(box: DisplayBox) -> np.ndarray:
    """The box as inclusive voxel indices (z0, r0, c0, z1, r1, c1) of the display grid."""
    return np.array([box.z0, round(box.r0), round(box.c0), box.z1, round(box.r1), round(box.c1)], dtype=np.int64)


def mask_extent(mask: np.ndarray) -> np.ndarray | None:
    """Inclusive (z0, r0, c0, z1, r1, c1) of a (Z, H, W) bool mask; None when it is empty."""
    idx = np.argwhere(mask)
    return None if len(idx) == 0 else np.r_[idx.min(0), idx.max(0)]


def box_iou_3d(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two inclusive integer boxes (z0, r0, c0, z1, r1, c1), counted in voxels."""
    size = lambda lo, hi: float(np.prod(np.maximum(hi - lo + 1, 0)))  # noqa: E731
    inter = size(np.maximum(a[:3], b[:3]), np.minimum(a[3:], b[3:]))
    return inter / (size(a[:3], a[3:]) + size(b[:3], b[3:]) - inter)


def match_organ(labels_display: np.ndarray, box: DisplayBox, candidates: dict[str, int], min_iou: float = 0.5,
                rule: str = "extent", min_share: float = 0.5) -> OrganMatch | None:
    """The candidate organ (name → label id) in ``labels_display`` (Z, H, W label ids) that fits the box by
    ``rule`` (module docstring) with the highest IoU; None when none fits."""
    if rule not in MATCH_RULES:
        raise ValueError(f"rule must be one of {', '.join(MATCH_RULES)}, not {rule!r}")
    user = voxel_extent(box)
    z0, r0, c0, z1, r1, c1 = user
    box_voxels = float(np.prod(user[3:] - user[:3] + 1))
    best, best_key, best_fits = None, -1.0, False
    for name, label_id in candidates.items():
        organ = labels_display == label_id
        total = int(organ.sum())
        if total == 0:
            continue
        iou = box_iou_3d(user, mask_extent(organ))
        inside = int(organ[z0:z1 + 1, r0:r1 + 1, c0:c1 + 1].sum())
        share = inside / total
        fits = {"extent": iou >= min_iou, "share": share >= min_share,
                "best": iou >= min_iou or share >= min_share}[rule]
        # "best" ranks every organ (one that does not fit may win, and then nothing answers); the others rank
        # the fitting ones by IoU
        key = inside / np.sqrt(total * box_voxels) if rule == "best" else iou
        if (fits or rule == "best") and key > best_key:
            best, best_key, best_fits = OrganMatch(name, int(label_id), iou, share), key, fits
    return best if best_fits else None


def organ_inside_box(labels_display: np.ndarray, box: DisplayBox, label_id: int) -> np.ndarray:
    """(Z, H, W) bool: the organ's voxels that lie inside the box (the user's box bounds the answer)."""
    z0, r0, c0, z1, r1, c1 = voxel_extent(box)
    out = np.zeros(labels_display.shape, dtype=bool)
    out[z0:z1 + 1, r0:r1 + 1, c0:c1 + 1] = labels_display[z0:z1 + 1, r0:r1 + 1, c0:c1 + 1] == label_id
    return out


def organ_for_box(engine_labels: np.ndarray, box: DisplayBox, organ: str | None = None, min_iou: float = 0.5,
                  rule: str | None = None) -> tuple[np.ndarray, OrganMatch] | None:
    """The answer to a box from the automatic engine's label map ``engine_labels`` (canonical RAS label
    ids, as :meth:`priorsam.engine.segment.Segmenter.segment` returns): (canonical RAS bool mask inside the
    box, the match), or None when no organ fits the box and the caller should propagate.

    ``organ``: one of the eight organ names (only that organ may answer), or None (``--label auto``: the
    organ that fits the box best). ``rule``: see the module docstring; by default "share" for a named organ
    and "best" for ``auto``, as measured (bench/results/box_organs_loose_decision.md,
    box_auto_best_decision.md)."""
    ids = {lab.name: lab.id for lab in labels()}
    if organ is not None and organ not in ids:
        raise ValueError(f"{organ!r} is not one of the organs {', '.join(ids)}")
    lab_d = to_display(engine_labels)
    rule = rule or ("best" if organ is None else "share")
    match = match_organ(lab_d, box, ids if organ is None else {organ: ids[organ]}, min_iou, rule)
    if match is None:
        return None
    return from_display(organ_inside_box(lab_d, box, match.label_id)), match
