"""Readers for NIfTI (nibabel), NRRD and DICOM series (ITK/GDCM, incl. JPEG 2000 and JPEG-LS)."""
from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

from ..errors import InputError
from .volume import Source, Volume, canonicalize, nifti_affine_ok
from .writers import MADE_FOR, MADE_FOR_KEY

_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
NIFTI_SUFFIXES = (".nii.gz", ".nii")
ITK_SUFFIXES = (".nrrd", ".nhdr", ".mha", ".mhd")
IMAGE_FILE_SUFFIXES = NIFTI_SUFFIXES + ITK_SUFFIXES   # the longer of .nii.gz / .nii first, for stripping


def read_label_map(path: str | Path) -> Volume:
    """Read a label map (NIfTI or NRRD) in canonical RAS, without the CT sanity checks."""
    return read_volume(path, check=False)


def read_label_map_on(volume: Volume, path: str | Path) -> tuple[np.ndarray, bool]:
    """A label map of ``volume`` (NIfTI or NRRD, stored in any axis order): (canonical-RAS integer array,
    whether PriorSAM wrote it for this very image). Refused with one line unless it lies on the volume's own
    grid (the same voxels in the same places), and when PriorSAM wrote it for another image (another phase
    or scan on the same grid)."""
    lab = read_label_map(path)
    if lab.shape != volume.shape:
        raise InputError(f"{path}: label map of shape {lab.shape}, the image has {volume.shape}: "
                         "not a label map of this image")
    # the corner voxels' centres, within a quarter of the finest voxel: headers written in float32 round
    # far less than that, a map of another scan or resampled one misses it
    corners = np.array([[x, y, z, 1.0] for x in (0, lab.shape[0] - 1) for y in (0, lab.shape[1] - 1)
                        for z in (0, lab.shape[2] - 1)]).T
    apart = np.linalg.norm((lab.affine @ corners - volume.affine @ corners)[:3], axis=0).max()
    if apart > 0.25 * float(volume.spacing.min()):
        raise InputError(f"{path}: the label map's voxels lie up to {apart:.1f} mm from the image's (another "
                         "origin, spacing or direction): not a label map of this image")
    values = lab.array
    if not np.isfinite(values).all() or (values != np.round(values)).any():
        raise InputError(f"{path}: a label map holds whole numbers; this one does not")
    made_from = lab.source.made_from
    if made_from is not None and made_from != volume.fingerprint():
        raise InputError(f"{path}: PriorSAM made this label map for another image on the same grid (its voxels "
                         "differ from this one's: another phase, series or scan): not a label map of this image")
    return values.astype(np.int64), made_from is not None


def read_volume(path: str | Path, series_uid: str | None = None, check: bool = True, force: bool = False,
                files: list[str] | None = None) -> Volume:
    """Read a CT volume from a NIfTI/NRRD file or a DICOM series folder, in canonical RAS.

    ``check``: the input checks of :mod:`.checks` (refusals raise, the rest land in ``volume.warnings``);
    ``force``: read an image that does not look like CT (with a warning); ``files``: exactly these
    DICOM instances of ``path`` (as a batch discovered them) instead of a series chosen by UID.
    """
    p = Path(path)
    if not p.exists():
        raise InputError(f"input not found: {p}")
    if p.is_dir():
        return read_dicom_series(p, series_uid, force=force, files=files)
    name = p.name.lower()
    if series_uid is not None and name.endswith(IMAGE_FILE_SUFFIXES):
        # said rather than ignored: whoever gave a series expected a DICOM folder, maybe another input
        raise InputError(f"{p}: a series UID (--series) picks one series of a DICOM folder; this input is a single image file")
    if name.endswith(NIFTI_SUFFIXES):
        return read_nifti(p, check, force)
    if name.endswith(ITK_SUFFIXES):
        return read_itk_file(p, "nrrd", check, force)
    if is_dicom_file(p):
        return read_dicom_series(p.parent, series_uid, force=force, files=files)
    raise InputError(f"{p}: not a readable image (expected .nii, .nii.gz, .nrrd or a DICOM series folder)")


def is_dicom_file(p: str | Path) -> bool:
    """Whether ``p`` carries the DICOM preamble (pydicom's check); an unreadable file is not DICOM."""
    from pydicom.misc import is_dicom

    try:
        return is_dicom(p)
    except OSError:
        return False


def read_nifti(p: Path, check: bool = True, force: bool = False) -> Volume:
    import nibabel as nib

    from .checks import check_nifti_header, quiet_nibabel, raw_nifti_header

    warnings = []
    try:
        with quiet_nibabel():
            img = nib.load(str(p))
        if check:
            warnings = check_nifti_header(raw_nifti_header(p, type(img.header)), str(p))
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
    made_from = _made_from(bytes(img.header["descrip"]).split(b"\0")[0].decode("latin-1"))
    if check:
        _refuse_our_label_map(p, made_from)
    src = Source(str(p), "nifti", tuple(data.shape), affine, np.zeros((3, 2)), header=img.header.copy(),
                 made_from=made_from)
    return canonicalize(data.astype(np.float32, copy=False), affine, src, check, force, warnings)


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


