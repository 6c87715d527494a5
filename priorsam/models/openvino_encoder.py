"""The frozen LiteMedSAM encoder compiled by OpenVINO: the fastest CPU path we measured.

It runs the same ONNX graph as :mod:`.onnx_encoder` (exported once into the user cache).
OpenVINO picks its CPU inference precision itself: bf16 on CPUs with AVX512-BF16 or AMX,
fp32 elsewhere; ``precision="f32"`` forces fp32. On the project's 2-core AMD EPYC machine it
is ≈2.3× faster than ONNX Runtime per slice at an embedding cosine of 0.9993 against PyTorch
(docs/benchmarks.md), with no Dice change on the sample CT. The compiled blob is cached beside
the ONNX file, so the second process loads in a fraction of the first one's time.

Slices of a batch run as parallel infer requests (OpenVINO's throughput mode): on a CPU with
few cores, two half-width requests keep the cores busier than one request using both.
"""
from __future__ import annotations

import os

import numpy as np
import torch

from ..assets import cache_dir
from .image_encoder import EncoderFeatures
from .onnx_encoder import export_onnx


def _threads(threads: int | None) -> int:
    return threads or max(1, min(os.cpu_count() or 1, torch.get_num_threads()))


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
        import openvino as ov

        if mode not in ("throughput", "latency"):
            raise ValueError(f"mode must be throughput or latency, not {mode!r}")
        core = ov.Core()
        # Compiling the graph costs seconds on a 2-core CPU; the cached blob makes later loads cheap.
        core.set_property({"CACHE_DIR": str(cache_dir("openvino"))})
        config = {"INFERENCE_NUM_THREADS": _threads(threads), "PERFORMANCE_HINT": mode.upper()}
        if precision is not None:
            config["INFERENCE_PRECISION_HINT"] = precision
        self.compiled = core.compile_model(str(export_onnx()), "CPU", config)
        self.precision = str(self.compiled.get_property("INFERENCE_PRECISION_HINT"))
        n = int(self.compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")) if mode == "throughput" else 1
        self.requests = [self.compiled.create_infer_request() for _ in range(max(1, n))]

    def _run(self, x: np.ndarray) -> list[np.ndarray]:
        """(B,3,256,256) float32 → [embedding, skip0, skip1], each (B, …); one slice per request."""
        outs: list = [None] * x.shape[0]
        for start in range(0, x.shape[0], len(self.requests)):
            active = []
            for req, i in zip(self.requests, range(start, min(start + len(self.requests), x.shape[0]))):
                req.start_async({0: np.ascontiguousarray(x[i:i + 1])})
                active.append((req, i))
            for req, i in active:
                req.wait()
                outs[i] = [np.array(req.get_output_tensor(k).data) for k in range(3)]
        return [np.concatenate([o[k] for o in outs]) for k in range(3)]

    def __call__(self, images: torch.Tensor) -> EncoderFeatures:
        emb, s0, s1 = (torch.from_numpy(a) for a in self._run(images.detach().float().cpu().numpy()))
        return EncoderFeatures(emb, (s0, s1))
