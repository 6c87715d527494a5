"""``priorsam segment``: checks the outputs, reads the CT, runs :func:`priorsam.segment`, prints a summary."""
from __future__ import annotations

import numpy as np

from ..labels import organ_ids
from .flags import typed_flags


@typed_flags
def segment_cli(image: str, out: str, device: str = "auto", series: str | None = None, weights: str | None = None,
                progress: bool = False, z_stride: int | None = None, encoder: str = "auto",
                statistics: str | None = None, preview: str | None = None, force: bool = False,
                tight_fov_mm: float = 250.0, option=None):
    """Segment the 8 abdominal organs of a CT (NIfTI/NRRD file or DICOM series folder) with no prompts.

    Args:
        image: input CT.
        out: output label map (.nii.gz, .nii or .nrrd) on the input's grid, or a DICOM SEG (.dcm) when the
            input is a DICOM series.
        device: auto, cuda or cpu.
        series: DICOM SeriesInstanceUID when the folder holds several series.
        weights: PriorSAM checkpoint (default: the demo weights shipped with the package).
        progress: print machine-readable PRIORSAM_PROGRESS lines (for a parent process).
        z_stride: run every k-th slice and interpolate where neighbours agree (1: every slice;
            default: run slices about 10 mm apart).
        encoder: encoder runtime: auto, openvino, onnx or torch.
        statistics: also write per-organ volume (mL), HU mean/std, extent and presence (.json or .csv).
        preview: also write an overlay montage of axial slices (.png).
        force: segment an image that does not look like CT in Hounsfield units (with a warning).
        tight_fov_mm: a field of view narrower than this that cuts through the trunk takes the 3D
            localiser's masks as the answer (with a warning); 0: always run the per-slice model.
        option: any other engine option as name=value, comma-separated (e.g.
            ``localiser_shifts=4,localiser_fill=0``; the names are SegmentOptions' fields, docs/usage.md);
            it overrides the flags above.
    """
    from ..api import check_outputs, segment
    from ..engine.option_values import parse_options
    from ..engine.progress import StdoutProgress
    from ..engine.segment import SegmentOptions
    from ..io import read_volume
    from ..io.checks import show_warnings

    options = {"z_stride": z_stride, "encoder_backend": encoder, "tight_fov_mm": tight_fov_mm,
               **parse_options(option)}
    # Before reading: a bad output path fails first, and fast, then a bad option value.
    check_outputs(out, statistics, preview, inputs=(image,))
    SegmentOptions(**options)
    image = read_volume(image, series_uid=series, force=force)
    show_warnings(image.warnings)
    if str(out).lower().endswith(".dcm") and image.source.format == "dicom":
        from ..batch.dicom_seg import check_seg_sources

        check_seg_sources(image.source.dicom_files)  # before the model: a SEG it cannot write wastes the run
    seg = segment(image, out, weights=weights, device=device, series=series, statistics=statistics,
                  preview=preview, progress=StdoutProgress() if progress else None, **options)
    result = seg.result
    counts = np.bincount(result.labels.ravel(), minlength=len(organ_ids()) + 1)
    return {"output": str(out), "seconds": round(result.seconds, 1), "device": result.device,
            "slices_run": result.slices_run, "slices": int(seg.volume.shape[2]),
            "localiser": {k: result.localiser[k] for k in ("usable", "reason", "slices_skipped", "answer") if k in result.localiser},
            "voxels_per_label": {int(i): int(c) for i, c in enumerate(counts) if i > 0},
            **{k: str(v) for k, v in seg.outputs.items() if k in ("statistics", "preview")}}
