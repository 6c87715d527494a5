"""Which runtime runs the frozen pretrained parts (LiteMedSAM's encoder, and SAM's box-prompt path
of the refinement): one choice shared by every engine.

``auto`` picks, on a CPU, the fastest runtime that is installed (OpenVINO, then ONNX Runtime),
and PyTorch on a GPU. All of them return the same :class:`~.image_encoder.EncoderFeatures`.
The exported runtimes hold LiteMedSAM's encoder only: weights built on another encoder (the spec's
``encoder``) always run it in PyTorch. OpenVINO also runs the box-prompt path
(:mod:`.openvino_binary_path`) and the 3D localiser (:mod:`.openvino_localiser`); with ONNX Runtime or
PyTorch they run in PyTorch.
"""
from __future__ import annotations

import importlib.util
from typing import Callable

import torch

BACKENDS = ("auto", "torch", "onnx", "openvino")
CPU_PRECISIONS = ("auto", "fp32")


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def resolve_backend(backend: str, device: torch.device, encoder: str = "lite") -> str:
    """The concrete backend (``torch``, ``onnx`` or ``openvino``) that ``backend`` means on ``device``
    for the image ``encoder`` the weights were built on."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown encoder backend {backend!r}: use one of {', '.join(BACKENDS)}")
    if encoder != "lite":
        if backend in ("onnx", "openvino"):
            raise ValueError(f"the {backend} runtime holds LiteMedSAM's encoder, not {encoder!r}: use torch or auto")
        return "torch"
    if backend != "auto":
        return backend
    if device.type != "cpu":
        return "torch"
    for name, module in (("openvino", "openvino"), ("onnx", "onnxruntime")):
        if _installed(module):
            return name
    return "torch"


def openvino_precision(cpu_precision: str) -> str | None:
    """The engine's ``cpu_precision`` option as OpenVINO's precision hint: ``"auto"`` → None (bf16 on CPUs with
    AVX-512 bf16 or AMX, fp32 elsewhere), ``"fp32"`` → ``"f32"`` (the same numbers on every CPU)."""
    if cpu_precision not in CPU_PRECISIONS:
        raise ValueError(f"unknown CPU precision {cpu_precision!r}: use one of {', '.join(CPU_PRECISIONS)}")
    return None if cpu_precision == "auto" else "f32"


def cpu_encoder(backend: str, device: torch.device, threads: int | None = None,
                encoder: str = "lite", precision: str | None = None) -> Callable | None:
    """An encoder callable (images (B,3,256,256) → EncoderFeatures) for ``backend``, or None for PyTorch
    (the model's own encoder then runs). ``precision``: OpenVINO's hint (:func:`openvino_precision`); ONNX
    Runtime and PyTorch compute in fp32 anyway."""
    name = resolve_backend(backend, device, encoder)
    if name == "openvino":
        from .openvino_encoder import OpenVinoLiteEncoder

        return OpenVinoLiteEncoder(threads=threads, precision=precision)
    if name == "onnx":
        from .onnx_encoder import OnnxLiteEncoder

        return OnnxLiteEncoder(threads=threads)
    return None


def localiser_runtime(backend: str, device: torch.device) -> str:
    """``"openvino"`` where ``backend`` resolves to OpenVINO on a CPU, else ``"torch"``: there the 3D localiser
    runs where the encoder runs (:mod:`.openvino_localiser`), whatever encoder the heads were built on. With
    the model on a GPU it stays a PyTorch module beside the heads, even where the user forced OpenVINO for the
    encoder (the compiled localiser is CPU-only, and the GPU is the faster place for it anyway)."""
    if torch.device(device).type != "cpu":
        return "torch"
    return "openvino" if resolve_backend(backend, device) == "openvino" else "torch"


def cpu_binary_path(backend: str, device: torch.device, path, threads: int | None = None,
                    encoder: str = "lite", precision: str | None = None) -> Callable | None:
    """A box-prompt callable (embedding (B,256,64,64), boxes (B,4) → logits, IoU) compiled from the
    model's own binary ``path`` when ``backend`` resolves to OpenVINO, else None (the model's PyTorch
    path runs)."""
    if path is None or resolve_backend(backend, device, encoder) != "openvino":
        return None
    from .openvino_binary_path import OpenVinoBinaryPath

    return OpenVinoBinaryPath(path, threads=threads, precision=precision)