def read_itk_file(p: Path, fmt: str, check: bool = True, force: bool = False) -> Volume:
    import itk

    try:
        image = itk.imread(str(p))
    except Exception as exc:
        last = str(exc).strip().splitlines()[-1][:160]
        if "spacing" in last.lower():
            raise InputError(f"{p}: zero or invalid voxel spacing in the header (NRRD 'space directions' / "
                             f"MetaImage 'ElementSpacing'): {last}") from exc
        raise InputError(f"{p}: not a readable image ({last})") from exc
    if image.GetImageDimension() != 3:
        raise InputError(f"{p}: {image.GetImageDimension()}D image; a 3D CT volume is required")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"{p}: {image.GetNumberOfComponentsPerPixel()}-component image; a 3D CT volume is required")
    arr, affine = itk_to_ras(image)
    meta = image.GetMetaDataDictionary()
    made_from = str(meta[MADE_FOR_KEY]) if meta.HasKey(MADE_FOR_KEY) else None
    if check:
        _refuse_our_label_map(p, made_from)
    src = Source(str(p), fmt, tuple(arr.shape), affine, np.zeros((3, 2)), made_from=made_from)
    return canonicalize(arr.astype(np.float32, copy=False), affine, src, check, force)


def _refuse_our_label_map(p: Path, made_from: str | None) -> None:
    # The "not CT" check would refuse it too, but in words that do not say what the file is, and --force
    # would then segment a segmentation.
    if made_from is not None:
        raise InputError(f"{p}: a label map PriorSAM wrote (for image {made_from}), not a CT to segment")


def label_map_made_by_priorsam(path: str | Path) -> bool:
    """Whether ``path`` is a label map PriorSAM wrote (its header names the image it was made for), read
    from the header alone. Discovery skips these: a folder that holds a run's results beside its CT must
    not have them segmented as new images. A file that cannot be read is not one (its case fails later
    with the reader's message)."""
    p = Path(path)
    name = p.name.lower()
    try:
        if name.endswith(NIFTI_SUFFIXES):
            import nibabel as nib

            from .checks import quiet_nibabel

            with quiet_nibabel():
                header = nib.load(str(p)).header
            return _made_from(bytes(header["descrip"]).split(b"\0")[0].decode("latin-1")) is not None
        if name.endswith(ITK_SUFFIXES):
            import itk

            io = itk.ImageIOFactory.CreateImageIO(str(p), itk.CommonEnums.IOFileMode_ReadMode)
            if io is None:
                return False
            io.SetFileName(str(p))
            io.ReadImageInformation()
            return bool(io.GetMetaDataDictionary().HasKey(MADE_FOR_KEY))
    except Exception:  # unreadable: not a label map of ours; the reader reports it when the case runs
        return False
    return False


def _made_from(description: str) -> str | None:
    """The image fingerprint in a NIfTI description PriorSAM wrote (:func:`.writers.made_for`), else None."""
    if not description.startswith(MADE_FOR):
        return None
    return description[len(MADE_FOR):].strip() or None


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
    series = {uid: list(names.GetFileNames(uid)) for uid in uids}
    if "" in series:
        # ITK lumps every file without a SeriesInstanceUID into one "series"; split them by folder
        # and geometry instead, under stand-in keys (usable with --series), so none is mixed or lost.
        from .checks import no_uid_key, read_slice_header

        for f in series.pop(""):
            series.setdefault(no_uid_key(read_slice_header(f)), []).append(f)
    return series


def dicom_series_files(folder: Path, series_uid: str | None = None, files: list[str] | None = None
                       ) -> tuple[str | None, list[str], list[str]]:
    """The series to read: (its SeriesInstanceUID or None, files sorted by position, warnings).

    Refuses several series without a choice, a single slice, and any geometry ITK would paper over.
    """
    from .checks import check_dicom_files

    if files:
        files = sorted(str(f) for f in files)
    else:
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
    label = f"{folder}" if series_uid is None else f"{folder}: series {series_uid}"
    if len(files) < 2:
        raise InputError(f"{label} has a single slice; a 3D CT volume is required")
    ordered, warnings = check_dicom_files(files, label)
    if series_uid is None or series_uid.startswith("no-uid-"):
        from .checks import read_slice_header

        series_uid = read_slice_header(ordered[0]).series_uid or None
    return series_uid, ordered, warnings


def read_dicom_series(folder: Path, series_uid: str | None = None, force: bool = False,
                      files: list[str] | None = None) -> Volume:
    import itk

    series_uid, files, warnings = dicom_series_files(folder, series_uid, files)
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
    return canonicalize(arr.astype(np.float32, copy=False), affine, src, force=force, warnings=warnings)
