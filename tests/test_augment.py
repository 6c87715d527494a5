"""Generalisation machinery: augmentations keep labels aligned; HU shifts touch only labelled voxels;
the fixed-scale resampling round trip is exact on label maps through an oblique, anisotropic volume."""
import nibabel as nib
import numpy as np
import torch

from priorsam.data.augment import RandContrastPhased, RandSliceThicknessd, slice_augmentation
from priorsam.data.preprocess import fixed_scale_frame
from priorsam.io import display_spacing, from_display, read_label_map


def test_contrast_shift_changes_only_labelled_voxels_by_configured_amount():
    rng = np.random.default_rng(0)
    img = rng.normal(40, 10, (4, 32, 32)).astype(np.float32)
    lab = np.zeros((4, 32, 32), np.int64)
    lab[1:3, 5:15, 5:15] = 5      # liver
    lab[:, 20:25, 20:25] = 52     # aorta (TotalSegmentator id)
    t = RandContrastPhased(keys=["image"], label_key="lab", groups={"liver": [5], "aorta_arteries": [52]},
                           phases={"pv": {"liver": (45.0, 45.0), "aorta_arteries": (135.0, 135.0)}})
    t.set_random_state(seed=1)
    out = t({"image": img, "lab": lab})
    diff = out["image"] - img
    np.testing.assert_allclose(diff[lab == 5], 45.0, atol=1e-4)
    np.testing.assert_allclose(diff[lab == 52], 135.0, atol=1e-4)
    assert np.all(diff[lab == 0] == 0)
    assert out["contrast_phase"] == "pv"


def test_non_contrast_phase_is_identity():
    img = np.ones((2, 8, 8), np.float32)
    lab = np.ones((2, 8, 8), np.int64)
    t = RandContrastPhased(keys=["image"], label_key="lab", groups={"liver": [1]}, phases={"non_contrast": {}})
    np.testing.assert_array_equal(t({"image": img, "lab": lab})["image"], img)


def test_slice_thickness_keeps_labels_and_mean():
    img = np.zeros((9, 8, 8), np.float32)
    img[4] = 90.0
    t = RandSliceThicknessd(keys=["image"], spacing_mm=1.0, range_mm=(3.0, 3.0))
    t.set_random_state(seed=0)
    d = {"image": img, "label": np.arange(9)}
    out = t(d)
    assert out["label"] is d["label"]
    assert abs(out["image"].sum() - img.sum()) < 1e-3  # partial-volume averaging conserves signal
    assert out["image"][4, 0, 0] < 90.0 and out["image"][3, 0, 0] > 0.0


def test_slice_augmentation_keeps_label_on_image():
    """A bright square labelled 1: after random affine/elastic/noise, label and bright pixels coincide."""
    img = torch.zeros(3, 256, 256)
    img[:, 90:170, 100:160] = 1.0
    lab = (img[:1] > 0.5).float()
    for seed in range(5):
        out = slice_augmentation(seed)({"image": img.clone(), "label": lab.clone()})
        bright = torch.as_tensor(out["image"])[0] > 0.5
        labelled = torch.as_tensor(out["label"])[0] > 0.5
        inter = (bright & labelled).sum().item()
        dice = 2 * inter / (bright.sum().item() + labelled.sum().item())
        assert dice > 0.95, (seed, dice)


def test_fixed_scale_round_trip_exact_oblique_anisotropic(tmp_path):
    theta = np.deg2rad(17.0)
    rot = np.array([[np.cos(theta), -np.sin(theta), 0], [np.sin(theta), np.cos(theta), 0], [0, 0, 1.0]])
    tilt = np.array([[1, 0, 0], [0, np.cos(0.2), -np.sin(0.2)], [0, np.sin(0.2), np.cos(0.2)]])
    affine = np.eye(4)
    affine[:3, :3] = rot @ tilt @ np.diag([-3.2, 2.4, 4.0])  # anisotropic, flipped x, oblique
    affine[:3, 3] = [10.0, -20.0, 5.0]
    rng = np.random.default_rng(3)
    lab = rng.integers(0, 9, size=(40, 52, 6)).astype(np.uint8)
    nib.save(nib.Nifti1Image(lab, affine), str(tmp_path / "lab.nii.gz"))
    vol = read_label_map(tmp_path / "lab.nii.gz")
    disp = vol.axial_slices().astype(np.int64)
    row_mm, col_mm = display_spacing(vol)
    ct = np.where(disp >= 0, 40.0, 0.0).astype(np.float32)
    frame = fixed_scale_frame(ct, row_mm, col_mm, spacing=1.5)  # 1.5 mm < 2.4 and 3.2 mm: upsampling
    back = frame.labels_from_model(frame.labels_to_model(disp)).numpy()
    np.testing.assert_array_equal(back, disp)
    np.testing.assert_array_equal(from_display(back.astype(np.uint8)), vol.array.astype(np.uint8))
