"""Fine-tune SAM's box decoder (LiteMedSAM's mask decoder, the binary path) on the feature cache.

The box decoder draws every organ's final boundary in the prompt-free engine. LiteMedSAM's own weights
stop short of the edge on CT it was not trained on; fine-tuned on the pseudo-patients it drew the
validation patient's liver 0.920 → 0.928 (docs/generalisation.md, stop 54). The image and prompt
encoders stay frozen, so the cache's embeddings (those the heads train on) are all it needs.

Each step draws ``batch_size`` (slice, organ) pairs from the organs present in the cached slices with
at least ``min_pixels`` model pixels, prompts each with its label's box as the engine makes it
(:func:`~priorsam.models.refinement.boxes_from_masks`) grown by 0..``max_margin_px`` and moved by up to
``jitter_px`` per side, and minimises BCE + soft Dice of the decoded mask against the label.

Resumable (``last.pt``), CSV log (the loss averaged over each ``log_every`` steps), and the decoder
exported as ``box_decoder.pt`` (CPU tensors and a :class:`~priorsam.models.spec.BoxDecoderSpec` naming their
digest), which :func:`priorsam.models.spec.compose_checkpoint` puts into a checkpoint (``box_decoder_from``).

    python -m priorsam.training.box_decoder --cache CACHE --out_dir RUN [--config CONFIG.json] [--exclude ID ...]
    python -m priorsam.training.box_decoder --bank BANK --work DIR --parts PARTS.json [--config CONFIG.json]

The second form first writes the bank's pseudo-patients as cases and fills the cache in parts as the heads'
recipe does (:func:`priorsam.training.heads_bank.fill_heads_cache`; the anatomies the shipped localiser holds
out are never written), then trains in ``DIR/box_decoder``. The shipped decoder's recipe (bundle 0.9.2: 1,600
steps; 0.9.0 stopped the same run at 800) is bundle/docs/training/box_decoder_config.json with
box_decoder_cache.json (docs/generalisation.md).
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from ..errors import InputError, one_line_errors
from ..models.binary_path import BinaryPromptPath
from ..models.refinement import boxes_from_masks
from .cache import FeatureCache, open_run
from .run_log import open_run_log


@dataclass
class BoxDecoderTrainConfig:
    cache: str                                   # feature cache (priorsam.training.build_cache), fixed framing
    out_dir: str
    exclude: list[str] = field(default_factory=list)   # case ids kept out, with their copies (ID_arms_table, …)
    steps: int = 600
    lr: float = 2e-5
    weight_decay: float = 0.01
    batch_size: int = 8                          # box prompts per step
    seed: int = 0
    max_margin_px: float = 12.0                  # the engine grows boxes by 3 (localiser) or 10 (heads) px
    jitter_px: float = 2.0
    box_edge_px: float = 0.0                     # added to each label box's right and bottom edge (0: the
                                                 # engine's boxes; bench/decoder_finetune.py's stop-54 run had 1)
    min_pixels: int = 20                         # smaller cross-sections are not prompted
    log_every: int = 25
    ckpt_every: int = 100
    threads: int = 0
    device: str = "auto"                         # auto (a CUDA GPU when usable, else the CPU), cpu, cuda or cuda:N


def is_excluded(case: str, exclude: Sequence[str]) -> bool:
    """``case`` is one of ``exclude`` or a copy of one (``ID_arms_table``)."""
    return any(case == e or case.startswith(e + "_") for e in exclude)


class CachedEmbeddings:
    """Cache entries as ``(embedding fp16 (256, 64, 64), label uint8 (256, 256), record)``: the labels are
    read once, the embeddings from disk when asked for (a whole cache does not fit in memory)."""

    def __init__(self, cache: FeatureCache, records: list[dict]):
        self.cache, self.records = cache, records
        self.labels = [torch.load(cache.path(r["key"]), map_location="cpu", weights_only=True, mmap=True)["label"].clone()
                       for r in records]

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int):
        blob = torch.load(self.cache.path(self.records[i]["key"]), map_location="cpu", weights_only=True, mmap=True)
        return blob["embedding"].clone(), self.labels[i], self.records[i]


def organ_pool(labels: Sequence[torch.Tensor], n_organs: int, min_pixels: int) -> list[tuple[int, int]]:
    """Every (entry, organ) pair whose cross-section has at least ``min_pixels`` pixels."""
    pool = []
    for i, lab in enumerate(labels):
        counts = torch.bincount(lab.flatten().long(), minlength=n_organs + 1)
        pool += [(i, o) for o in range(1, n_organs + 1) if counts[o] >= min_pixels]
    return pool


def decode(binary: BinaryPromptPath, embedding: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """embedding (256, 64, 64), boxes (K, 4) in model px → mask logits (K, 256, 256): K prompts on one image."""
    sparse, dense = binary.prompt_encoder(points=None, boxes=boxes, masks=None)
    logits, _ = binary.mask_decoder(image_embeddings=embedding[None].float(), image_pe=binary.prompt_encoder.get_dense_pe(),
                                    sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                    multimask_output=False)
    return logits[:, 0]


def label_boxes(targets: torch.Tensor, edge_px: float = 0.0) -> torch.Tensor:
    """(K, H, W) non-empty masks → (K, 4) boxes as the engine makes them, ``edge_px`` added right and bottom."""
    return boxes_from_masks(targets.bool())[0] + torch.tensor([0.0, 0.0, edge_px, edge_px], device=targets.device)


def run_steps(binary: BinaryPromptPath, entries, pool: list[tuple[int, int]], opt: torch.optim.Optimizer,
              gen: torch.Generator, cfg: BoxDecoderTrainConfig, first: int, last: int,
              on_step: Callable[[int, float], None] | None = None) -> None:
    """Steps ``first``..``last`` (1-based) of the decoder's training; ``on_step(step, loss)`` after each.
    Draws come from ``gen`` (CPU) in a fixed order, so a run and its resumption draw the same prompts."""
    device = binary.prompt_encoder.no_mask_embed.weight.device
    sides = torch.tensor([-1.0, -1.0, 1.0, 1.0])
    for step in range(first, last + 1):
        picks = torch.randint(len(pool), (cfg.batch_size,), generator=gen).tolist()
        by_entry: dict[int, list[int]] = {}
        for k in picks:
            i, o = pool[k]
            by_entry.setdefault(i, []).append(o)
        total = 0.0
        opt.zero_grad()
        # One backward per slice: SAM's decoder takes one image embedding per call.
        for i, organs in by_entry.items():
            emb, lab = entries[i][0], entries[i][1]
            targets = torch.stack([(lab == o).float() for o in organs])
            boxes = label_boxes(targets, cfg.box_edge_px)
            grow = torch.rand(len(organs), 1, generator=gen) * cfg.max_margin_px
            shake = (torch.rand(len(organs), 4, generator=gen) * 2 - 1) * cfg.jitter_px
            boxes = (boxes + sides * grow + shake).clamp(0, 256).to(device)
            targets = targets.to(device)
            logits = decode(binary, emb.to(device), boxes)
            prob = logits.sigmoid()
            soft_dice = 1 - (2 * (prob * targets).sum((1, 2)) + 1) / (prob.sum((1, 2)) + targets.sum((1, 2)) + 1)
            bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none").mean((1, 2))
            loss = (bce + soft_dice).sum() / cfg.batch_size
            loss.backward()
            total += float(loss.detach())
        opt.step()
        if on_step is not None:
            on_step(step, total)


def decoder_params(binary: BinaryPromptPath) -> list[torch.nn.Parameter]:
    """The mask decoder's parameters, made trainable (and the decoder put in training mode)."""
    params = list(binary.mask_decoder.parameters())
    for p in params:
        p.requires_grad_(True)
    binary.mask_decoder.train()
    return params


