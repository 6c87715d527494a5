"""Overlay montage of axial CT slices with the organ colours: `make demo`'s picture and
``priorsam segment --preview``. Inputs are display-order arrays (``Volume.axial_slices()`` and
:func:`priorsam.io.to_display` of a label map), so the picture looks as a radiologist reads it."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .data.preprocess import window
from .io.writers import atomic_path
from .labels import labels


def montage(ct_display: np.ndarray, lab_display: np.ndarray, path: str | Path, n: int = 12,
            alpha: float = 0.45) -> Path:
    """PNG grid of up to ``n`` axial slices through the organs with label colours blended in.

    Slices are picked evenly between the first and last slice holding any organ (all slices if
    none does), head first, each labelled with its display index ``z``.
    """
    from PIL import Image, ImageDraw

    zs = np.flatnonzero(lab_display.reshape(len(lab_display), -1).any(1))
    zs = zs if zs.size else np.arange(len(ct_display))
    picks = np.unique(np.linspace(zs[0], zs[-1], min(n, len(zs))).round().astype(int))[::-1]  # head first
    colours = np.zeros((256, 3), dtype=np.float32)
    for lab in labels():
        colours[lab.id] = lab.color
    tiles = []
    for z in picks:
        grey = window(ct_display[z])[..., None].repeat(3, -1)
        lab = lab_display[z]
        rgb = np.where(lab[..., None] > 0, (1 - alpha) * grey + alpha * colours[lab], grey).astype(np.uint8)
        img = Image.fromarray(rgb).resize((rgb.shape[1] * 2, rgb.shape[0] * 2), Image.NEAREST)
        ImageDraw.Draw(img).text((4, 4), f"z={z}", fill=(255, 255, 0))
        tiles.append(img)
    cols = min(4, len(tiles))
    w, h = tiles[0].size
    sheet = Image.new("RGB", (cols * w, ((len(tiles) + cols - 1) // cols) * h))
    for i, t in enumerate(tiles):
        sheet.paste(t, ((i % cols) * w, (i // cols) * h))
    # Like every other output: a folder is made on demand, and a failed write leaves no half-written PNG.
    with atomic_path(path) as tmp:
        sheet.save(tmp, format="PNG")
    return Path(path)


def save_figure(fig, path: str | Path, dpi: int = 100) -> Path:
    """Write a matplotlib figure (folders created) and free it: the QA galleries and training curves."""
    import matplotlib.pyplot as plt

    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out, dpi=dpi)
    plt.close(fig)
    return out
