"""Write small synthetic CT DICOM series with pydicom (test helper, no test functions here).

Geometry is given the way DICOM states it (LPS patient coordinates): the direction of
increasing column index (IOP[0:3]), of increasing row index (IOP[3:6]), pixel spacing
(row_mm, col_mm) and the slice step along the normal. File names are deliberately not in
position order, so readers must sort by geometry.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

INTERCEPT = -1024.0


def rotation(z_deg: float = 0.0, x_deg: float = 0.0) -> np.ndarray:
    """3×3 rotation: ``x_deg`` about the x axis (tilt) after ``z_deg`` about the z axis (in-plane)."""
    a, b = np.deg2rad(z_deg), np.deg2rad(x_deg)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    return rx @ rz


def write_series(folder: Path, hu: np.ndarray, row_mm: float = 0.8, col_mm: float = 0.7, slice_mm: float = 2.5,
                 rot_lps: np.ndarray | None = None, origin_lps=(-30.0, -20.0, 100.0),
                 transfer_syntax: str = ExplicitVRLittleEndian, series_uid: str | None = None,
                 study_uid: str | None = None, prefix: str = "img") -> dict:
    """Write ``hu`` (Z, R, C) int HU as one series; returns its UIDs and per-slice geometry.

    ``rot_lps`` columns are the LPS directions of increasing column, row and slice index.
    """
    folder.mkdir(parents=True, exist_ok=True)
    rot = np.eye(3) if rot_lps is None else np.asarray(rot_lps, dtype=np.float64)
    series_uid = series_uid or generate_uid()
    study_uid = study_uid or generate_uid()
    frame_uid = generate_uid()
    z, rows, cols = hu.shape
    positions = [np.asarray(origin_lps, dtype=np.float64) + k * slice_mm * rot[:, 2] for k in range(z)]
    order = np.random.default_rng(7).permutation(z)  # file name order ≠ slice order
    for name_idx, k in enumerate(order):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.FrameOfReferenceUID = frame_uid
        ds.Modality = "CT"
        ds.PatientID = "SYNTHETIC"
        ds.PatientName = "Synthetic^Phantom"
        ds.SeriesNumber = 1
        ds.InstanceNumber = int(k) + 1
        ds.ImagePositionPatient = [f"{v:.6f}" for v in positions[k]]
        ds.ImageOrientationPatient = [f"{v:.8f}" for v in np.r_[rot[:, 0], rot[:, 1]]]
        ds.PixelSpacing = [f"{row_mm:g}", f"{col_mm:g}"]
        ds.SliceThickness = f"{slice_mm:g}"
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = rows, cols
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
        ds.PixelRepresentation = 0
        ds.RescaleIntercept, ds.RescaleSlope = f"{INTERCEPT:g}", "1"
        stored = (hu[k].astype(np.int32) - int(INTERCEPT)).astype(np.uint16)
        ds.PixelData = stored.tobytes()
        if transfer_syntax != ExplicitVRLittleEndian:
            ds.compress(transfer_syntax, stored)
        ds.save_as(folder / f"{prefix}{name_idx:03d}.dcm", enforce_file_format=True)
    return {"series_uid": series_uid, "positions": positions, "rot": rot, "row_mm": row_mm, "col_mm": col_mm,
            "slice_mm": slice_mm}


def phantom(z: int = 4, rows: int = 24, cols: int = 20, seed: int = 0) -> np.ndarray:
    """(Z, R, C) int16 HU with a structure that differs along every axis (no symmetry hides a flip)."""
    rng = np.random.default_rng(seed)
    hu = rng.integers(-1000, 1500, size=(z, rows, cols)).astype(np.int16)
    hu[:, :3, :5] = 2000 + np.arange(z)[:, None, None]   # corner marker, slice-dependent
    return hu


def expected_ras_affine(geom: dict) -> np.ndarray:
    """RAS affine of the stored (column, row, slice) grid implied by the DICOM geometry."""
    rot = geom["rot"]
    lps = np.eye(4)
    lps[:3, 0] = rot[:, 0] * geom["col_mm"]
    lps[:3, 1] = rot[:, 1] * geom["row_mm"]
    lps[:3, 2] = rot[:, 2] * geom["slice_mm"]
    lps[:3, 3] = geom["positions"][0]
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps


__all__ = ["write_series", "phantom", "rotation", "expected_ras_affine", "INTERCEPT", "pydicom"]
