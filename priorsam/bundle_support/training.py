"""Pieces for training PriorSAM's heads from the bundle's ``train.json``.

The frozen encoder's features come from the library's feature cache (``priorsam.training``:
the same views, augmentations and framing as the library's own training), and
:func:`train_heads` runs the library's one trainer (:func:`priorsam.training.trainer.train`) on
them, so the bundle reproduces the shipped weights with the same recipe; :func:`train_localiser` runs
the library's localiser trainer over the shipped localiser's stages (``train_localiser.json``) and
:func:`train_heads_bank` the shipped heads' recipe on the anatomy bank (``train_heads_bank.json``). The MONAI
``SupervisedTrainer`` pieces below remain for users who compose their own MONAI workflow. Saving writes the library's checkpoint format
(:mod:`priorsam.models.spec`) so ``load_priorsam`` and the inference bundle
read the result directly.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from ..engine.device import resolve_device
from ..errors import InputError
from ..models.image_encoder import EncoderFeatures
from ..models.losses import PriorSAMLoss
from ..models.priorsam import PriorSAM
from ..training.build_cache import ENCODER_ID, cache_encoder, view_specs
from ..training.cache import CachedSlices, FeatureCache, build_cache, collate, view_pairs
from ..training.views import Case, content_hash
from .paths import case_name


def training_cases(items: Sequence[Mapping[str, str]], label_map: str | None = None) -> list[Case]:
    """Datalist entries ``{"image", "label"}`` → library :class:`Case` objects (ids carry a content hash)."""
    cases = []
    for it in items:
        case = Case(case_name(it["image"]), str(it["image"]), str(it["label"]), label_map or None)
        cases.append(Case(f"{case.case_id}-{content_hash(case)}", case.image, case.label, case.label_map))
    return cases


def build_training_cache(items: Sequence[Mapping[str, str]], cache_dir: str, views: int = 0, spacing_mm: float = 1.5,
                         context: int = 0, label_map: str | None = None, device: str | torch.device = "cpu",
                         seed: int = 1234) -> list[str]:
    """Encode the datalist's cases into the feature cache; returns their case ids (for ``TrainConfig.cases``)."""
    ds = cached_training_dataset(items, cache_dir, views, spacing_mm, context, label_map, device, seed)
    return sorted({r["case"] for r in ds.records})


