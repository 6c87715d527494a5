"""The shipped heads' recipe on the pseudo-patient bank, as one resumable call.

Steps 6–8 of bundle/docs/training/README.md: the bank's pseudo-patients written as training cases (the
anatomies a checkpoint's spec holds out are never written), the feature cache filled in parts — each part a
set of cases with its own number of augmented views and share of slices, because 26 pseudo-patients and
their arms-and-table copies at the sample CT's 20 views would take days of encoding on a CPU — then the
library's one trainer (:func:`priorsam.training.trainer.train`) from given heads.

    python -m priorsam.training.heads_bank --bank BANK --work DIR --config heads_bank_config.json \\
        --parts heads_bank_cache.json [--holdout_from CKPT]

Every step skips what is already done (cases on disk, cache entries keyed by pixels, view and encoder, the
trainer's ``last.pt``), so an interrupted run continues where it stopped.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from ..config_files import check_setting_names, read_json, read_settings
from ..engine.device import resolve_device
from ..errors import InputError, one_line_errors
from .build_cache import ENCODER_ID, cache_encoder, default_cases, view_specs
from .cache import FeatureCache, build_cache, view_pairs
from .pseudo_cases import held_out_anatomies, write_cases
from .trainer import TrainConfig, train
from .views import Case

PART_CASES = ("sample", "plain", "arms_table")


@dataclass(frozen=True)
class CachePart:
    """One part of the feature cache: ``cases`` — ``sample`` (the sample CT), ``plain`` (the pseudo-patients)
    or ``arms_table`` (their copies with arms at the sides and a table) — encoded as the clean view and
    ``views`` augmented views; ``fraction`` scales the share of each view's slices that is encoded
    (:func:`priorsam.training.build_cache.view_specs`, 1: every organ slice of the clean view)."""

    cases: str
    views: int
    fraction: float = 1.0


def read_cache_parts(path: str | Path) -> list[CachePart]:
    """The parts in a JSON list of ``{"cases", "views", "fraction"}``, with one-line errors for a bad file."""
    items = read_json(path, "cache parts")
    if not isinstance(items, list) or not items or not all(isinstance(p, dict) for p in items):
        raise InputError(f"cache parts {path} must hold a JSON list of parts {{cases, views, fraction}}")
    parts = []
    for i, item in enumerate(items, 1):
        check_setting_names(item, CachePart, f"cache parts {path}, part {i}")
        if item.get("cases") not in PART_CASES:
            raise InputError(f"cache parts {path}, part {i}: cases must be one of {', '.join(PART_CASES)}")
        views, fraction = item.get("views"), item.get("fraction", 1.0)
        if not isinstance(views, int) or isinstance(views, bool) or views < 0:
            raise InputError(f"cache parts {path}, part {i}: views must be a whole number ≥ 0")
        if not isinstance(fraction, (int, float)) or isinstance(fraction, bool) or not 0 < fraction <= 1:
            raise InputError(f"cache parts {path}, part {i}: fraction must be in (0, 1]")
        parts.append(CachePart(item["cases"], views, float(fraction)))
    return parts


def fill_heads_cache(bank: str, cases_dir: str, cache_dir: str, parts: list[CachePart], exclude: set[str],
                     spacing_mm: float = 1.5, context: int = 0, backend: str = "auto", log=print,
                     device: str = "auto") -> list[tuple[str, str]]:
    """Write the bank's pseudo-patients (not ``exclude``) as cases in ``cases_dir`` and encode every part into
    the cache at ``cache_dir`` (what it already holds is not encoded again); returns the parts' (case id, view
    key) pairs in their order, the entries a trainer of this recipe takes
    (:func:`priorsam.training.cache.entries_of`) whatever else the folder holds."""
    rows = write_cases(bank, cases_dir, exclude, arms=any(p.cases == "arms_table" for p in parts), log=log)
    if not rows and any(p.cases != "sample" for p in parts):
        raise InputError(f"the bank {bank} has no pseudo-patients to train on (build it first: "
                         "python -m priorsam.data.pseudo_patients)")
    by_kind = {"sample": default_cases(),
               "plain": [Case(**r) for r in rows if not r["case_id"].endswith("_arms_table")],
               "arms_table": [Case(**r) for r in rows if r["case_id"].endswith("_arms_table")]}
    cache = FeatureCache(cache_dir)
    encoder, added, pairs = cache_encoder(backend, device), 0, []
    for part in parts:
        log(f"[heads-bank] cache part {part.cases}: {len(by_kind[part.cases])} case(s), clean view + "
            f"{part.views} augmented, fraction {part.fraction}")
        specs = view_specs(part.views, spacing_mm, context, fraction=part.fraction)
        added += build_cache(by_kind[part.cases], specs, cache, encoder, ENCODER_ID, log=log)
        pairs += view_pairs(by_kind[part.cases], specs)
    mine = set(pairs)
    others = sum((r["case"], r["view_key"]) not in mine for r in cache.records())
    log(f"[heads-bank] {added} entries encoded" + (f"; the cache also holds {others} entries of other recipes, "
                                                   "which this training leaves out" if others else ""))
    return pairs


def train_heads_on_bank(bank: str, work_dir: str, config: str, parts: str, holdout_from: str | None = None,
                        cases_dir: str | None = None, cache_dir: str | None = None, init_from: str | None = None,
                        steps: int | None = None, backend: str = "auto", log=print, device: str | None = None) -> Path:
    """Cases, cache and heads under ``work_dir`` (``cases/``, ``cache/``, ``heads/``; the first two may live
    elsewhere); ``config``: a JSON file of :class:`TrainConfig` fields (the shipped one:
    bundle/docs/training/heads_bank_config.json); ``parts``: the cache parts (heads_bank_cache.json).
    ``init_from``/``steps``/``device`` override the config's; the device (else the config's, else auto) also
    encodes the cache (``backend`` auto: ONNX Runtime on a CPU, PyTorch on a GPU). Returns the trained heads'
    checkpoint."""
    work = Path(work_dir)
    fields = read_settings(config, TrainConfig, "training config", fixed=("cache", "out_dir"))
    if init_from:
        fields["init_from"] = str(init_from)
    if steps is not None:
        fields["steps"] = int(steps)
    if device:
        fields["device"] = str(device)
    device = fields.get("device", "auto")
    start = fields.get("init_from")
    if start and not Path(start).is_file():
        raise InputError(f"training config {config}: init_from {start} does not exist (paths are relative to the "
                         "folder the command runs in; the shipped recipe starts from the repository's "
                         "docs/ablation_weights/demo_0.3.0_one_scan.pt)")
    resolve_device(device)   # a GPU asked for and missing fails before cases are written
    cache = str(cache_dir or work / "cache")
    pairs = fill_heads_cache(bank, str(cases_dir or work / "cases"), cache, read_cache_parts(parts),
                             held_out_anatomies(holdout_from), backend=backend, log=log, device=device)
    return train(TrainConfig(cache=cache, out_dir=str(work / "heads"), **fields), log=log, entries=pairs)


@one_line_errors
def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bank", required=True, help="the pseudo-patient cache (python -m priorsam.data.pseudo_patients)")
    ap.add_argument("--work", required=True, help="folder for cases/, cache/ and heads/")
    ap.add_argument("--config", required=True, help="JSON file of TrainConfig fields")
    ap.add_argument("--parts", required=True, help="JSON list of cache parts {cases, views, fraction}")
    ap.add_argument("--holdout_from", default=None,
                    help="checkpoint whose spec lists the held-out anatomies (default: the bundle's weights)")
    ap.add_argument("--cases_dir", default=None)
    ap.add_argument("--cache_dir", default=None)
    ap.add_argument("--init_from", default=None)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--backend", choices=["auto", "onnx", "torch"], default="auto",
                    help="the cache's encoder: onnx (ONNX Runtime, CPU), torch (PyTorch on the device) or auto (onnx "
                         "on a CPU, torch on a GPU)")
    ap.add_argument("--device", default=None,
                    help="where the cache is encoded and the heads train: auto, cpu, cuda or cuda:N (default: the "
                         "config's, else auto: a CUDA GPU when one is usable)")
    a = ap.parse_args(argv)
    out = train_heads_on_bank(a.bank, a.work, a.config, a.parts, a.holdout_from, a.cases_dir, a.cache_dir,
                              a.init_from, a.steps, a.backend, log=lambda m: print(m, flush=True), device=a.device)
    print(f"heads: {out}")


if __name__ == "__main__":
    raise SystemExit(main())
