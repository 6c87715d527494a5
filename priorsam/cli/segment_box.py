"""`priorsam segment-box`: checks the output, box and image first, then loads LiteMedSAM.

Only the checks' modules are imported up front (no torch), so bad input fails in about a second.
"""
from __future__ import annotations

import time

import numpy as np


def segment_box_cli(image: str, box: str, out: str, space: str = "voxel", label: str = "organ",
                    device: str = "auto", series: str | None = None, margin_mm: float = 5.0,
                    progress: bool = False, weights: str | None = None, force: bool = False):
    """Segment one organ through the volume from a 3D box.

    Args:
        image: NIfTI/NRRD file or DICOM series folder.
        box: x0,y0,z0,x1,y1,z1 — voxel indices of the file as stored (--space voxel) or RAS mm (--space ras).
        out: output label map (.nii.gz or .nrrd), written on the input's grid.
        label: organ name; one of the 8 organs gives its label id in the output, anything else gives 1;
            ``auto`` lets PriorSAM's semantic decoder name the object (prints ``PRIORSAM_LABEL name id p``).
        device: auto, cuda or cpu.
        series: DICOM SeriesInstanceUID when the folder holds several series.
        progress: print machine-readable PRIORSAM_PROGRESS lines (for a parent process).
        weights: PriorSAM checkpoint used by ``--label auto`` (default: the bundle's models/model.pt).
        force: segment an image that does not look like CT in Hounsfield units (with a warning).
    """
    from ..engine.boxes import box_to_display, parse_box
    from ..errors import InputError
    from ..io import check_writable, read_volume, write_label_map
    from ..io.checks import show_warnings
    from ..labels import labels

    check_writable(out)
    parsed = parse_box(box)
    t0 = time.time()
    volume = read_volume(image, series_uid=series, force=force)
    show_warnings(volume.warnings)
    box_to_display(volume, parsed, space)  # rejects a box outside the volume before the model loads
    from ..engine.box_segment import segment_box
    from ..engine.progress import StdoutProgress

    ids = {lab.name: lab.id for lab in labels()}
    mask = segment_box(volume, parsed, space=space, device=device, margin_mm=margin_mm,
                       progress=StdoutProgress() if progress else None, show_bar=not progress)
    score = None
    if str(label) == "auto":
        if not mask.any():
            raise InputError("the box gave an empty mask, so there is no object to name")
        from ..engine.naming import name_prompted_organ

        label, value, score = name_prompted_organ(volume, mask, weights, device)
        print(f"PRIORSAM_LABEL {label} {value} {score:.3f}", flush=True)
    else:
        value = ids.get(str(label), 1)
    write_label_map(volume, mask.astype(np.uint8) * value, out)
    vox_ml = float(np.prod(volume.spacing)) / 1000.0
    return {"output": str(out), "label": str(label), "value": value, "label_probability": score,
            "voxels": int(mask.sum()),
            "volume_ml": round(float(mask.sum()) * vox_ml, 2), "seconds": round(time.time() - t0, 1)}
