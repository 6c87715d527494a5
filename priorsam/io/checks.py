"""Input checks that run before any model work, so that no input gives a silent wrong answer.

Each check either raises :class:`~priorsam.errors.InputError` (one line, naming the file and the
header field or value at fault) or returns ``warning`` strings that the caller shows and records.
What is refused and what is only warned about is listed in docs/reliability.md.

The reader calls these for every file it opens (``read_volume``), and every entry point (CLI,
batch, the MONAI bundle's ``LoadVolumed``, Slicer, Python API) reads through it, so all get the
same answers.
"""
from __future__ import annotations

import hashlib
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InputError

# Air in CT is −1000 HU; scanners store it anywhere from about −1024 to −950 with noise. Padding
# outside the field of view (−2048, −3024) lies below this band, so it does not count as air.
AIR_HU = (-1200.0, -900.0)
# A CT crop with a little lung base or bowel gas still has far more air than this; MR, PET,
# z-scored or 0–255 images have none at all.
MIN_AIR_FRACTION = 1e-4
# CT values fit a signed 16-bit store (extended-scale CT reaches about +30 000 HU for metal).
HU_LIMITS = (-32768.0, 32767.0)

FORCE_HINT = "use --force to segment it anyway"


def check_ct_values(array: np.ndarray, path: str, force: bool = False) -> list[str]:
    """Refuse an image whose values cannot be CT in Hounsfield units (MR, PET, masks, 0–255 images,
    normalised or rescale-less CT); with ``force`` the refusal becomes a warning."""
    lo, hi = float(array.min()), float(array.max())
    problem = None
    if lo < HU_LIMITS[0] or hi > HU_LIMITS[1]:
        problem = f"values from {lo:g} to {hi:g} lie outside any CT's range ({HU_LIMITS[0]:g} to {HU_LIMITS[1]:g} HU)"
    elif lo >= 0:
        problem = (f"no negative values (range {lo:g} to {hi:g}), but CT has air at about -1000 HU; "
                   f"is it MR, PET, a mask, or CT stored without its rescale intercept")
    else:
        air = np.count_nonzero((array >= AIR_HU[0]) & (array <= AIR_HU[1]))
        if air < max(1, MIN_AIR_FRACTION * array.size):
            problem = (f"no air: {air} of {array.size} voxels lie near -1000 HU (range {lo:g} to {hi:g}); "
                       f"is it CT in Hounsfield units")
    if problem is None:
        return []
    if not force:
        raise InputError(f"{path}: does not look like CT in Hounsfield units: {problem}? {FORCE_HINT}")
    return [f"does not look like CT in Hounsfield units ({problem}); segmented anyway because of --force"]


# ----------------------------------------------------------------------------------------- NIfTI

def raw_nifti_header(path: str | os.PathLike, header_class=None):
    """The header as stored: ``nib.load`` has already replaced a zero pixdim with 1 (and logged it)."""
    import nibabel as nib
    from nibabel.openers import ImageOpener

    if header_class is None:
        with ImageOpener(str(path)) as fh:
            head = fh.read(4)
        sizes = {int.from_bytes(head, "little"), int.from_bytes(head, "big")}
        header_class = nib.Nifti2Header if 540 in sizes else nib.Nifti1Header
    with ImageOpener(str(path)) as fh:
        return header_class.from_fileobj(fh, check=False)


class quiet_nibabel:
    """Silence nibabel's own console notes while it loads ("setting 0 dims to 1", numpy's NaN
    warnings from a broken qform): they would be second, contradicting messages next to our
    one-line refusal of the same header."""

    def __enter__(self):
        import logging

        self.logger = logging.getLogger("nibabel.global")
        self.level = self.logger.level
        self.logger.setLevel(logging.ERROR)
        self.errstate = np.errstate(all="ignore")
        self.errstate.__enter__()
        return self

    def __exit__(self, *exc):
        self.errstate.__exit__(*exc)
        self.logger.setLevel(self.level)


