"""Name a box-prompted object with PriorSAM's semantic decoder (SEG-SAM's naming of a prompted object).

The slices where the object's mask is largest go through PriorSAM once, with the mask's box as the
prompt. By default ("pixels") the heads' per-pixel organ probabilities, averaged over the mask, name
it; the decoder's class logits for the prompted box ("prompt_class", SEG-SAM's own route) are the
other rule. Chosen by measurement (bench/results/naming.md, rule written down before): over 120
labelled organ masks of the sample CT and 14 pseudo-patient volumes "pixels" named 113 right,
"prompt_class" 54 (never the spleen, the left kidney, the gallbladder or the pancreas).
"""
from __future__ import annotations

import numpy as np
import torch

from ..data.framed_volume import FramedVolume
from ..io import Volume, to_display
from ..models.refinement import mask_box
from .segment import Segmenter

NAMING_RULES = ("prompt_class", "pixels")


@torch.inference_mode()
def prompted_organ_names(volume: Volume, mask_ras: np.ndarray, segmenter: Segmenter,
                         max_slices: int = 3) -> dict[str, tuple[str, int, float]]:
    """Every rule's (organ name, label id, probability) for the object in ``mask_ras`` (canonical RAS
    bool), from one forward pass over the ``max_slices`` slices where the mask is largest.

    "pixels": the heads' per-pixel organ probabilities averaged over the mask; "prompt_class": the
    decoder's class logits for the mask's box. Background is left out; the probability is the organ's
    share of the organs' total."""
    model = segmenter.model
    mask_d = to_display(mask_ras.astype(np.uint8)) > 0
    areas = mask_d.reshape(len(mask_d), -1).sum(1)
    if areas.max() == 0:
        raise ValueError("empty mask: nothing to name")
    zs = np.argsort(areas)[::-1][:max_slices]
    zs = zs[areas[zs] > 0]
    framed = FramedVolume.from_volume(volume, segmenter.framing())
    boxes = np.stack([framed.box_to_model(mask_box(mask_d[z])) for z in zs])
    out = model(features=segmenter.features(framed.images(zs)), boxes=torch.as_tensor(boxes))
    maps = framed.maps_from_model(out["semantic_logits"].float().softmax(1))      # (n, C, H, W)
    inside = torch.as_tensor(mask_d[zs], device=maps.device)
    scores = {"pixels": maps.permute(1, 0, 2, 3)[:, inside].mean(1),
              "prompt_class": out["prompted_class_logits"].float().softmax(1).mean(0)}
    names = {}
    for rule, probs in scores.items():
        probs[0] = 0  # a prompted object is an organ; background is not an answer
        k = int(probs.argmax())
        names[rule] = (model.class_names[k], int(model.label_ids[k]), float(probs[k] / probs.sum()))
    return names


def name_prompted_organ(volume: Volume, mask_ras: np.ndarray, weights: str | None = None, device: str = "auto",
                        max_slices: int = 3, segmenter: Segmenter | None = None,
                        rule: str = "pixels") -> tuple[str, int, float]:
    """(organ name, label id, probability) for the object in ``mask_ras`` (canonical RAS bool) by one
    rule of :func:`prompted_organ_names` ("pixels" by default, the measured better one).

    ``segmenter``: a loaded :class:`Segmenter` to use instead of loading ``weights`` (several names in
    one process load the model once)."""
    if rule not in NAMING_RULES:
        raise ValueError(f"rule must be one of {', '.join(NAMING_RULES)}, not {rule!r}")
    return prompted_organ_names(volume, mask_ras, segmenter or Segmenter(weights, device), max_slices)[rule]
