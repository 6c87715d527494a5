"""On-disk cache of frozen-encoder features per slice and per augmented view.

Keyed by content hash: (case pixels + labels, view spec, framing with its version, slice, encoder
id), so a changed scan, view, framing or encoder never reuses stale features. Entries are fp16 and written atomically;
``index.jsonl`` lists them for the training dataset.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import torch
from torch.utils.data import Dataset

from ..models.image_encoder import EncoderFeatures
from .views import Case, ViewSpec, content_hash, iter_view, load_case, view_framing


def entry_key(case_hash: str, spec: ViewSpec, z: int, encoder_id: str) -> str:
    # The framing's key carries FRAMING_VERSION: a change to how slices are framed invalidates entries.
    parts = f"{case_hash}|{spec.key()}|{view_framing(spec).key()}|{z}|{encoder_id}"
    return hashlib.sha256(parts.encode()).hexdigest()[:24]


def open_filled_cache(root: str | Path, how_to_fill: str) -> "FeatureCache":
    """The cache at ``root`` for a trainer to read; one :class:`InputError` line, saying ``how_to_fill`` it, when
    there is none (checked first: :class:`FeatureCache` makes its folder, which a wrong path must not leave)."""
    from ..errors import InputError

    if not (Path(root) / "index.jsonl").is_file():
        raise InputError(f"no feature cache at {root} (it has no index.jsonl): fill it first with {how_to_fill}")
    return FeatureCache(root)


def open_run(cfg, how_to_fill: str, select) -> tuple[torch.device, "FeatureCache", list[dict], Path]:
    """The start the cache trainers share, for a config with ``device``, ``threads``, ``cache`` and ``out_dir``:
    the device resolved before anything is read (a GPU asked for and missing fails at once), the thread count,
    the filled cache and the records ``select(cache, cfg)`` keeps, then the run folder, made only once those are
    found. Returns (device, cache, records, run folder)."""
    from ..engine.device import resolve_device
    from ..io.writers import make_folder

    device = resolve_device(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    cache = open_filled_cache(cfg.cache, how_to_fill)
    records = select(cache, cfg)
    return device, cache, records, make_folder(cfg.out_dir)


def view_pairs(cases: list[Case], specs: list[ViewSpec]) -> list[tuple[str, str]]:
    """The (case id, view key) pairs of ``cases`` × ``specs``, in the order :func:`build_cache` encodes them."""
    return [(case.case_id, spec.key()) for case in cases for spec in specs]


def entries_of(records: list[dict], pairs: list[tuple[str, str]]) -> list[dict]:
    """The cached ``records`` of these (case id, view key) pairs, pair by pair in the given order and by slice
    within each: what an empty folder's index would list after encoding them. A cache folder may be shared by
    recipes (the same cases at other shares of slices, or the sample CT's views both use), so a trainer takes
    exactly its own entries, in an order that does not depend on how or in how many sittings the folder was
    filled (the order decides which entries a seeded sampler draws)."""
    rank = {pair: i for i, pair in enumerate(pairs)}
    mine = [r for r in records if (r["case"], r["view_key"]) in rank]
    return sorted(mine, key=lambda r: (rank[(r["case"], r["view_key"])], r["z"]))


class FeatureCache:
    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.index_path = self.root / "index.jsonl"

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.pt"

    def has(self, key: str) -> bool:
        return self.path(key).is_file()

    def put(self, key: str, feats: EncoderFeatures, label: torch.Tensor, record: dict) -> None:
        p = self.path(key)
        p.parent.mkdir(exist_ok=True)
        plain = lambda t: t.as_subclass(torch.Tensor) if isinstance(t, torch.Tensor) else torch.as_tensor(t)
        blob = {"embedding": plain(feats.embedding).half().contiguous(), "label": plain(label).to(torch.uint8).contiguous()}
        for i, s in enumerate(feats.skips):
            blob[f"skip{i}"] = plain(s).half().contiguous()
        tmp = p.with_suffix(".part")
        torch.save(blob, tmp)
        os.replace(tmp, p)
        with open(self.index_path, "a") as fh:
            fh.write(json.dumps({"key": key, **record}) + "\n")

    def records(self, pairs: list[tuple[str, str]] | None = None) -> list[dict]:
        """The cached entries in the index's order, or with ``pairs`` only those (case id, view key) pairs' in
        theirs (:func:`entries_of`)."""
        if not self.index_path.is_file():
            return []
        seen, out = set(), []
        for line in self.index_path.read_text().splitlines():
            r = json.loads(line)
            if r["key"] not in seen and self.has(r["key"]):
                seen.add(r["key"])
                out.append(r)
        return out if pairs is None else entries_of(out, pairs)

    def load(self, key: str) -> tuple[EncoderFeatures, torch.Tensor]:
        blob = torch.load(self.path(key), map_location="cpu", weights_only=True)
        skips = tuple(blob[k].float() for k in sorted(k for k in blob if k.startswith("skip")))
        return EncoderFeatures(blob["embedding"].float(), skips), blob["label"].long()


@torch.inference_mode()
def build_cache(cases: list[Case], specs: list[ViewSpec], cache: FeatureCache, encoder, encoder_id: str,
                batch_size: int = 4, log=print) -> int:
    """Encode every slice of every view not yet cached; returns how many entries were added."""
    added = 0
    for case in cases:
        loaded = load_case(case)
        chash = content_hash(case)
        for spec in specs:
            t0 = time.time()
            pending = []
            n_view = 0

            def flush():
                nonlocal added
                if not pending:
                    return
                feats = encoder(torch.stack([p[1].image for p in pending]))
                for i, (key, fs) in enumerate(pending):
                    one = EncoderFeatures(feats.embedding[i], tuple(s[i] for s in feats.skips))
                    rec = {"case": case.case_id, "view": spec.view, "view_key": spec.key(), "z": fs.z,
                           "context": spec.context, "spacing_mm": spec.spacing_mm, "augment": spec.augment,
                           "present": sorted(set(fs.label.unique().tolist()) - {0}), **fs.meta}
                    cache.put(key, one, fs.label, rec)
                    added += 1
                pending.clear()

            for fs in iter_view(case, spec, loaded):
                key = entry_key(chash, spec, fs.z, encoder_id)
                n_view += 1
                if cache.has(key):
                    continue
                pending.append((key, fs))
                if len(pending) == batch_size:
                    flush()
            flush()
            log(f"[cache] {case.case_id} view {spec.view} ({spec.key()}): {n_view} slices, "
                f"{time.time() - t0:.0f} s, total added {added}")
    return added


class CachedSlices(Dataset):
    """Training samples from the cache: (EncoderFeatures without batch dim, label (256, 256))."""

    def __init__(self, cache: FeatureCache, records: list[dict]):
        self.cache = cache
        self.records = records

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int):
        feats, label = self.cache.load(self.records[i]["key"])
        return feats.embedding, feats.skips, label


def collate(batch):
    emb = torch.stack([b[0] for b in batch])
    skips = tuple(torch.stack([b[1][i] for b in batch]) for i in range(len(batch[0][1])))
    return EncoderFeatures(emb, skips), torch.stack([b[2] for b in batch])
