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
    present = set(np.unique(lab_display).tolist())
    key = legend([lab for lab in labels() if lab.id in present], cols * w)
    rows_h = ((len(tiles) + cols - 1) // cols) * h
    sheet = Image.new("RGB", (cols * w, rows_h + (key.size[1] if key else 0)))
    for i, t in enumerate(tiles):
        sheet.paste(t, ((i % cols) * w, (i // cols) * h))
    if key:
        sheet.paste(key, (0, rows_h))
    # Like every other output: a folder is made on demand, and a failed write leaves no half-written PNG.
    with atomic_path(path) as tmp:
        sheet.save(tmp, format="PNG")
    return Path(path)


def legend(organs, width: int, row_h: int = 20):
    """A strip naming each organ drawn beside its colour (wrapped to ``width`` px), or None for no organ: the
    colours alone do not say which organ is which (the liver, kidneys and aorta are all shades of red)."""
    from PIL import Image, ImageDraw

    if not organs:
        return None
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    places, x, y = [], 6, 0
    for lab in organs:
        span = 14 + 4 + int(probe.textlength(lab.display)) + 14
        if x > 6 and x + span > width:
            x, y = 6, y + row_h
        places.append((lab, x, y))
        x += span
    strip = Image.new("RGB", (width, y + row_h), (0, 0, 0))
    draw = ImageDraw.Draw(strip)
    for lab, x, y in places:
        draw.rectangle((x, y + 3, x + 13, y + 16), fill=tuple(int(c) for c in lab.color))
        draw.text((x + 18, y + 3), lab.display, fill=(255, 255, 255))
    return strip


def save_figure(fig, path: str | Path, dpi: int = 100) -> Path:
    """Write a matplotlib figure (folders created) and free it: the QA galleries and training curves."""
    import matplotlib.pyplot as plt

    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out, dpi=dpi)
    plt.close(fig)
    return out
