"""3D consistency of a stack of per-slice label maps: what a 2D model cannot see on its own.

* :func:`smooth_organ_boxes` — an organ's bounding box changes smoothly from slice to slice; a slice
  whose mask reaches far beyond the running median of its neighbours' boxes has leaked into
  another structure, and the excess is cut.
* :func:`clean_labels` — the largest connected component of each single-part organ, and holes
  filled per slice.
"""
from __future__ import annotations

import numpy as np


def smooth_organ_boxes(labels: np.ndarray, window: int = 5, margin_frac: float = 0.15,
                       min_margin: int = 3) -> np.ndarray:
    """Cut each organ, per axial slice (last axis), to the median of the boxes of the ``window`` slices
    around it that hold the organ, grown by ``margin_frac`` of its size (at least ``min_margin`` px).

    (X, Y, Z) uint8 → the same shape. Slices where an organ appears or ends are left alone when the
    window holds fewer than 3 slices with that organ.
    """
    from scipy import ndimage

    from ..labels import labels as label_table

    out = labels.copy()
    half = window // 2
    for lab in label_table():
        mask = out == lab.id
        if not mask.any():
            continue
        zs = np.flatnonzero(mask.any((0, 1)))
        boxes = {}
        for z in zs:
            rows, cols = np.flatnonzero(mask[:, :, z].any(1)), np.flatnonzero(mask[:, :, z].any(0))
            boxes[z] = (rows[0], cols[0], rows[-1], cols[-1])
        for z in zs:
            near = [boxes[k] for k in range(z - half, z + half + 1) if k in boxes]
            if len(near) < 3:
                continue
            r0, c0, r1, c1 = np.median(np.array(near, dtype=float), axis=0)
            mr = max(min_margin, margin_frac * (r1 - r0 + 1))
            mc = max(min_margin, margin_frac * (c1 - c0 + 1))
            keep = np.zeros(mask.shape[:2], dtype=bool)
            keep[max(0, int(np.floor(r0 - mr))):int(np.ceil(r1 + mr)) + 1,
                 max(0, int(np.floor(c0 - mc))):int(np.ceil(c1 + mc)) + 1] = True
            cut = mask[:, :, z] & ~keep
            if cut.any():
                out[:, :, z][cut] = 0
    return out


def clean_labels(labels: np.ndarray, largest_component: bool = True, fill_holes: bool = True) -> np.ndarray:
    """3D clean-up: keep each single-component organ's largest connected component; fill holes per slice."""
    from scipy import ndimage

    from ..labels import labels as label_table

    out = labels.copy()
    for lab in label_table():
        mask = out == lab.id
        if not mask.any():
            continue
        box = ndimage.find_objects(mask.astype(np.uint8))[0]
        sub = mask[box]
        if largest_component and lab.single_component:
            cc, n = ndimage.label(sub)
            if n > 1:
                sizes = np.bincount(cc.ravel())[1:]
                sub = cc == (int(np.argmax(sizes)) + 1)
        if fill_holes:
            for z in range(sub.shape[2]):
                sub[:, :, z] = ndimage.binary_fill_holes(sub[:, :, z])
        region = out[box]
        region[(region == lab.id) & ~sub] = 0
        region[sub & (region == 0)] = lab.id
    return out
