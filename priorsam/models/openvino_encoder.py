"""The frozen LiteMedSAM encoder compiled by OpenVINO: the fastest CPU path we measured.

It runs the same ONNX graph as :mod:`.onnx_encoder` (exported once into the user cache).
OpenVINO picks its CPU inference precision itself: bf16 on CPUs with AVX512-BF16 or AMX,
fp32 elsewhere; ``precision="f32"`` forces fp32. Where it runs bf16 it is twice as fast as ONNX
Runtime in the engine's batches of 4 (0.33 against 0.66 s per slice on a 2-core AVX-512 CPU) at an
embedding cosine of 0.9993 against PyTorch, with no Dice change on the sample CT; on a CPU with
AVX2 only it runs fp32 and is level with ONNX Runtime (1.01 against 1.07 s), which is why it stays
the default everywhere (docs/benchmarks.md). The compiled blob is cached beside the ONNX file, so
the second process loads in a fraction of the first one's time.

Slices of a batch run as parallel infer requests (OpenVINO's throughput mode): on a CPU with
few cores, two half-width requests keep the cores busier than one request using both.
"""
from __future__ import annotations

import numpy as np
import torch

from .cpu_runtime import OpenVinoCompiled
from .image_encoder import EncoderFeatures
from .onnx_encoder import export_onnx


class OpenVinoLiteEncoder:
    """Callable like :class:`~.image_encoder.LiteImageEncoder`: images (B,3,256,256) in [0,1] →
    EncoderFeatures(embedding (B,256,64,64), skips ((B,128,128,128), (B,160,64,64))).

    Args:
        threads: CPU threads in all (default: torch's thread count, at most the core count).
        precision: None (OpenVINO's default for the CPU) or ``"f32"``.
        mode: ``"throughput"`` (parallel requests over a batch) or ``"latency"`` (one request).
    """

    skip_channels = (128, 160)
    img_size = 256
    embed_dim = 256

    def __init__(self, threads: int | None = None, precision: str | None = None, mode: str = "throughput"):
        self.runtime = OpenVinoCompiled(str(export_onnx()), threads, precision, mode)
        self.precision = self.runtime.precision

    def __call__(self, images: torch.Tensor) -> EncoderFeatures:
        x = images.detach().float().cpu().numpy()
        outs = self.runtime.run_each([{0: x[i:i + 1]} for i in range(len(x))], 3)
        emb, s0, s1 = (torch.from_numpy(np.concatenate([o[k] for o in outs])) for k in range(3))
        return EncoderFeatures(emb, (s0, s1))
