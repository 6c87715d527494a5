"""The refinement's box decoder (LiteMedSAM's prompt encoder + mask decoder, one box per organ and slice)
under each CPU runtime: seconds per (slice, box) pair, and agreement with PyTorch fp32.

Runtimes: PyTorch fp32 (the model's :class:`~priorsam.models.binary_path.BinaryPromptPath`), PyTorch
under bf16 autocast, and :class:`~priorsam.models.openvino_binary_path.OpenVinoBinaryPath` at fp32 and at
OpenVINO's default precision (bf16 on CPUs with AVX512-BF16/AMX; the engine's CPU default). The inputs are
real: encoder embeddings of sample-CT slices and the boxes of their organs from the sample's labels.

    python bench/box_decoder.py [--pairs 32] [--runs 3] [--out bench/results]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_info, set_threads, stats, time_runs  # noqa: E402


def real_pairs(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(n,256,64,64) embeddings of sample-CT slices and (n,4) organ boxes (model pixels, 3 px margin)."""
    from priorsam.data.framed_volume import FramedVolume, Framing
    from priorsam.data.samples import sample_ct
    from priorsam.io import read_label_map, read_volume, to_display
    from priorsam.models.image_encoder import LiteImageEncoder
    from priorsam.models.refinement import boxes_from_masks

    s = sample_ct()
    framed = FramedVolume.from_volume(read_volume(s.image), Framing())
    labels = to_display(read_label_map(s.label).array.astype(np.uint8))
    zs = np.linspace(len(framed) * 0.3, len(framed) * 0.7, 8).astype(int)
    with torch.inference_mode():
        emb = LiteImageEncoder(pretrained=True).eval()(framed.images(zs)).embedding
    lab = framed.labels_to_model(labels[zs])
    embs, boxes = [], []
    for i in range(len(zs)):
        for k in range(1, 9):
            m = lab[i] == k
            if m.sum() >= 12:
                b, _ = boxes_from_masks(m[None], margin=3.0)
                embs.append(emb[i])
                boxes.append(b[0])
    idx = np.resize(np.arange(len(boxes)), n)
    return torch.stack([embs[i] for i in idx]), torch.stack([boxes[i] for i in idx])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=32)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--out", default="bench/results")
    a = ap.parse_args(argv)
    threads = set_threads(a.threads)
    from priorsam.models.binary_path import BinaryPromptPath
    from priorsam.models.openvino_binary_path import OpenVinoBinaryPath

    emb, boxes = real_pairs(a.pairs)
    path = BinaryPromptPath(pretrained=True).eval()

    def torch_fp32():
        with torch.inference_mode():
            return path(emb, boxes)[0]

    def torch_bf16():
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
            return path(emb, boxes)[0].float()

    ov32 = OpenVinoBinaryPath(path, threads=threads, precision="f32")
    ovd = OpenVinoBinaryPath(path, threads=threads)
    runtimes = {"torch fp32": torch_fp32, "torch bf16 autocast": torch_bf16,
                "openvino f32": lambda: ov32(emb, boxes)[0], f"openvino default ({ovd.precision})": lambda: ovd(emb, boxes)[0]}
    ref = torch_fp32()
    res = {"machine": machine_info(threads), "pairs": a.pairs, "rows": []}
    for name, fn in runtimes.items():
        times = time_runs(fn, a.runs)
        out = fn()
        agree = float(((out > 0) == (ref > 0)).float().mean())
        row = {"runtime": name, "s_per_pair": round(stats(times)["median"] / a.pairs, 4),
               "mask_pixels_agreeing": round(agree, 5), "max_abs_logit_diff": round(float((out - ref).abs().max()), 4)}
        print(json.dumps(row), flush=True)
        res["rows"].append(row)
    Path(a.out).mkdir(parents=True, exist_ok=True)
    (Path(a.out) / "box_decoder.json").write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
