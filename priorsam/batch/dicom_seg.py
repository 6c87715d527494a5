"""DICOM Segmentation (highdicom) for a label map segmented from a DICOM series.

The SEG references every source instance (same study, frame of reference and patient), so
PACS and viewers overlay it on the series it came from. All 8 organs are encoded as BINARY
segments with segment number == PriorSAM label id (1 spleen … 8 pancreas) and SNOMED CT
codes from ``priorsam/resources/labels.json``; empty frames are omitted, so an organ that was
not found is a declared segment with no frames (readers keep the numbering fixed).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..io import Volume, atomic_path
from ..io.volume import to_source_grid
from ..labels import category, labels as label_table

_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


def _cielab(rgb: tuple[int, int, int]):
    from highdicom.color import CIELabColor
    from skimage.color import rgb2lab

    lab = rgb2lab(np.asarray(rgb, dtype=np.float64).reshape(1, 1, 3) / 255.0)[0, 0]
    return CIELabColor(float(np.clip(lab[0], 0, 100)), float(np.clip(lab[1], -128, 127)),
                       float(np.clip(lab[2], -128, 127)))


def segment_descriptions(algorithm_name: str, algorithm_version: str) -> list:
    """One highdicom SegmentDescription per organ, numbered by label id."""
    import highdicom as hd
    from pydicom.sr.codedict import codes
    from pydicom.sr.coding import Code

    cat = category()
    cat_code = Code(cat["CodeValue"], cat["CodingSchemeDesignator"], cat["CodeMeaning"])
    algorithm = hd.AlgorithmIdentificationSequence(name=algorithm_name, version=algorithm_version[:64],
                                                   family=codes.cid7162.ArtificialIntelligence)
    return [hd.seg.SegmentDescription(
        segment_number=lab.id, segment_label=lab.display, segmented_property_category=cat_code,
        segmented_property_type=Code(lab.snomed_code, "SCT", lab.snomed_meaning),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC, algorithm_identification=algorithm,
        tracking_id=lab.name, tracking_uid=hd.UID(), display_color=_cielab(lab.color))
        for lab in label_table()]


def source_frames(volume: Volume, labels_ras: np.ndarray, datasets: list) -> np.ndarray:
    """(N, Rows, Columns) label frames, frame i lying on ``datasets[i]``'s plane.

    The stored grid of a DICOM volume is ITK's (column, row, slice) order, so slice k is
    ``stored[:, :, k].T`` in (row, column). Each instance's slice index comes from its own
    ImagePositionPatient through the series affine, not from file order.
    """
    stored = to_source_grid(volume, labels_ras.astype(np.uint8))
    inv = np.linalg.inv(volume.source.affine)
    frames = []
    for ds in datasets:
        if int(getattr(ds, "NumberOfFrames", 1) or 1) != 1:
            raise InputError(f"{volume.source.path}: DICOM SEG for multi-frame source images is not supported")
        ras = _LPS_TO_RAS @ np.asarray(ds.ImagePositionPatient, dtype=np.float64)
        ijk = inv[:3, :3] @ ras + inv[:3, 3]
        k = int(round(ijk[2]))
        if abs(ijk[0]) > 0.01 or abs(ijk[1]) > 0.01 or abs(ijk[2] - k) > 0.01 or not 0 <= k < stored.shape[2]:
            raise InputError(f"{volume.source.path}: instance {ds.SOPInstanceUID} does not lie on a slice of the "
                             f"series grid (index {np.round(ijk, 3).tolist()})")
        frame = stored[:, :, k].T
        if frame.shape != (int(ds.Rows), int(ds.Columns)):
            raise InputError(f"{volume.source.path}: instance {ds.SOPInstanceUID} is {ds.Rows}×{ds.Columns}, "
                             f"the volume slice is {frame.shape}")
        frames.append(frame)
    return np.ascontiguousarray(np.stack(frames))


# A SEG references each source instance by these; highdicom fails on an empty one with a bare KeyError.
SEG_SOURCE_TAGS = (("SOPClassUID", "0008,0016"), ("SOPInstanceUID", "0008,0018"), ("StudyInstanceUID", "0020,000D"),
                   ("SeriesInstanceUID", "0020,000E"))


# Type 2 in the source (present, possibly empty); highdicom reads them as attributes and fails with
# AttributeError where an exporter left them out. The SEG copies them, so empty is the faithful value.
TYPE2_COPIED = ("PatientID", "PatientName", "PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID",
                "StudyDate", "StudyTime", "ReferringPhysicianName")


def check_seg_sources(files: list[str]) -> None:
    """Refuse, before any model work, a source series that a DICOM SEG cannot reference."""
    import pydicom

    if not files:
        raise InputError("a DICOM SEG needs a DICOM source series")
    for f in files:
        ds = pydicom.dcmread(f, stop_before_pixels=True, specific_tags=[t for t, _ in SEG_SOURCE_TAGS])
        _uids_from_file_meta(ds)
        for tag, code in SEG_SOURCE_TAGS:
            if not str(getattr(ds, tag, "") or "").strip():
                raise InputError(f"{f}: empty {tag} ({code}); a DICOM SEG must reference every source instance "
                                 f"by it, so none can be written for this series (a NIfTI label map can)")


def _uids_from_file_meta(ds) -> None:
    """Fill an emptied SOP Class/Instance UID from the file meta, which by the standard holds the same
    values (some anonymisers blank only the dataset's copy); study and series UIDs have no such copy."""
    meta = getattr(ds, "file_meta", None)
    for tag, meta_tag in (("SOPClassUID", "MediaStorageSOPClassUID"), ("SOPInstanceUID", "MediaStorageSOPInstanceUID")):
        if not str(getattr(ds, tag, "") or "").strip() and meta is not None and str(meta.get(meta_tag, "") or ""):
            setattr(ds, tag, meta.get(meta_tag))


def write_dicom_seg(volume: Volume, labels_ras: np.ndarray, path: str | os.PathLike, *,
                    software_version: str, algorithm_version: str, series_description: str = "PriorSAM organs"
                    ) -> Path:
    """Write ``labels_ras`` (canonical RAS (X, Y, Z) uint8) as a DICOM SEG referencing the source series."""
    import highdicom as hd
    import pydicom

    files = list(volume.source.dicom_files)
    if volume.source.format != "dicom" or not files:
        raise InputError(f"{volume.source.path}: a DICOM SEG needs a DICOM source series")
    check_seg_sources(files)
    datasets = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    for ds in datasets:
        _uids_from_file_meta(ds)
        for keyword in TYPE2_COPIED:
            if keyword not in ds:
                setattr(ds, keyword, "")
    frames = source_frames(volume, labels_ras, datasets)
    try:
        series_number = int(getattr(datasets[0], "SeriesNumber", 0) or 0) + 1000
    except (TypeError, ValueError):
        series_number = 1000
    seg = hd.seg.Segmentation(
        source_images=datasets, pixel_array=frames,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=segment_descriptions("PriorSAM", algorithm_version),
        series_instance_uid=hd.UID(), series_number=series_number, sop_instance_uid=hd.UID(), instance_number=1,
        manufacturer="PriorSAM", manufacturer_model_name="PriorSAM 8-organ abdominal CT",
        software_versions=software_version, device_serial_number="0",
        series_description=series_description, content_label="PRIORSAM",
        content_description="Automatic 8-organ segmentation (research use)")
    with atomic_path(path) as tmp:
        seg.save_as(str(tmp))
    return Path(path)
