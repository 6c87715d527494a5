"""Box-prompted organ segmentation with the real pretrained LiteMedSAM, through the real command line.

Uses 4 slices of the sample CT around the liver's widest extent. The sample labels are
TotalSegmentator's output, not manual ground truth.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from priorsam.errors import AssetError
from priorsam.labels import labels

LIVER = {lab.name: lab.id for lab in labels()}["liver"]


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float((a & b).sum()) / float(a.sum() + b.sum())


def lps_crop(sample, z0: int, z1: int, folder: Path) -> tuple[Path, np.ndarray, np.ndarray]:
    """Slices z0..z1-1 of the sample CT stored left-right and front-back flipped (an LPS-ordered file)."""
    img = nib.load(str(sample.image))
    ct = np.asarray(img.dataobj, dtype=np.float32)[::-1, ::-1, z0:z1]
    lab = np.asarray(nib.load(str(sample.label)).dataobj)[::-1, ::-1, z0:z1]
    flip = np.eye(4)
    flip[0, 0], flip[1, 1] = -1, -1
    flip[:3, 3] = [ct.shape[0] - 1, ct.shape[1] - 1, z0]
    affine = img.affine @ flip
    path = folder / "liver_crop.nii.gz"
    nib.save(nib.Nifti1Image(ct, affine), str(path))
    return path, lab, affine


def liver_crop_with_box(tmp_path: Path) -> tuple[Path, np.ndarray, np.ndarray, np.ndarray]:
    """4 LPS-stored slices of the sample CT around the liver's widest extent: (file, liver mask, affine,
    the liver's box in stored voxel indices x0, y0, z0, x1, y1, z1)."""
    from priorsam.data.samples import sample_ct

    try:
        sample = sample_ct()
    except AssetError as exc:
        pytest.skip(f"sample CT not cached and not downloadable here: {exc}")
    full = np.asarray(nib.load(str(sample.label)).dataobj)
    widest = int(np.argmax((full == LIVER).sum((0, 1))))
    z0 = min(widest - 2, full.shape[2] - 4)
    image, lab, affine = lps_crop(sample, z0, z0 + 4, tmp_path)
    assert nib.aff2axcodes(affine) == ("L", "P", "S")
    truth = lab == LIVER
    idx = np.argwhere(truth)
    return image, truth, affine, np.r_[idx.min(0), idx.max(0)]


def run_segment_box(image: Path, box: np.ndarray, out: Path, *options: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "priorsam", "segment-box", str(image),
                           ",".join(str(int(v)) for v in box), str(out), "--device", "cpu", *options],
                          capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=600)
    assert proc.returncode == 0, proc.stderr
    return proc


@pytest.mark.slow
def test_segment_box_liver_with_pretrained_litemedsam(tmp_path):
    image, truth, affine, box = liver_crop_with_box(tmp_path)
    out = tmp_path / "out" / "liver.nii.gz"
    proc = run_segment_box(image, box, out, "--label", "liver", "--method", "propagate")
    assert "error" not in proc.stderr.lower()

    written = nib.load(str(out))
    assert written.shape == truth.shape
    np.testing.assert_allclose(written.affine, affine, atol=1e-5)
    seg = np.asarray(written.dataobj)
    assert seg.dtype == np.uint8 and set(np.unique(seg)) <= {0, LIVER}
    d = dice(seg == LIVER, truth)
    assert d > 0.7, f"liver Dice {d:.3f} on 4 sample slices"
    for z in range(truth.shape[2]):  # every slice of the box was reached by propagation
        assert (seg[:, :, z] == LIVER).any(), f"slice {z} empty"
    # fire prints the returned summary as "key: value" lines
    report = dict(ln.split(":", 1) for ln in proc.stdout.strip().splitlines() if ":" in ln)
    assert int(report["value"]) == LIVER and int(report["voxels"]) == int((seg == LIVER).sum())
    assert Path(report["output"].strip()) == out
    assert report["method"].strip() == "propagate"


@pytest.mark.slow
def test_segment_box_answers_an_organ_box_with_the_automatic_engines_organ(tmp_path):
    """The default for one of the eight organs: the engine's liver inside the box, written on the input's grid."""
    image, truth, affine, box = liver_crop_with_box(tmp_path)
    out = tmp_path / "out" / "liver.nii.gz"
    proc = run_segment_box(image, box, out, "--label", "auto")
    report = dict(ln.split(":", 1) for ln in proc.stdout.strip().splitlines() if ":" in ln)
    assert report["method"].strip() == "organs" and float(report["organ_box_iou"]) >= 0.5
    assert f"PRIORSAM_LABEL liver {LIVER}" in proc.stdout.splitlines()
    written = nib.load(str(out))
    np.testing.assert_allclose(written.affine, affine, atol=1e-5)
    seg = np.asarray(written.dataobj)
    assert set(np.unique(seg)) <= {0, LIVER}
    inside = np.zeros_like(truth)
    inside[box[0]:box[3] + 1, box[1]:box[4] + 1] = True
    assert not (seg[~inside] > 0).any(), "voxels outside the box"
    d = dice(seg == LIVER, truth)
    assert d > 0.85, f"liver Dice {d:.3f} on 4 sample slices"


class CountingEncoder:
    """The real encoder runtime, recording the batch size of every call."""

    def __init__(self, encoder):
        self.encoder, self.batch_sizes = encoder, []

    def __call__(self, images):
        self.batch_sizes.append(len(images))
        return self.encoder(images)


@pytest.mark.slow
def test_propagation_embeds_slices_ahead_in_batches_with_the_same_masks():
    """Prefetching embeddings changes how often the encoder is called, never a mask."""
    from priorsam.data.samples import sample_ct
    from priorsam.engine.box_segment import LiteMedSAMBoxPredictor, propagate_box
    from priorsam.engine.boxes import box_to_display
    from priorsam.io import display_spacing, read_label_map, read_volume

    try:
        sample = sample_ct()
    except AssetError as exc:
        pytest.skip(f"sample CT not cached and not downloadable here: {exc}")
    vol = read_volume(sample.image)
    lab = read_label_map(sample.label).array
    widest = int(np.argmax((lab == LIVER).sum((0, 1))))
    idx = np.argwhere(lab[:, :, widest - 3:widest + 4] == LIVER) + [0, 0, widest - 3]
    dbox = box_to_display(vol, np.r_[idx.min(0), idx.max(0)].astype(float), "voxel")  # 7 slices
    row_mm, col_mm = display_spacing(vol)
    masks, calls = {}, {}
    for prefetch in (1, 4):
        pred = LiteMedSAMBoxPredictor(vol.axial_slices(), "cpu", row_mm=row_mm, col_mm=col_mm)
        pred.encoder = CountingEncoder(pred.encoder)
        masks[prefetch] = propagate_box(pred, dbox, (5.0, 5.0), show_bar=False, prefetch=prefetch)
        calls[prefetch] = pred.encoder.batch_sizes
    assert masks[1].any(axis=(1, 2)).sum() == 7
    np.testing.assert_array_equal(masks[4], masks[1])
    assert calls[1] == [1] * 7
    # the middle slice and 3 above it, then the 3 below it in one call
    assert calls[4] == [4, 3]
