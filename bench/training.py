"""Training throughput (slices/s) with and without the feature cache.

* ``cached``  — what ``priorsam train`` does: batches of (embedding, skips, label) read from the on-disk
  :class:`priorsam.training.cache.FeatureCache` through :class:`~priorsam.training.cache.CachedSlices`
  (fp16 on disk → fp32), ``PriorSAM(encoder=None)`` heads, PriorSAMLoss, backward, AdamW step.
* ``encoder`` — the same heads and step, but every batch is encoded from images by the frozen
  LiteMedSAM encoder in PyTorch (``PriorSAM(encoder="lite")``), as a trainer without the cache would.

Both use the lead's run configuration (refine_rounds 2, 256² loss on the final round only, no box
prompts in the timed steps) and the same batch size; median seconds per step after one warm-up step.
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

def _small_cache(root: Path, n: int):
    """A cache of ``n`` real sample-CT slices (ONNX Runtime encoder) when no training cache exists here."""
    import numpy as np
    import torch

    from inputs import model_images
    from priorsam.models.image_encoder import EncoderFeatures
    from priorsam.models.onnx_encoder import OnnxLiteEncoder
    from priorsam.training.cache import FeatureCache

    cache = FeatureCache(root)
    enc = OnnxLiteEncoder()
    images = model_images(n)
    feats = enc(images)
    g = torch.Generator().manual_seed(0)
    for i in range(n):
        label = torch.randint(0, 9, (256, 256), generator=g)  # throughput only: labels' values do not matter
        one = EncoderFeatures(feats.embedding[i], tuple(s[i] for s in feats.skips))
        cache.put(f"bench{i:04d}".ljust(24, "0"), one, label, {"case": "bench", "view": 0, "z": i})
    return cache, np.arange(n)


def run(threads: int, runs: int, batch: int, cache_root: str | None) -> dict:
    import torch
    from torch.utils.data import DataLoader, RandomSampler

    from common import peak_rss_mb, set_threads
    from inputs import model_images
    from priorsam.models.losses import PriorSAMLoss
    from priorsam.models.priorsam import PriorSAM
    from priorsam.priors.bank import load_prior_bank
    from priorsam.training.cache import CachedSlices, FeatureCache, collate

    set_threads(threads)
    torch.manual_seed(0)
    bank = load_prior_bank("v1")
    root = Path(cache_root) if cache_root else None
    tmp = None
    if root is not None and (root / "index.jsonl").is_file():
        cache = FeatureCache(root)
        source = str(root)
    else:
        tmp = tempfile.TemporaryDirectory()
        cache, _ = _small_cache(Path(tmp.name), max(batch, 8))
        source = (f"temporary cache of {max(batch, 8)} sample-CT slices "
                  f"({'no training cache at ' + str(root) if root else 'no --cache given'})")
    records = cache.records()
    ds = CachedSlices(cache, records)
    g = torch.Generator().manual_seed(0)
    loader = iter(DataLoader(ds, batch_size=batch, sampler=RandomSampler(ds, replacement=True, num_samples=10**6,
                                                                         generator=g),
                             collate_fn=collate, num_workers=0))
    loss_fn = PriorSAMLoss(full_res_every_round=False)
    out = {"batch": batch, "threads": threads, "cache": source, "cache_entries": len(records)}

    def timed(model, next_batch) -> list[float]:
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=1e-4)
        model.train()
        times = []
        for i in range(runs + 1):
            t = time.perf_counter()
            inputs, labels = next_batch()
            outputs = model(**inputs)
            loss, _ = loss_fn(outputs, labels)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if i:
                times.append(time.perf_counter() - t)
        return times

    heads = PriorSAM(encoder=None, prior_bank=bank, binary_path=True, refine_rounds=2)

    def cached_batch():
        feats, labels = next(loader)
        return {"features": feats}, labels

    out["cached_step_s"] = timed(heads, cached_batch)
    del heads
    full = PriorSAM(encoder="lite", prior_bank=bank, binary_path=True, refine_rounds=2)
    images = model_images(batch * (runs + 1))
    labels = torch.randint(0, 9, (batch * (runs + 1), 256, 256), generator=g)
    state = {"i": 0}

    def image_batch():
        i = state["i"]
        state["i"] += batch
        return {"images": images[i:i + batch]}, labels[i:i + batch]

    out["encoder_step_s"] = timed(full, image_batch)
    out["peak_rss_mb"] = peak_rss_mb()
    if tmp is not None:
        tmp.cleanup()
    return out
