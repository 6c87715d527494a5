"""Fill the feature cache with the clean view and N augmented views of the training cases.

python -m priorsam.training.build_cache --cache DIR --views 16 [--context 0] [--spacing 1.5]
With no --datalist the sample CT (example_ct) is the one training case.
"""
from __future__ import annotations

import argparse
import dataclasses

import torch

from ..config_files import check_setting_names, read_json
from ..data.samples import sample_ct
from ..errors import InputError, one_line_errors
from ..models.image_encoder import build_image_encoder
from .cache import FeatureCache, build_cache
from .views import Case, ViewSpec

ENCODER_ID = "litemedsam-tinyvit-79d8c9dc"


def default_cases() -> list[Case]:
    s = sample_ct()
    return [Case("example_ct", str(s.image), str(s.raw_label), "totalsegmentator", str(s.raw_label))]


def view_specs(views: int, spacing: float, context: int, seed: int = 1234, framing: str = "fixed",
               fraction: float = 1.0) -> list[ViewSpec]:
    """The clean view 0 and ``views`` augmented ones; ``fraction`` scales the share of slices each takes
    (many cases: fewer slices per view keep encoding time in bounds)."""
    extra = {} if framing == "fixed" else {"framing": framing}
    specs = [ViewSpec(0, seed, spacing, context, augment=False, organ_fraction=1.0 * fraction,
                      empty_fraction=0.25 * fraction, extra=extra)]
    specs += [ViewSpec(v, seed + v, spacing, context, augment=True, organ_fraction=0.6 * fraction,
                       empty_fraction=0.15 * fraction, extra=extra) for v in range(1, views + 1)]
    return specs


class EncoderOn(torch.nn.Module):
    """The PyTorch encoder on ``device``, handing back CPU features (the cache stores them)."""

    def __init__(self, device: str | torch.device = "cpu"):
        super().__init__()
        self.device = torch.device(device)
        self.encoder = build_image_encoder("lite").to(self.device)

    def forward(self, images: torch.Tensor):
        return self.encoder(images.to(self.device)).to("cpu")


def cache_encoder(backend: str = "onnx", device: str | torch.device = "cpu"):
    """The frozen encoder that fills the cache: ``onnx`` (ONNX Runtime on the CPU, ≈3× faster than PyTorch
    there, the same features to ~1e-4; what the shipped caches used), ``torch`` (PyTorch on ``device``) or
    ``auto`` (ONNX Runtime on a CPU, PyTorch on a GPU). ``device``: auto, cpu, cuda or cuda:N."""
    from ..engine.device import resolve_device

    dev = resolve_device(device)
    if backend == "auto":
        backend = "onnx" if dev.type == "cpu" else "torch"
    if backend == "onnx":
        if dev.type != "cpu":
            raise InputError(f"the onnx cache encoder runs on the CPU only; use --backend torch (or auto) for {dev}")
        from ..models.onnx_encoder import OnnxLiteEncoder

        return OnnxLiteEncoder()
    if backend == "torch":
        return EncoderOn(dev)
    raise InputError(f"unknown encoder backend {backend!r} for the feature cache: use auto, onnx or torch")


def read_cases(path: str) -> list[Case]:
    """The cases of a datalist JSON file (a list of Case fields), with one-line errors for a bad file."""
    items = read_json(path, "datalist")
    if not isinstance(items, list) or not all(isinstance(c, dict) for c in items):
        raise InputError(f"datalist {path} must hold a JSON list of cases")
    required = [f.name for f in dataclasses.fields(Case)
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    for i, c in enumerate(items):
        check_setting_names(c, Case, f"datalist {path}")
        missing = [name for name in required if name not in c]
        if missing:
            raise InputError(f"datalist {path}: case {i + 1} lacks {', '.join(missing)}")
    return [Case(**c) for c in items]


def build_from_args(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--cache", required=True)
    ap.add_argument("--views", type=int, default=16)
    ap.add_argument("--spacing", type=float, default=1.5)
    ap.add_argument("--context", type=int, default=0)
    ap.add_argument("--framing", choices=["fixed", "upstream"], default="fixed")
    ap.add_argument("--datalist", default=None, help="JSON list of {case_id,image,label,label_map,group_label}")
    ap.add_argument("--fraction", type=float, default=1.0,
                    help="scale the share of each view's slices that is encoded (1: every organ slice of view 0)")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--backend", choices=["auto", "onnx", "torch"], default="auto",
                    help="onnx: ONNX Runtime (≈3× faster on CPU, same features to ~1e-4); torch: PyTorch on "
                         "--device; auto: onnx on a CPU, torch on a GPU")
    ap.add_argument("--device", default="auto", help="auto (a CUDA GPU when usable), cpu, cuda or cuda:N")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    encoder = cache_encoder(args.backend, args.device)   # before the cache folder is made: a missing GPU fails first
    cases = read_cases(args.datalist) if args.datalist else default_cases()
    n = build_cache(cases, view_specs(args.views, args.spacing, args.context, framing=args.framing,
                                         fraction=args.fraction), FeatureCache(args.cache),
                    encoder, ENCODER_ID, log=lambda m: print(m, flush=True))
    print(f"added {n} entries")


# Errors as one line for `python -m`; `priorsam train --build_views` calls build_from_args and reports them itself.
main = one_line_errors(build_from_args)


if __name__ == "__main__":
    raise SystemExit(main())
