"""Volume I/O: every format reads into canonical RAS and label maps go back on exactly the input's grid."""
from __future__ import annotations

import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.uid import JPEG2000Lossless, JPEGLSLossless

from priorsam.io import from_display, read_label_map, read_volume, to_display, write_label_map
from priorsam.io.volume import display_spacing, to_source_grid

sys.path.insert(0, str(Path(__file__).parent))
from conftest import save_nifti, synthetic_ct_array  # noqa: E402
from synthetic_dicom import expected_ras_affine, phantom, rotation, write_series  # noqa: E402

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def label_of(hu: np.ndarray) -> np.ndarray:
    """A label map that is a pure function of HU, so it can be predicted on any grid (0..8)."""
    return np.clip((np.asarray(hu, dtype=np.float64) + 1000) // 300, 0, 8).astype(np.uint8)


def random_ct(shape, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(-1000, 1500, size=shape).astype(np.float32)


def oblique_affine(spacing=(0.8, 0.9, 2.5), z_deg=20.0, tilt_deg=12.0, origin=(-40.0, 25.0, -310.0),
                   flips=(1, 1, 1), perm=(0, 1, 2)) -> np.ndarray:
    """RAS affine rotated in-plane by ``z_deg``, tilted by ``tilt_deg``, with optional axis flips/permutation."""
    cols = rotation(z_deg, tilt_deg)[:, list(perm)] * np.asarray(flips, dtype=float) * np.asarray(spacing)
    aff = np.eye(4)
    aff[:3, :3] = cols
    aff[:3, 3] = origin
    return aff


NIFTI_CASES = {
    "ras": np.diag([0.8, 0.9, 2.5, 1.0]),
    "lps": np.diag([-0.8, -0.9, 2.5, 1.0]),
    "oblique": oblique_affine(),
    "oblique_permuted_flipped": oblique_affine(perm=(1, 0, 2), flips=(-1, 1, -1)),
}


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
@pytest.mark.parametrize("case", list(NIFTI_CASES))
def test_nifti_roundtrip(tmp_path, case, suffix):
    affine = NIFTI_CASES[case]
    ct = random_ct((14, 11, 5))
    src = tmp_path / f"ct{suffix}"
    nib.save(nib.Nifti1Image(ct, affine), str(src))

    vol = read_volume(src)
    # Canonical RAS: the nearest array axes point R, A, S; geometry is kept exactly (no resampling).
    assert nib.aff2axcodes(vol.affine) == ("R", "A", "S")
    np.testing.assert_allclose(vol.source.affine, affine, atol=1e-5)
    np.testing.assert_array_equal(to_source_grid(vol, vol.array), ct)

    out = write_label_map(vol, label_of(vol.array), tmp_path / f"labels{suffix}")
    written = nib.load(str(out))
    assert written.shape == ct.shape
    assert written.get_data_dtype() == np.uint8
    np.testing.assert_allclose(written.affine, affine, atol=1e-5)
    np.testing.assert_allclose(written.get_qform(), affine, atol=1e-5)
    np.testing.assert_allclose(written.get_sform(), affine, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(written.dataobj), label_of(ct))

    back = read_label_map(out)
    np.testing.assert_array_equal(back.array, label_of(vol.array))
    np.testing.assert_allclose(back.affine, vol.affine, atol=1e-5)
    assert back.source.made_from == vol.fingerprint() and vol.source.made_from is None
    assert not [p.name for p in tmp_path.iterdir() if ".part" in p.name]


def test_label_map_gets_ordinary_file_mode_and_new_folders(tmp_path):
    """The atomic temp file is private (0600); the final label map must get the mode plain writes get."""
    import os

    src = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(random_ct((6, 5, 3)), np.eye(4)), str(src))
    vol = read_volume(src)
    umask = os.umask(0o022)
    try:
        out = write_label_map(vol, label_of(vol.array), tmp_path / "a" / "b" / "labels.nii.gz")
    finally:
        os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o644
    assert sorted(p.name for p in out.parent.iterdir()) == ["labels.nii.gz"]


def test_check_writable_creates_nothing(tmp_path):
    from priorsam.errors import InputError
    from priorsam.io import check_writable

    check_writable(tmp_path / "new" / "deeper" / "labels.nrrd")
    assert not (tmp_path / "new").exists()
    for bad, msg in ((tmp_path / "labels.png", "unsupported"), (tmp_path / "labels.nhdr", "unsupported"),
                     (tmp_path, "is a folder")):
        with pytest.raises(InputError, match=msg):
            check_writable(bad)


def test_to_display_is_exact_inverse():
    a = np.random.default_rng(1).integers(0, 255, size=(7, 5, 3)).astype(np.int16)
    d = to_display(a)
    assert d.shape == (3, 5, 7)  # (Z, H=Y, W=X)
    np.testing.assert_array_equal(from_display(d), a)
    np.testing.assert_array_equal(to_display(from_display(d)), d)


@pytest.mark.parametrize("affine", [np.diag([2.0, 3.0, 4.0, 1.0]), np.diag([-2.0, -3.0, 4.0, 1.0])],
                         ids=["stored_ras", "stored_lps"])
def test_display_orientation_anterior_top_patient_right_left(tmp_path, affine):
    """A marker placed at the patient's right-anterior corner in world space must show top-left."""
    shape = (20, 16, 3)
    ct = np.full(shape, -1000.0, dtype=np.float32)
    inv = np.linalg.inv(affine)
    centre = affine @ np.r_[(np.array(shape) - 1) / 2, 1]
    # world points: +x is patient Right, +y is Anterior (RAS); stay inside the volume
    right_anterior = centre[:3] + np.array([15.0, 18.0, 0.0])
    left_posterior = centre[:3] + np.array([-15.0, -18.0, 0.0])
    for world, value in ((right_anterior, 1000.0), (left_posterior, 500.0)):
        i, j, k = np.round(inv @ np.r_[world, 1])[:3].astype(int)
        ct[i, j, :] = value
    path = tmp_path / "asym.nii.gz"
    nib.save(nib.Nifti1Image(ct, affine), str(path))
    vol = read_volume(path)
    disp = vol.axial_slices()
    h, w = disp.shape[1:]
    r, c = np.argwhere(disp[1] == 1000.0)[0]
    assert r < h / 2 and c < w / 2, "right-anterior marker must be at the top-left of the display"
    r, c = np.argwhere(disp[1] == 500.0)[0]
    assert r > h / 2 and c > w / 2, "left-posterior marker must be at the bottom-right of the display"
    assert display_spacing(vol) == (3.0, 2.0)  # (row mm, column mm) = (A-P, R-L) spacing
    np.testing.assert_array_equal(vol.label_from_display(disp), vol.array)


def test_nrrd_roundtrip_oblique(tmp_path):
    import itk

    ct = random_ct((13, 10, 4), seed=3)
    ras = oblique_affine(spacing=(0.7, 0.8, 3.0), flips=(1, -1, 1))
    lps = LPS_TO_RAS @ ras
    spacing = np.sqrt((lps[:3, :3] ** 2).sum(0))
    image = itk.image_from_array(np.ascontiguousarray(ct.transpose(2, 1, 0)))
    image.SetSpacing(spacing.tolist())
    image.SetOrigin(lps[:3, 3].tolist())
    image.SetDirection(itk.matrix_from_array(lps[:3, :3] / spacing))
    src = tmp_path / "ct.nrrd"
    itk.imwrite(image, str(src))

    vol = read_volume(src)
    np.testing.assert_allclose(vol.source.affine, ras, atol=1e-5)
    np.testing.assert_array_equal(to_source_grid(vol, vol.array), ct)

    out = write_label_map(vol, label_of(vol.array), tmp_path / "labels.seg.nrrd")
    written = itk.imread(str(out))
    np.testing.assert_array_equal(itk.array_from_image(written).transpose(2, 1, 0), label_of(ct))
    np.testing.assert_allclose(np.asarray(written.GetSpacing()), spacing, atol=1e-5)
    np.testing.assert_allclose(np.asarray(written.GetOrigin()), lps[:3, 3], atol=1e-5)
    np.testing.assert_allclose(itk.array_from_matrix(written.GetDirection()), lps[:3, :3] / spacing, atol=1e-5)
    back = read_label_map(out)
    np.testing.assert_array_equal(back.array, label_of(vol.array))
    np.testing.assert_allclose(back.affine, vol.affine, atol=1e-5)
    assert back.source.made_from == vol.fingerprint()     # which image the label map was made for


def check_affine_against_tags(vol) -> None:
    """The reader's affine must agree with pydicom's view of every instance's geometry tags."""
    aff = vol.source.affine
    for k, f in enumerate(vol.source.dicom_files):
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        ipp = LPS_TO_RAS[:3, :3] @ np.asarray(ds.ImagePositionPatient, dtype=float)
        iop = np.asarray(ds.ImageOrientationPatient, dtype=float)
        row_mm, col_mm = (float(v) for v in ds.PixelSpacing)
        np.testing.assert_allclose((aff @ [0, 0, k, 1])[:3], ipp, atol=1e-4)
        np.testing.assert_allclose(aff[:3, 0], LPS_TO_RAS[:3, :3] @ iop[:3] * col_mm, atol=1e-5)
        np.testing.assert_allclose(aff[:3, 1], LPS_TO_RAS[:3, :3] @ iop[3:] * row_mm, atol=1e-5)


DICOM_CASES = {
    "uncompressed_lps": (None, None),
    "jpegls_oblique": (JPEGLSLossless, rotation(20, 10)),
    "jpeg2000_oblique": (JPEG2000Lossless, rotation(-20, 15)),
}


@pytest.mark.parametrize("case", list(DICOM_CASES))
def test_dicom_series_roundtrip(tmp_path, case):
    syntax, rot = DICOM_CASES[case]
    hu = phantom(z=4, rows=40, cols=36)
    kwargs = {} if syntax is None else {"transfer_syntax": syntax}
    geom = write_series(tmp_path / "series", hu, rot_lps=rot, **kwargs)
    if syntax is not None:
        assert pydicom.dcmread(next((tmp_path / "series").iterdir())).file_meta.TransferSyntaxUID == syntax

    vol = read_volume(tmp_path / "series")
    assert vol.source.format == "dicom" and vol.source.series_uid == geom["series_uid"]
    np.testing.assert_allclose(vol.source.affine, expected_ras_affine(geom), atol=1e-5)
    check_affine_against_tags(vol)
    stored_hu = hu.transpose(2, 1, 0).astype(np.float32)  # (column, row, slice) = ITK's stored order
    np.testing.assert_array_equal(to_source_grid(vol, vol.array), stored_hu)
    if rot is None:
        # Axial LPS storage: canonical RAS flips columns and rows, keeps slices.
        np.testing.assert_array_equal(vol.array, stored_hu[::-1, ::-1, :])

    for name in ("labels.nii.gz", "labels.nrrd"):
        out = write_label_map(vol, label_of(vol.array), tmp_path / name)
        back = read_label_map(out)
        np.testing.assert_array_equal(back.array, label_of(vol.array))
        np.testing.assert_allclose(back.source.affine, expected_ras_affine(geom), atol=1e-5)
        np.testing.assert_array_equal(to_source_grid(back, back.array), label_of(stored_hu))


@pytest.fixture(scope="module")
def sample():
    from priorsam.data.samples import sample_ct
    from priorsam.errors import AssetError

    try:
        return sample_ct()
    except AssetError as exc:
        pytest.skip(f"sample CT not cached and not downloadable here: {exc}")


def test_sample_dicom_jpeg2000_decodes_like_pydicom(sample):
    """ITK/GDCM's decode of the real JPEG 2000 series equals pydicom's (pylibjpeg-openjpeg) decode."""
    vol = read_volume(sample.dicom_dir)
    files = vol.source.dicom_files
    assert pydicom.dcmread(files[0], stop_before_pixels=True).file_meta.TransferSyntaxUID == JPEG2000Lossless
    stored = to_source_grid(vol, vol.array)
    assert stored.shape[2] == len(files) == len(list(sample.dicom_dir.iterdir()))
    for k, f in enumerate(files):
        ds = pydicom.dcmread(f)
        hu = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        np.testing.assert_array_equal(stored[:, :, k], hu.T.astype(np.float32))
    check_affine_against_tags(vol)
    positions = [float(pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient[2]) for f in files]
    assert np.all(np.diff(positions) > 0) or np.all(np.diff(positions) < 0), "slices must be sorted by position"


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd"])
def test_a_label_map_priorsam_wrote_is_known_by_its_header_and_never_segmented(tmp_path, suffix):
    # A second run into the folder that holds the CT found the first run's result as an image; the "not CT"
    # check refused it only after reading it all, in words that did not say what it was, and --force
    # would have segmented it.
    import itk

    from priorsam.errors import InputError
    from priorsam.io.readers import label_map_made_by_priorsam

    src = tmp_path / "ct.nii.gz"
    save_nifti(src, synthetic_ct_array((16, 16, 4)))
    vol = read_volume(src)
    out = write_label_map(vol, (vol.array > 0).astype(np.uint8), tmp_path / f"ct_seg{suffix}")
    assert label_map_made_by_priorsam(out)
    assert not label_map_made_by_priorsam(src)
    other = tmp_path / f"manual{suffix}"           # a label map someone else wrote is an ordinary file
    if suffix == ".nrrd":
        itk.imwrite(itk.image_from_array(np.zeros((4, 16, 16), np.uint8)), str(other))
    else:
        nib.save(nib.Nifti1Image(np.zeros((16, 16, 4), np.uint8), np.eye(4)), str(other))
    assert not label_map_made_by_priorsam(other)
    broken = tmp_path / f"broken{suffix}"
    broken.write_bytes(b"\x1f\x8b not really")
    assert not label_map_made_by_priorsam(broken)
    for force in (False, True):
        with pytest.raises(InputError, match="a label map PriorSAM wrote") as err:
            read_volume(out, force=force)
        assert "\n" not in str(err.value)
    assert read_label_map(out).source.made_from == vol.fingerprint()   # as a label map it reads as before
