"""The pretrained SAM box-prompt path (LiteMedSAM's prompt encoder and mask decoder) compiled by
OpenVINO: the CPU runtime of the coarse-to-fine refinement, which decodes one box per organ and slice.

On this project's CPU machine PyTorch takes ≈ 0.07 s per (slice, box) pair; OpenVINO ≈ 0.04 s at fp32
and ≈ 0.02 s where it picks bf16 by itself (CPUs with AVX512-BF16 or AMX), with pairs run as parallel
infer requests (throughput mode) like the encoder (docs/benchmarks.md). The graph is converted from
the model's own :class:`~.binary_path.BinaryPromptPath` modules, so it always holds the weights the
model holds; the converted IR is kept in the user cache under a hash of those weights.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .binary_path import BinaryPromptPath
from .cpu_runtime import OpenVinoCompiled, cached_ir, ir_path, save_ir, state_digest


class _OnePair(nn.Module):
    """embedding (1,256,64,64), box (1,4) → mask logits (1,1,256,256), IoU estimate (1,1)."""

    def __init__(self, path: BinaryPromptPath):
        super().__init__()
        self.prompt_encoder = path.prompt_encoder
        self.mask_decoder = path.mask_decoder

    def forward(self, embedding: torch.Tensor, boxes: torch.Tensor):
        sparse, dense = self.prompt_encoder(points=None, boxes=boxes, masks=None)
        return self.mask_decoder(image_embeddings=embedding, image_pe=self.prompt_encoder.get_dense_pe(),
                                 sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                 multimask_output=False)


def weights_digest(path: BinaryPromptPath) -> str:
    """sha256 over the path's tensors, the key of its cached IR."""
    return state_digest(path.state_dict())


def export_ir(path: BinaryPromptPath) -> Path:
    """Convert ``path`` to OpenVINO IR in the user cache (atomic; reused when present)."""
    import openvino as ov

    xml = ir_path(f"box_decoder_{weights_digest(path)[:16]}")
    if cached_ir(xml):
        return xml
    graph = _OnePair(path).eval()
    # The tracer warns about the decoder's batch-size check and a square root; both are constants for
    # the one-pair graph (the test compares it with PyTorch on several boxes).
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = ov.convert_model(graph, example_input=(torch.zeros(1, 256, 64, 64),
                                                       torch.tensor([[64.0, 64.0, 192.0, 192.0]])))
    return save_ir(model, xml)


class OpenVinoBinaryPath:
    """Callable like :class:`~.binary_path.BinaryPromptPath` (box prompts only): embedding
    (B,256,64,64), boxes (B,4) in 256-px model coordinates → mask logits (B,1,256,256), IoU (B,1).

    Args:
        path: the model's binary path (its weights are what gets compiled).
        threads: CPU threads in all (default: torch's thread count, at most the core count).
        precision: None (OpenVINO's default for the CPU: bf16 where the CPU has it) or ``"f32"``.
    """

    def __init__(self, path: BinaryPromptPath, threads: int | None = None, precision: str | None = None):
        self.runtime = OpenVinoCompiled(str(export_ir(path)), threads, precision)
        self.precision = self.runtime.precision

    def __call__(self, embedding: torch.Tensor, boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        e = embedding.detach().float().cpu().numpy()
        b = boxes.detach().float().cpu().numpy().reshape(-1, 4)
        if e.shape[0] != b.shape[0]:
            raise ValueError(f"{e.shape[0]} embeddings for {b.shape[0]} boxes")
        # Back on the embedding's device: with the heads on a GPU (OpenVINO forced for the encoder) the
        # refinement mixes these logits with the heads' tensors there.
        if len(e) == 0:
            return torch.zeros(0, 1, 256, 256, device=embedding.device), torch.zeros(0, 1, device=embedding.device)
        outs = self.runtime.run_each([{0: e[i:i + 1], 1: b[i:i + 1]} for i in range(len(e))], 2)
        return tuple(torch.from_numpy(np.concatenate([o[k] for o in outs])).to(embedding.device) for k in range(2))
