"""Prior aligner: text descriptions -> class prototypes, semantic guide matrix, text-enhanced features.

Why this shape: in PG-SAM a cosine scalar scaled the guide matrix and a LayerNorm over
channels then cancelled it, so the text did not matter. Here the guide is a per-pixel
cosine similarity to per-class prototypes (C maps, not a scalar), and it enters the image
features additively through a learned 1×1 projection and a pixel→prototype attention
read-out, with no normalisation afterwards, so changing the text changes the features.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class PriorAligner(nn.Module):
    """Aligns the prior bank's sentence embeddings with SAM image features.

    Args:
        num_classes: C, classes including background (from the prior bank).
        text_dim: sentence-embedding width D_text (384 for all-MiniLM-L6-v2).
        img_dim: image-embedding width (256).
        use_text: False replaces the text by learned class embeddings (ablation baseline
            with the same downstream computation).
        init_temperature: initial scale of the cosine guide (learned, kept in [1, 100]).
        out_dim: width of the text-enhanced features (default img_dim). PriorSAM sets it to
            its decoder width: the image is then projected once by a 1×1 conv and the guide
            terms are added at that width, instead of adding 256-wide maps and projecting
            afterwards (same function class, a fraction of the CPU cost).

    Forward:
        text (C, K, D_text) float, text_mask (C, K) bool (True = real description),
        image (B, img_dim, h, w) ->
        prototypes (B, C, img_dim), guide (B, C, h, w), enhanced (B, out_dim, h, w).
    """

    def __init__(self, num_classes: int, text_dim: int = 384, img_dim: int = 256, use_text: bool = True,
                 init_temperature: float = 10.0, out_dim: int | None = None) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.img_dim = img_dim
        self.use_text = use_text
        if use_text:
            self.text_proj = nn.Sequential(nn.Linear(text_dim, img_dim), nn.GELU(), nn.Linear(img_dim, img_dim))
            # Attention pooling over the K descriptions: the query comes from the image's
            # global context, so each image weights its class descriptions differently.
            self.pool_query = nn.Linear(img_dim, img_dim)
            self.pool_key = nn.Linear(img_dim, img_dim)
        else:
            self.class_embed = nn.Parameter(torch.randn(num_classes, img_dim) * 0.02)
        # Maps pooled text into the image-embedding space, where the guide is measured.
        self.to_image_space = nn.Linear(img_dim, img_dim)
        self.log_temperature = nn.Parameter(torch.tensor(math.log(init_temperature)))
        self.guide_bias = nn.Parameter(torch.zeros(num_classes))
        out_dim = out_dim or img_dim
        self.out_dim = out_dim
        self.image_proj = nn.Identity() if out_dim == img_dim else nn.Conv2d(img_dim, out_dim, kernel_size=1)
        self.guide_proj = nn.Conv2d(num_classes, out_dim, kernel_size=1)
        self.value_proj = nn.Linear(img_dim, out_dim)
        nn.init.zeros_(self.value_proj.bias)

    @property
    def temperature(self) -> torch.Tensor:
        return self.log_temperature.clamp(0.0, math.log(100.0)).exp()

    def prototypes(self, text: torch.Tensor | None, text_mask: torch.Tensor | None,
                   image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Class prototypes (B, C, img_dim) in image-embedding space, and the pooling weights (B, C, K)."""
        b = image.shape[0]
        if not self.use_text:
            return self.to_image_space(self.class_embed).unsqueeze(0).expand(b, -1, -1), None
        assert text is not None and text_mask is not None
        t = self.text_proj(text)  # (C, K, D)
        query = self.pool_query(image.mean(dim=(2, 3)))  # (B, D)
        keys = self.pool_key(t)  # (C, K, D)
        scores = torch.einsum("bd,ckd->bck", query, keys) / math.sqrt(self.img_dim)
        scores = scores.masked_fill(~text_mask.bool().unsqueeze(0), float("-inf"))
        weights = scores.softmax(dim=-1)
        # A class with no description at all would give NaN weights; it gets a zero prototype.
        weights = torch.nan_to_num(weights, nan=0.0)
        pooled = torch.einsum("bck,ckd->bcd", weights, t)
        return self.to_image_space(pooled), weights

    def forward(self, text: torch.Tensor | None, text_mask: torch.Tensor | None,
                image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        protos, _ = self.prototypes(text, text_mask, image)
        guide = self.guide(protos, image)
        # Pixel -> prototype attention read-out; the softmax over classes makes each pixel
        # pull in the prototype of the class it resembles.
        attn = guide.softmax(dim=1)
        readout = torch.einsum("bchw,bcd->bdhw", attn, self.value_proj(protos))
        enhanced = self.image_proj(image) + self.guide_proj(guide) + readout
        return protos, guide, enhanced

    def guide(self, protos: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        """Scaled cosine similarity: protos (B, C, D), image (B, D, h, w) -> (B, C, h, w)."""
        p = F.normalize(protos, dim=-1)
        # Divide by the pixel norms after the product: avoids a normalised copy of the image.
        cos = torch.einsum("bcd,bdhw->bchw", p, image) / image.norm(dim=1, keepdim=True).clamp_min(1e-6)
        return self.temperature * cos + self.guide_bias.view(1, -1, 1, 1)
