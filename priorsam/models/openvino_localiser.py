"""The trained 3D organ localiser compiled by OpenVINO: its CPU runtime in the engine.

Why: the PyTorch localiser is a MONAI SegResNet, and importing MONAI (all its subpackages) took about 5 s
of every process on a 2-core CPU, which each command-line run pays (and each click of the Slicer module's
``cli`` backend) for a network that itself runs in 1–3 s; without it a fresh process loaded the engine in
6.7 s instead of 10.3 s (docs/benchmarks.md). The graph is converted once from the checkpoint's own
localiser weights (that first conversion imports MONAI) and kept in the user cache under a digest of those
weights; later processes compile the cached IR and never import MONAI.

It runs in fp32 on every CPU (OpenVINO would pick bf16 by itself on CPUs that have it): the localiser
decides which slices the encoder skips and which organs are present, so it must give PyTorch's answer to
within rounding (tests/test_openvino_localiser.py compares them; docs/benchmarks.md on the held-out bank).
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Callable, Mapping

import numpy as np
import torch

from ..errors import AssetError
from .cpu_runtime import OpenVinoCompiled, cached_ir, ir_path, save_ir, state_digest
from .localiser import window_channels


def localiser_ir(state: Mapping[str, torch.Tensor], spec, build: Callable) -> Path:
    """The OpenVINO IR of the localiser with weights ``state`` (its own keys, no ``localiser.`` prefix)
    and :class:`~.spec.LocaliserSpec` ``spec``: from the user cache, else converted now (atomic) from the
    PyTorch network ``build(spec)`` (:func:`~.spec.build_localiser`) holding ``state``."""
    import openvino as ov

    xml = ir_path(f"localiser_{state_digest(state)[:16]}")
    if cached_ir(xml):
        return xml
    net = build(spec)
    try:
        net.load_state_dict(dict(state))
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise AssetError(f"the checkpoint's localiser weights do not fit its spec ({first})") from None
    net.eval()
    example = torch.zeros((1, len(spec.windows), *spec.min_shape))
    # Any grid size (multiples of 8): volumes differ in extent, so the spatial axes stay dynamic.
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = ov.convert_model(net, example_input=example,
                                 input=[ov.PartialShape([1, len(spec.windows), -1, -1, -1])])
    return save_ir(model, xml)


class OpenVinoLocaliser:
    """Used like :class:`~.localiser.OrganLocaliser` at inference: :meth:`prepare` (B, X, Y, Z) HU →
    (B, W, X, Y, Z) windowed input; calling it → (B, C, X, Y, Z) logits (X, Y, Z multiples of 8).

    Args:
        state: the localiser's weights (its own keys, as in the checkpoint under ``localiser.``).
        spec: its :class:`~.spec.LocaliserSpec` (grid spacing, classes, windows, minimum shape).
        build: the PyTorch network's constructor from a spec (:func:`~.spec.build_localiser`), called
            only when the converted graph is not cached yet.
        threads: CPU threads (default: torch's thread count, at most the core count).
    """

    def __init__(self, state: Mapping[str, torch.Tensor], spec, build: Callable, threads: int | None = None):
        self.num_classes = int(spec.num_classes)
        self.spacing_mm = float(spec.spacing_mm)
        self.windows = [tuple(float(v) for v in w) for w in spec.windows]
        self.min_shape = tuple(int(v) for v in spec.min_shape)
        # One volume per call, so one request using every thread.
        self.runtime = OpenVinoCompiled(str(localiser_ir(state, spec, build)), threads, precision="f32",
                                        mode="latency")

    def prepare(self, hu: torch.Tensor) -> torch.Tensor:
        return window_channels(hu, self.windows)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        a = x.detach().float().cpu().numpy()
        outs = self.runtime.run_each([{0: a[i:i + 1]} for i in range(len(a))], 1)
        return torch.from_numpy(np.concatenate([o[0] for o in outs]))
