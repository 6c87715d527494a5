"""Train PriorSAM's heads from the on-disk feature cache (frozen encoder, CPU-practical).

One step: a batch of cached (embedding, skips, label) entries → PriorSAM heads →
PriorSAMLoss, on ``device`` (by default a CUDA GPU when one is usable; the cache is read on the CPU).
Every ``prompt_every``-th step the batch is also prompted with a jittered box of one present organ per
slice, so the semantic decoder learns to name a prompted object and the cross-mask alignment term ties
binary and semantic masks (SEG-SAM).
AdamW with linear warm-up and poly decay; resumable checkpoints; console and CSV logs.
"""
from __future__ import annotations

import json
import os
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, RandomSampler

from ..errors import InputError
from ..models.losses import PriorSAMLoss
from ..models.priorsam import PriorSAM
from ..models.spec import ModelSpec, build_model, heads_only, read_checkpoint, spec_for_bank, write_checkpoint
from ..priors.bank import load_prior_bank
from .cache import CachedSlices, FeatureCache, collate, open_run
from .run_log import open_run_log


@dataclass
class TrainConfig:
    """Defaults are the Synapse recipe (docs/training.md): 18 BTCV training cases, batch 8,
    seed 1234, warm-up then poly decay 0.9 as in PG-SAM's code; the demo weights' one-scan run
    overrides steps/lr/warm-up (bundle/docs/training/main_config.json)."""

    cache: str
    out_dir: str
    steps: int = 20000
    batch_size: int = 8
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup: int = 250
    poly_power: float = 0.9
    seed: int = 1234
    prompt_every: int = 2
    box_jitter: float = 0.1
    prior_version: str = "v1"
    model: dict = field(default_factory=lambda: {"refine_rounds": 2})
    loss: dict = field(default_factory=dict)
    views: list | None = None          # restrict to these view ids (None: all cached)
    augmented: bool | None = None      # True/False restricts to augmented/clean views
    log_every: int = 25
    ckpt_every: int = 250
    snapshot_every: int = 0            # also keep model_step<N>.pt every N steps (0: never)
    refresh_every: int = 0             # re-read the cache index every N steps (cache still filling)
    resume: bool = True
    threads: int = 0
    init_from: str | None = None        # start from these heads (a checkpoint of the same architecture)
    cases: list | None = None           # restrict to these cached case ids (None: every case in the cache)
    data_sources: list = field(default_factory=list)   # {name, licence, use} records for the spec
    device: str = "auto"                # auto (a CUDA GPU when usable, else the CPU), cpu, cuda or cuda:N


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _lr_at(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    frac = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (1 - frac) ** cfg.poly_power


def prompt_boxes(labels: torch.Tensor, gen: torch.Generator, jitter: float) -> tuple[torch.Tensor, torch.Tensor]:
    """One random present organ per slice → (B,4) jittered boxes and (B,) classes (−1 if none)."""
    b, h, w = labels.shape
    boxes = torch.zeros(b, 4)
    classes = torch.full((b,), -1, dtype=torch.long)
    for i in range(b):
        present = [int(c) for c in labels[i].unique() if c > 0]
        if not present:
            boxes[i] = torch.tensor([0.0, 0.0, w - 1.0, h - 1.0])
            continue
        c = present[int(torch.randint(len(present), (1,), generator=gen))]
        ys, xs = torch.nonzero(labels[i] == c, as_tuple=True)
        x0, x1, y0, y1 = xs.min().item(), xs.max().item(), ys.min().item(), ys.max().item()
        sw, sh = max(x1 - x0, 4), max(y1 - y0, 4)
        j = (torch.rand(4, generator=gen) * 2 - 1) * jitter * torch.tensor([sw, sh, sw, sh])
        boxes[i] = (torch.tensor([x0, y0, x1, y1], dtype=torch.float32) + j).clamp(0, max(h, w) - 1)
        classes[i] = c
    return boxes, classes


def heads_spec(cfg: TrainConfig, bank, records_meta: dict | None = None) -> ModelSpec:
    """The spec of the heads this run trains (framing and context as cached)."""
    m = records_meta or {}
    return spec_for_bank(bank, heads=dict(cfg.model), spacing_mm=float(m.get("spacing_mm", 1.5)),
                         framing=m.get("framing", "fixed"), context=int(m.get("context", 0)),
                         data_sources=list(cfg.data_sources),
                         training={"recipe": {k: v for k, v in asdict(cfg).items() if k not in ("model", "data_sources")},
                                   "cache_entries": m.get("n"), "views": m.get("views")})


def export_weights(model: PriorSAM, cfg: TrainConfig, records_meta: dict, path: Path) -> Path:
    """Tensors-only heads + spec (:mod:`priorsam.models.spec`) that inference and the bundle load."""
    return write_checkpoint(path, model.trainable_state_dict(), heads_spec(cfg, load_prior_bank(cfg.prior_version),
                                                                          records_meta))


def select_records(cache: FeatureCache, cfg: TrainConfig, entries: list[tuple[str, str]] | None = None) -> list[dict]:
    """The cached entries this run trains on: ``entries`` ((case id, view key) pairs, in their order: a recipe's
    own in a cache it may share, :func:`priorsam.training.cache.entries_of`) or else every entry in the index's
    order, then narrowed by the config's views, augmented and cases."""
    recs = cache.records(entries)
    if cfg.views is not None:
        recs = [r for r in recs if r["view"] in set(cfg.views)]
    if cfg.augmented is not None:
        recs = [r for r in recs if bool(r["augment"]) == cfg.augmented]
    if cfg.cases is not None:
        recs = [r for r in recs if r["case"] in set(cfg.cases)]
    if not recs:
        raise InputError(f"no cached entries in {cfg.cache} match the selection (views, augmented, cases)")
    ctx = {r["context"] for r in recs}
    sp = {r["spacing_mm"] for r in recs}
    fr = {r.get("framing", "fixed") for r in recs}
    if len(ctx) > 1 or len(sp) > 1 or len(fr) > 1:
        raise InputError(f"cache mixes contexts {ctx}, spacings {sp} or framings {fr}; select one")
    return recs


def train(cfg: TrainConfig, log=print, entries: list[tuple[str, str]] | None = None) -> Path:
    """Train (or resume) the run in ``cfg.out_dir`` on the cache's entries (``entries``: only these (case id,
    view key) pairs, in their order; :func:`select_records`); returns the exported ``model.pt``."""
    from ..engine.device import describe_device

    select = lambda c, f: select_records(c, f, entries)
    device, cache, recs, out = open_run(cfg, "python -m priorsam.training.build_cache --cache DIR, or priorsam "
                                             "train --build_views N", select)
    _seed_all(cfg.seed)
    bank = load_prior_bank(cfg.prior_version)
    meta = {"spacing_mm": recs[0]["spacing_mm"], "context": recs[0]["context"],
            "framing": recs[0].get("framing", "fixed"), "n": len(recs),
            "views": sorted({r["view"] for r in recs})}
    model = build_model(heads_spec(cfg, bank, meta), encoder=None, binary_path=cfg.prompt_every > 0, prior_bank=bank)
    if cfg.init_from and not (cfg.resume and (out / "last.pt").is_file()):
        state, _ = read_checkpoint(cfg.init_from)
        model.load_trainable_state_dict(heads_only(state), bank)
        log(f"[train] heads initialised from {cfg.init_from}")
    model.to(device)
    log(f"[train] on {describe_device(device)}")
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    loss_fn = PriorSAMLoss(**cfg.loss)
    state_path = out / "last.pt"
    step = 0
    if cfg.resume and state_path.is_file():
        st = torch.load(state_path, map_location="cpu", weights_only=False)
        model.load_trainable_state_dict(st["model"], bank)   # copied onto the model's device
        opt.load_state_dict(st["optim"])
        step = st["step"]
        torch.set_rng_state(st["rng"])
        log(f"[train] resumed at step {step}")
    (out / "config.json").write_text(json.dumps(asdict(cfg), indent=2))
    gen = torch.Generator().manual_seed(cfg.seed + step)

    def make_loader(records):
        ds = CachedSlices(cache, records)
        sampler = RandomSampler(ds, replacement=True, num_samples=10 ** 9, generator=gen)
        return iter(DataLoader(ds, batch_size=cfg.batch_size, sampler=sampler, collate_fn=collate, num_workers=0))

    loader = make_loader(recs)
    fh, writer = open_run_log(out / "log.csv", ["step", "lr", "loss", "full", "low", "presence", "contrast", "align",
                                                "prompt_class", "sec_per_step"], step)
    model.train()
    t_last = time.time()
    try:
        while step < cfg.steps:
            if cfg.refresh_every and step and step % cfg.refresh_every == 0:
                fresh = select(cache, cfg)
                if len(fresh) != len(recs):
                    recs = fresh
                    meta.update(n=len(recs), views=sorted({r["view"] for r in recs}))
                    loader = make_loader(recs)
                    log(f"[train] step {step}: {len(recs)} cached entries from views {meta['views']}")
            feats, labels = next(loader)
            lr = _lr_at(step, cfg)
            for g in opt.param_groups:
                g["lr"] = lr
            boxes = classes = None
            if cfg.prompt_every and step % cfg.prompt_every == 0:
                boxes, classes = prompt_boxes(labels, gen, cfg.box_jitter)   # on the CPU: the same draws anywhere
                boxes, classes = boxes.to(device), classes.to(device)
            feats, labels = feats.to(device), labels.to(device)
            outputs = model(features=feats, boxes=boxes)
            loss, parts = loss_fn(outputs, labels, classes)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            step += 1
            if step % cfg.log_every == 0 or step == cfg.steps:
                dt = (time.time() - t_last) / cfg.log_every
                t_last = time.time()
                row = [step, f"{lr:.2e}", f"{loss.item():.4f}"] + [
                    f"{parts[k].item():.4f}" if k in parts else "" for k in
                    ("full", "low", "presence", "contrast", "align", "prompt_class")] + [f"{dt:.2f}"]
                writer.writerow(row)
                fh.flush()
                log(f"[train] step {step}/{cfg.steps} lr {lr:.2e} loss {loss.item():.4f} "
                    + " ".join(f"{k} {v.item():.3f}" for k, v in parts.items()) + f" ({dt:.2f} s/step)")
            if step % cfg.ckpt_every == 0 or step == cfg.steps:
                tmp = state_path.with_suffix(".part")
                torch.save({"model": model.trainable_state_dict(), "optim": opt.state_dict(), "step": step,
                            "rng": torch.get_rng_state()}, tmp)
                os.replace(tmp, state_path)
                export_weights(model, cfg, meta, out / "model.pt")
            if cfg.snapshot_every and step % cfg.snapshot_every == 0:
                export_weights(model, cfg, meta, out / f"model_step{step}.pt")
    finally:
        fh.close()
    return export_weights(model, cfg, meta, out / "model.pt")
