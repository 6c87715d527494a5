"""Small builders shared by the model tests: random prior banks and label-correlated features."""
from __future__ import annotations

import hashlib

import torch
import torch.nn.functional as F

from priorsam.models import EncoderFeatures

try:  # the real dataclass when the priors package provides it
    from priorsam.priors.bank import PriorBank
except ImportError:  # pragma: no cover - only before priorsam.priors.bank existed
    from dataclasses import dataclass

    @dataclass
    class PriorBank:  # same fields as priorsam.priors.bank.PriorBank
        version: str
        class_names: list
        label_ids: list
        texts: list
        embeddings: torch.Tensor
        mask: torch.Tensor
        encoder_id: str
        embedding_sha256: str


def random_bank(num_classes: int = 9, k: int = 4, dim: int = 384, seed: int = 0, version: str = "vtest") -> PriorBank:
    """A prior bank with random unit-norm description embeddings; the last class has one padding row."""
    g = torch.Generator().manual_seed(seed)
    emb = F.normalize(torch.randn(num_classes, k, dim, generator=g), dim=-1)
    mask = torch.ones(num_classes, k, dtype=torch.bool)
    mask[-1, -1] = False
    emb[~mask] = 0
    digest = hashlib.sha256(emb.numpy().tobytes()).hexdigest()
    names = ["background"] + [f"organ{i}" for i in range(1, num_classes)]
    return PriorBank(version=version, class_names=names, label_ids=list(range(num_classes)),
                     texts=[[f"{n} text {j}" for j in range(k)] for n in names], embeddings=emb, mask=mask,
                     encoder_id="random", embedding_sha256=digest)


def blob_labels(batch: int = 2, size: int = 256, num_classes: int = 3, seed: int = 0) -> torch.Tensor:
    """(B, size, size) label maps with one disc per foreground class at random places."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    labels = torch.zeros(batch, size, size, dtype=torch.long)
    for b in range(batch):
        for c in range(1, num_classes):
            cy, cx = (torch.rand(2, generator=g) * 0.5 + 0.25) * size
            r = size * (0.08 + 0.08 * float(torch.rand(1, generator=g)))
            labels[b][(yy - cy) ** 2 + (xx - cx) ** 2 < r ** 2] = c
    return labels


def features_for(labels: torch.Tensor, num_classes: int, seed: int = 0, noise: float = 1.0,
                 skip_channels: tuple[int, int] = (128, 160)) -> EncoderFeatures:
    """Random LiteMedSAM-shaped features in which each class shifts the mean (as a real encoder's would)."""
    g = torch.Generator().manual_seed(seed)
    b = labels.shape[0]

    def make(ch: int, size: int) -> torch.Tensor:
        onehot = F.one_hot(labels, num_classes).permute(0, 3, 1, 2).float()
        area = F.adaptive_avg_pool2d(onehot, size)
        signature = torch.randn(num_classes, ch, generator=g)
        return torch.einsum("bchw,cd->bdhw", area, signature) + noise * torch.randn(b, ch, size, size, generator=g)

    return EncoderFeatures(make(256, 64), (make(skip_channels[0], 128), make(skip_channels[1], 64)))


def dice_per_class(pred: torch.Tensor, labels: torch.Tensor, num_classes: int) -> list[float]:
    out = []
    for c in range(1, num_classes):
        p, t = pred == c, labels == c
        out.append(float(2 * (p & t).sum() / (p.sum() + t.sum()).clamp_min(1)))
    return out
