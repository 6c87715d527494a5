"""Name a box-prompted object with PriorSAM's semantic-aware decoder (SEG-SAM).

The prompted box goes through SAM's prompt encoder into the decoder's segmentation-oriented
token, whose class logits say which organ the box holds. The slices where the binary mask
is largest are asked and their probabilities averaged.
"""
from __future__ import annotations

import numpy as np
import torch

from ..data.preprocess import make_frame, stack_channels, window
from ..io import Volume, display_spacing, to_display
from .segment import Segmenter


@torch.inference_mode()
def name_prompted_organ(volume: Volume, mask_ras: np.ndarray, weights: str | None = None, device: str = "auto",
                        max_slices: int = 3) -> tuple[str, int, float]:
    """(organ name, label id, probability) for the object in ``mask_ras`` (canonical RAS bool)."""
    seg = Segmenter(weights, device)
    model, o = seg.model, seg.options
    mask_d = to_display(mask_ras.astype(np.uint8)) > 0
    areas = mask_d.reshape(len(mask_d), -1).sum(1)
    if areas.max() == 0:
        raise ValueError("empty mask: nothing to name")
    zs = np.argsort(areas)[::-1][:max_slices]
    zs = zs[areas[zs] > 0]
    slices = volume.axial_slices()
    row_mm, col_mm = display_spacing(volume)
    frame = make_frame(o.framing, slices, row_mm, col_mm, o.spacing_mm)
    images = frame.images(stack_channels(window(slices), zs, o.context))
    boxes = []
    for z in zs:
        rows, cols = np.flatnonzero(mask_d[z].any(1)), np.flatnonzero(mask_d[z].any(0))
        boxes.append(frame.box_to_model(np.array([cols[0], rows[0], cols[-1], rows[-1]], dtype=np.float32)))
    feats = seg._encode(images)
    out = model(features=feats, boxes=torch.as_tensor(np.stack(boxes)))
    probs = out["prompted_class_logits"].float().softmax(1).mean(0)
    probs[0] = 0  # a prompted object is an organ; background is not an answer
    k = int(probs.argmax())
    return model.class_names[k], _label_id(model, k), float(probs[k] / probs.sum())


def _label_id(model, k: int) -> int:
    from ..priors.bank import load_prior_bank

    version = (getattr(model, "config", None) or {}).get("prior_version", "v1")
    return int(load_prior_bank(version).label_ids[k])