def make_optimizer(binary: BinaryPromptPath, cfg: BoxDecoderTrainConfig) -> torch.optim.Optimizer:
    return torch.optim.AdamW(decoder_params(binary), lr=cfg.lr, weight_decay=cfg.weight_decay)


def select_records(cache: FeatureCache, cfg: BoxDecoderTrainConfig,
                   entries: list[tuple[str, str]] | None = None) -> list[dict]:
    """The cached entries the decoder learns from: ``entries`` ((case id, view key) pairs, in their order: a
    recipe's own in a cache it may share) or else every entry, less the excluded cases."""
    recs = [r for r in cache.records(entries) if not is_excluded(r["case"], cfg.exclude)]
    if not recs:
        raise InputError(f"no cached entries in {cfg.cache} outside the excluded cases")
    framings = {(r["spacing_mm"], r.get("framing", "fixed")) for r in recs}
    if len(framings) > 1:
        raise InputError(f"cache {cfg.cache} mixes framings {sorted(framings)}; the decoder learns one")
    return recs


def train_box_decoder(cfg: BoxDecoderTrainConfig, log=print, entries: list[tuple[str, str]] | None = None) -> Path:
    """Train (or resume) the run in ``cfg.out_dir`` on the cache's entries (``entries``: only these (case id,
    view key) pairs, in their order; :func:`select_records`); returns the exported ``box_decoder.pt``."""
    from ..engine.device import describe_device
    from ..labels import labels

    device, cache, recs, out = open_run(cfg, "python -m priorsam.training.build_cache --cache DIR, or this "
                                             "command's --bank form", lambda c, f: select_records(c, f, entries))
    t = time.time()
    embeddings = CachedEmbeddings(cache, recs)
    pool = organ_pool(embeddings.labels, len(labels()), cfg.min_pixels)
    cases = sorted({r["case"] for r in recs})
    log(f"[box_decoder] {len(recs)} cache entries of {len(cases)} cases, {len(pool)} organ cross-sections "
        f"({time.time() - t:.0f} s to read the labels); on {describe_device(device)}")
    torch.manual_seed(cfg.seed)
    binary = BinaryPromptPath(pretrained=True, device=str(device)).to(device)
    opt = make_optimizer(binary, cfg)   # the mask decoder's parameters only: the prompt encoder stays frozen
    gen = torch.Generator().manual_seed(cfg.seed)
    step, state = 0, out / "last.pt"
    if state.is_file():
        st = torch.load(state, map_location="cpu", weights_only=False)
        binary.mask_decoder.load_state_dict(st["decoder"])
        opt.load_state_dict(st["optim"])
        gen.set_state(st["generator"])
        step = st["step"]
        log(f"[box_decoder] resumed at step {step}")
    (out / "config.json").write_text(json.dumps({**asdict(cfg), "cases": cases, "entries": len(recs)}, indent=1))
    fh, w = open_run_log(out / "log.csv", ["step", "loss", "sec_per_step"], step)
    acc, t_last = [], time.time()

    def on_step(s: int, loss: float) -> None:
        nonlocal acc, t_last
        acc.append(loss)
        if s % cfg.log_every == 0 or s == cfg.steps:
            dt = (time.time() - t_last) / len(acc)
            w.writerow([s, f"{sum(acc) / len(acc):.4f}", f"{dt:.2f}"])
            fh.flush()
            log(f"[box_decoder] step {s}/{cfg.steps} loss {sum(acc) / len(acc):.4f} {dt:.2f} s/step")
            acc, t_last = [], time.time()
        if s % cfg.ckpt_every == 0 or s == cfg.steps:
            tmp = state.with_suffix(".part")
            torch.save({"decoder": binary.mask_decoder.state_dict(), "optim": opt.state_dict(),
                        "generator": gen.get_state(), "step": s}, tmp)
            os.replace(tmp, state)

    try:
        run_steps(binary, embeddings, pool, opt, gen, cfg, step + 1, cfg.steps, on_step)
    finally:
        fh.close()
    return export_box_decoder(binary, cfg, cases, out / "box_decoder.pt", recs[0])


