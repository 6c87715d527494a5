"""The frozen LiteMedSAM TinyViT encoder under each CPU backend: latency per slice and accuracy.

Backends (each built here from the same pretrained weights; outputs are the engine's three
tensors: embedding (1,256,64,64), skip0 (1,128,128,128), skip1 (1,160,64,64)):

* ``torch_eager``       — :class:`priorsam.models.image_encoder.LiteImageEncoder`, fp32.
* ``onnxruntime``       — :class:`priorsam.models.onnx_encoder.OnnxLiteEncoder` (the engine's CPU fallback when OpenVINO is missing).
* ``openvino``          — :class:`priorsam.models.openvino_encoder.OpenVinoLiteEncoder` (the engine's CPU default):
  the same ONNX graph compiled by OpenVINO at its default inference precision, which is bf16 on CPUs with
  AVX512-BF16/AMX (recorded in the result).
* ``openvino_fp32``     — the same with ``INFERENCE_PRECISION_HINT=f32``.
* ``torch_compile``     — ``torch.compile`` (inductor) of the eager encoder; compile time reported apart.
* ``ort_int8_dynamic``  — ONNX Runtime dynamic quantization (int8 weights, per-tensor activations at run time)
  of MatMul/Gemm only; convolutions stay fp32.
* ``ort_int8_static``   — ONNX Runtime static QDQ quantization (int8 weights per channel, activations
  calibrated on sample-CT slices other than the timed ones) of MatMul and Conv.
* ``torch_int8_linear`` — ``torch.ao.quantization.quantize_dynamic`` of every ``nn.Linear`` (qint8).

Each backend runs in a fresh process (``run_all.py --part encoder --backend NAME``) and saves its
outputs on the timed slices; the driver compares them with ``torch_eager`` (cosine, max abs error).
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable

import numpy as np

BACKENDS = ("torch_eager", "onnxruntime", "openvino", "openvino_fp32", "torch_compile", "ort_int8_dynamic", "ort_int8_static",
            "torch_int8_linear")
QUICK_BACKENDS = ("torch_eager", "onnxruntime")

Runner = Callable[[np.ndarray], list[np.ndarray]]  # (1,3,256,256) float32 -> [emb, skip0, skip1]


def _torch_runner(module) -> Runner:
    import torch

    def run(x: np.ndarray) -> list[np.ndarray]:
        with torch.inference_mode():
            f = module(torch.from_numpy(x))
        return [f.embedding.numpy(), f.skips[0].numpy(), f.skips[1].numpy()]

    return run


def _ort_runner(path: Path, threads: int) -> Runner:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return lambda x: sess.run(None, {"image": x})


def _quantized_path(kind: str, calib: np.ndarray | None = None) -> Path:
    """Quantize the exported fp32 ONNX graph once per kind (kept beside it in the user cache)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from priorsam.models.onnx_encoder import export_onnx

    src = export_onnx()
    tag = kind
    if calib is not None:  # a different calibration set is a different model
        import hashlib

        tag += "_" + hashlib.sha1(np.ascontiguousarray(calib, dtype=np.float32).tobytes()).hexdigest()[:8]
    out = src.with_name(src.stem + f"_{tag}.onnx")
    if out.is_file():
        return out
    pre = src.with_name(src.stem + "_preproc.onnx")
    if not pre.is_file():
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
    tmp = out.with_suffix(".part.onnx")
    if kind == "int8_dynamic":
        quantize_dynamic(str(pre), str(tmp), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul", "Gemm"])
    else:
        from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

        class Reader(CalibrationDataReader):
            def __init__(self, images: np.ndarray):
                self.it = iter([{"image": images[i:i + 1]} for i in range(len(images))])

            def get_next(self):
                return next(self.it, None)

        quantize_static(str(pre), str(tmp), Reader(calib), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        op_types_to_quantize=["MatMul", "Conv", "Gemm"])
    os.replace(tmp, out)
    return out


def build(backend: str, threads: int, calib: np.ndarray | None = None) -> tuple[Runner, dict]:
    """A runner for ``backend`` and facts about building it (seconds, notes)."""
    t0 = time.perf_counter()
    info: dict = {}
    if backend in ("torch_eager", "torch_compile", "torch_int8_linear"):
        import torch

        from priorsam.models.image_encoder import LiteImageEncoder

        enc = LiteImageEncoder(pretrained=True).eval()
        if backend == "torch_int8_linear":
            enc.backbone = torch.ao.quantization.quantize_dynamic(enc.backbone, {torch.nn.Linear}, dtype=torch.qint8)
        if backend == "torch_compile":
            enc = torch.compile(enc, mode="max-autotune-no-cudagraphs", dynamic=False)
        run = _torch_runner(enc)
        if backend == "torch_compile":
            # The first call compiles (inductor generates and builds C++ kernels); report it apart.
            t1 = time.perf_counter()
            run(np.zeros((1, 3, 256, 256), np.float32))
            info["compile_s"] = time.perf_counter() - t1
    elif backend == "onnxruntime":
        from priorsam.models.onnx_encoder import OnnxLiteEncoder

        enc = OnnxLiteEncoder(threads=threads)
        run = lambda x: enc.session.run(None, {"image": x})
    elif backend in ("openvino", "openvino_fp32"):
        from priorsam.models.openvino_encoder import OpenVinoLiteEncoder

        # The engine's own OpenVINO path (throughput mode: a batch's slices run as parallel requests).
        enc = OpenVinoLiteEncoder(threads=threads, precision="f32" if backend == "openvino_fp32" else None)
        run = _torch_runner(enc)      # called like the PyTorch encoder: tensors in, EncoderFeatures out
        info["inference_precision"] = enc.precision
        info["infer_requests"] = len(enc.runtime.requests)
    elif backend == "ort_int8_dynamic":
        run = _ort_runner(_quantized_path("int8_dynamic"), threads)
    elif backend == "ort_int8_static":
        if calib is None:
            raise ValueError("static quantization needs calibration images")
        run = _ort_runner(_quantized_path("int8_static", calib), threads)
    else:
        raise ValueError(f"unknown backend {backend}")
    info["build_s"] = time.perf_counter() - t0
    return run, info


def measure(backend: str, threads: int, runs: int, save_to: Path) -> dict:
    """Latency per slice (batch 1) over ``runs`` distinct slices after one warm-up; outputs saved for accuracy."""
    from common import peak_rss_mb, set_threads
    from inputs import calibration_images, model_images

    set_threads(threads)
    timed = model_images(runs + 1).numpy()
    run, info = build(backend, threads, calibration_images().numpy() if backend == "ort_int8_static" else None)
    if backend == "torch_eager":
        # Count multiply-accumulates on the warm-up pass (MAC = FLOP / 2).
        from torch.utils.flop_counter import FlopCounterMode

        with FlopCounterMode(display=False) as fc:
            run(timed[:1])
        info["gmac"] = fc.get_total_flops() / 2e9
    else:
        run(timed[:1])  # warm-up: allocator, kernels, lazy init
    times, outs = [], []
    for i in range(1, runs + 1):
        t = time.perf_counter()
        o = run(timed[i:i + 1])
        times.append(time.perf_counter() - t)
        outs.append(o)
    # Throughput as the engine runs it: batches of 4 slices (OpenVINO runs a batch's slices as
    # parallel requests; the other runtimes take one slice at a time anyway).
    batch = timed[:4]
    run_batch = run if backend.startswith("openvino") else (lambda x: [run(x[i:i + 1]) for i in range(len(x))])
    batch_times = []
    for _ in range(max(1, runs)):
        t = time.perf_counter()
        run_batch(batch)
        batch_times.append((time.perf_counter() - t) / len(batch))
    info["batch4_times_s"] = batch_times
    np.savez(save_to, **{f"o{k}": np.concatenate([o[k] for o in outs]) for k in range(3)})
    assert outs[0][0].shape == (1, 256, 64, 64), outs[0][0].shape
    return {"backend": backend, "threads": threads, "times_s": times, "peak_rss_mb": peak_rss_mb(), **info}


def accuracy(ref: Path, other: Path) -> dict:
    """Embedding (and skips) of ``other`` against ``ref``: mean cosine over pixels' 256-vectors, max abs error."""
    a, b = np.load(ref), np.load(other)
    out = {}
    for k, name in enumerate(("embedding", "skip0", "skip1")):
        x, y = a[f"o{k}"].astype(np.float64), b[f"o{k}"].astype(np.float64)
        # Cosine per spatial position over channels, then the mean; plus the whole-tensor cosine.
        num = (x * y).sum(1)
        den = np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1) + 1e-12
        out[name] = {"cos_mean": float((num / den).mean()), "cos_min": float((num / den).min()),
                     "max_abs": float(np.abs(x - y).max()), "ref_absmax": float(np.abs(x).max()),
                     "rel_l2": float(np.linalg.norm(x - y) / (np.linalg.norm(x) + 1e-12))}
    return out


def feature_runner(backend: str, threads: int):
    """An engine-compatible encoder (images (B,3,256,256) tensor → EncoderFeatures) for ``backend``."""
    import torch

    from priorsam.models.image_encoder import EncoderFeatures

    from inputs import calibration_images

    run, _ = build(backend, threads, calibration_images().numpy() if backend == "ort_int8_static" else None)

    def encode(images: torch.Tensor) -> EncoderFeatures:
        x = images.detach().float().cpu().numpy()
        outs = [run(np.ascontiguousarray(x[i:i + 1])) for i in range(x.shape[0])]
        emb, s0, s1 = (torch.from_numpy(np.concatenate([np.asarray(o[k]) for o in outs])) for k in range(3))
        return EncoderFeatures(emb, (s0, s1))

    return encode
