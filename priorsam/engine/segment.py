"""Prompt-free 8-organ segmentation of a CT volume: the orchestration used by the CLI, the MONAI
bundle, batch jobs and the Slicer module (all through :func:`priorsam.segment`).

Volume → :class:`~priorsam.data.framed_volume.FramedVolume` (window, channels, frame) → optional 3D
localiser (:mod:`.localise`: which slices and organs to look at, and where) → per batch of slices:
encoder features (:meth:`Segmenter.features`, the runtime picked for the device) →
:meth:`PriorSAM.segment_slices` (heads + coarse-to-fine refinement, in ``models/``) → back to the
slice grid → in 3D (:mod:`.consistency`): slice-to-slice box smoothing, the localiser's masks where
they disagree and its probabilities where it is sure, largest connected component per organ and hole
filling → label ids (:meth:`PriorSAM.to_label_ids`).
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, fields

import numpy as np
import torch

from ..data.framed_volume import FramedVolume, Framing
from ..errors import OptionError
from ..io import Volume, from_display
from ..models.encoder_backend import BACKENDS, CPU_PRECISIONS
from ..models.refinement import RefineOptions
from ..option_checks import at_least, fractions, one_of, positive
from .consistency import agree_with_localiser, clean_labels, fuse_with_localiser, smooth_organ_boxes
from .device import resolve_device
from .localise import MIN_Z_MM, z_extent_mm
from .progress import ProgressFn
from .slices import run_over_slices
from .zstride import strided_labels

# A scan covering less z than this (a partial scan: a few centimetres of the upper abdomen) gets the
# localiser's probabilities averaged over 4 shifted grids: there its masks decide more of the answer,
# and a pass over so small a volume is cheap.
PARTIAL_Z_MM = 60.0


@dataclass
class SegmentOptions(RefineOptions):
    """Inference switches (the ablations of the evaluation table flip these): the per-slice decisions of
    :class:`~priorsam.models.refinement.RefineOptions` and the volume-level ones below."""

    spacing_mm: float | None = None     # None: the spacing the weights were trained at
    context: int | None = None          # None: as trained (0 = 2D, 1 = 2.5D)
    framing: str | None = None          # None: as trained ("fixed" trunk-centred spacing, or "upstream")
    window_level: float | None = None   # CT window of the encoder's input (HU); None: as trained (L40 / W400,
    window_width: float | None = None   # the window LiteMedSAM's box decoder was trained on)
    batch_size: int = 4
    box_smoothing: bool = True          # cut each organ to the running median of its per-slice boxes (3D)
    largest_component: bool = True
    fill_holes: bool = True
    encoder_backend: str = "auto"       # auto: OpenVINO or else ONNX Runtime on CPU, PyTorch on GPU
    cpu_precision: str = "auto"         # OpenVINO on a CPU: "auto" computes in bf16 where the CPU has AVX-512 bf16
                                        # or AMX (faster; label maps differ from fp32 CPUs' by a few voxels per
                                        # organ), "fp32" the same on every CPU
    skip_outside_body: bool = True      # slices with < 25 cm² of tissue are background, not run
    z_stride: int | None = None         # run every k-th slice, bisect/interpolate the gaps (1: every slice;
                                        # None: the k that puts run slices about z_step_mm apart)
    z_step_mm: float = 10.0             # distance of run slices for z_stride=None: well under the smallest
                                        # organ's axial extent (gallbladder, pancreas: ≥ 3 cm in adults)
    z_agree_dice: float = 0.7           # run slices must agree this well (Dice per organ) to interpolate
    use_localiser: bool = True          # 3D organ localiser (when the weights have one): which organs each
                                        # slice may hold, their boxes, and which slices to skip
    localiser_margin_mm: float = 10.0   # localiser boxes are grown by this in-plane (larger, never shifted)
    localiser_pieces: bool = True       # keep the pieces of an organ near its main component (the localiser
                                        # draws the pancreas in pieces at 4 mm); False: the main one only
    localiser_interpolation: str = "linear"  # the localiser's masks on the volume's grid: "linear" (its organ
                                        # probabilities interpolated: boundaries between its 4 mm voxels) or
                                        # "nearest" (its voxels as they are)
    localiser_context_mm: float = 30.0  # an organ's main component is chosen among those within this of another
                                        # organ's (engine.localise.keep_components); 0: among all
    localiser_agreement: float = 0.7    # per organ and slice, the localiser's mask replaces a per-slice mask
                                        # that agrees with it under this Dice (0: never; chosen on training
                                        # anatomies, docs/generalisation.md)
    localiser_veto: float = 0.1         # a per-slice organ voxel where the localiser gives that organ a
                                        # probability under this becomes background (0: never)
    localiser_fill: float = 0.8         # a background voxel where the localiser's organ has a probability
                                        # over this takes it (0: never); both chosen on training anatomies kept
                                        # out of the heads' training (docs/generalisation.md)
    localiser_shifts: int | None = None  # passes of the localiser over its grid shifted by 0–6 voxels, probabilities
                                        # averaged; None: 4 where its masks are the answer (a tight field: they
                                        # decide every voxel there, and 4 passes take ~6 s, 1 takes ~1.5 s, on
                                        # 2 CPU cores) and on partial scans under PARTIAL_Z_MM of z (+0.012 on
                                        # the dev anatomies, bench/results/partial_z_shifts_decision.md), 1 elsewhere
    localiser_min_z_mm: float = MIN_Z_MM  # under this much z (slices × slice spacing) the localiser is skipped and
                                        # the heads answer alone, without presence gating (a few slices hold too
                                        # little 3D context)
    thin_presence_gating: bool = False  # presence gating where 3D context is too thin for the localiser and the
                                        # heads answer alone (a few slices): off — on the nine training anatomies
                                        # kept out of the heads' training it dropped organs that were there and
                                        # almost never one that was not (docs/generalisation.md)
    tight_fov_mm: float = 250.0         # an in-plane field of view narrower than this that cuts through the
                                        # trunk (a CTA reconstructed around the aorta) takes the localiser's
                                        # 3D organ masks as the answer: there the per-slice path draws organs
                                        # cut by the field's edge poorly (docs/generalisation.md); 0: never
    mirror_check: bool = False          # read the volume flipped left–right once more with the localiser (one pass)
    mirror_margin: float = 0.02         # and warn when that copy reads more surely by over mirror_margin (engine.
                                        # localise.looks_mirrored): a header that swaps left and right, or situs
                                        # inversus. Off: held out it caught 32 of 42 mirrored whole volumes, under
                                        # the 90 % its rule asked (1 false alarm in 297 volumes as given). The
                                        # margin: the largest difference on the dev anatomies as given, +0.01,
                                        # rounded up (bench/results/localiser_mirror_check.md)
    mirror_volumes: bool = False        # with mirror_check, also warn when the localiser's spleen is larger than its
                                        # liver in a whole volume (not a tight field, at least PARTIAL_Z_MM of z).
                                        # Off: it called a real splenomegaly (BTCV 0009: spleen 2.9 L, liver 2.3 L)
                                        # mirrored (bench/results/localiser_mirror_check.md, second rule)

    def __post_init__(self) -> None:
        super().__post_init__()
        positive(self, ("spacing_mm", "window_width"), none="as trained")
        at_least(self, 0, ("context",), none="as trained")
        one_of(self, "framing", ("fixed", "upstream"), none="as trained")
        one_of(self, "encoder_backend", BACKENDS)
        one_of(self, "cpu_precision", CPU_PRECISIONS)
        one_of(self, "localiser_interpolation", ("linear", "nearest"))
        at_least(self, 1, ("batch_size",))
        at_least(self, 1, ("z_stride",), none="automatic")
        positive(self, ("z_step_mm",))
        fractions(self, ("z_agree_dice", "localiser_agreement", "localiser_veto", "localiser_fill", "mirror_margin"))
        at_least(self, 0, ("localiser_margin_mm", "localiser_context_mm", "localiser_min_z_mm", "tight_fov_mm"))
        # The passes shift the grid by i·8/shifts voxels (engine.localise.probabilities): over 8 they repeat.
        if self.localiser_shifts is not None and not 1 <= self.localiser_shifts <= 8:
            raise OptionError(f"option localiser_shifts: {self.localiser_shifts!r} must be 1 to 8 (or none: automatic)")


@dataclass
class SegmentationResult:
    labels: np.ndarray                  # canonical RAS (X, Y, Z) uint8, our label ids
    seconds: float
    device: str
    options: dict = field(default_factory=dict)
    model: dict = field(default_factory=dict)
    slices_run: int = 0                 # slices that went through the model (the rest: outside the body or interpolated)
    localiser: dict = field(default_factory=dict)   # what the 3D localiser found (or why it was not used)
    warnings: list[str] = field(default_factory=list)  # what the user must know about this answer (also on stderr)


def _slice_guide(loc, shape, framed: FramedVolume, num_classes: int):
    """A function: display slice indices → ((N, C, 4) localiser search boxes, (N, C, 4) localiser prompt
    boxes) in model pixels (NaN: not expected there; inf in the search boxes: not found anywhere)."""
    nx, ny, _ = shape

    missing = [k for k in range(1, num_classes) if not loc.present.get(k, False)]

    def to_model(box) -> torch.Tensor:
        x0, y0, x1, y1 = box
        # Canonical RAS voxel (x, y) is display (column nx−1−x, row ny−1−y).
        disp = np.array([nx - 1 - x1, ny - 1 - y1, nx - 1 - x0, ny - 1 - y0], dtype=np.float64)
        return torch.from_numpy(framed.box_to_model(disp).astype(np.float32))

    def guide(idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        out = torch.full((len(idx), num_classes, 4), float("nan"))
        prompts = out.clone()
        out[:, missing] = float("inf")
        for i, z in enumerate(idx):
            for k, box in loc.organs_at(int(z)).items():
                out[i, k] = to_model(box)
            for k, box in loc.prompts_at(int(z)).items():
                prompts[i, k] = to_model(box)
        # Keep boxes inside the 256² frame; NaN (not expected here) and inf (not found anywhere) stay as they are.
        return torch.where(torch.isfinite(out), out.clamp(0, 255), out), prompts.clamp(0, 255)

    return guide


class Segmenter:
    """Holds the model and options; :meth:`segment` runs one volume."""

    def __init__(self, weights: str | None = None, device: str = "auto", options: SegmentOptions | None = None,
                 model=None, encoder=None):
        """``encoder``: a callable images (B,3,256,256) → EncoderFeatures to use instead of the one
        ``options.encoder_backend`` picks (e.g. a counting or memoising wrapper in benchmarks)."""
        from ..models.encoder_backend import cpu_binary_path, cpu_encoder, localiser_runtime, openvino_precision
        from .weights import load_priorsam

        self.device = resolve_device(device)
        self.options = options or SegmentOptions()
        self.model = model if model is not None else load_priorsam(
            weights, str(self.device), localiser_runtime(self.options.encoder_backend, self.device))
        cfg = getattr(self.model, "config", {}) or {}
        self.feature_memo: dict | None = None   # (runtime, image hash) → encoder features, shared by evaluation runs
        # None: the model's own PyTorch encoder.
        spec = getattr(self.model, "spec", None)
        encoder_name = spec.encoder if spec is not None else "lite"
        precision = openvino_precision(self.options.cpu_precision)
        self.encoder = encoder if encoder is not None else cpu_encoder(
            self.options.encoder_backend, self.device, encoder=encoder_name, precision=precision)
        # The refinement's box decoder runs where the encoder runs (None: the model's PyTorch path).
        self.binary = cpu_binary_path(self.options.encoder_backend, self.device, getattr(self.model, "binary", None),
                                      encoder=encoder_name, precision=precision)
        if self.options.spacing_mm is None:
            self.options.spacing_mm = float(cfg.get("spacing_mm", 1.5))
        if self.options.context is None:
            self.options.context = int(cfg.get("context", 0))
        if self.options.framing is None:
            self.options.framing = str(cfg.get("framing", "fixed"))

    def model_info(self) -> dict:
        version, digest = self.model.prior_identity
        return {"weights": getattr(self.model, "weights_path", None), "prior_version": version,
                "prior_embedding_sha256": digest, "config": getattr(self.model, "config", {})}

    def features(self, images: torch.Tensor):
        """(N, 3, 256, 256) model input → the encoder's features, from the runtime the options chose
        (memoised per runtime and image when ``feature_memo`` is a dict)."""
        key = None
        if self.feature_memo is not None:
            import hashlib

            # Runtimes differ slightly (OpenVINO may run bf16), so features are memoised per runtime and precision.
            precision = getattr(getattr(self.encoder, "runtime", None), "precision", None)
            key = (type(self.encoder).__name__, precision, hashlib.sha1(images.numpy().tobytes()).hexdigest())
            if key in self.feature_memo:
                return self.feature_memo[key]
        if self.encoder is not None:
            # A CPU runtime (OpenVINO, ONNX Runtime) returns CPU tensors; the heads may sit on a GPU.
            feats = self.encoder(images).to(self.device)
        else:
            feats = self.model.encode(images.to(self.device))
        if key is not None:
            self.feature_memo[key] = feats
        return feats

    def framing(self) -> Framing:
        """How slices are framed for these weights (from the options, which default to the spec's)."""
        o = self.options
        window = {k: float(v) for k, v in (("level", o.window_level), ("width", o.window_width)) if v is not None}
        return Framing(framing=o.framing, spacing_mm=float(o.spacing_mm), context=int(o.context), **window)

    def refine_options(self) -> RefineOptions:
        return RefineOptions(**{f.name: getattr(self.options, f.name) for f in fields(RefineOptions)})

    def segment(self, volume: Volume, progress: ProgressFn | None = None, show_bar: bool = True) -> SegmentationResult:
        t0 = time.time()
        o = self.options
        loc, tight, fov_mm = self.locate(volume)
        if loc is not None and loc.usable and tight:
            return self._localiser_answer(volume, loc, fov_mm, t0)
        framed = FramedVolume.from_volume(volume, self.framing())
        slices = framed.slices
        row_mm, col_mm = framed.row_mm, framed.col_mm
        refine = self.refine_options()
        if loc is not None and loc.too_thin and not o.thin_presence_gating:
            refine.presence_gating = False
        guide_for = _slice_guide(loc, volume.shape, framed, self.model.num_classes) if loc and loc.usable else None

        def predict(idx: np.ndarray) -> np.ndarray:
            guide, prompts = guide_for(idx) if guide_for is not None else (None, None)
            onehot = self.model.segment_slices(self.features(framed.images(idx)), guide, refine, self.binary,
                                               prompts).cpu()
            # max().indices: the same labels as argmax, ≈6× faster on (N, 9, 512, 512) CPU tensors.
            return framed.maps_from_model(onehot).max(1).indices.numpy().astype(np.uint8)

        todo = body_slices(slices, row_mm, col_mm) if o.skip_outside_body else np.arange(len(slices))
        if guide_for is not None:
            # Slices far from every organ the localiser found are background: the encoder skips them
            # (with a wider margin when it missed an organ, which the 2D heads then look for alone).
            todo = np.intersect1d(todo, loc.slices_needed(volume.spacing[2]))
        stride = o.z_stride if o.z_stride is not None else auto_z_stride(float(volume.spacing[2]), o.z_step_mm)
        if stride > 1 and len(todo) > 2:
            display, ran = strided_labels(slices.shape, todo, predict, stride, o.z_agree_dice, o.batch_size,
                                          progress, show_bar)
        else:
            ran = len(todo)
            display = run_over_slices(len(slices), slices.shape[1], slices.shape[2], predict, o.batch_size,
                                      indices=todo, progress=progress, show_bar=show_bar, desc="segmenting")
        labels = from_display(display)
        if o.box_smoothing:
            labels = smooth_organ_boxes(labels)
        loc_labels = None
        if guide_for is not None:
            scores = loc.scores_on(labels.shape, o.localiser_interpolation)
            loc_labels = loc.labels_on(labels.shape, o.localiser_interpolation, scores)
            if o.localiser_agreement > 0:
                labels = agree_with_localiser(labels, loc_labels, o.localiser_agreement)
            if scores is not None and (o.localiser_veto > 0 or o.localiser_fill > 0):
                located = [k for k, found in loc.present.items() if found]
                labels = fuse_with_localiser(labels, loc_labels, scores, located, o.localiser_veto, o.localiser_fill)
        labels = self.model.to_label_ids(clean_labels(labels, largest_component=o.largest_component,
                                                      fill_holes=o.fill_holes, localiser_labels=loc_labels))
        loc_info = loc.summary() if loc is not None else {"usable": False, "reason": "no localiser in these weights"
                                                                   if getattr(self.model, "localiser", None) is None
                                                                   else "switched off"}
        loc_info["slices_skipped"] = int(len(slices) - len(todo)) if loc is not None and loc.usable else 0
        return SegmentationResult(labels, time.time() - t0, str(self.device), {**asdict(o), "z_stride_used": stride},
                                  self.model_info(), ran, loc_info, _warnings_of(loc))

    def _localiser_answer(self, volume: Volume, loc, fov_mm: np.ndarray, t0: float) -> SegmentationResult:
        """The localiser's own organ masks on the volume's grid (``localiser_interpolation``), said in the log."""
        from ..io.checks import show_warnings

        tight = (f"tight field of view ({fov_mm[0]:.0f} × {fov_mm[1]:.0f} mm in-plane, under "
                 f"{self.options.tight_fov_mm:.0f} mm): the organs are the 3D localiser's masks, found on its "
                 f"{self.model.localiser.spacing_mm:g} mm grid; the per-slice model is not run")
        show_warnings([tight])
        labels = self.model.to_label_ids(loc.labels_on(volume.shape, self.options.localiser_interpolation))
        info = {**loc.summary(), "slices_skipped": int(volume.shape[2]), "answer": "localiser (tight field of view)"}
        return SegmentationResult(labels, time.time() - t0, str(self.device), asdict(self.options),
                                  self.model_info(), 0, info, _warnings_of(loc) + [tight])

    def locate(self, volume: Volume):
        """The localiser's result as :meth:`segment` uses it (None without a localiser), whether the field of
        view is tight (under ``tight_fov_mm`` and cutting the trunk) and the in-plane field in mm: four
        shifted passes on a tight field or a partial scan (under :data:`PARTIAL_Z_MM` of z), one elsewhere."""
        fov_mm = np.array(volume.shape[:2]) * np.asarray(volume.spacing[:2], float)
        tight = float(fov_mm.min()) < self.options.tight_fov_mm and cuts_trunk(volume.array)
        partial = z_extent_mm(volume.shape, volume.spacing) < PARTIAL_Z_MM
        return self.localise(volume, shifts=4 if tight or partial else 1, whole=not (tight or partial)), tight, fov_mm

    def localise(self, volume: Volume, shifts: int = 1, whole: bool = False):
        """The localiser's result for ``volume`` (None without a localiser); says so when 3D context is too thin.
        ``shifts``: passes over shifted grids (:func:`.localise.probabilities`) unless the options set them;
        ``whole``: a whole volume, where the mirror check may compare the spleen's and the liver's sizes."""
        loc_net = getattr(self.model, "localiser", None)
        if loc_net is None or not self.options.use_localiser:
            return None
        from .localise import localise

        res = localise(volume.array, volume.spacing, loc_net, self.device, margin_mm=self.options.localiser_margin_mm,
                       pieces=self.options.localiser_pieces, context_mm=self.options.localiser_context_mm,
                       shifts=self.options.localiser_shifts or shifts, min_z_mm=self.options.localiser_min_z_mm,
                       mirror_margin=self.options.mirror_margin if self.options.mirror_check else None,
                       mirror_volumes=whole and self.options.mirror_check and self.options.mirror_volumes)
        # Said where every entry point's user looks (a "warning:" line on stderr, which the Slicer module shows
        # too) and kept in the result's warnings for reports.
        from ..io.checks import show_warnings

        show_warnings(_warnings_of(res))
        return res


def _warnings_of(loc) -> list[str]:
    """What a localiser result tells the user: why it was not used, and what it noticed about the image."""
    if loc is None:
        return []
    return ([] if loc.usable else [loc.reason]) + list(loc.warnings)


def cuts_trunk(hu: np.ndarray, min_tissue: float = 0.3) -> bool:
    """Whether an (X, Y, Z) HU volume's in-plane field runs through the body: in the median slice, at
    least ``min_tissue`` of the pixels along the field's edge are tissue (> −500 HU). A reconstruction
    around the aorta is tissue nearly all around (0.56–0.95 on the held-out pseudo-patients' 150 mm
    crops); a scan cropped to the body's outline touches it at a few points only (0.01–0.10 there, 0.03
    on the sample CT)."""
    edge = np.concatenate([hu[0], hu[-1], hu[:, 0], hu[:, -1]], axis=0)   # (2X + 2Y, Z)
    return float(np.median((edge > -500).mean(0))) >= min_tissue


def auto_z_stride(slice_mm: float, step_mm: float) -> int:
    """Slices between run slices so that they lie about ``step_mm`` apart (1 for thick slices)."""
    return max(1, int(round(step_mm / max(slice_mm, 1e-3))))


def body_slices(slices_hu: np.ndarray, row_mm: float, col_mm: float, min_cm2: float = 25.0) -> np.ndarray:
    """Indices of slices with at least ``min_cm2`` of tissue (> −500 HU); the rest hold no organ."""
    area_cm2 = (slices_hu > -500).reshape(len(slices_hu), -1).sum(1) * row_mm * col_mm / 100.0
    keep = np.flatnonzero(area_cm2 >= min_cm2)
    return keep if keep.size else np.arange(len(slices_hu))


def segment_volume(volume: Volume, weights: str | None = None, device: str = "auto",
                   progress: ProgressFn | None = None, show_bar: bool = True, **options) -> SegmentationResult:
    """Segment the 8 organs of ``volume``; see :class:`SegmentOptions` for ``options``."""
    return Segmenter(weights, device, SegmentOptions(**options)).segment(volume, progress, show_bar)