def check_nifti_header(header, path: str) -> list[str]:
    """Refuse a NIfTI header whose voxel size or placement is missing or degenerate, naming the field.

    nibabel quietly replaces a zero ``pixdim`` with 1 mm, which makes every volume in mL wrong.
    """
    qcode, scode = int(header["qform_code"]), int(header["sform_code"])
    pixdim = np.asarray(header["pixdim"], dtype=np.float64)
    warnings = []
    if scode > 0:
        srows = np.stack([np.asarray(header[f"srow_{a}"], dtype=np.float64) for a in "xyz"])
        if not np.isfinite(srows).all():
            raise InputError(f"{path}: the sform (srow_x/srow_y/srow_z) holds NaN or infinite values")
        norms = np.sqrt((srows[:, :3] ** 2).sum(axis=0))
        for axis, n in enumerate(norms):
            if n < 1e-6:
                raise InputError(f"{path}: the sform (srow_x/srow_y/srow_z) gives voxel axis {axis} a size of "
                                 f"{n:g} mm; cannot measure the volume")
        if abs(np.linalg.det(srows[:, :3])) < 1e-9:
            raise InputError(f"{path}: the sform (srow_x/srow_y/srow_z) is degenerate (its axes are parallel)")
    else:
        # The qform and the no-transform fallback both take the voxel size from pixdim[1..3].
        for k in (1, 2, 3):
            if not np.isfinite(pixdim[k]) or pixdim[k] <= 0:
                raise InputError(f"{path}: voxel size pixdim[{k}] = {pixdim[k]:g} in the NIfTI header "
                                 f"(sform_code = 0, so it sets the spacing); it must be positive")
    if qcode > 0 and scode > 0:
        import nibabel as nib

        hdr = header.copy() if hasattr(header, "copy") else header
        q, s = hdr.get_qform(), hdr.get_sform()
        if q is not None and s is not None and np.abs(q - s).max() > 1e-3 * max(1.0, np.abs(s).max()):
            warnings.append(f"the NIfTI qform and sform disagree ({nib.aff2axcodes(q)} vs {nib.aff2axcodes(s)}, "
                            f"max difference {np.abs(q - s).max():.3g} mm); used the sform, as nibabel does; "
                            f"other viewers may place the image differently")
    if qcode == 0 and scode == 0:
        warnings.append("the NIfTI header states no orientation (qform_code = sform_code = 0); assumed the "
                        "NIfTI default (pixdim spacing, x to the left), so left and right may be swapped")
    return warnings


# ----------------------------------------------------------------------------------------- DICOM

_GEOMETRY_TAGS = ["SeriesInstanceUID", "ImageOrientationPatient", "ImagePositionPatient", "PixelSpacing",
                  "Rows", "Columns", "SOPClassUID", "SOPInstanceUID", "NumberOfFrames"]


@dataclass
class SliceHeader:
    path: str
    series_uid: str
    iop: np.ndarray | None
    ipp: np.ndarray | None
    spacing: np.ndarray | None
    rows: int | None
    cols: int | None


def _floats(value, n: int) -> np.ndarray | None:
    try:
        arr = np.asarray([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError):
        return None
    return arr if arr.shape == (n,) and np.isfinite(arr).all() else None


def read_slice_header(path: str | os.PathLike, ds=None) -> SliceHeader:
    """The geometry tags of one DICOM instance (no pixel data is read)."""
    import pydicom

    if ds is None:
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=_GEOMETRY_TAGS)
        except Exception as exc:
            raise InputError(f"{path}: unreadable DICOM header ({type(exc).__name__}: {exc})") from exc

    def get(name):
        return getattr(ds, name, None)

    rows, cols = get("Rows"), get("Columns")
    return SliceHeader(str(path), str(get("SeriesInstanceUID") or "").strip(),
                       _floats(get("ImageOrientationPatient") or (), 6), _floats(get("ImagePositionPatient") or (), 3),
                       _floats(get("PixelSpacing") or (), 2), int(rows) if rows not in (None, "") else None,
                       int(cols) if cols not in (None, "") else None)


def geometry_key(h: SliceHeader) -> str:
    """Files without a SeriesInstanceUID are grouped by folder plus this: orientation, pixel size, matrix."""
    iop = "none" if h.iop is None else ",".join(f"{v:.4f}" for v in h.iop)
    ps = "none" if h.spacing is None else ",".join(f"{v:.4f}" for v in h.spacing)
    return f"{os.path.dirname(os.path.abspath(h.path))}|{iop}|{ps}|{h.rows}x{h.cols}"


def no_uid_key(h: SliceHeader) -> str:
    """A stable stand-in for the missing SeriesInstanceUID of a folder-plus-geometry group."""
    return "no-uid-" + hashlib.sha1(geometry_key(h).encode()).hexdigest()[:10]


NO_UID_WARNING = ("the DICOM files have no SeriesInstanceUID (0020,000E); {n} files were taken as one series "
                  "because they share a folder and geometry")


