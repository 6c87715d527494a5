"""The adversarial input corpus of docs/reliability.md, generated on the fly (test helper, no tests here).

Every builder writes one small input into ``folder`` and returns its path. They start from the
same tiny synthetic CT as the rest of the suite, so each differs from a good input in exactly the
one property under test.

``FakeSegmenter`` replaces only the model: weights loading and the forward pass. It labels every
voxel above -500 HU as liver, deterministically, so the fault tests can compare outputs across
killed and clean runs. Everything around it (reading, checks, writing, reports, locking) is real.
"""
from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
from pydicom.uid import generate_uid

sys.path.insert(0, str(Path(__file__).parent))
from conftest import save_nifti, synthetic_ct_array  # noqa: E402
from synthetic_dicom import phantom, rotation, write_series  # noqa: E402

SHAPE = (48, 40, 5)


def good_ct() -> np.ndarray:
    return synthetic_ct_array(SHAPE)


def _raw_nifti(path: Path, array: np.ndarray, pixdim=(2.0, 2.0, 3.0), qform_code: int = 0, sform_code: int = 0,
               srows: np.ndarray | None = None) -> Path:
    """A NIfTI whose header fields are exactly as given: the bytes are patched after saving, because
    nibabel itself replaces a zero pixdim and fills qform/sform from an affine."""
    import gzip
    import struct

    nib.save(nib.Nifti1Image(array, np.diag([2.0, 2.0, 3.0, 1.0])), str(path))
    raw = bytearray(gzip.decompress(path.read_bytes()))
    struct.pack_into("<3f", raw, 80, *pixdim)                  # pixdim[1..3]
    struct.pack_into("<2h", raw, 252, qform_code, sform_code)
    if srows is not None:
        struct.pack_into("<12f", raw, 280, *np.asarray(srows, dtype=np.float32).ravel())
    path.write_bytes(gzip.compress(bytes(raw)))
    return path


def _edit_series(folder: Path, edit) -> None:
    for f in sorted(folder.glob("*.dcm")):
        ds = pydicom.dcmread(f)
        edit(ds, f)
        ds.save_as(f)


