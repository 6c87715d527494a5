"""What the CPU runtimes share (the ONNX Runtime and OpenVINO encoders, the OpenVINO box decoder and 3D
localiser): their thread count, converted graphs cached under a digest of their weights, OpenVINO
compilation with the user cache, and running a batch as one OpenVINO infer request per item.

Why one request per item: on a CPU with few cores, two half-width requests in flight (OpenVINO's
throughput mode) keep the cores busier than one request using both (docs/benchmarks.md).
"""
from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Mapping

import numpy as np
import torch

from ..assets import cache_dir


def cpu_threads(threads: int | None = None) -> int:
    """``threads``, or torch's thread count at most the core count."""
    return threads or max(1, min(os.cpu_count() or 1, torch.get_num_threads()))


def state_digest(state: Mapping[str, torch.Tensor]) -> str:
    """sha256 over a state dict's tensors (names, shapes and values): the key of a converted graph in
    the user cache, so the cache never serves a graph of other weights."""
    h = hashlib.sha256()
    for name, t in sorted(state.items()):
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def ir_path(stem: str) -> Path:
    """Where the IR of ``stem`` (a part's name and weights digest) lives for the installed OpenVINO."""
    import openvino as ov

    return cache_dir("openvino") / f"{stem}_ov{ov.__version__.split('-')[0]}.xml"


def save_ir(model, xml: Path) -> Path:
    """Save a converted OpenVINO model as ``xml`` (+ .bin) atomically, in fp32."""
    import openvino as ov

    tmp = Path(tempfile.mkdtemp(prefix=xml.stem + "_", dir=xml.parent))
    try:
        ov.save_model(model, str(tmp / "m.xml"), compress_to_fp16=False)
        # The .bin first: a present .xml means a complete pair.
        os.replace(tmp / "m.bin", xml.with_suffix(".bin"))
        os.replace(tmp / "m.xml", xml)
    finally:
        for f in tmp.glob("*"):
            f.unlink()
        tmp.rmdir()
    return xml


def cached_ir(xml: Path) -> bool:
    return xml.is_file() and xml.with_suffix(".bin").is_file()


class OpenVinoCompiled:
    """An OpenVINO model compiled for the CPU, with its infer requests.

    Args:
        model_path: ONNX or IR (.xml) file.
        threads: CPU threads in all (default: :func:`cpu_threads`).
        precision: None (OpenVINO's default for the CPU: bf16 on CPUs with AVX512-BF16 or AMX, else
            fp32) or ``"f32"``.
        mode: ``"throughput"`` (parallel requests over a batch) or ``"latency"`` (one request).
    """

    def __init__(self, model_path: str, threads: int | None = None, precision: str | None = None,
                 mode: str = "throughput"):
        import openvino as ov

        if mode not in ("throughput", "latency"):
            raise ValueError(f"mode must be throughput or latency, not {mode!r}")
        core = ov.Core()
        # Compiling costs seconds on a 2-core CPU; the cached blob makes later loads cheap.
        core.set_property({"CACHE_DIR": str(cache_dir("openvino"))})
        config = {"INFERENCE_NUM_THREADS": cpu_threads(threads), "PERFORMANCE_HINT": mode.upper()}
        if precision is not None:
            config["INFERENCE_PRECISION_HINT"] = precision
        self.compiled = core.compile_model(str(model_path), "CPU", config)
        hint = self.compiled.get_property("INFERENCE_PRECISION_HINT")
        self.precision = hint.get_type_name() if hasattr(hint, "get_type_name") else str(hint)   # "bf16", "f32"
        n = int(self.compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")) if mode == "throughput" else 1
        self.requests = [self.compiled.create_infer_request() for _ in range(max(1, n))]

    def run_each(self, feeds: list[dict[int, np.ndarray]], n_outputs: int) -> list[list[np.ndarray]]:
        """One request per feed (input index → array), as many in flight as there are requests; the
        first ``n_outputs`` outputs of each, in the order of ``feeds``."""
        outs: list = [None] * len(feeds)
        for start in range(0, len(feeds), len(self.requests)):
            active = []
            for req, i in zip(self.requests, range(start, min(start + len(self.requests), len(feeds)))):
                req.start_async({k: np.ascontiguousarray(v) for k, v in feeds[i].items()})
                active.append((req, i))
            for req, i in active:
                req.wait()
                outs[i] = [np.array(req.get_output_tensor(k).data) for k in range(n_outputs)]
        return outs
