"""Semantic-aware decoder: a two-way transformer over text-summary, classification and prompt tokens.

Query tokens (all width ``dim``):
  * C text-summary tokens — the class prototypes; their outputs become per-class mask kernels
    through a hypernetwork MLP (one MLP shared by all classes, so C comes from the prior bank);
  * C classification tokens — prototype + a learned type embedding; their outputs give the
    presence logit of each class;
  * when a box prompt is given, one segmentation-oriented token followed by SAM's two box
    tokens (from the pretrained prompt encoder); its output names the prompted object's class
    by a scaled dot product with the text-summary outputs (SEG-SAM style).
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
from segment_anything.modeling import TwoWayTransformer
from segment_anything.modeling.mask_decoder import MLP
from segment_anything.modeling.prompt_encoder import PositionEmbeddingRandom
from torch import nn


class DecoderOutput(NamedTuple):
    """src (B, dim, h, w) attended image features; kernels_low (B, C, dim) and kernels_full
    (B, C, full_dim) per-class mask kernels; presence_logits (B, C); prompted_class_logits
    (B, C) or None without prompts."""

    src: torch.Tensor
    kernels_low: torch.Tensor
    kernels_full: torch.Tensor
    presence_logits: torch.Tensor
    prompted_class_logits: torch.Tensor | None


class SemanticAwareDecoder(nn.Module):
    """Args:
        img_dim: width of the text-enhanced image features (projected to ``dim`` by a 1×1
            conv unless it already equals ``dim``).
        dim: transformer width.
        proto_dim: width of the prototypes (256).
        full_dim: channels of the full-resolution fused features the kernels apply to.
        depth, num_heads, mlp_dim: TwoWayTransformer configuration.
        prompt_dim: width of SAM's prompt tokens (256).

    Forward:
        image (B, img_dim, h, w), prototypes (B, C, proto_dim), prompt_tokens (B, P, prompt_dim) or None
        -> :class:`DecoderOutput`.
    """

    def __init__(self, img_dim: int = 256, dim: int = 128, full_dim: int = 16, depth: int = 2,
                 num_heads: int = 4, mlp_dim: int = 256, prompt_dim: int = 256, proto_dim: int = 256) -> None:
        super().__init__()
        self.dim = dim
        self.in_proj = nn.Identity() if img_dim == dim else nn.Conv2d(img_dim, dim, kernel_size=1)
        self.proto_proj = nn.Linear(proto_dim, dim)
        self.prompt_proj = nn.Linear(prompt_dim, dim)
        self.pe = PositionEmbeddingRandom(dim // 2)
        # Type embeddings: [summary, classification, segmentation]
        self.type_embed = nn.Embedding(3, dim)
        self.transformer = TwoWayTransformer(depth=depth, embedding_dim=dim, num_heads=num_heads,
                                             mlp_dim=mlp_dim, attention_downsample_rate=2)
        self.hyper = MLP(dim, dim, dim + full_dim, 3)
        self.presence_head = MLP(dim, dim, 1, 2)
        self.seg_head = MLP(dim, dim, dim, 2)
        self.full_dim = full_dim

    def forward(self, image: torch.Tensor, prototypes: torch.Tensor,
                prompt_tokens: torch.Tensor | None = None) -> DecoderOutput:
        b, _, h, w = image.shape
        c = prototypes.shape[1]
        src = self.in_proj(image)
        pos = self.pe((h, w)).unsqueeze(0).expand(b, -1, -1, -1)
        protos = self.proto_proj(prototypes)
        tokens = [protos + self.type_embed.weight[0], protos + self.type_embed.weight[1]]
        if prompt_tokens is not None:
            seg = self.type_embed.weight[2].expand(b, 1, -1)
            tokens = [seg, self.prompt_proj(prompt_tokens)] + tokens
        queries = torch.cat(tokens, dim=1)
        hs, keys = self.transformer(src, pos, queries)
        src = keys.transpose(1, 2).reshape(b, self.dim, h, w)

        summary, classify = hs[:, -2 * c:-c], hs[:, -c:]
        kernels = self.hyper(summary)
        presence = self.presence_head(classify).squeeze(-1)
        prompted = None
        if prompt_tokens is not None:
            prompted = torch.einsum("bd,bcd->bc", self.seg_head(hs[:, 0]), summary) / math.sqrt(self.dim)
        return DecoderOutput(src, kernels[..., :self.dim], kernels[..., self.dim:], presence, prompted)

    @staticmethod
    def apply_kernels(kernels: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """kernels (B, C, F), features (B, F, H, W) -> per-class logits (B, C, H, W)."""
        return torch.einsum("bcf,bfhw->bchw", kernels, features)