def check_dicom_geometry(headers: list[SliceHeader], label: str) -> list[str]:
    """Refuse a series whose slices cannot be placed on one regular grid; return its files sorted by position.

    ITK would otherwise place unevenly spaced slices on an invented uniform grid (with only a
    console warning), and accept slices that disagree in orientation.
    """
    def name(h: SliceHeader) -> str:
        return os.path.basename(h.path)

    for tag, attr in (("ImageOrientationPatient (0020,0037)", "iop"), ("ImagePositionPatient (0020,0032)", "ipp"),
                      ("PixelSpacing (0028,0030)", "spacing")):
        missing = [h for h in headers if getattr(h, attr) is None]
        if missing:
            raise InputError(f"{label}: {len(missing)} of {len(headers)} slices lack a usable {tag} "
                             f"(e.g. {name(missing[0])}); cannot place them in space")
    ref = headers[0]
    for h in headers[1:]:
        if np.abs(h.iop - ref.iop).max() > 1e-4:
            raise InputError(f"{label}: slices disagree in ImageOrientationPatient (0020,0037): "
                             f"{np.round(ref.iop, 4).tolist()} in {name(ref)} vs {np.round(h.iop, 4).tolist()} in "
                             f"{name(h)}; one series must have one orientation")
        if np.abs(h.spacing - ref.spacing).max() > 1e-4:
            raise InputError(f"{label}: slices disagree in PixelSpacing (0028,0030): {ref.spacing.tolist()} in "
                             f"{name(ref)} vs {h.spacing.tolist()} in {name(h)}")
        if (h.rows, h.cols) != (ref.rows, ref.cols):
            raise InputError(f"{label}: slices differ in size: {ref.rows}x{ref.cols} in {name(ref)} vs "
                             f"{h.rows}x{h.cols} in {name(h)}")
    if (ref.spacing <= 0).any():
        raise InputError(f"{label}: PixelSpacing (0028,0030) is {ref.spacing.tolist()} in {name(ref)}; "
                         f"it must be positive")
    row_dir, col_dir = ref.iop[:3], ref.iop[3:]
    normal = np.cross(row_dir, col_dir)
    if abs(np.linalg.norm(normal) - 1) > 1e-3 or abs(float(row_dir @ col_dir)) > 1e-3:
        raise InputError(f"{label}: ImageOrientationPatient (0020,0037) {np.round(ref.iop, 4).tolist()} is not two "
                         f"perpendicular unit vectors")
    if len(headers) < 2:
        return []
    order = sorted(range(len(headers)), key=lambda i: float(headers[i].ipp @ normal))
    pos = np.stack([headers[i].ipp for i in order])
    z = pos @ normal
    gaps = np.diff(z)
    step = float(np.median(gaps))
    if gaps.min() < max(1e-3, 1e-3 * abs(step)):
        k = int(np.argmin(gaps))
        raise InputError(f"{label}: two slices lie at the same position ({z[k]:.3f} mm along the normal: "
                         f"{name(headers[order[k]])} and {name(headers[order[k + 1]])}); duplicate or mixed series")
    tol = max(0.02, 0.01 * step)
    if np.abs(gaps - step).max() > tol:
        k = int(np.argmax(np.abs(gaps - step)))
        hint = " (a missing slice?)" if gaps[k] > step else ""
        raise InputError(f"{label}: slices are not evenly spaced: {gaps[k]:.3f} mm between {z[k]:.3f} and "
                         f"{z[k + 1]:.3f} mm along the normal, {step:.3f} mm elsewhere{hint}; refusing rather than "
                         f"placing them on a grid they do not lie on")
    # Gantry tilt shifts each slice by the same in-plane step; anything else has no single grid either.
    expected = pos[0] + np.arange(len(pos))[:, None] * (pos[-1] - pos[0]) / (len(pos) - 1)
    drift = float(np.abs(pos - expected).max())
    if drift > max(0.05, 0.02 * step):
        raise InputError(f"{label}: slice positions do not lie on a straight line (off by up to {drift:.3f} mm); "
                         f"no single grid holds them")
    return [headers[i].path for i in order]


def check_dicom_files(files: list[str], label: str) -> tuple[list[str], list[str]]:
    """Geometry checks of one series' files → (files sorted by position, warnings)."""
    headers = [read_slice_header(f) for f in files]
    ordered = check_dicom_geometry(headers, label)
    warnings = []
    if not all(h.series_uid for h in headers):
        warnings.append(NO_UID_WARNING.format(n=len(headers)))
    return ordered or list(files), warnings


def check_spacing(affine: np.ndarray, path: str) -> None:
    """Refuse a voxel grid with a zero, negative-definite or non-finite voxel size."""
    if not np.isfinite(affine).all():
        raise InputError(f"{path}: the image's geometry holds NaN or infinite values")
    sizes = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    if (sizes < 1e-6).any() or abs(np.linalg.det(affine[:3, :3])) < 1e-9:
        raise InputError(f"{path}: degenerate voxel size {np.round(sizes, 6).tolist()} mm; cannot place the image "
                         f"in space or measure volumes")


# ---------------------------------------------------------------------------------- outputs

def probe_writable(folder: Path) -> None:
    """Create and remove one temp file in ``folder``: permission bits do not show a read-only or
    pseudo file system (/proc), or one with no free inodes."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=".priorsam-probe.", dir=folder)
    except OSError as exc:
        raise InputError(f"output folder is not writable: {folder} ({exc.strerror or exc})") from exc
    os.close(fd)
    os.unlink(tmp)


def show_warnings(warnings: list[str], prefix: str = "", file=None) -> None:
    """Print each warning as one ``warning: …`` line on stderr."""
    out = file or sys.stderr
    for w in warnings:
        print(f"warning: {prefix}{w}", file=out, flush=True)


__all__ = ["check_ct_values", "check_nifti_header", "check_dicom_geometry", "check_dicom_files",
           "check_spacing", "probe_writable", "show_warnings", "read_slice_header",
           "no_uid_key", "geometry_key", "SliceHeader", "NO_UID_WARNING", "FORCE_HINT"]
