"""Name a box-prompted object with PriorSAM's semantic-aware decoder (SEG-SAM).

The prompted box goes through SAM's prompt encoder into the decoder's segmentation-oriented
token, whose class logits say which organ the box holds. The slices where the binary mask
is largest are asked and their probabilities averaged.
"""
from __future__ import annotations

import numpy as np
import torch

from ..data.framed_volume import FramedVolume
from ..io import Volume, to_display
from ..models.refinement import mask_box
from .segment import Segmenter


@torch.inference_mode()
def name_prompted_organ(volume: Volume, mask_ras: np.ndarray, weights: str | None = None, device: str = "auto",
                        max_slices: int = 3, segmenter: Segmenter | None = None) -> tuple[str, int, float]:
    """(organ name, label id, probability) for the object in ``mask_ras`` (canonical RAS bool).

    ``segmenter``: a loaded :class:`Segmenter` to use instead of loading ``weights`` (several names in
    one process load the model once)."""
    seg = segmenter or Segmenter(weights, device)
    model = seg.model
    mask_d = to_display(mask_ras.astype(np.uint8)) > 0
    areas = mask_d.reshape(len(mask_d), -1).sum(1)
    if areas.max() == 0:
        raise ValueError("empty mask: nothing to name")
    zs = np.argsort(areas)[::-1][:max_slices]
    zs = zs[areas[zs] > 0]
    framed = FramedVolume.from_volume(volume, seg.framing())
    boxes = np.stack([framed.box_to_model(mask_box(mask_d[z])) for z in zs])
    out = model(features=seg.features(framed.images(zs)), boxes=torch.as_tensor(boxes))
    probs = out["prompted_class_logits"].float().softmax(1).mean(0)
    probs[0] = 0  # a prompted object is an organ; background is not an answer
    k = int(probs.argmax())
    return model.class_names[k], int(model.label_ids[k]), float(probs[k] / probs.sum())
