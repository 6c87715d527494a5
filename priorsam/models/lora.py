"""Low-rank adaptation of frozen linear layers (used on the encoders' attention qkv)."""
from __future__ import annotations

import math

import torch
from torch import nn


class LoRALinear(nn.Module):
    """``base(x) + (alpha / rank) * x A^T B^T`` with ``base`` frozen.

    ``B`` starts at zero so a freshly wrapped layer computes exactly what ``base`` did;
    only ``lora_a`` (rank × in) and ``lora_b`` (out × rank) train.

    Args:
        base: the pretrained linear layer to adapt; its parameters are frozen in place.
        rank: rank of the update (≥ 1).
        alpha: scaling numerator; the update is scaled by ``alpha / rank``.
    """

    def __init__(self, base: nn.Linear, rank: int, alpha: float = 1.0) -> None:
        super().__init__()
        if rank < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {rank}")
        self.base = base
        for p in self.base.parameters():
            p.requires_grad_(False)
        self.rank = rank
        self.scaling = alpha / rank
        self.lora_a = nn.Parameter(torch.empty(rank, base.in_features))
        self.lora_b = nn.Parameter(torch.zeros(base.out_features, rank))
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., in) -> (..., out)."""
        return self.base(x) + (x @ self.lora_a.t() @ self.lora_b.t()) * self.scaling


def apply_lora(module: nn.Module, rank: int, alpha: float = 1.0, target: str = "qkv") -> int:
    """Replace every ``nn.Linear`` attribute named ``target`` under ``module`` by a LoRALinear.

    Returns how many layers were wrapped (0 means the name matched nothing — a wiring bug).
    """
    wrapped = 0
    for parent in list(module.modules()):
        child = getattr(parent, target, None)
        if isinstance(child, nn.Linear):
            setattr(parent, target, LoRALinear(child, rank, alpha))
            wrapped += 1
    return wrapped