def train_heads(config, ckpt_path: str | os.PathLike, init_from: str | None = None) -> Path:
    """Run the library trainer with ``config`` (a ``TrainConfig``) and publish its weights at ``ckpt_path``.

    ``init_from``: start from these heads (e.g. the shipped ones) instead of random ones. A localiser and a
    fine-tuned box decoder in ``init_from`` are carried over unchanged, so fine-tuned heads keep the 3D context
    and the decoder.
    """
    import shutil
    from dataclasses import replace

    from ..models.spec import (BOX_DECODER_PREFIX, LOCALISER_PREFIX, part_state, read_checkpoint,
                               write_checkpoint)
    from ..training.trainer import train

    if init_from and Path(init_from).is_file():
        config = replace(config, init_from=str(init_from))
    out = train(config)
    dest = Path(ckpt_path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if config.init_from:
        base_state, base_spec = read_checkpoint(config.init_from)
        if base_spec.localiser is not None or base_spec.box_decoder is not None:
            # The trainer writes heads only; the parts it did not train go on with them unchanged.
            heads, spec = read_checkpoint(out)
            spec = replace(spec, localiser=base_spec.localiser, box_decoder=base_spec.box_decoder,
                           data_sources=spec.data_sources or base_spec.data_sources)
            return write_checkpoint(dest, heads, spec, part_state(base_state, LOCALISER_PREFIX) or None,
                                    part_state(base_state, BOX_DECODER_PREFIX) or None)
    tmp = dest.with_name(dest.name + ".part")
    shutil.copyfile(out, tmp)
    os.replace(tmp, dest)
    return dest


def _checked_start(device: str | None, checkpoint: str | os.PathLike, missing: str, setting: str) -> Path:
    """Before a bank run does anything: the device (a GPU asked for and missing fails at once) and the checkpoint
    the new part goes with (``missing``: the error's start, ``setting``: the config key that names it)."""
    if device:
        resolve_device(device)
    path = Path(checkpoint)
    if not path.is_file():
        raise InputError(f"{missing}: {path} does not exist (set {setting})")
    return path


def _ensure_bank(bank_dir: str, anatomy_dir: str | None) -> None:
    """The pseudo-patient bank, built from the label maps in ``anatomy_dir`` when given and not complete."""
    from ..data.pseudo_patients import build_bank

    if anatomy_dir and not (Path(bank_dir) / "bank.json").is_file():
        build_bank(str(anatomy_dir), str(bank_dir))


def train_localiser(bank_dir: str, stage_configs: Sequence, output_dir: str, ckpt_path: str | os.PathLike,
                    heads_from: str | None = None, anatomy_dir: str | None = None, steps: int | None = None,
                    data_sources: list | None = None, device: str | None = None) -> Path:
    """``train_localiser.json``: the library's localiser trainer over ``stage_configs`` (one JSON file of
    ``LocaliserTrainConfig`` fields per stage, each continuing the last: the shipped three by default) on the
    pseudo-patient bank ``bank_dir``, built first from the label maps in ``anatomy_dir`` when given and not
    complete; then one checkpoint at ``ckpt_path`` (atomically): the heads of ``heads_from`` (default
    ``ckpt_path`` itself, i.e. the shipped heads) with the new localiser, ``data_sources`` added to the spec's.
    ``steps``: every stage's steps instead of its config's (a quick try); ``device``: where every stage trains
    (auto, cpu, cuda, cuda:N; default: each config's own, else auto)."""
    from ..models.spec import compose_checkpoint
    from ..training.localiser import train_stages

    heads = _checked_start(device, heads_from or ckpt_path, "no heads to put the new localiser with", "heads_from")
    _ensure_bank(bank_dir, anatomy_dir)
    localiser = train_stages(str(bank_dir), list(stage_configs), str(output_dir), steps, device=device)
    dest = Path(ckpt_path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    return compose_checkpoint(heads, localiser, dest, data_sources=data_sources)


def train_heads_bank(bank_dir: str, output_dir: str, ckpt_path: str | os.PathLike, heads_config: str,
                     cache_parts: str, localiser_from: str | None = None, anatomy_dir: str | None = None,
                     init_from: str | None = None, steps: int | None = None, data_sources: list | None = None,
                     cases_dir: str | None = None, cache_dir: str | None = None, device: str | None = None) -> Path:
    """``train_heads_bank.json``: the shipped heads' recipe (:func:`priorsam.training.heads_bank.train_heads_on_bank`:
    the bank's pseudo-patients as cases, the feature cache in ``cache_parts``, the trainer with ``heads_config``)
    on the bank ``bank_dir``, built first from the label maps in ``anatomy_dir`` when given and not complete;
    then one checkpoint at ``ckpt_path`` (atomically): the new heads with the localiser of ``localiser_from``
    (default ``ckpt_path`` itself, i.e. the shipped localiser), whose held-out anatomies the heads never see;
    its data sources and ``data_sources`` go into the spec. ``init_from``/``steps``/``device`` override the config's."""
    from ..models.spec import compose_checkpoint, read_checkpoint
    from ..training.heads_bank import train_heads_on_bank

    localiser = _checked_start(device, localiser_from or ckpt_path, "no localiser to put the new heads with",
                               "localiser_from")
    _, loc_spec = read_checkpoint(localiser)
    if loc_spec.localiser is None:
        raise InputError(f"{localiser} has no localiser to put the new heads with (set localiser_from)")
    _ensure_bank(bank_dir, anatomy_dir)
    heads = train_heads_on_bank(str(bank_dir), str(output_dir), str(heads_config), str(cache_parts), str(localiser),
                                cases_dir, cache_dir, init_from, steps, device=device)
    sources = list(loc_spec.data_sources) + list(data_sources or [])
    dest = Path(ckpt_path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    # A fine-tuned box decoder goes on with the localiser's checkpoint (the heads trainer writes heads only).
    return compose_checkpoint(heads, localiser, dest, data_sources=sources,
                              box_decoder_from=localiser if loc_spec.box_decoder is not None else None)


def train_box_decoder(bank_dir: str, output_dir: str, ckpt_path: str | os.PathLike, config: str, cache_parts: str,
                      base_from: str | None = None, anatomy_dir: str | None = None, steps: int | None = None,
                      cases_dir: str | None = None, cache_dir: str | None = None, device: str | None = None) -> Path:
    """``train_box_decoder.json``: SAM's box decoder fine-tuned from LiteMedSAM's by the library's trainer
    (:func:`priorsam.training.box_decoder.train_box_decoder_on_bank`: the bank's pseudo-patients as cases, never
    the anatomies the localiser of ``base_from`` holds out, the feature cache in ``cache_parts``, ``config``'s
    recipe) on the bank ``bank_dir``, built first from ``anatomy_dir`` when given and not complete; then one
    checkpoint at ``ckpt_path`` (atomically): the heads and localiser of ``base_from`` (default ``ckpt_path``
    itself, i.e. the shipped ones) with the new decoder."""
    from ..models.spec import compose_checkpoint, read_checkpoint
    from ..training.box_decoder import train_box_decoder_on_bank

    base = _checked_start(device, base_from or ckpt_path, "no model to put the new box decoder in", "base_from")
    _, base_spec = read_checkpoint(base)
    _ensure_bank(bank_dir, anatomy_dir)
    decoder = train_box_decoder_on_bank(str(bank_dir), str(output_dir), str(cache_parts), str(config), str(base),
                                        cases_dir, cache_dir, steps, device)
    dest = Path(ckpt_path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    return compose_checkpoint(base, base if base_spec.localiser is not None else None, dest, box_decoder_from=decoder)


def cached_training_dataset(items: Sequence[Mapping[str, str]], cache_dir: str, views: int = 0,
                            spacing_mm: float = 1.5, context: int = 0, label_map: str | None = None,
                            device: str | torch.device = "cpu", seed: int = 1234) -> CachedSlices:
    """Encode (once, cached on disk) the clean view and ``views`` augmented views of every case; the
    dataset yields ``(embedding, skips, label)`` per slice."""
    cases = training_cases(items, label_map)
    specs = view_specs(int(views), float(spacing_mm), int(context), seed=int(seed))
    cache = FeatureCache(cache_dir)
    build_cache(cases, specs, cache, cache_encoder("torch", device), ENCODER_ID)
    records = cache.records(view_pairs(cases, specs))
    if not records:
        raise InputError(f"no training slices were produced for {len(cases)} case(s)")
    return CachedSlices(cache, records)


def feature_collate(batch):
    """Collate cached slices into ``(EncoderFeatures, labels (B, 256, 256))``."""
    return collate(batch)


def prepare_feature_batch(batchdata, device=None, non_blocking: bool = False, **kwargs: Any):
    """``prepare_batch`` for MONAI engines: → (EncoderFeatures on device, long labels (B, 256, 256))."""
    feats, labels = batchdata
    return feats.to(device, non_blocking=non_blocking), labels.to(device, non_blocking=non_blocking).long()


class FeatureInferer:
    """``inferer(features, network)`` → the PriorSAM output dict (the network runs from features)."""

    def __call__(self, inputs: EncoderFeatures, network: nn.Module, *args: Any, **kwargs: Any) -> dict:
        return network(features=inputs)


class PriorSAMTrainLoss(nn.Module):
    """:class:`PriorSAMLoss` returning only the scalar total (what ``SupervisedTrainer`` expects)."""

    def __init__(self, **loss_kwargs: Any):
        super().__init__()
        self.loss = PriorSAMLoss(**loss_kwargs)

    def forward(self, outputs: Mapping[str, Any], labels: torch.Tensor) -> torch.Tensor:
        total, _ = self.loss(outputs, labels)
        return total


def build_heads_model(prior_version: str = "v1", **model_kwargs: Any) -> PriorSAM:
    """PriorSAM without encoder or binary path (they are frozen and load from their packages at inference)."""
    from ..models.spec import ModelSpec, build_model

    return build_model(ModelSpec(prior_version=prior_version, heads=dict(model_kwargs)), encoder=None,
                       binary_path=False, pretrained=False)


def save_checkpoint(network: nn.Module, path: str | os.PathLike, spacing_mm: float, context: int,
                    note: str = "") -> Path:
    """Write ``network``'s trainable weights and its spec atomically (the library's checkpoint format)."""
    from dataclasses import replace

    from ..models.spec import spec_for_bank, write_checkpoint
    from ..priors.bank import load_prior_bank

    net = getattr(network, "module", network)  # unwrap DistributedDataParallel
    spec = spec_for_bank(load_prior_bank(net.spec.prior_version), heads=dict(net.spec.heads),
                         spacing_mm=float(spacing_mm), context=int(context), training={"note": note} if note else {})
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    return write_checkpoint(p, net.trainable_state_dict(), replace(spec, localiser=None))


class PriorSAMCheckpointSaver:
    """Ignite handler: save the checkpoint every ``save_interval`` epochs and when training completes.

    Only rank 0 writes under ``torch.distributed``.
    """

    def __init__(self, network: nn.Module, ckpt_path: str, spacing_mm: float = 1.5, context: int = 0,
                 save_interval: int = 1, note: str = "trained with the MONAI bundle train.json"):
        self.network, self.ckpt_path = network, ckpt_path
        self.spacing_mm, self.context, self.note = spacing_mm, context, note
        self.save_interval = max(1, int(save_interval))

    def attach(self, engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.save_interval), self._save)
        engine.add_event_handler(Events.COMPLETED, self._save)

    def _save(self, engine) -> None:
        if torch.distributed.is_available() and torch.distributed.is_initialized() and torch.distributed.get_rank():
            return
        path = save_checkpoint(self.network, self.ckpt_path, self.spacing_mm, self.context, self.note)
        engine.logger.info(f"saved PriorSAM checkpoint {path} (epoch {engine.state.epoch})")


def distributed_train_heads(items: Sequence[Mapping[str, str]], config, ckpt_path: str | os.PathLike,
                            init_from: str | None = None, views: int = 0, spacing_mm: float = 1.5, context: int = 0,
                            label_map: str | None = None, device: str | torch.device = "cpu") -> Path | None:
    """``multi_gpu_train.json``: every rank encodes its share of the cases into the shared feature cache
    (the expensive part), then rank 0 trains the light heads with the library trainer."""
    import torch.distributed as dist
    from dataclasses import replace

    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    build_training_cache(list(items)[rank::world], config.cache, views, spacing_mm, context, label_map, device)
    if dist.is_initialized():
        dist.barrier()
    if rank:
        return None
    cases = sorted({c.case_id for c in training_cases(items, label_map)})
    return train_heads(replace(config, cases=cases), ckpt_path, init_from)
