"""Training losses for PriorSAM.

total = w_full · mean_t DiceCE(round_logits[t], y)            (256², every round incl. origin)
      + w_low  · mean_t DiceCE(round_low_res_logits[t], ȳ)    (64², soft targets ȳ = area fractions)
      + w_presence · BCE(presence_logits, class present in the slice)
      + w_contrast · InfoNCE(region features, prototypes)      (text–region contrastive)
      + w_align · (1 − softDice(σ(binary), softmax(semantic)[prompted class]))   (with prompts)
      + w_prompt_class · CE(prompted_class_logits, prompted class)             (with prompts)

DiceCE equals MONAI's ``DiceCELoss(softmax=True, include_background=True, batch=True)``
(checked in the tests) but is computed without one-hot tensors, because this loss runs at
256² on every round on CPU. Dice is pooled over the batch, so a class missing from one
slice of the batch is not pushed towards an impossible zero.
"""
from __future__ import annotations

from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError


def soft_targets(labels: torch.Tensor, num_classes: int, size: tuple[int, int]) -> torch.Tensor:
    """labels (B, H, W) int -> class area fractions (B, C, h, w) on a grid ``size`` that divides (H, W).

    Counted with one ``bincount`` instead of a full-resolution one-hot (9× the label's size).
    """
    b, hh, ww = labels.shape
    h, w = size
    if hh % h or ww % w:
        raise InputError(f"label size {(hh, ww)} is not a multiple of the low-res grid {(h, w)}")
    fy, fx = hh // h, ww // w
    block = (torch.arange(h, device=labels.device).repeat_interleave(fy)[:, None] * w
             + torch.arange(w, device=labels.device).repeat_interleave(fx)[None, :])  # (H, W) block index
    index = (torch.arange(b, device=labels.device)[:, None, None] * num_classes + labels.long()) * (h * w) + block
    counts = torch.bincount(index.flatten(), minlength=b * num_classes * h * w)
    return counts.view(b, num_classes, h, w).float() / (fy * fx)


def dice_ce_hard(logits: torch.Tensor, labels: torch.Tensor, lambda_ce: float, lambda_dice: float,
                 smooth: float = 1e-5) -> torch.Tensor:
    """Same value as MONAI ``DiceCELoss(to_onehot_y=True, softmax=True, batch=True)`` for
    logits (B, C, H, W) and labels (B, H, W), computed without a one-hot tensor.

    At 256² and 9 classes MONAI's version builds a one-hot and runs softmax and log-softmax
    separately for every round; this one needs one log-softmax, one exp and gathers, which
    is what keeps the full-resolution loss on every round affordable on CPU.
    """
    c = logits.shape[1]
    logp = logits.float().log_softmax(dim=1)
    picked = logp.gather(1, labels[:, None].long())[:, 0]  # (B, H, W) log-prob of the true class
    ce = -picked.mean()
    pred_sum = logp.exp().sum(dim=(0, 2, 3))
    flat = labels.flatten().long()
    inter = torch.zeros(c, device=logits.device, dtype=picked.dtype).scatter_add(0, flat, picked.exp().flatten())
    target_sum = torch.bincount(flat, minlength=c).to(picked.dtype)
    dice = 1.0 - (2.0 * inter + smooth) / (pred_sum + target_sum + smooth)
    return lambda_ce * ce + lambda_dice * dice.mean()


def dice_ce_soft(logits: torch.Tensor, target: torch.Tensor, lambda_ce: float, lambda_dice: float,
                 smooth: float = 1e-5) -> torch.Tensor:
    """MONAI ``DiceCELoss(softmax=True, batch=True)`` value for a probability target (B, C, h, w)."""
    logp = logits.float().log_softmax(dim=1)
    ce = -(target * logp).sum(1).mean()
    p = logp.exp()
    inter = (p * target).sum(dim=(0, 2, 3))
    dice = 1.0 - (2.0 * inter + smooth) / (p.sum(dim=(0, 2, 3)) + target.sum(dim=(0, 2, 3)) + smooth)
    return lambda_ce * ce + lambda_dice * dice.mean()