def _sorted_by_z(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.dcm"), key=lambda f: float(pydicom.dcmread(f).ImagePositionPatient[2]))


# ------------------------------------------------------------------ builders: name -> path

def not_ct_mr_like(folder: Path) -> Path:
    """MR-like: 0–1000, no negative values (a 55 000-voxel 'aorta' before the checks)."""
    return save_nifti(folder / "mr.nii.gz", np.clip((good_ct() + 1000) * 0.9, 0, 1000).astype(np.float32))


def not_ct_uint8(folder: Path) -> Path:
    """HU + 1024 clipped to 0–255 and stored as uint8."""
    return save_nifti(folder / "ct_uint8.nii.gz", np.clip(good_ct() + 1024, 0, 255).astype(np.uint8))


def not_ct_mask(folder: Path) -> Path:
    """A 0/1 mask passed as the image."""
    return save_nifti(folder / "mask.nii.gz", (good_ct() > 0).astype(np.uint8))


def not_ct_zscored(folder: Path) -> Path:
    """CT normalised to zero mean and unit variance (has negatives, but no air near -1000)."""
    hu = good_ct()
    return save_nifti(folder / "zscored.nii.gz", ((hu - hu.mean()) / hu.std()).astype(np.float32))


def not_ct_out_of_range(folder: Path) -> Path:
    """Values no CT can hold (HU scaled by 1000)."""
    return save_nifti(folder / "scaled.nii.gz", good_ct() * 1000.0)


def nifti_zero_pixdim(folder: Path) -> Path:
    """pixdim[3] = 0 and no qform/sform: nibabel silently uses 1 mm."""
    return _raw_nifti(folder / "zero_pixdim.nii.gz", good_ct(), pixdim=(2.0, 2.0, 0.0))


def nifti_negative_pixdim(folder: Path) -> Path:
    return _raw_nifti(folder / "negative_pixdim.nii.gz", good_ct(), pixdim=(2.0, 2.0, -3.0))


def nifti_degenerate_sform(folder: Path) -> Path:
    """sform_code 1 with a zero third column: the z voxel size is 0."""
    srows = np.array([[2.0, 0, 0, 0], [0, 2.0, 0, 0], [0, 0, 0.0, 0]])
    return _raw_nifti(folder / "flat_sform.nii.gz", good_ct(), sform_code=1, srows=srows)


def nifti_no_orientation(folder: Path) -> Path:
    """Valid pixdim but qform_code = sform_code = 0: the orientation is not stated (a warning)."""
    return _raw_nifti(folder / "no_orientation.nii.gz", good_ct(), pixdim=(2.0, 2.0, 3.0))


def nifti_qform_sform_disagree(folder: Path) -> Path:
    """qform says RAS, sform says LPS (a warning: viewers differ in which they use)."""
    img = nib.Nifti1Image(good_ct(), np.diag([2.0, 2.0, 3.0, 1.0]))
    img.set_qform(np.diag([2.0, 2.0, 3.0, 1.0]), 1)
    img.set_sform(np.diag([-2.0, -2.0, 3.0, 1.0]), 2)
    path = folder / "qform_vs_sform.nii.gz"
    nib.save(img, str(path))
    return path


def dicom_good(folder: Path, name: str = "series", z: int = 5) -> Path:
    write_series(folder / name, phantom(z=z, rows=24, cols=20), slice_mm=2.0, origin_lps=(-30.0, -20.0, -786.5))
    return folder / name


def dicom_missing_slice(folder: Path) -> Path:
    """Slices at z = -786.5, -784.5, -780.5, -778.5 (one missing): ITK would invent a uniform grid."""
    series = dicom_good(folder, "missing_slice")
    _sorted_by_z(series)[2].unlink()
    return series


def dicom_mixed_orientation(folder: Path) -> Path:
    """One slice's ImageOrientationPatient rotated by 5 degrees."""
    series = dicom_good(folder, "mixed_iop")
    victim = _sorted_by_z(series)[1]
    ds = pydicom.dcmread(victim)
    rot = rotation(z_deg=5.0)
    ds.ImageOrientationPatient = [f"{v:.8f}" for v in np.r_[rot[:, 0], rot[:, 1]]]
    ds.save_as(victim)
    return series


def dicom_duplicate_position(folder: Path) -> Path:
    """Two instances at the same position (e.g. two reconstructions mixed under one UID)."""
    series = dicom_good(folder, "duplicate")
    src = _sorted_by_z(series)[2]
    ds = pydicom.dcmread(src)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.save_as(series / "zz_copy.dcm")
    return series


def dicom_no_position(folder: Path) -> Path:
    series = dicom_good(folder, "no_ipp")
    victim = _sorted_by_z(series)[1]
    ds = pydicom.dcmread(victim)
    del ds.ImagePositionPatient
    ds.save_as(victim)
    return series


def dicom_zero_pixel_spacing(folder: Path) -> Path:
    series = dicom_good(folder, "zero_spacing")
    _edit_series(series, lambda ds, f: setattr(ds, "PixelSpacing", ["0", "0.7"]))
    return series


def dicom_no_series_uid(folder: Path) -> Path:
    """SeriesInstanceUID emptied, as anonymisers sometimes leave it (read, with a warning)."""
    series = dicom_good(folder, "no_uid")
    _edit_series(series, lambda ds, f: setattr(ds, "SeriesInstanceUID", ""))
    return series


def dicom_empty_sop_class(folder: Path) -> Path:
    """SOPClassUID emptied in the dataset and its file meta: the image reads, but a DICOM SEG cannot
    reference it."""
    series = dicom_good(folder, "empty_sop_class")

    def blank(ds, f):
        ds.SOPClassUID = ""
        ds.file_meta.MediaStorageSOPClassUID = ""
    _edit_series(series, blank)
    return series


def dicom_uids_only_in_file_meta(folder: Path) -> Path:
    """SOP Class/Instance UID blanked in the dataset but kept in the file meta (as in the sample CT's
    DICOM): a SEG can still reference every instance."""
    series = dicom_good(folder, "uids_in_meta")

    def blank(ds, f):
        ds.SOPClassUID, ds.SOPInstanceUID = "", ""
    _edit_series(series, blank)
    return series


def truncated_nifti(folder: Path) -> Path:
    p = save_nifti(folder / "truncated.nii.gz", good_ct())
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    return p


def good_nifti(folder: Path, name: str = "ct.nii.gz", seed: int = 0) -> Path:
    return save_nifti(folder / name, synthetic_ct_array(SHAPE, seed=seed))


# ------------------------------------------------------------------ the model stand-in

class FakeSegmenter:
    """Stands in for :class:`priorsam.engine.segment.Segmenter` (weights + forward pass only)."""

    def __init__(self, *args, delay: float = 0.0, hold: Path | None = None, **kwargs):
        self.delay = delay
        self.hold = hold      # the first model call waits until this file exists (the test's go signal)
        self.calls: list[str] = []
        self.options = None   # the job's SegmentOptions, recorded in each result as the real engine does

    def model_info(self) -> dict:
        return {"weights": None, "prior_version": "v1", "prior_embedding_sha256": "0" * 64, "config": {}}

    def segment(self, volume, progress=None, show_bar: bool = True):
        from dataclasses import asdict

        from priorsam.engine.segment import SegmentationResult, SegmentOptions

        self.calls.append(volume.source.path)
        while self.hold is not None and not self.hold.exists():
            time.sleep(0.05)
        if self.delay:
            time.sleep(self.delay)
        labels = np.where(volume.array > -500, 5, 0).astype(np.uint8)
        options = asdict(self.options or SegmentOptions())
        return SegmentationResult(labels, self.delay, "cpu", options, self.model_info(), int(volume.shape[2]))


def install_fake_model(mp, weights: Path, delay: float = 0.0, hold: Path | None = None) -> FakeSegmenter:
    """Replace the model in the CLI and the batch runner (``mp``: a pytest MonkeyPatch)."""
    from priorsam.batch import runner
    from priorsam.engine import segment as engine

    fake = FakeSegmenter(delay=delay, hold=hold)
    mp.setattr(engine, "Segmenter", lambda *a, **k: fake)
    def get_segmenter(job, device):
        fake.options = job.options
        return fake

    mp.setattr(runner.BatchJob, "_get_segmenter", get_segmenter)
    mp.setattr(runner.BatchJob, "_weights_path", lambda self: weights)
    return fake


def copy_tree(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst
