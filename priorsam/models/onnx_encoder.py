"""The frozen LiteMedSAM encoder run by ONNX Runtime: the fast CPU path.

The TinyViT (with the two skip outputs PriorSAM's fusion decoder uses) is exported once
from the packaged weights into the user cache, keyed by the checkpoint hash and the torch
version, and then loaded by ONNX Runtime. Outputs match PyTorch to ~1e-4 (tested). The
export traces a batch of one (TinyViT bakes the batch size into reshapes), so batches run
one slice at a time, which costs nothing on a CPU.
"""
from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..assets import LITEMEDSAM_SHA256, cache_dir
from .cpu_runtime import cpu_threads
from .image_encoder import EncoderFeatures, LiteImageEncoder


class _Outputs(nn.Module):
    def __init__(self, encoder: LiteImageEncoder):
        super().__init__()
        self.encoder = encoder

    def forward(self, x: torch.Tensor):
        f = self.encoder(x)
        return f.embedding, f.skips[0], f.skips[1]


def onnx_path() -> Path:
    return cache_dir("onnx") / f"tinyvit_{LITEMEDSAM_SHA256[:12]}_torch{torch.__version__.split('+')[0]}.onnx"


def export_onnx(path: Path | None = None) -> Path:
    """Export the pretrained encoder to ONNX (atomic; reused when present)."""
    path = path or onnx_path()
    if path.is_file():
        return path
    model = _Outputs(LiteImageEncoder(pretrained=True)).eval()
    fd, tmp = tempfile.mkstemp(suffix=".onnx", dir=path.parent)
    os.close(fd)
    try:
        # The exporter warns on the user's first run about TinyViT's shape checks (constants for the
        # fixed 256×256 input) and slices it cannot fold; neither is theirs to act on, and
        # tests/test_encoder_backends.py compares the graph's outputs with PyTorch's.
        with torch.inference_mode(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (torch.rand(1, 3, 256, 256),), tmp, input_names=["image"],
                              output_names=["embedding", "skip0", "skip1"], opset_version=17, dynamo=False)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return path


class OnnxLiteEncoder:
    """Callable like :class:`LiteImageEncoder`: images (B,3,256,256) in [0,1] → EncoderFeatures."""

    skip_channels = (128, 160)
    img_size = 256
    embed_dim = 256

    def __init__(self, threads: int | None = None):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = cpu_threads(threads)
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(export_onnx()), opts, providers=["CPUExecutionProvider"])

    def __call__(self, images: torch.Tensor) -> EncoderFeatures:
        x = images.detach().float().cpu().numpy()
        outs = [self.session.run(None, {"image": x[i:i + 1]}) for i in range(x.shape[0])]
        emb, s0, s1 = (torch.from_numpy(np.concatenate([o[k] for o in outs])) for k in range(3))
        return EncoderFeatures(emb, (s0, s1))
