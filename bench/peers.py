"""Peer architectures on the same machine, random weights (their trained weights are not available offline).

* ``pgsam_vith224`` — PG-SAM's published configuration: segment-anything's SAM ViT-H image encoder
  (depth 32, width 1280, 16 heads, global attention in blocks 7/15/23/31, window 14) at 224 px, run
  **twice per slice** as its code does. One "slice" here is those two encoder passes.
* ``vitb512``       — SAMed's and H-SAM's encoder: SAM ViT-B (depth 12, width 768, 12 heads, global 2/5/8/11)
  at 512 px, once per slice.
* ``segresnet3d``   — a 3D CNN peer as in MONAI's ``wholeBody_ct_segmentation`` bundle (low-res variant):
  SegResNet(blocks_down [1,2,2,4], blocks_up [1,1,1], init_filters 32, 1→105 channels), image
  resampled to 3 mm, NormalizeIntensity(nonzero) + ScaleIntensity(−1, 1), SlidingWindowInferer(96³,
  batch 1, overlap 0.25, gaussian, replicate), softmax/argmax, inverted to the input grid (nearest).
  Timed on the real volume, read to label array.

Per-slice latencies of the 2D peers are measured on a few slices (median of ``runs`` after a warm-up)
and extrapolated to a volume by the driver — labelled *extrapolated* there. Multiply-accumulates are
counted with ``torch.utils.flop_counter`` on the warm-up pass (MAC = FLOP / 2).
"""
from __future__ import annotations

import time
from functools import partial

import numpy as np

VIT_CONFIGS = {
    # name: (img_size, depth, embed_dim, heads, global_attn_indexes, passes per slice)
    "pgsam_vith224": (224, 32, 1280, 16, (7, 15, 23, 31), 2),
    "vitb512": (512, 12, 768, 12, (2, 5, 8, 11), 1),
}


def build_vit(img_size: int, depth: int, embed_dim: int, heads: int, global_attn: tuple[int, ...]):
    """segment-anything's ImageEncoderViT with SAM's settings (rel-pos, window 14, neck to 256), random init."""
    import torch
    from segment_anything.modeling import ImageEncoderViT

    torch.manual_seed(0)
    return ImageEncoderViT(img_size=img_size, patch_size=16, in_chans=3, embed_dim=embed_dim, depth=depth,
                           num_heads=heads, mlp_ratio=4.0, out_chans=256, qkv_bias=True,
                           norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), act_layer=torch.nn.GELU,
                           use_abs_pos=True, use_rel_pos=True, window_size=14,
                           global_attn_indexes=global_attn).eval()


def gmacs(model, x) -> float:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with torch.inference_mode(), FlopCounterMode(display=False) as fc:
        model(x)
    return fc.get_total_flops() / 2e9


def measure_vit(name: str, threads: int, runs: int) -> dict:
    """Seconds per slice (all passes of one slice) for a 2D ViT peer, batch 1."""
    import torch

    from common import peak_rss_mb, set_threads

    set_threads(threads)
    size, depth, dim, heads, glob, passes = VIT_CONFIGS[name]
    model = build_vit(size, depth, dim, heads, glob)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 3, size, size, generator=g)
    mac = gmacs(model, x)  # also the warm-up pass
    times = []
    with torch.inference_mode():
        for _ in range(runs):
            t = time.perf_counter()
            for _ in range(passes):
                emb = model(x)
            times.append(time.perf_counter() - t)
    assert emb.shape == (1, 256, size // 16, size // 16)
    return {"peer": name, "img_size": size, "depth": depth, "embed_dim": dim, "passes_per_slice": passes,
            "gmac_per_pass": mac, "gmac_per_slice": mac * passes, "times_s": times, "threads": threads,
            "params_m": sum(p.numel() for p in model.parameters()) / 1e6, "peak_rss_mb": peak_rss_mb()}


def build_segresnet():
    import torch
    from monai.networks.nets import SegResNet

    torch.manual_seed(0)
    return SegResNet(spatial_dims=3, in_channels=1, out_channels=105, init_filters=32, blocks_down=(1, 2, 2, 4),
                     blocks_up=(1, 1, 1), dropout_prob=0.2).eval()


def measure_segresnet(path: str, threads: int, runs: int) -> dict:
    """Whole-volume wall time of the 3D peer, file → label array on the input grid (no writing)."""
    import torch
    from monai.inferers import SlidingWindowInferer
    from monai.transforms import (Compose, EnsureChannelFirstd, EnsureTyped, Invertd, LoadImaged,
                                  NormalizeIntensityd, Orientationd, ScaleIntensityd, Spacingd)

    from common import peak_rss_mb, set_threads

    set_threads(threads)
    net = build_segresnet()
    pre = Compose([LoadImaged("image"), EnsureTyped("image"), EnsureChannelFirstd("image"),
                   Orientationd("image", axcodes="RAS"), Spacingd("image", pixdim=(3.0, 3.0, 3.0), mode="bilinear"),
                   NormalizeIntensityd("image", nonzero=True), ScaleIntensityd("image", minv=-1.0, maxv=1.0)])
    inferer = SlidingWindowInferer(roi_size=(96, 96, 96), sw_batch_size=1, overlap=0.25, mode="gaussian",
                                   padding_mode="replicate")
    post = Invertd("pred", transform=pre, orig_keys="image", nearest_interp=True, to_tensor=True)
    win = torch.zeros(1, 1, 96, 96, 96)
    mac_window = gmacs(net, win)  # also a warm-up
    info: dict = {}

    def once() -> np.ndarray:
        d = pre({"image": path})
        info["resampled_shape"] = list(d["image"].shape[1:])
        with torch.inference_mode():
            logits = inferer(d["image"][None], net)
            d["pred"] = logits[0].softmax(0).argmax(0, keepdim=True).to(torch.uint8)
        d = post(d)
        return np.asarray(d["pred"][0])

    times = []
    for _ in range(runs):
        t = time.perf_counter()
        labels = once()
        times.append(time.perf_counter() - t)
    import nibabel as nib

    in_shape = nib.load(path).shape
    assert labels.shape == tuple(in_shape), (labels.shape, in_shape)
    # Windows the inferer ran: scan positions per axis with stride 96·(1−overlap) = 72.
    shape = np.maximum(np.array(info["resampled_shape"]), 96)
    n_win = int(np.prod([int(np.ceil((s - 96) / 72)) + 1 for s in shape]))
    return {"peer": "segresnet3d", "input": str(path), "input_shape": list(in_shape), **info, "windows": n_win,
            "gmac_per_window": mac_window, "times_s": times, "threads": threads,
            "params_m": sum(p.numel() for p in net.parameters()) / 1e6, "peak_rss_mb": peak_rss_mb()}
