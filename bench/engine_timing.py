"""Engine cost on this machine: seconds per slice and peak resident memory, each part in a fresh process.

Parts (each runs in its own subprocess so ``ru_maxrss`` is that part's peak alone):

* ``encoder``  — the pretrained LiteMedSAM TinyViT encoder alone on sample-CT slices, batch 1 and batch 4.
* ``volume``   — :func:`priorsam.engine.slices.run_over_slices` over every slice of the sample CT with a
  predict function that runs the real encoder + prompt encoder + mask decoder (one whole-slice box per
  slice, threshold 0.5) — the cost of the box-prompted path per slice, engine bookkeeping included.
* ``memory600`` — a synthetic 512×512×600 CT through the same bookkeeping (Volume → display slices →
  run_over_slices → back to RAS → label map written to disk) with a *cheap* predict function: the real
  LiteMedSAM preprocessing (window, resize, min-max, pad) and its inverse, but no network. This checks
  that a large volume's arrays stay bounded; it does not time the model on 600 slices.

Usage: python bench/engine_timing.py [--out bench/results/engine_timing.md] [--slices N]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux reports KiB


def sample_slices(limit: int | None = None) -> np.ndarray:
    from priorsam.data.samples import sample_ct
    from priorsam.io import read_volume

    slices = read_volume(sample_ct().image).axial_slices()
    return slices if limit is None else slices[:limit]


def part_encoder(args) -> dict:
    import torch

    from priorsam.assets import load_litemedsam
    from priorsam.data.preprocess import UpstreamFrame, stack_channels, window

    net = load_litemedsam("cpu")
    slices = sample_slices()
    mid = len(slices) // 2
    pick = slices[mid - 4:mid + 4]  # 8 abdominal slices: 4 one by one, then 2 batches of 4
    frame = UpstreamFrame(*pick.shape[1:])
    images = frame.images(stack_channels(window(pick), np.arange(len(pick)), 0))
    rss_loaded = peak_rss_mb()
    out = {"slice_hw": list(pick.shape[1:]), "threads": torch.get_num_threads(), "rss_after_load_mb": rss_loaded}
    with torch.inference_mode():
        net.image_encoder(images[:1])  # warm-up (allocator, kernels)
        for bs in (1, 4):
            times = []
            for start in range(0, len(images) if bs > 1 else 4, bs):
                t = time.perf_counter()
                emb = net.image_encoder(images[start:start + bs])
                times.append((time.perf_counter() - t) / bs)
            assert tuple(emb.shape[1:]) == (256, 64, 64)
            out[f"batch{bs}_s_per_slice"] = times
    out["peak_rss_mb"] = peak_rss_mb()
    return out


def part_volume(args) -> dict:
    import torch

    from priorsam.assets import load_litemedsam
    from priorsam.data.preprocess import UpstreamFrame, stack_channels, window
    from priorsam.engine.slices import run_over_slices

    net = load_litemedsam("cpu")
    slices = sample_slices(args.slices)
    volume_slices = len(sample_slices())
    z, h, w = slices.shape
    frame = UpstreamFrame(h, w)
    box = torch.as_tensor(frame.box_to_model(np.array([0, 0, w - 1, h - 1])))[None, None]

    def predict(idx: np.ndarray) -> np.ndarray:
        images = frame.images(stack_channels(window(slices[idx]), np.arange(len(idx)), 0))
        emb = net.image_encoder(images)
        sparse, dense = net.prompt_encoder(points=None, boxes=box.expand(len(idx), 1, 4), masks=None)
        logits, _ = net.mask_decoder(image_embeddings=emb, image_pe=net.prompt_encoder.get_dense_pe(),
                                     sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                     multimask_output=False)
        return (frame.maps_from_model(logits).sigmoid()[:, 0] > 0.5).numpy().astype(np.uint8)

    rss_loaded = peak_rss_mb()
    t = time.perf_counter()
    labels = run_over_slices(z, h, w, predict, batch_size=4, show_bar=False)
    total = time.perf_counter() - t
    assert labels.shape == (z, h, w) and labels.any()
    return {"slices": z, "volume_slices": volume_slices, "slice_hw": [h, w], "batch_size": 4, "total_s": total, "s_per_slice": total / z,
            "rss_after_load_mb": rss_loaded, "peak_rss_mb": peak_rss_mb()}


def part_memory600(args) -> dict:
    from priorsam.data.preprocess import UpstreamFrame, stack_channels, window
    from priorsam.engine.slices import run_over_slices
    from priorsam.io import write_label_map
    from priorsam.io.volume import Source, canonicalize

    rss_start = peak_rss_mb()
    shape = (512, 512, 600)
    rng = np.random.default_rng(0)
    # HU stand-in: a soft-tissue disc in air with noise, generated slab by slab to avoid float64 temporaries
    yy, xx = np.mgrid[:512, :512]
    disc = ((xx - 256) ** 2 + (yy - 256) ** 2 < 200 ** 2).astype(np.float32)
    hu = np.empty(shape, dtype=np.float32)
    for k in range(shape[2]):
        hu[:, :, k] = -1000 + 1040 * disc + rng.normal(0, 20, (512, 512)).astype(np.float32)
    affine = np.diag([0.7, 0.7, 1.0, 1.0])
    volume = canonicalize(hu, affine, Source("synthetic", "nifti", shape, affine, np.zeros((3, 2))))
    del hu
    t = time.perf_counter()
    slices = volume.axial_slices()
    z, h, w = slices.shape
    frame = UpstreamFrame(h, w)

    def predict(idx: np.ndarray) -> np.ndarray:
        images = frame.images(stack_channels(window(slices[idx]), np.arange(len(idx)), 0))
        logits = (images[:, :1] - 0.5) * 8.0  # stands in for the network's (N, 1, 256, 256) logits
        return (frame.maps_from_model(logits).sigmoid()[:, 0] > 0.5).numpy().astype(np.uint8)

    labels = run_over_slices(z, h, w, predict, batch_size=4, show_bar=False)
    ras = volume.label_from_display(labels)
    del labels
    with tempfile.TemporaryDirectory() as tmp:
        write_label_map(volume, ras, Path(tmp) / "labels.nii.gz")
        written_mb = (Path(tmp) / "labels.nii.gz").stat().st_size / 2**20
    total = time.perf_counter() - t
    assert ras.any()
    return {"shape": list(shape), "batch_size": 4, "total_s": total, "s_per_slice": total / z,
            "rss_at_start_mb": rss_start, "peak_rss_mb": peak_rss_mb(), "label_file_mb": written_mb,
            "array_mb": {"volume_float32": volume.array.nbytes / 2**20, "display_float32": slices.nbytes / 2**20,
                         "labels_uint8": ras.nbytes / 2**20}}


PARTS = {"encoder": part_encoder, "volume": part_volume, "memory600": part_memory600}


def run_part(name: str, slices: int | None) -> dict:
    cmd = [sys.executable, __file__, "--part", name] + ([] if slices is None else ["--slices", str(slices)])
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if proc.returncode != 0:
        raise SystemExit(f"part {name} failed:\n{proc.stderr[-3000:]}")
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    res["process_wall_s"] = time.perf_counter() - t
    return res


def machine() -> dict:
    import torch

    model = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                  if ln.startswith("model name")), platform.processor())
    mem = next((ln.split()[1] for ln in Path("/proc/meminfo").read_text().splitlines() if ln.startswith("MemTotal")),
               "0")
    return {"cpu": model, "cores": os.cpu_count(), "mem_gb": round(int(mem) / 2**20, 1), "python": platform.python_version(),
            "torch": torch.__version__, "torch_threads": torch.get_num_threads(), "os": platform.platform()}


def fmt(xs) -> str:
    xs = np.asarray(xs)
    return f"{np.median(xs):.2f} (min {xs.min():.2f}, max {xs.max():.2f}, n={len(xs)})"


def report(info: dict, load0, load1, res: dict) -> str:
    enc, vol, mem = res["encoder"], res["volume"], res["memory600"]
    lines = [
        "# Engine timing and memory (CPU)", "",
        f"Generated by `python bench/engine_timing.py` on {time.strftime('%Y-%m-%d %H:%M')}.", "",
        "**Caveat: the CPU was shared with other jobs while this ran** (1-minute load average "
        f"{load0[0]:.1f} at the start and {load1[0]:.1f} at the end, on {info['cores']} cores), so every time "
        "below is inflated compared with an idle machine, by a factor that varied with the other jobs "
        "(measured when the project was planned: ≈ 2.3–3 s per slice for this encoder in PyTorch eager on an idle 2-core AVX2 machine). "
        "Memory figures are not affected by the load.", "",
        "## Machine", "",
        *(f"- {k}: {v}" for k, v in info.items()), "",
        "## (i) LiteMedSAM encoder alone, per slice", "",
        f"Sample CT slices {enc['slice_hw'][0]}×{enc['slice_hw'][1]} → 256×256 (LiteMedSAM framing), fp32, "
        f"{enc['threads']} torch threads, after one warm-up slice. Seconds per slice, median (min, max, batches):", "",
        "| batch | s / slice |", "|---|---|",
        f"| 1 | {fmt(enc['batch1_s_per_slice'])} |",
        f"| 4 | {fmt(enc['batch4_s_per_slice'])} |", "",
        f"Peak RSS of this process: {enc['peak_rss_mb']:.0f} MB (after loading the model: {enc['rss_after_load_mb']:.0f} MB).", "",
        "## (ii) `run_over_slices` over the whole sample CT", "",
        f"{vol['slices']} of the sample CT's {vol['volume_slices']} slices"
        + (" (limited with `--slices` because the CPU was shared)" if vol["slices"] < vol["volume_slices"] else "")
        + f", {vol['slice_hw'][0]}×{vol['slice_hw'][1]}, batch {vol['batch_size']}; predict = "
        "preprocessing + encoder + prompt encoder + mask decoder with one whole-slice box per slice + "
        "upsampling/threshold (the box-prompted path's per-slice work).", "",
        "| total s | s / slice | peak RSS MB | RSS after model load MB |", "|---|---|---|---|",
        f"| {vol['total_s']:.1f} | {vol['s_per_slice']:.2f} | {vol['peak_rss_mb']:.0f} | {vol['rss_after_load_mb']:.0f} |", "",
        "## (iii) Memory of a 512×512×600 volume (cheap predict function, no network)", "",
        "The engine's bookkeeping (canonical volume, display slices, uint8 label stack filled batch by batch, "
        "back to RAS, label map written atomically as .nii.gz) on a synthetic float32 CT of 512×512×600. "
        "**The predict function here is NOT the model**: it runs the real LiteMedSAM preprocessing "
        "(window, resize, min-max, pad) and the real inverse framing on a fake logit map, so this measures "
        "memory, not model time. The real encoder on 600 slices would take ≈ 600 × the per-slice time of (i).", "",
        "| total s | peak RSS MB | RSS at start (interpreter + torch) MB | label file MB |", "|---|---|---|---|",
        f"| {mem['total_s']:.1f} | {mem['peak_rss_mb']:.0f} | {mem['rss_at_start_mb']:.0f} | {mem['label_file_mb']:.1f} |", "",
        "Array sizes: " + ", ".join(f"{k} {v:.0f} MB" for k, v in mem["array_mb"].items()) + ".", "",
        f"Peak {mem['peak_rss_mb'] / 1024:.2f} GB — " +
        ("under the 4 GB target." if mem["peak_rss_mb"] < 4096 else "**over the 4 GB target.**"), "",
    ]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="bench/results/engine_timing.md")
    ap.add_argument("--part", choices=list(PARTS))
    ap.add_argument("--slices", type=int, default=None,
                    help="limit part (ii) to the first N slices (default: all; use when the CPU is shared)")
    args = ap.parse_args()
    if args.part:
        print(json.dumps(PARTS[args.part](args)))
        return
    info = machine()
    load0 = os.getloadavg()
    res = {}
    for name in PARTS:
        print(f"running {name} ...", file=sys.stderr, flush=True)
        res[name] = run_part(name, args.slices)
        print(json.dumps(res[name]), file=sys.stderr, flush=True)
    load1 = os.getloadavg()
    text = report(info, load0, load1, res)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    Path(args.out).with_suffix(".json").write_text(json.dumps({"machine": info, "load": [load0, load1], **res}, indent=1))
    print(text)


if __name__ == "__main__":
    main()
