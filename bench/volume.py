"""Whole-volume wall time and peak memory, end to end (read → segment → write), each run a fresh process.

* The default configuration is timed through the real command line, ``python -m priorsam segment IMAGE OUT``,
  exactly what a user runs (the engine picks its encoder backend itself: ONNX Runtime on CPU).
* Variants (another encoder backend, ``z_stride``) go through :func:`segment_once`, the same steps as
  ``segment_cli`` (read_volume → Segmenter.segment → write_label_map) with the stage times split out
  and the number of slices that went through the encoder counted.

Peak RSS is the child's own (``os.wait4``). Dice of each output against the volume's labels is
computed afterwards by the driver (numpy, per organ present in the reference, mean over organs).
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np


class CountingEncoder:
    """Wraps an encoder callable and counts the slices it encodes (the cost driver of a volume)."""

    def __init__(self, encode):
        self.encode = encode
        self.slices = 0

    def __call__(self, images):
        self.slices += int(images.shape[0])
        return self.encode(images)


def segment_once(image: str, out: str, weights: str | None, backend: str, threads: int, z_stride: int,
                 skip_body: bool) -> dict:
    """One end-to-end run in this process; JSON-able stage times and counts."""
    import torch

    from common import peak_rss_mb, set_threads

    set_threads(threads)
    t0 = time.perf_counter()
    from encoders import feature_runner
    from priorsam.engine.segment import Segmenter, SegmentOptions, body_slices
    from priorsam.engine.weights import load_priorsam
    from priorsam.io import display_spacing, read_volume, write_label_map

    t_import = time.perf_counter() - t0
    t = time.perf_counter()
    vol = read_volume(image)
    t_read = time.perf_counter() - t
    t = time.perf_counter()
    opts = SegmentOptions(z_stride=z_stride, skip_outside_body=skip_body, encoder_backend="torch")
    model = load_priorsam(weights, "cpu")
    counter = CountingEncoder(feature_runner(backend, threads) if backend != "torch_eager" else model.encode)
    seg = Segmenter(weights, "cpu", opts, model=model, encoder=counter)
    t_load = time.perf_counter() - t
    t = time.perf_counter()
    res = seg.segment(vol, show_bar=False)
    t_seg = time.perf_counter() - t
    t = time.perf_counter()
    write_label_map(vol, res.labels, out)
    t_write = time.perf_counter() - t
    body = body_slices(vol.axial_slices(), *display_spacing(vol))
    return {"backend": backend, "z_stride": z_stride, "skip_body": skip_body, "threads": torch.get_num_threads(),
            "shape": list(vol.shape), "slices": int(vol.shape[2]), "body_slices": int(len(body)),
            "encoded_slices": counter.slices, "import_s": t_import, "read_s": t_read, "model_load_s": t_load,
            "segment_s": t_seg, "write_s": t_write, "in_process_s": time.perf_counter() - t0,
            "peak_rss_mb": peak_rss_mb()}


def cli_command(python: str, image: str, out: str, weights: str | None) -> list[str]:
    cmd = [python, "-m", "priorsam", "segment", image, out]
    return cmd + (["--weights", weights] if weights else [])


def variant_command(python: str, runner: str, image: str, out: str, weights: str | None, backend: str,
                    threads: int, z_stride: int, skip_body: bool) -> list[str]:
    spec = json.dumps({"image": image, "out": out, "weights": weights, "backend": backend, "threads": threads,
                       "z_stride": z_stride, "skip_body": skip_body})
    return [python, runner, "--part", "segment_once", "--spec", spec]


def dice_per_organ(pred_path: str | Path, ref_path: str | Path) -> dict:
    """Dice per organ present in the reference (our label ids), and their mean; both files on one grid."""
    import nibabel as nib

    from priorsam.labels import labels as label_table

    p = np.asarray(nib.load(str(pred_path)).dataobj).astype(np.uint8)
    r = np.asarray(nib.load(str(ref_path)).dataobj).astype(np.uint8)
    if p.shape != r.shape:
        raise ValueError(f"prediction {p.shape} and reference {r.shape} differ")
    out = {}
    for lab in label_table():
        g = r == lab.id
        if not g.any():
            continue
        q = p == lab.id
        out[lab.name] = float(2 * np.logical_and(g, q).sum() / (g.sum() + q.sum()))
    return {"organs": out, "mean": float(np.mean(list(out.values()))) if out else float("nan")}
