"""3D consistency of a stack of per-slice label maps: what a 2D model cannot see on its own.

* :func:`smooth_organ_boxes` — an organ's bounding box changes smoothly from slice to slice; a slice
  whose mask reaches far beyond the running median of its neighbours' boxes has leaked into
  another structure, and the excess is cut.
* :func:`clean_labels` — the largest connected component of each single-part organ, and holes
  filled per slice.
* :func:`agree_with_localiser` — where the per-slice masks and a 3D localiser's disagree on an
  organ in a slice, the localiser's mask stands.
* :func:`fuse_with_localiser` — per voxel, what the localiser is sure of: a per-slice organ voxel where
  the localiser gives that organ almost no probability is dropped, a background voxel where it is
  confident of an organ takes it.
"""
from __future__ import annotations

import numpy as np


def _first_last(present: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, Z) bool → first and last True index along N for each z (meaningless where none)."""
    n = present.shape[0]
    return present.argmax(0), n - 1 - present[::-1].argmax(0)


def smooth_organ_boxes(labels: np.ndarray, window: int = 5, margin_frac: float = 0.15,
                       min_margin: int = 3) -> np.ndarray:
    """Cut each organ, per axial slice (last axis), to the median of the boxes of the ``window`` slices
    around it that hold the organ, grown by ``margin_frac`` of its size (at least ``min_margin`` px).

    (X, Y, Z) uint8 → the same shape. Slices where an organ appears or ends are left alone when the
    window holds fewer than 3 slices with that organ.
    """
    from scipy import ndimage

    out = labels.copy()
    half = window // 2
    for k, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None:
            continue
        sub = out[box] == k                                  # (X', Y', Z') around the organ
        rows, cols = sub.any(1), sub.any(0)                  # (X', Z'), (Y', Z')
        here = rows.any(0)
        r0, r1 = _first_last(rows)
        c0, c1 = _first_last(cols)
        boxes = np.stack([r0, c0, r1, c1], 1).astype(float)  # (Z', 4)
        lo = np.full((sub.shape[2], 2), -np.inf)             # kept (row, col) range per slice
        hi = np.full((sub.shape[2], 2), np.inf)
        for z in np.flatnonzero(here):
            near = [j for j in range(z - half, z + half + 1) if 0 <= j < sub.shape[2] and here[j]]
            if len(near) < 3:
                continue
            m = np.median(boxes[near], axis=0)
            mr = max(min_margin, margin_frac * (m[2] - m[0] + 1))
            mc = max(min_margin, margin_frac * (m[3] - m[1] + 1))
            lo[z] = np.floor(m[0] - mr), np.floor(m[1] - mc)
            hi[z] = np.ceil(m[2] + mr), np.ceil(m[3] + mc)
        x = np.arange(sub.shape[0])[:, None]
        y = np.arange(sub.shape[1])[:, None]
        rows_ok = (x >= lo[:, 0]) & (x <= hi[:, 0])            # (X', Z')
        cols_ok = (y >= lo[:, 1]) & (y <= hi[:, 1])            # (Y', Z')
        cut = sub & ~(rows_ok[:, None, :] & cols_ok[None, :, :])
        if cut.any():
            region = out[box]
            region[cut] = 0
    return out


def clean_labels(labels: np.ndarray, largest_component: bool = True, fill_holes: bool = True,
                 localiser_labels: np.ndarray | None = None) -> np.ndarray:
    """3D clean-up: keep each single-component organ's largest connected component, and with it every other
    component that reaches into the organ's mask in ``localiser_labels`` (same grid and ids; the localiser
    keeps the pieces in which it draws an organ such as the pancreas, docs/generalisation.md); fill holes
    per slice."""
    from scipy import ndimage

    from ..labels import labels as label_table

    out = labels.copy()
    # One pass for every organ's box: an organ's voxels change only at its own turn (another organ's turn
    # removes that organ's voxels or fills background), so each box still holds its organ when reached.
    boxes = ndimage.find_objects(out)
    # Holes are filled per axial slice: a structure without neighbours along z does all slices in one call.
    in_plane = np.zeros((3, 3, 3), bool)
    in_plane[:, :, 1] = ndimage.generate_binary_structure(2, 1)
    for lab in label_table():
        box = boxes[lab.id - 1] if lab.id - 1 < len(boxes) else None
        if box is None:
            continue
        sub = out[box] == lab.id
        if largest_component and lab.single_component:
            cc, n = ndimage.label(sub)
            if n > 1:
                sizes = np.bincount(cc.ravel())[1:]
                keep = np.zeros(n + 1, bool)
                keep[int(np.argmax(sizes)) + 1] = True
                if localiser_labels is not None:
                    keep[np.unique(cc[localiser_labels[box] == lab.id])] = True
                    keep[0] = False
                sub = keep[cc]
        if fill_holes:
            sub = ndimage.binary_fill_holes(sub, structure=in_plane)
        region = out[box]
        region[(region == lab.id) & ~sub] = 0
        region[sub & (region == 0)] = lab.id
    return out


def agree_with_localiser(labels: np.ndarray, localiser_labels: np.ndarray, min_dice: float = 0.8) -> np.ndarray:
    """Per organ and axial slice, replace the per-slice mask by the 3D localiser's where the two agree
    with Dice under ``min_dice`` (the slice's own mask missing counts as 0).

    (X, Y, Z) label maps on the same grid, same ids → the same shape. Only organs and slices the localiser
    has are touched; a pixel another organ holds is not taken. Why: where the box decoder draws something
    other than the 3D mask — a liver spilling into a neighbour of the same density without contrast, an
    aorta lost in an unfamiliar appearance — the localiser, which saw the whole volume, was the better
    guess on training anatomies (docs/generalisation.md); where they agree, the per-slice boundary, drawn
    at full resolution, is kept.
    """
    from scipy import ndimage

    out = labels.copy()
    # Only the box around both masks of an organ is looked at: replacing organ k's slices sets voxels to k
    # or to background, so another organ's box is the same when its turn comes.
    mine_boxes, their_boxes = ndimage.find_objects(out), ndimage.find_objects(localiser_labels)
    for k, theirs_box in enumerate(their_boxes, start=1):
        if theirs_box is None:
            continue
        mine_box = mine_boxes[k - 1] if k - 1 < len(mine_boxes) else None
        box = theirs_box if mine_box is None else tuple(
            slice(min(a.start, b.start), max(a.stop, b.stop)) for a, b in zip(theirs_box, mine_box))
        region = out[box]
        mine, theirs = region == k, localiser_labels[box] == k
        inter = (mine & theirs).sum((0, 1))
        total = mine.sum((0, 1)) + theirs.sum((0, 1))
        dice = 2.0 * inter / np.maximum(total, 1)
        zs = np.flatnonzero(theirs.any((0, 1)) & (dice < min_dice))
        if not zs.size:
            continue
        sub, t = region[:, :, zs], theirs[:, :, zs]
        sub[(sub == k) & ~t] = 0
        sub[t & (sub == 0)] = k
        region[:, :, zs] = sub
    return out


def fuse_with_localiser(labels: np.ndarray, localiser_labels: np.ndarray, scores: np.ndarray,
                        organs: list[int], veto_below: float = 0.1, fill_above: float = 0.8) -> np.ndarray:
    """Per voxel, where the localiser is sure: a voxel of organ k (one of ``organs``, those it located) whose
    localiser probability of k is under ``veto_below`` becomes background; then a background voxel whose
    label in ``localiser_labels`` is an organ it gives a probability over ``fill_above`` takes that organ.
    0 switches either off.

    ``labels``, ``localiser_labels``: (X, Y, Z) uint8 on the volume's grid, same ids; ``scores``: (C, X', Y',
    Z') the localiser's probabilities (:meth:`~priorsam.engine.localise.LocaliserResult.scores_on`), each
    volume voxel reading the voxel that holds its centre. Returns the same shape. Why: the box decoder
    draws an organ's boundary well where it has an edge to follow, and where it has none (no contrast)
    it stops short or spills into the neighbour; both show as a voxel on which the two disagree while
    the localiser, which saw the whole volume, was sure (on training anatomies kept out of the heads'
    training: docs/generalisation.md). Only each organ's box is looked at, so no full-resolution float
    copy is made.
    """
    from scipy import ndimage

    from ..data.framed_volume import nearest_index

    out = labels.copy()
    idx = [nearest_index(n, c) for n, c in zip(labels.shape, scores.shape[1:])]

    def on_volume(grid_mask: np.ndarray, box: tuple[slice, ...]) -> np.ndarray:
        # Thresholded on the scores' grid first: a bool, not a float, is copied for each volume voxel.
        return grid_mask[np.ix_(*(i[b] for i, b in zip(idx, box)))]

    if veto_below > 0:
        boxes = ndimage.find_objects(out)
        for k in organs:
            if k - 1 < len(boxes) and boxes[k - 1] is not None:
                box = boxes[k - 1]
                region = out[box]
                region[(region == k) & on_volume(scores[k] < veto_below, box)] = 0
    if fill_above > 0:
        for k, box in enumerate(ndimage.find_objects(localiser_labels), start=1):
            if box is None:
                continue
            region = out[box]
            region[(region == 0) & (localiser_labels[box] == k) & on_volume(scores[k] > fill_above, box)] = k
    return out