def soft_dice(a: torch.Tensor, b: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """Per-sample soft Dice of two probability maps (N, H, W) -> (N,)."""
    inter = (a * b).flatten(1).sum(1)
    return (2 * inter + eps) / (a.flatten(1).sum(1) + b.flatten(1).sum(1) + eps)


class PriorSAMLoss(nn.Module):
    """Args:
        w_full, w_low, w_presence, w_contrast, w_align, w_prompt_class: term weights (0 disables).
        lambda_ce, lambda_dice: CE / Dice mix inside DiceCE (0.2 / 0.8 as in PG-SAM).
        contrast_temperature: InfoNCE temperature.
        min_region: minimum area (in 64² pixels) for a class region to enter the contrastive term.
        full_res_every_round: False puts the 256² term on the final round only (the 64² term
            stays on every round) — roughly halves the loss cost at T = 2 on CPU.

    Forward:
        outputs: the dict returned by :meth:`PriorSAM.forward`;
        labels: (B, H, W) or (B, 1, H, W) integer class map at the semantic logits' size;
        prompt_classes: optional (B,) long, class of each slice's prompted object (−1 = none);
            without it the prompted class predicted by the model (detached) is used for alignment.
        -> (total loss scalar, dict of detached parts).
    """

    def __init__(self, w_full: float = 1.0, w_low: float = 0.5, w_presence: float = 0.2,
                 w_contrast: float = 0.1, w_align: float = 0.5, w_prompt_class: float = 0.2,
                 lambda_ce: float = 0.2, lambda_dice: float = 0.8, contrast_temperature: float = 0.1,
                 min_region: float = 1.0, full_res_every_round: bool = True) -> None:
        super().__init__()
        self.w = dict(full=w_full, low=w_low, presence=w_presence, contrast=w_contrast, align=w_align,
                      prompt_class=w_prompt_class)
        self.mix = (lambda_ce, lambda_dice)
        self.temperature = contrast_temperature
        self.min_region = min_region
        self.full_res_every_round = full_res_every_round

    def forward(self, outputs: Mapping[str, Any], labels: torch.Tensor,
                prompt_classes: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        logits = outputs["semantic_logits"]
        b, c, h, w = logits.shape
        if labels.ndim == 4:
            labels = labels[:, 0]
        if labels.shape != (b, h, w):
            raise InputError(f"labels must be (B,{h},{w}) to match the logits, got {tuple(labels.shape)}")
        labels = labels.long()
        if int(labels.min()) < 0 or int(labels.max()) >= c:
            raise InputError(f"label values must lie in [0,{c - 1}], got [{int(labels.min())},{int(labels.max())}]")
        parts: dict[str, torch.Tensor] = {}
        rounds = outputs.get("round_logits", [logits]) if self.full_res_every_round else [logits]
        parts["full"] = torch.stack([dice_ce_hard(r, labels, *self.mix) for r in rounds]).mean()

        low_rounds = outputs.get("round_low_res_logits", [outputs["low_res_logits"]])
        low_size = tuple(low_rounds[0].shape[-2:])
        soft = soft_targets(labels, c, low_size)
        parts["low"] = torch.stack([dice_ce_soft(r, soft, *self.mix) for r in low_rounds]).mean()

        present = soft.flatten(2).amax(-1)  # (B, C) 1 where the class occurs at all
        parts["presence"] = F.binary_cross_entropy_with_logits(outputs["presence_logits"], present)

        if self.w["contrast"] > 0 and "pixel_features" in outputs:
            parts["contrast"] = self._contrast(outputs["pixel_features"], outputs["prototypes"], soft)

        if "binary_logits" in outputs:
            prompted = outputs.get("prompted_class_logits")
            if prompt_classes is None:
                cls = prompted.detach().argmax(1)
                valid = torch.ones(b, dtype=torch.bool, device=logits.device)
            else:
                cls = prompt_classes.to(logits.device).long()
                valid = cls >= 0
                if valid.any() and prompted is not None:
                    parts["prompt_class"] = F.cross_entropy(prompted[valid], cls[valid])
            if valid.any():
                sem = logits.softmax(1)[valid, cls[valid]]
                binary = torch.sigmoid(outputs["binary_logits"][valid, 0])
                if binary.shape[-2:] != sem.shape[-2:]:
                    binary = F.interpolate(binary[:, None], size=sem.shape[-2:], mode="bilinear",
                                           align_corners=False)[:, 0]
                parts["align"] = (1 - soft_dice(binary, sem)).mean()

        total = sum(self.w[k] * v for k, v in parts.items())
        return total, {k: v.detach() for k, v in parts.items()}

    def _contrast(self, pixels: torch.Tensor, prototypes: torch.Tensor, soft: torch.Tensor) -> torch.Tensor:
        """InfoNCE: each present class's mean pixel feature must be closest to its own prototype.

        pixels (B, D, h, w), prototypes (B, C, D), soft (B, C, h', w') area fractions.
        """
        if soft.shape[-2:] != pixels.shape[-2:]:
            soft = F.adaptive_avg_pool2d(soft, pixels.shape[-2:])
        area = soft.flatten(2).sum(-1)  # (B, C)
        # Mean of the raw features (SAM's neck ends in a LayerNorm, so pixel norms are
        # comparable); only the region means are normalised.
        region = torch.einsum("bchw,bdhw->bcd", soft, pixels) / area.clamp_min(1e-6).unsqueeze(-1)
        sims = torch.einsum("bcd,bkd->bck", F.normalize(region, dim=-1), F.normalize(prototypes, dim=-1))
        keep = area >= self.min_region
        if not keep.any():
            return sims.sum() * 0.0
        target = torch.arange(soft.shape[1], device=sims.device).expand_as(area)
        return F.cross_entropy(sims[keep] / self.temperature, target[keep])
