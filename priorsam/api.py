"""``priorsam.segment``: the one public entry point for 8-organ segmentation of one CT.

The command line (``priorsam segment``), batch jobs, the MONAI bundle's inferer and therefore the
3D Slicer module (which runs the bundle or the command line) all come through here. It reads the
input with :mod:`priorsam.io`, runs :class:`priorsam.engine.segment.Segmenter` (unchanged), measures
each organ with :func:`priorsam.batch.report.organ_stats`, and writes what was asked for: a label
map on the input's grid, a DICOM SEG (DICOM input and an output ending in ``.dcm``), statistics
(JSON or CSV) and an overlay preview (PNG). Every output path is checked before the model loads,
so bad arguments fail in about a second with one ``error: …`` line.
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InputError
from .io import Volume

STATISTICS_SCHEMA = "priorsam.segment.statistics/1"
STATISTICS_SUFFIXES = (".json", ".csv")
STATISTICS_CSV_FIELDS = ["organ", "label", "display", "present", "voxels", "volume_ml", "hu_mean", "hu_std",
                         "first_slice", "last_slice", "n_slices", "extent_mm"]


@dataclass
class Segmentation:
    """What :func:`segment` returns.

    ``labels`` is the label map in canonical RAS (X, Y, Z) uint8 with the ids of
    ``priorsam/resources/labels.json``; ``volume`` is the input as read (same canonical grid);
    ``statistics`` holds ``organs`` (per organ: present, voxels, volume_ml, hu_mean, hu_std,
    slices, n_slices, extent_mm) and ``warnings``; ``outputs`` maps output kinds to written paths.
    """

    labels: np.ndarray
    statistics: dict
    volume: Volume
    result: Any                                  # priorsam.engine.segment.SegmentationResult
    outputs: dict[str, Path] = field(default_factory=dict)

    def __iter__(self):
        """``labels, statistics = priorsam.segment(...)``."""
        return iter((self.labels, self.statistics))


def _output_kind(output: str | os.PathLike) -> str:
    return "dicom_seg" if str(output).lower().endswith(".dcm") else "label_map"


def check_outputs(output=None, statistics=None, preview=None, inputs=()) -> None:
    """Reject unusable output paths before any model work (creates nothing), and any that is one of the
    ``inputs`` files."""
    from .io import check_not_inputs, check_writable
    from .io.writers import LABEL_MAP_SUFFIXES

    if output is not None:
        check_writable(output, suffixes=(".dcm",) if _output_kind(output) == "dicom_seg" else LABEL_MAP_SUFFIXES)
    if statistics is not None:
        check_writable(statistics, suffixes=None)
        if not str(statistics).lower().endswith(STATISTICS_SUFFIXES):
            raise InputError(f"{statistics}: statistics are written as .json or .csv")
    if preview is not None:
        check_writable(preview, suffixes=None)
        if not str(preview).lower().endswith(".png"):
            raise InputError(f"{preview}: the preview is written as .png")
    check_not_inputs((output, statistics, preview), inputs)


def as_volume(input, series: str | None = None) -> Volume:
    """A path (NIfTI/NRRD file or DICOM series folder), a nibabel image or a :class:`Volume` → :class:`Volume`."""
    from .io import read_volume

    if isinstance(input, Volume):
        return input
    if isinstance(input, (str, os.PathLike)):
        return read_volume(input, series_uid=series)
    if hasattr(input, "affine") and hasattr(input, "dataobj"):
        import nibabel as nib

        # Through a file so that an in-memory image gets exactly the checks and geometry handling of
        # a NIfTI on disk (one reader, one set of rules).
        with tempfile.TemporaryDirectory(prefix="priorsam-") as tmp:
            path = Path(tmp) / "image.nii"
            nib.save(nib.Nifti1Image(np.asarray(input.dataobj), input.affine, getattr(input, "header", None)),
                     str(path))
            volume = read_volume(path)
        volume.source.path = "<nibabel image>"
        return volume
    raise InputError(f"cannot segment a {type(input).__name__}: give a path, a nibabel image or a priorsam.io.Volume")


def statistics_of(volume: Volume, labels: np.ndarray) -> dict:
    """Per-organ measurements and plausibility warnings, as batch reports them."""
    from .batch.report import organ_stats, plausibility_warnings

    organs = organ_stats(volume.array, labels, volume.affine)
    return {"organs": organs, "warnings": plausibility_warnings(organs, volume.shape[2])}


def write_statistics(path: str | os.PathLike, statistics: dict, volume: Volume, result=None) -> Path:
    """JSON (everything, with geometry, model and timing) or CSV (one row per organ)."""
    from .version import __version__
    from .batch.report import write_csv, write_json

    p = Path(path)
    if p.name.lower().endswith(".csv"):
        rows = []
        for name, o in statistics["organs"].items():
            first, last = o["slices"] if o["slices"] else ("", "")
            rows.append({"organ": name, **o, "first_slice": first, "last_slice": last,
                         "hu_mean": "" if o["hu_mean"] is None else o["hu_mean"],
                         "hu_std": "" if o["hu_std"] is None else o["hu_std"]})
        return write_csv(p, rows, STATISTICS_CSV_FIELDS)
    record = {"schema": STATISTICS_SCHEMA, "input": {"path": volume.source.path, "format": volume.source.format},
              "geometry": {"shape": list(volume.shape), "spacing_mm": [round(float(s), 4) for s in volume.spacing],
                           "voxel_ml": float(abs(np.linalg.det(volume.affine[:3, :3]))) / 1000.0,
                           "orientation": "canonical RAS; slices index 0 = most inferior"},
              **statistics, "software": {"priorsam": __version__}}
    if result is not None:
        record["runtime"] = {"seconds": round(result.seconds, 3), "device": result.device,
                             "slices_run": result.slices_run, "localiser": result.localiser}
        record["model"] = {k: v for k, v in result.model.items() if k != "config"}
    return write_json(p, record)


def write_preview(path: str | os.PathLike, volume: Volume, labels: np.ndarray) -> Path:
    from .io import to_display
    from .preview import montage

    return montage(volume.axial_slices(), to_display(labels), path)


def segment(input, output: str | os.PathLike | None = None, *, weights: str | os.PathLike | None = None,
            device: str = "auto", series: str | None = None, statistics: str | os.PathLike | None = None,
            preview: str | os.PathLike | None = None, model=None, segmenter=None, progress=None,
            show_bar: bool = False, **options) -> Segmentation:
    """Segment the 8 abdominal organs of one CT with no prompts.

    Args:
        input: NIfTI/NRRD path or DICOM series folder, a nibabel image, or a :class:`priorsam.io.Volume`.
        output: label map (``.nii.gz``, ``.nii``, ``.nrrd``) written on the input's grid, or a DICOM SEG
            (``.dcm``; the input must be a DICOM series). None: nothing written.
        weights: PriorSAM checkpoint (default: the demo weights the package ships).
        device: ``auto``, ``cuda`` or ``cpu``.
        series: DICOM SeriesInstanceUID when a folder holds several series.
        statistics: ``.json`` or ``.csv`` file for per-organ volume (mL), HU mean/std, extent and presence.
        preview: ``.png`` overlay montage of axial slices through the organs.
        model: an already loaded PriorSAM (e.g. the MONAI bundle's ``network``); its device is used.
        segmenter: a :class:`~priorsam.engine.segment.Segmenter` to reuse across calls (batch jobs).
        progress: a progress callback (``done, total``) for the slice loop.
        show_bar: a tqdm bar on stderr.
        **options: :class:`~priorsam.engine.segment.SegmentOptions` fields (e.g. ``z_stride``,
            ``encoder_backend``).

    Returns:
        :class:`Segmentation` (``labels, statistics = priorsam.segment(...)`` also works).
    """
    from .engine.segment import Segmenter, SegmentOptions

    check_outputs(output, statistics, preview, inputs=(input,) if isinstance(input, (str, os.PathLike)) else ())
    chosen = SegmentOptions(**options)   # checks every value: a bad option fails before a large image is read
    volume = as_volume(input, series)
    if output is not None and _output_kind(output) == "dicom_seg" and volume.source.format != "dicom":
        raise InputError(f"{output}: a DICOM SEG output needs a DICOM series as input "
                         "(write .nii.gz or .nrrd for this input)")
    if segmenter is None:
        if model is not None:
            device = str(next(model.parameters()).device)
        segmenter = Segmenter(None if weights is None else str(weights), device, chosen, model=model)
    elif options or model is not None or weights is not None:
        raise ValueError("give either a segmenter or weights/model/options, not both")
    result = segmenter.segment(volume, progress, show_bar=show_bar)
    labels = result.labels
    stats = statistics_of(volume, labels)
    # The engine's own warnings (a tight field, too little z for 3D context, a mirrored image) first: a batch
    # report or a statistics file must say them as the console did.
    stats["warnings"][:0] = [w for w in result.warnings if w not in stats["warnings"]]
    outputs: dict[str, Path] = {}
    if output is not None:
        outputs[_output_kind(output)] = write_output(volume, labels, output, result)
    if statistics is not None:
        outputs["statistics"] = write_statistics(statistics, stats, volume, result)
    if preview is not None:
        outputs["preview"] = write_preview(preview, volume, labels)
    return Segmentation(labels, stats, volume, result, outputs)


def write_output(volume: Volume, labels: np.ndarray, output: str | os.PathLike, result=None) -> Path:
    """The label map (NIfTI/NRRD) or, for ``.dcm``, a DICOM SEG referencing the source series."""
    from .version import __version__
    from .io import write_label_map

    if _output_kind(output) == "label_map":
        return write_label_map(volume, labels, output)
    from .assets import sha256_file
    from .batch.dicom_seg import write_dicom_seg

    model = result.model if result is not None else {}
    weights = model.get("weights")
    digest = sha256_file(weights)[:12] if weights and Path(weights).is_file() else "unknown"
    return write_dicom_seg(volume, labels, output, software_version=__version__,
                           algorithm_version=f"{__version__} weights {digest} priors {model.get('prior_version')}")