def export_box_decoder(binary: BinaryPromptPath, cfg: BoxDecoderTrainConfig, cases: list[str], path: Path,
                       record: dict) -> Path:
    """Tensors-only decoder weights with their :class:`~priorsam.models.spec.BoxDecoderSpec` (atomic); ``record``:
    a cache entry's, for the framing of the embeddings it learnt on."""
    from ..assets import LITEMEDSAM_SHA256
    from ..models.cpu_runtime import state_digest
    from ..models.spec import BOX_DECODER_SPEC_KEY, BoxDecoderSpec, encode_json

    sd = {k: v.detach().cpu().clone() for k, v in binary.mask_decoder.state_dict().items()}
    recipe = {k: v for k, v in asdict(cfg).items() if k not in ("cache", "out_dir", "threads", "device")}
    spec = BoxDecoderSpec(sha256=state_digest(sd), base_sha256=LITEMEDSAM_SHA256,
                          framing=record.get("framing", "fixed"), spacing_mm=float(record["spacing_mm"]),
                          trained_on=cases, exclude=list(cfg.exclude), steps=cfg.steps, recipe=recipe)
    sd[BOX_DECODER_SPEC_KEY] = encode_json(asdict(spec))
    tmp = path.with_suffix(".part")
    torch.save(sd, tmp)
    os.replace(tmp, path)
    return path


