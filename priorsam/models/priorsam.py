"""PriorSAM: the whole model in one module.

Data flow per 2D slice (shapes for the default ``lite`` encoder, C classes incl. background):

    images (B,3,256,256) --encoder--> EncoderFeatures(embedding (B,256,64,64), skips)
    embedding --PriorAligner(text)--> prototypes (B,C,256), guide (B,C,64,64), enhanced (B,d,64,64)
    enhanced, prototypes[, box tokens] --SemanticAwareDecoder--> src (B,d,64,64), kernels, presence
    src, skips, guide --MultiLevelFusion--> low (B,d,64,64), full (B,f,256,256)
    kernels · features --> low_res_logits (B,C,64,64), origin logits (B,C,256,256)
    origin --IterativeMaskOptimizer (T rounds)--> round_logits; semantic_logits = last round
    embedding, boxes --BinaryPromptPath (pretrained SAM decoder)--> binary_logits (B,1,256,256)

Embeddings of another size (``vit_b`` gives img/16: 14², 16² or 32²) are resized bilinearly
to 64×64 before the heads, so heads, fusion and binary path always work on a 64² grid.

The prior bank's embeddings are buffers, so they travel in the state dict together with the
prior version and embedding hash (as uint8 tensors, to keep the state dict tensors-only and
loadable with ``torch.load(weights_only=True)``).
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import AssetError, InputError
from .binary_path import BinaryPromptPath
from .fusion import MultiLevelFusion
from .image_encoder import EncoderFeatures, build_image_encoder
from .mask_optimizer import IterativeMaskOptimizer
from .prior_aligner import PriorAligner
from .refinement import RefineOptions, refine_to_labels
from .semantic_decoder import SemanticAwareDecoder

GRID = 64  # the heads' embedding grid (SAM prompt encoder's image_embedding_size for LiteMedSAM)
FROZEN_PREFIXES = ("encoder.", "binary.")


def _str_to_tensor(text: str) -> torch.Tensor:
    return torch.tensor(list(text.encode("utf-8")), dtype=torch.uint8)


def to_head_grid(embedding: torch.Tensor) -> torch.Tensor:
    """(B,256,h,w) image embedding → (B,256,64,64), the grid the heads and the binary path work on."""
    if tuple(embedding.shape[-2:]) != (GRID, GRID):
        embedding = F.interpolate(embedding, size=(GRID, GRID), mode="bilinear", align_corners=False)
    return embedding


def tensor_to_str(t: torch.Tensor) -> str:
    """Decode a uint8 buffer written by PriorSAM back to a string."""
    return bytes(t.to(torch.uint8).tolist()).decode("utf-8")


class PriorSAM(nn.Module):
    """Text-prior-guided SAM for multi-organ segmentation of 2D slices.

    Args:
        encoder: an encoder module (``LiteImageEncoder``/``ViTBImageEncoder``), a name for
            :func:`build_image_encoder`, or None for a heads-only model that runs from cached
            :class:`EncoderFeatures`.
        prior_bank: object with ``embeddings`` (C,K,D) float, ``mask`` (C,K) bool, ``version``,
            ``embedding_sha256`` and ``class_names`` (the ``PriorBank`` of ``priorsam.priors``).
            Alternatively pass ``text_embeddings``, ``text_mask``, ``prior_version`` and
            ``embedding_sha256`` explicitly. C (classes incl. background) comes from here.
        skip_channels: channels of the encoder's two skips; taken from the encoder when one is
            given, else (128, 160) — LiteMedSAM's.
        dim: semantic-decoder width; fusion_mid/fusion_out: fused channels at 128² / 256².
        decoder_depth, num_heads, mlp_dim: two-way transformer configuration.
        refine_rounds: T of the iterative mask optimizer; refine_hidden its width.
        use_text: False replaces the text priors by learned class embeddings (ablation).
        binary_path: build the pretrained SAM box-prompt path (needed for ``boxes=``).
        pretrained: load pretrained LiteMedSAM parts (encoder by name, binary path);
            False gives random ones of the same shape (tests).
        encoder_kwargs: extra arguments for :func:`build_image_encoder` when ``encoder`` is a name.
        device: where pretrained parts are loaded.
    """

    def __init__(self, encoder: nn.Module | str | None = "lite", prior_bank: Any = None, *,
                 text_embeddings: torch.Tensor | None = None, text_mask: torch.Tensor | None = None,
                 prior_version: str = "", embedding_sha256: str = "", class_names: list[str] | None = None,
                 label_ids: list[int] | None = None,
                 skip_channels: tuple[int, int] | None = None, dim: int = 64, fusion_mid: int = 32,
                 fusion_out: int = 16, decoder_depth: int = 2, num_heads: int = 2, mlp_dim: int = 256,
                 refine_rounds: int = 2, refine_hidden: int = 8, use_text: bool = True,
                 binary_path: bool = True, pretrained: bool = True,
                 encoder_kwargs: Mapping[str, Any] | None = None, device: str = "cpu") -> None:
        super().__init__()
        if prior_bank is not None:
            text_embeddings, text_mask = prior_bank.embeddings, prior_bank.mask
            prior_version, embedding_sha256 = prior_bank.version, prior_bank.embedding_sha256
            class_names = list(prior_bank.class_names)
            label_ids = list(prior_bank.label_ids)
        if text_embeddings is None or text_mask is None:
            raise InputError("PriorSAM needs a prior bank (or text_embeddings and text_mask)")
        text_embeddings = torch.as_tensor(text_embeddings, dtype=torch.float32)
        text_mask = torch.as_tensor(text_mask).bool()
        if text_embeddings.ndim != 3 or tuple(text_mask.shape) != tuple(text_embeddings.shape[:2]):
            raise InputError(f"prior embeddings must be (C,K,D) with a (C,K) mask; got "
                             f"{tuple(text_embeddings.shape)} and {tuple(text_mask.shape)}")
        num_classes, _, text_dim = text_embeddings.shape
        self.num_classes = int(num_classes)
        self.class_names = class_names or [str(i) for i in range(num_classes)]
        # Class index → label id of the written label map; the one place classes become label ids.
        self.label_ids = [int(v) for v in (label_ids if label_ids is not None else range(num_classes))]
        if len(self.label_ids) != self.num_classes:
            raise InputError(f"{len(self.label_ids)} label ids for {self.num_classes} classes")
        self.register_buffer("text_embeddings", text_embeddings.clone())
        self.register_buffer("text_mask", text_mask.clone())
        self.register_buffer("prior_version", _str_to_tensor(prior_version))
        self.register_buffer("prior_hash", _str_to_tensor(embedding_sha256))

        if isinstance(encoder, str):
            encoder = build_image_encoder(encoder, **{"pretrained": pretrained, **dict(encoder_kwargs or {})})
        self.encoder = encoder
        if encoder is not None:
            skip_channels = tuple(encoder.skip_channels)
        skip_channels = tuple(skip_channels or (128, 160))

        self.aligner = PriorAligner(self.num_classes, text_dim=int(text_dim), img_dim=256, use_text=use_text,
                                    out_dim=dim)
        self.decoder = SemanticAwareDecoder(img_dim=dim, dim=dim, full_dim=fusion_out, depth=decoder_depth,
                                            num_heads=num_heads, mlp_dim=mlp_dim)
        self.fusion = MultiLevelFusion(in_dim=dim, skip_channels=skip_channels, num_classes=self.num_classes,
                                       mid_dim=fusion_mid, out_dim=fusion_out)
        self.mask_optimizer = IterativeMaskOptimizer(feat_dim=dim, hidden=refine_hidden, rounds=refine_rounds)
        self.binary = BinaryPromptPath(pretrained=pretrained, device=device) if binary_path else None
        # The 3D organ localiser (models.localiser), attached by models.spec.build_model when the spec has one.
        self.localiser: nn.Module | None = None

    # ------------------------------------------------------------------ identity
    @property
    def prior_identity(self) -> tuple[str, str]:
        """(prior version, embedding sha256) these weights were built with."""
        return tensor_to_str(self.prior_version), tensor_to_str(self.prior_hash)

    # ------------------------------------------------------------------ forward
    def encode(self, images: torch.Tensor) -> EncoderFeatures:
        """images (B,3,S,S) in [0,1] -> EncoderFeatures (what a feature cache stores)."""
        if self.encoder is None:
            raise InputError("this PriorSAM has no image encoder; pass precomputed features=")
        return self.encoder(images)

    def forward(self, images: torch.Tensor | None = None, features: EncoderFeatures | None = None,
                boxes: torch.Tensor | None = None) -> dict[str, Any]:
        """Segment a batch of slices.

        Args:
            images: (B,3,S,S) in [0,1] — or give ``features`` from the (frozen) encoder instead.
            features: precomputed :class:`EncoderFeatures` (or a (embedding, skips) pair).
            boxes: optional (B,4) box prompts [x0,y0,x1,y1] in 256-px model coordinates.

        Returns dict:
            semantic_logits (B,C,256,256) final round; round_logits list of T+1 (B,C,256,256)
            (origin first); low_res_logits (B,C,64,64) final round; round_low_res_logits list of
            T+1 (B,C,64,64); presence_logits (B,C); guide (B,C,64,64);
            prototypes (B,C,256); pixel_features (B,256,64,64) (the image embedding, for the
            contrastive loss); with boxes also binary_logits (B,1,256,256), binary_iou (B,1)
            and prompted_class_logits (B,C).
        """
        if features is None:
            if images is None:
                raise InputError("PriorSAM.forward needs images or features")
            features = self.encode(images)
        embedding, skips = features[0], tuple(features[1])
        if embedding.ndim != 4 or embedding.shape[1] != 256:
            raise InputError(f"image embedding must be (B,256,h,w), got {tuple(embedding.shape)}")
        if len(skips) != 2:
            raise InputError(f"expected two skip features, got {len(skips)}")
        embedding = to_head_grid(embedding)

        text = self.text_embeddings if self.aligner.use_text else None
        mask = self.text_mask if self.aligner.use_text else None
        protos, guide, enhanced = self.aligner(text, mask, embedding)

        prompt_tokens = None
        if boxes is not None:
            if self.binary is None:
                raise InputError("box prompts need the binary path (PriorSAM(binary_path=True))")
            boxes = self.binary.check_boxes(boxes, embedding.shape[0])
            prompt_tokens = self.binary.box_tokens(boxes)

        dec = self.decoder(enhanced, protos, prompt_tokens)
        low, full = self.fusion(dec.src, skips, guide)
        low_res = self.decoder.apply_kernels(dec.kernels_low, low)
        low_rounds, rounds = self.mask_optimizer(low_res, self.decoder.apply_kernels(dec.kernels_full, full), low)
        out: dict[str, Any] = {
            "semantic_logits": rounds[-1],
            "round_logits": rounds,
            "low_res_logits": low_rounds[-1],
            "round_low_res_logits": low_rounds,
            "presence_logits": dec.presence_logits,
            "guide": guide,
            "prototypes": protos,
            "pixel_features": embedding,
        }
        if boxes is not None:
            out["binary_logits"], out["binary_iou"] = self.binary(embedding, boxes)
            out["prompted_class_logits"] = dec.prompted_class_logits
        return out

    @torch.inference_mode()
    def segment_slices(self, features: EncoderFeatures, guide: torch.Tensor | None = None,
                       options: RefineOptions | None = None, binary=None,
                       prompts: torch.Tensor | None = None) -> torch.Tensor:
        """Prompt-free labels of a batch of slices: heads, then coarse-to-fine refinement
        (:mod:`priorsam.models.refinement`).

        Args:
            features: the encoder's features of (N,3,256,256) slices.
            guide: optional (N,C,4) boxes of a 3D localiser in model pixels (NaN: class not expected in
                that slice; +inf: class not found by the localiser, the heads decide alone).
            options: presence gating, refinement rounds, box source.
            binary: another runtime of this model's box-prompt path (e.g.
                :class:`~.openvino_binary_path.OpenVinoBinaryPath`); None: :attr:`binary` itself.
            prompts: optional (N,C,4) box prompts from the localiser's own mask (NaN: none in that slice),
                used by ``options.box_source == "localiser"``.

        Returns (N,C,256,256) one-hot class scores in model space (class indices; :meth:`to_label_ids`
        turns them into label ids).
        """
        out = self(features=features)
        return refine_to_labels(out, to_head_grid(features[0]), binary if binary is not None else self.binary,
                                guide, options or RefineOptions(), prompts)

    def to_label_ids(self, classes):
        """Class indices (an integer array) → the label ids of the written label map."""
        lut = np.asarray(self.label_ids, dtype=np.uint8)
        if np.array_equal(lut, np.arange(len(lut))):
            return classes
        return lut[np.asarray(classes)]

    # ------------------------------------------------------------------ weights
    def _is_frozen_key(self, key: str, trainable_names: set[str]) -> bool:
        return key.startswith(FROZEN_PREFIXES) and key not in trainable_names

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """State dict without the frozen pretrained parts (LiteMedSAM/ViT encoder, SAM prompt
        encoder and mask decoder), which load from their packages; LoRA weights are kept.
        Tensors only: save with ``torch.save``, load with ``torch.load(weights_only=True)``."""
        trainable = {n for n, p in self.named_parameters() if p.requires_grad}
        return {k: v.detach().clone() for k, v in self.state_dict().items()
                if not self._is_frozen_key(k, trainable)}

    def load_trainable_state_dict(self, state: Mapping[str, torch.Tensor], prior_bank: Any = None) -> None:
        """Load weights saved by :meth:`trainable_state_dict`.

        Raises AssetError (one line) if the checkpoint's prior version or embedding hash
        differs from ``prior_bank`` (or, without one, from this model's own priors), or if
        its keys do not fit this architecture.
        """
        if "prior_version" not in state or "prior_hash" not in state:
            raise AssetError("checkpoint does not record its prior version and embedding hash")
        ck_version, ck_hash = tensor_to_str(state["prior_version"]), tensor_to_str(state["prior_hash"])
        if prior_bank is not None:
            want_version, want_hash = prior_bank.version, prior_bank.embedding_sha256
        else:
            want_version, want_hash = self.prior_identity
        if (ck_version, ck_hash) != (want_version, want_hash):
            raise AssetError(f"checkpoint was trained with priors {ck_version} (embeddings {ck_hash[:12]}…) "
                             f"but priors {want_version} (embeddings {want_hash[:12]}…) are loaded")
        trainable = {n for n, p in self.named_parameters() if p.requires_grad}
        expected = {k for k in self.state_dict() if not self._is_frozen_key(k, trainable)}
        missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
        if missing or unexpected:
            raise AssetError(f"checkpoint does not fit this PriorSAM configuration: "
                             f"missing {missing[:3]}, unexpected {unexpected[:3]}")
        own = self.state_dict()
        for k in expected:
            if own[k].shape != state[k].shape:
                raise AssetError(f"checkpoint does not fit this PriorSAM configuration: {k} is "
                                 f"{tuple(state[k].shape)}, model has {tuple(own[k].shape)}")
        self.load_state_dict(dict(state), strict=False)
