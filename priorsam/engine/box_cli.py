"""`priorsam segment-box`: checks the output, box and image first, then loads LiteMedSAM.

Only the checks' modules are imported up front (no torch), so bad input fails in about a second.
"""
from __future__ import annotations

import time

import numpy as np


def segment_box_cli(image: str, box: str, out: str, space: str = "voxel", label: str = "organ",
                    device: str = "auto", series: str | None = None, margin_mm: float = 5.0):
    """Segment one organ through the volume from a 3D box.

    Args:
        image: NIfTI/NRRD file or DICOM series folder.
        box: x0,y0,z0,x1,y1,z1 — voxel indices of the file as stored (--space voxel) or RAS mm (--space ras).
        out: output label map (.nii.gz or .nrrd), written on the input's grid.
        label: organ name; one of the 8 organs gives its label id in the output, anything else gives 1.
        device: auto, cuda or cpu.
        series: DICOM SeriesInstanceUID when the folder holds several series.
    """
    from ..io import check_writable, read_volume, write_label_map
    from ..labels import labels
    from .boxes import box_to_display, parse_box

    check_writable(out)
    parsed = parse_box(box)
    t0 = time.time()
    volume = read_volume(image, series_uid=series)
    box_to_display(volume, parsed, space)  # rejects a box outside the volume before the model loads
    from .box_segment import segment_box
    ids = {lab.name: lab.id for lab in labels()}
    value = ids.get(str(label), 1)
    mask = segment_box(volume, parsed, space=space, device=device, margin_mm=margin_mm)
    write_label_map(volume, mask.astype(np.uint8) * value, out)
    vox_ml = float(np.prod(volume.spacing)) / 1000.0
    return {"output": str(out), "label": str(label), "value": value, "voxels": int(mask.sum()),
            "volume_ml": round(float(mask.sum()) * vox_ml, 2), "seconds": round(time.time() - t0, 1)}
