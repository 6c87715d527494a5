"""Run a 2D model over the axial slices of a volume in batches, with bounded memory."""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch

from .progress import ProgressFn, ProgressReporter

# fn(slice indices) -> (N, H, W) uint8 labels for those slices, on the slice grid.
BatchFn = Callable[[np.ndarray], np.ndarray]


def run_over_slices(
    n_slices: int,
    height: int,
    width: int,
    predict: BatchFn,
    batch_size: int = 4,
    indices: Sequence[int] | None = None,
    progress: ProgressFn | None = None,
    show_bar: bool = True,
    desc: str = "slices",
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Fill a (Z, H, W) uint8 label stack batch by batch under ``torch.inference_mode``.

    Only one batch of model inputs and outputs is alive at a time, so memory is the input
    volume, this uint8 output and one batch — not a float map per slice.
    ``indices`` limits work to some slices (others stay background, or as they were in ``out``
    when a stack to fill is passed in).
    """
    if out is None:
        out = np.zeros((n_slices, height, width), dtype=np.uint8)
    todo = np.arange(n_slices) if indices is None else np.asarray(sorted(indices), dtype=int)
    reporter = ProgressReporter(len(todo), desc, progress, show_bar)
    try:
        with torch.inference_mode():
            for start in range(0, len(todo), batch_size):
                idx = todo[start:start + batch_size]
                out[idx] = predict(idx)
                reporter.advance(len(idx))
    finally:
        reporter.close()
    return out