def read_config(config: str | None, cache: str, out_dir: str, **overrides) -> BoxDecoderTrainConfig:
    """A config from a JSON file of :class:`BoxDecoderTrainConfig` fields (one-line errors) and overrides
    (None: keep the file's)."""
    from ..config_files import read_settings

    fields = read_settings(config, BoxDecoderTrainConfig, "box decoder config", fixed=("cache", "out_dir")) if config else {}
    fields.update({k: v for k, v in overrides.items() if v is not None})
    return BoxDecoderTrainConfig(cache=str(cache), out_dir=str(out_dir), **fields)


def train_box_decoder_on_bank(bank: str, work_dir: str, parts: str, config: str | None = None,
                              holdout_from: str | None = None, cases_dir: str | None = None,
                              cache_dir: str | None = None, steps: int | None = None, device: str | None = None,
                              log=print) -> Path:
    """Cases, cache and decoder under ``work_dir`` (``cases/``, ``cache/``, ``box_decoder/``; the first two may
    live elsewhere, e.g. the heads' recipe's: the decoder learns from its own parts' entries only); returns the
    exported ``box_decoder.pt``."""
    from ..engine.device import resolve_device
    from .heads_bank import fill_heads_cache, read_cache_parts
    from .pseudo_cases import held_out_anatomies

    work = Path(work_dir)
    cache = str(cache_dir or work / "cache")
    cfg = read_config(config, cache, work / "box_decoder", steps=steps, device=device)
    resolve_device(cfg.device)   # a GPU asked for and missing fails before cases are written
    pairs = fill_heads_cache(bank, str(cases_dir or work / "cases"), cache, read_cache_parts(parts),
                             held_out_anatomies(holdout_from), log=log, device=cfg.device)
    return train_box_decoder(cfg, log=log, entries=pairs)


@one_line_errors
def main(argv=None) -> int:
    import argparse

    ap = argparse.ArgumentParser(description="Fine-tune SAM's box decoder on the feature cache (resumable).")
    ap.add_argument("--cache", help="a filled feature cache (with --out_dir)")
    ap.add_argument("--out_dir")
    ap.add_argument("--bank", help="the pseudo-patient bank: write its cases and fill the cache first (with --work)")
    ap.add_argument("--work", help="folder for cases/, cache/ and box_decoder/ (with --bank)")
    ap.add_argument("--parts", help="JSON list of cache parts {cases, views, fraction} (with --bank)")
    ap.add_argument("--holdout_from", default=None,
                    help="checkpoint whose spec lists the held-out anatomies (default: the bundle's weights)")
    ap.add_argument("--cases_dir", default=None)
    ap.add_argument("--cache_dir", default=None)
    ap.add_argument("--config", help="JSON file of BoxDecoderTrainConfig fields")
    ap.add_argument("--exclude", nargs="*", default=None, help="case ids kept out (with their copies)")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--device", default=None, help="auto (default), cpu, cuda or cuda:N")
    a = ap.parse_args(argv)
    say = lambda m: print(m, flush=True)   # noqa: E731
    if a.bank:
        if not (a.work and a.parts):
            ap.error("--bank needs --work and --parts")
        out = train_box_decoder_on_bank(a.bank, a.work, a.parts, a.config, a.holdout_from, a.cases_dir,
                                        a.cache_dir, a.steps, a.device, log=say)
    else:
        if not (a.cache and a.out_dir):
            ap.error("give --cache and --out_dir, or --bank, --work and --parts")
        out = train_box_decoder(read_config(a.config, a.cache, a.out_dir, exclude=a.exclude, steps=a.steps,
                                            device=a.device), log=say)
    print(f"box decoder: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
