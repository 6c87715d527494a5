"""Adaptive z-stride: run the model on every k-th slice and fill the slices between by interpolating
the label maps where the two ends agree, bisecting the gaps where they do not.

Neighbouring axial slices of an organ change slowly, so most of a thin-slice CT's slices can be
interpolated at no Dice cost (docs/benchmarks.md measures it); gaps where an organ starts, ends or
changes shape are run.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from ..models.refinement import mask_box
from .progress import ProgressFn
from .slices import run_over_slices


def strided_labels(shape: tuple[int, int, int], todo: np.ndarray, predict: Callable[[np.ndarray], np.ndarray],
                   stride: int, agree_dice: float = 0.7, batch_size: int = 4, progress: ProgressFn | None = None,
                   show_bar: bool = True) -> tuple[np.ndarray, int]:
    """(Z, H, W) uint8 labels for the slices ``todo`` (sorted indices) and the number of slices run.

    ``predict(indices) -> (N, H, W) uint8`` is the model. Every ``stride``-th slice of ``todo`` and the
    last one are run; then, for each gap between run slices, the two ends either agree
    (:func:`labels_agree`) and the gap is interpolated (:func:`interpolate_gap`), or the middle slice
    is run and both halves are looked at again. Bisection instead of running a whole disagreeing gap
    matters on thin-slice CT, where an organ's top or bottom makes most gaps near it disagree.
    Progress counts slices run against ``len(todo)``; the rest are interpolated at the end.
    """
    z, h, w = shape
    todo = np.asarray(todo, dtype=int)
    n = len(todo)
    out = np.zeros((z, h, w), dtype=np.uint8)
    ran = 0

    def run(positions: list[int], desc: str) -> None:
        nonlocal ran
        base = ran
        report = None if progress is None else (lambda d, t: progress(base + d, n))
        idx = todo[np.asarray(positions, dtype=int)]
        run_over_slices(z, h, w, predict, batch_size, indices=idx, progress=report, show_bar=show_bar, desc=desc,
                        out=out)
        ran += len(idx)

    pos = np.unique(np.r_[np.arange(0, n, max(1, stride)), n - 1]).tolist()   # positions in ``todo``
    run(pos, "segmenting (stride)")
    pending = [(a, b) for a, b in zip(pos[:-1], pos[1:]) if b - a > 1]
    agreed = []
    while pending:
        mids, nxt = [], []
        for a, b in pending:
            if labels_agree(out[todo[a]], out[todo[b]], agree_dice):
                agreed.append((a, b))
                continue
            m = (a + b) // 2
            mids.append(m)
            nxt += [g for g in ((a, m), (m, b)) if g[1] - g[0] > 1]
        if mids:
            run(mids, "segmenting (gaps)")
        pending = nxt
    for a, b in agreed:
        ts = [(todo[k] - todo[a]) / (todo[b] - todo[a]) for k in range(a + 1, b)]
        out[todo[a + 1:b]] = interpolate_gap(out[todo[a]], out[todo[b]], ts)
    if progress is not None and progress(n, n) is False:
        from ..errors import Cancelled

        raise Cancelled("cancelled")
    return out, ran


def labels_agree(a: np.ndarray, b: np.ndarray, min_dice: float) -> bool:
    """True when every organ present in either slice overlaps with Dice ≥ ``min_dice``."""
    for k in np.union1d(np.unique(a), np.unique(b)):
        if k == 0:
            continue
        ma, mb = a == k, b == k
        if 2.0 * np.logical_and(ma, mb).sum() / (ma.sum() + mb.sum()) < min_dice:
            return False
    return True


def interpolate_gap(a: np.ndarray, b: np.ndarray, ts) -> np.ndarray:
    """Label slices between ``a`` (t=0) and ``b`` (t=1) at each t of ``ts``: per-organ signed-distance blend.

    A pixel can only be inside the blend if it is inside ``a`` or ``b``, so distances are computed
    once per organ on the bounding box of both masks (plus a 1-pixel border that keeps the inside
    distances exact), not on the whole slice.
    """
    from scipy import ndimage

    ts = np.asarray(ts, dtype=np.float64)
    out = np.zeros((len(ts),) + a.shape, dtype=a.dtype)
    best = np.full(out.shape, np.inf)
    for k in np.union1d(np.unique(a), np.unique(b)):
        if k == 0:
            continue
        x0, y0, x1, y1 = mask_box((a == k) | (b == k)).astype(int)
        r0, r1 = max(y0 - 1, 0), min(y1 + 2, a.shape[0])
        c0, c1 = max(x0 - 1, 0), min(x1 + 2, a.shape[1])
        crop = np.s_[r0:r1, c0:c1]
        sd = [ndimage.distance_transform_edt(~m) - ndimage.distance_transform_edt(m) if m.any() else None
              for m in (a[crop] == k, b[crop] == k)]
        if sd[0] is None or sd[1] is None:
            # An organ absent from one end tapers off: eroded by t × its deepest inside distance.
            there = sd[0] if sd[1] is None else sd[1]
            gone = there + (1e-3 - there.min())
            sd = [there, gone] if sd[1] is None else [gone, there]
        for i, t in enumerate(ts):
            d = (1 - t) * sd[0] + t * sd[1]
            region, score = out[i][crop], best[i][crop]
            win = (d < 0) & (d < score)
            region[win] = k
            score[win] = d[win]
    return out


def interpolate_labels(a: np.ndarray, b: np.ndarray, t: float) -> np.ndarray:
    """Label slice between ``a`` (t=0) and ``b`` (t=1); see :func:`interpolate_gap`."""
    return interpolate_gap(a, b, [t])[0]
