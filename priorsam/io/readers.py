"""Readers for NIfTI (nibabel), NRRD and DICOM series (ITK/GDCM, incl. JPEG 2000 and JPEG-LS)."""
from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

from ..errors import InputError
from .volume import Source, Volume, canonicalize, nifti_affine_ok

_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def read_label_map(path: str | Path) -> Volume:
    """Read a label map (NIfTI or NRRD) in canonical RAS, without the CT sanity checks."""
    return read_volume(path, check=False)


def read_volume(path: str | Path, series_uid: str | None = None, check: bool = True) -> Volume:
    """Read a CT volume from a NIfTI/NRRD file or a DICOM series folder, in canonical RAS."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"input not found: {p}")
    if p.is_dir():
        return read_dicom_series(p, series_uid)
    name = p.name.lower()
    if name.endswith((".nii", ".nii.gz")):
        return read_nifti(p, check)
    if name.endswith((".nrrd", ".nhdr", ".mha", ".mhd")):
        return read_itk_file(p, "nrrd", check)
    if _looks_like_dicom(p):
        return read_dicom_series(p.parent, series_uid)
    raise InputError(f"{p}: not a readable image (expected .nii, .nii.gz, .nrrd or a DICOM series folder)")


def _looks_like_dicom(p: Path) -> bool:
    with open(p, "rb") as fh:
        head = fh.read(132)
    return len(head) == 132 and head[128:132] == b"DICM"


def read_nifti(p: Path, check: bool = True) -> Volume:
    import nibabel as nib

    try:
        img = nib.load(str(p))
        if 0 in img.shape:  # nibabel flattens zero-size data to shape (0,); report the stored shape
            raise InputError(f"{p}: empty volume of shape {tuple(img.shape)}")
        data = np.asarray(img.dataobj)
    except InputError:
        raise
    except (EOFError, zlib.error, gzip.BadGzipFile, OSError) as exc:
        raise InputError(f"{p}: corrupt or truncated file ({type(exc).__name__}: {exc})") from exc
    except Exception as exc:  # nibabel raises several types for non-NIfTI content
        raise InputError(f"{p}: not a readable NIfTI image ({exc})") from exc
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    affine = img.affine.astype(np.float64)
    nifti_affine_ok(affine, str(p))
    src = Source(str(p), "nifti", tuple(data.shape), affine, np.zeros((3, 2)), header=img.header.copy())
    return canonicalize(data.astype(np.float32, copy=False), affine, src, check)


def itk_to_ras(image) -> tuple[np.ndarray, np.ndarray]:
    """ITK image → ((X, Y, Z) array, RAS affine). ITK geometry is LPS; numpy views are (Z, Y, X)."""
    import itk

    arr = itk.array_from_image(image)
    if arr.ndim == 3:
        arr = np.transpose(arr, (2, 1, 0))
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(arr.ndim, arr.ndim)
    spacing = np.asarray(image.GetSpacing(), dtype=np.float64)
    origin = np.asarray(image.GetOrigin(), dtype=np.float64)
    if arr.ndim != 3:
        return arr, np.eye(4)
    lps = np.eye(4)
    lps[:3, :3] = direction @ np.diag(spacing)
    lps[:3, 3] = origin
    return arr, _LPS_TO_RAS @ lps


def read_itk_file(p: Path, fmt: str, check: bool = True) -> Volume:
    import itk

    try:
        image = itk.imread(str(p))
    except Exception as exc:
        raise InputError(f"{p}: not a readable image ({str(exc).strip().splitlines()[-1][:160]})") from exc
    if image.GetImageDimension() != 3:
        raise InputError(f"{p}: {image.GetImageDimension()}D image; a 3D CT volume is required")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"{p}: {image.GetNumberOfComponentsPerPixel()}-component image; a 3D CT volume is required")
    arr, affine = itk_to_ras(image)
    src = Source(str(p), fmt, tuple(arr.shape), affine, np.zeros((3, 2)))
    return canonicalize(arr.astype(np.float32, copy=False), affine, src, check)


def list_dicom_series(folder: Path) -> dict[str, list[str]]:
    """Series instance UID → sorted file names, for every series under ``folder`` (recursive)."""
    import itk

    names = itk.GDCMSeriesFileNames.New()
    names.SetUseSeriesDetails(False)  # one series per SeriesInstanceUID, as users identify them
    names.SetRecursive(True)
    # ITK prints a multi-line "No Series were found" warning to stderr; callers report that themselves.
    shown = itk.Object.GetGlobalWarningDisplay()
    itk.Object.SetGlobalWarningDisplay(False)
    try:
        names.SetDirectory(str(folder))
        uids = list(names.GetSeriesUIDs())
    finally:
        itk.Object.SetGlobalWarningDisplay(shown)
    return {uid: list(names.GetFileNames(uid)) for uid in uids}


def read_dicom_series(folder: Path, series_uid: str | None = None) -> Volume:
    import itk

    series = list_dicom_series(folder)
    if not series:
        raise InputError(f"{folder}: no DICOM series found")
    if series_uid is None:
        if len(series) > 1:
            listing = ", ".join(f"{uid} ({len(f)} files)" for uid, f in series.items())
            raise InputError(f"{folder}: {len(series)} DICOM series found; pick one with --series UID: {listing}")
        series_uid = next(iter(series))
    if series_uid not in series:
        raise InputError(f"{folder}: series {series_uid} not found; available: {', '.join(series)}")
    files = series[series_uid]
    if len(files) < 2:
        raise InputError(f"{folder}: series {series_uid} has a single slice; a 3D CT volume is required")
    try:
        reader = itk.ImageSeriesReader[itk.Image[itk.F, 3]].New()
        io = itk.GDCMImageIO.New()
        reader.SetImageIO(io)
        reader.SetFileNames(files)
        reader.ForceOrthogonalDirectionOff()
        reader.Update()
        image = reader.GetOutput()
    except Exception as exc:
        raise InputError(f"{folder}: DICOM series {series_uid} could not be decoded ({str(exc).strip()[-160:]})") from exc
    arr, affine = itk_to_ras(image)
    src = Source(str(folder), "dicom", tuple(arr.shape), affine, np.zeros((3, 2)), series_uid=series_uid,
                 dicom_files=list(files))
    return canonicalize(arr.astype(np.float32, copy=False), affine, src)
