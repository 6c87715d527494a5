"""`priorsam segment-box`: checks the output, box and image first, then loads LiteMedSAM.

Only the checks' modules are imported up front (no torch), so bad input fails in about a second.
"""
from __future__ import annotations

import time

import numpy as np

from .flags import typed_flags


@typed_flags
def segment_box_cli(image: str, box: str, out: str, space: str = "voxel", label: str = "organ",
                    device: str = "auto", series: str | None = None, margin_mm: float = 5.0,
                    progress: bool = False, weights: str | None = None, force: bool = False,
                    method: str = "auto", organs: str | None = None):
    """Segment one organ through the volume from a 3D box.

    Args:
        image: NIfTI/NRRD file or DICOM series folder.
        box: x0,y0,z0,x1,y1,z1 — voxel indices of the file as stored (--space voxel) or RAS mm (--space ras).
        out: output label map (.nii.gz or .nrrd), written on the input's grid.
        label: organ name; one of the 8 organs gives its label id in the output, anything else gives 1;
            ``auto`` names the object: the organ that answered (prints ``PRIORSAM_LABEL name id``), or after
            propagation the semantic decoder's name for the mask (``PRIORSAM_LABEL name id p``).
        device: auto, cuda or cpu.
        series: DICOM SeriesInstanceUID when the folder holds several series.
        progress: print machine-readable PRIORSAM_PROGRESS lines (for a parent process).
        weights: PriorSAM checkpoint that segments the volume for the organs method and names a propagated
            mask for ``--label auto`` (default: the bundle's models/model.pt).
        force: segment an image that does not look like CT in Hounsfield units (with a warning).
        method: ``organs`` answers with the automatic engine's mask of the boxed organ, inside the box, when
            the engine drew one that fits the box (a named organ: half its voxels inside the box; ``auto``:
            the organ the box matches best, if half of it lies inside the box or its 3D extent overlaps the
            box with IoU >= 0.5), and propagates otherwise;
            ``propagate`` always propagates LiteMedSAM from the box's middle slice; ``auto`` (default) is
            ``organs`` for one of the 8 organs or ``--label auto`` and ``propagate`` for any other label.
        organs: the organ label map ``priorsam segment`` wrote for this image (same grid, our label ids);
            the organs method reads the engine's answer from it instead of segmenting the volume again.
    """
    from ..engine.boxes import box_to_display, parse_box
    from ..errors import InputError
    from ..io import check_not_inputs, check_writable, read_volume, write_label_map
    from ..io.checks import show_warnings
    from ..labels import labels

    check_writable(out)
    check_not_inputs((out,), (image, organs))
    parsed = parse_box(box)
    ids = {lab.name: lab.id for lab in labels()}
    label = str(label)
    method = box_method(method, label, ids)
    if organs is not None and method != "organs":
        raise InputError("--organs is read by the organs method only (--label auto or one of the organs "
                         f"{', '.join(ids)}, and --method auto or organs)")
    t0 = time.time()
    volume = read_volume(image, series_uid=series, force=force)
    show_warnings(volume.warnings)
    dbox = box_to_display(volume, parsed, space)  # rejects a box outside the volume before the model loads
    from ..engine.box_segment import segment_box
    from ..engine.progress import StdoutProgress

    reporter = StdoutProgress() if progress else None
    match, segmenter, score = None, None, None
    if method == "organs":
        from ..engine.box_organs import organ_for_box
        from ..engine.segment import Segmenter

        if organs is not None:
            engine = organ_label_map(volume, organs, ids)
        else:
            segmenter = Segmenter(weights, device)
            engine = segmenter.segment(volume, progress=reporter, show_bar=not progress).labels
        found = organ_for_box(engine, dbox, None if label == "auto" else label)
        if found is None:
            show_warnings([f"the automatic segmentation has no {'organ' if label == 'auto' else label} that "
                           "fits this box; the box is propagated slice by slice instead"])
        else:
            mask, match = found
    if match is None:
        mask = segment_box(volume, parsed, space=space, device=device, margin_mm=margin_mm,
                           progress=reporter, show_bar=not progress)
    if label == "auto":
        if match is not None:
            label, value = match.name, match.label_id
            print(f"PRIORSAM_LABEL {label} {value}", flush=True)
        else:
            if not mask.any():
                raise InputError("the box gave an empty mask, so there is no object to name")
            from ..engine.naming import name_prompted_organ

            label, value, score = name_prompted_organ(volume, mask, weights, device, segmenter=segmenter)
            print(f"PRIORSAM_LABEL {label} {value} {score:.3f}", flush=True)
    else:
        value = ids.get(label, 1)
    write_label_map(volume, mask.astype(np.uint8) * value, out)
    vox_ml = float(np.prod(volume.spacing)) / 1000.0
    return {"output": str(out), "label": str(label), "value": value, "label_probability": score,
            "method": "organs" if match is not None else "propagate",
            "organ_box_iou": round(match.iou, 3) if match is not None else None, "voxels": int(mask.sum()),
            "volume_ml": round(float(mask.sum()) * vox_ml, 2), "seconds": round(time.time() - t0, 1)}


BOX_METHODS = ("auto", "organs", "propagate")


def organ_label_map(volume, path: str, organ_ids: dict[str, int]) -> np.ndarray:
    """The engine's label map of ``volume`` read from ``path`` (canonical RAS), refused with one line unless
    it is on the image's grid, holds only background and our organ ids (name → id) and, where PriorSAM wrote
    it, was made for this image; a map that does not say which image it was made for is read with a warning."""
    from ..errors import InputError
    from ..io import read_label_map_on
    from ..io.checks import show_warnings

    engine, ours = read_label_map_on(volume, path)
    stray = sorted(set(np.unique(engine).tolist()) - {0, *organ_ids.values()})
    if stray:
        raise InputError(f"{path}: label values {stray[:5]} are not PriorSAM's organ ids "
                         f"1-{max(organ_ids.values())}: give the label map `priorsam segment` wrote for this image")
    if not ours:
        names = ", ".join(f"{i} {name}" for name, i in organ_ids.items())
        show_warnings([f"{path} does not say which image it was made for (another tool wrote it, or it was "
                       f"edited): its values are read as PriorSAM's organ ids ({names})"])
    return engine.astype(np.uint8)


def box_method(method: str, label: str, organ_ids: dict[str, int]) -> str:
    """``organs`` or ``propagate`` for a ``--method`` and ``--label`` (see :func:`segment_box_cli`)."""
    from ..errors import InputError

    if method not in BOX_METHODS:
        raise InputError(f"--method {method!r}: use one of {', '.join(BOX_METHODS)}")
    organ = label == "auto" or label in organ_ids
    if method == "organs" and not organ:
        raise InputError(f"--method organs needs --label auto or one of the organs {', '.join(organ_ids)}, "
                         f"not {label!r}")
    if method == "auto":
        return "organs" if organ else "propagate"
    return method
