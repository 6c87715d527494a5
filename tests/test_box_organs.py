"""A box answered with the automatic engine's organ (priorsam.engine.box_organs), and how the command line
chooses between that and propagation. Synthetic label maps; no model."""
from __future__ import annotations

import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

from priorsam.cli.segment_box import box_method
from priorsam.engine.box_organs import box_iou_3d, organ_for_box
from priorsam.engine.boxes import box_to_display
from priorsam.errors import InputError
from priorsam.io import read_volume
from priorsam.labels import labels

IDS = {lab.name: lab.id for lab in labels()}


def test_box_iou_counts_voxels_of_inclusive_boxes():
    a = np.array([0, 0, 0, 9, 9, 9])
    assert box_iou_3d(a, a) == 1.0
    assert box_iou_3d(a, np.array([10, 0, 0, 19, 9, 9])) == 0.0
    # the second box's lower half (5 of its 10 slices) lies in the first: 500 / (1000 + 1000 - 500)
    assert box_iou_3d(a, np.array([5, 0, 0, 14, 9, 9])) == pytest.approx(1 / 3)


@pytest.fixture
def lps_volume(tmp_path):
    """A 40 × 30 × 12 CT stored in LPS order (so the stored voxel indices are not the canonical ones) and
    an engine label map on its canonical grid: a liver block, a spleen block and a small bright lesion
    box inside the liver that no organ fits."""
    ct = np.full((40, 30, 12), -1000.0, np.float32)
    ct[2:38, 2:28, :] = 40.0
    affine = np.diag([-0.8, -0.8, 2.5, 1.0])
    path = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(ct, affine), str(path))
    vol = read_volume(str(path))
    engine = np.zeros(vol.shape, np.uint8)        # canonical RAS (X, Y, Z)
    engine[4:20, 5:25, 1:11] = IDS["liver"]
    engine[26:34, 8:18, 3:9] = IDS["spleen"]
    return vol, engine


def stored_box(vol, ras_lo, ras_hi):
    """A canonical index box given as stored voxel indices (the file is LPS: x and y run backwards)."""
    X, Y, _ = vol.shape
    return np.array([X - 1 - ras_hi[0], Y - 1 - ras_hi[1], ras_lo[2], X - 1 - ras_lo[0], Y - 1 - ras_lo[1], ras_hi[2]],
                    float)


def test_a_box_around_an_organ_gets_the_engines_organ_inside_the_box(lps_volume):
    vol, engine = lps_volume
    box = box_to_display(vol, stored_box(vol, (25, 7, 2), (34, 18, 9)), "voxel")  # a little larger than the spleen
    for organ in ("spleen", None):
        mask, match = organ_for_box(engine, box, organ)
        assert match.name == "spleen" and match.label_id == IDS["spleen"]
        assert match.iou == pytest.approx((8 * 10 * 6) / (10 * 12 * 8))
        np.testing.assert_array_equal(mask, engine == IDS["spleen"])
    # the liver's extent does not fit that box, so a box said to hold the liver gets no answer here
    assert organ_for_box(engine, box, "liver") is None


def test_the_users_box_bounds_the_answer(lps_volume):
    vol, engine = lps_volume
    # the liver's extent but two slices short at the top: IoU 8/10, and the top two slices are left out
    box = box_to_display(vol, stored_box(vol, (4, 5, 1), (19, 24, 8)), "voxel")
    mask, match = organ_for_box(engine, box, "liver")
    assert match.iou == pytest.approx(0.8)
    expected = engine == IDS["liver"]
    expected[:, :, 9:] = False
    np.testing.assert_array_equal(mask, expected)


def test_a_loose_box_gets_its_organ_by_default_but_not_by_extent(lps_volume):
    """A box 4 voxels larger on every side than the spleen (IoU 0.19): a named organ answers when half its
    voxels are in the box ("share"), ``auto`` with the organ the box matches best ("best"); "extent" (``auto``'s
    rule until stop 33) leaves it to propagation."""
    vol, engine = lps_volume
    loose = box_to_display(vol, stored_box(vol, (22, 4, 0), (37, 21, 11)), "voxel")
    for organ in ("spleen", None):
        mask, match = organ_for_box(engine, loose, organ)
        assert match.name == "spleen" and match.share == 1.0
        assert match.iou == pytest.approx((8 * 10 * 6) / (16 * 18 * 12))
        np.testing.assert_array_equal(mask, engine == IDS["spleen"])
    assert organ_for_box(engine, loose, None, rule="extent") is None
    assert organ_for_box(engine, loose, "spleen", rule="extent") is None
    assert organ_for_box(engine, loose, None, rule="share")[1].name == "spleen"


def test_best_answers_the_organ_the_box_matches_and_nothing_where_that_organ_does_not_fit(lps_volume):
    """"best": the organ with the highest Ochiai coefficient (inside / sqrt(organ x box)) answers if it fits by
    extent or share. A loose box around the spleen gets the spleen (as "share" does); a box over less than half
    of the liver that also holds the whole spleen is about the liver, which does not fit, so nothing answers —
    where "share" would answer with the spleen."""
    vol, engine = lps_volume
    loose = box_to_display(vol, stored_box(vol, (22, 4, 0), (37, 21, 11)), "voxel")
    assert organ_for_box(engine, loose, None, rule="best")[1].name == "spleen"
    part = box_to_display(vol, stored_box(vol, (13, 5, 1), (33, 24, 10)), "voxel")  # 7 of the liver's 16 columns
    assert organ_for_box(engine, part, None, rule="share")[1].name == "spleen"
    assert organ_for_box(engine, part, None, rule="best") is None
    assert organ_for_box(engine, part, None) is None                          # auto's default
    assert organ_for_box(engine, part, None, rule="extent") is None
    tight = box_to_display(vol, stored_box(vol, (4, 5, 1), (19, 24, 10)), "voxel")
    mask, match = organ_for_box(engine, tight, None, rule="best")
    assert match.name == "liver" and match.iou == 1.0
    np.testing.assert_array_equal(mask, engine == IDS["liver"])


def test_a_box_no_organ_fits_is_left_to_propagation(lps_volume):
    vol, engine = lps_volume
    lesion = box_to_display(vol, stored_box(vol, (8, 10, 4), (12, 14, 6)), "voxel")  # well inside the liver
    assert organ_for_box(engine, lesion, None) is None
    with pytest.raises(ValueError, match="not one of the organs"):
        organ_for_box(engine, lesion, "tumour")


def test_box_method_for_each_label():
    assert box_method("auto", "liver", IDS) == "organs"
    assert box_method("auto", "auto", IDS) == "organs"
    assert box_method("auto", "lesion", IDS) == "propagate"
    assert box_method("propagate", "liver", IDS) == "propagate"
    assert box_method("organs", "auto", IDS) == "organs"
    with pytest.raises(InputError, match="--method organs needs"):
        box_method("organs", "lesion", IDS)
    with pytest.raises(InputError, match="use one of auto, organs, propagate"):
        box_method("nearest", "liver", IDS)


def test_a_bad_method_is_refused_before_the_image_is_read(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "priorsam", "segment-box", str(tmp_path / "missing.nii.gz"),
                           "1,1,1,5,5,5", str(tmp_path / "out.nii.gz"), "--method", "nearest"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert errors == ["error: --method 'nearest': use one of auto, organs, propagate"], proc.stderr


def run_segment_box(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "priorsam", "segment-box", *args], capture_output=True, text=True,
                          timeout=300)


def test_a_saved_organ_map_answers_the_box_without_segmenting_again(lps_volume, tmp_path):
    """``--organs``: the label map ``priorsam segment`` wrote (on the LPS file's grid) or the same map stored in
    RAS order answers as the engine would, and nothing loads a model (the engine here is a made-up map)."""
    from priorsam.io import write_label_map

    vol, engine = lps_volume
    as_written = write_label_map(vol, engine, tmp_path / "organs.nii.gz")
    ras = tmp_path / "organs_ras.nii.gz"
    nib.save(nib.Nifti1Image(engine, vol.affine), str(ras))
    box = ",".join(str(int(v)) for v in stored_box(vol, (25, 7, 2), (34, 18, 9)))
    for organs in (as_written, ras):
        out = tmp_path / f"spleen_{organs.name}"
        proc = run_segment_box(vol.source.path, box, str(out), "--label", "auto", "--organs", str(organs))
        assert proc.returncode == 0, proc.stderr
        # only the map PriorSAM wrote says which image it was made for; the other is read with a warning
        unsure = [ln for ln in proc.stderr.splitlines() if "does not say which image it was made for" in ln]
        assert len(unsure) == (organs == ras), proc.stderr
        assert f"PRIORSAM_LABEL spleen {IDS['spleen']}" in proc.stdout.splitlines()
        report = dict(ln.split(":", 1) for ln in proc.stdout.splitlines() if ":" in ln)
        assert report["method"].strip() == "organs"
        written = nib.load(str(out))
        np.testing.assert_allclose(written.affine, nib.load(vol.source.path).affine)
        expected = np.where(engine == IDS["spleen"], IDS["spleen"], 0)[::-1, ::-1]   # back to the stored LPS order
        np.testing.assert_array_equal(np.asarray(written.dataobj), expected)


def test_an_organ_map_that_is_not_this_images_is_refused_with_one_line(lps_volume, tmp_path):
    vol, engine = lps_volume
    shifted = vol.affine.copy()
    shifted[2, 3] += 5.0
    bad = {"short": (engine[:, :, :-1], vol.affine), "shifted": (engine, shifted),
           "foreign": (np.where(engine > 0, 13, 0).astype(np.uint8), vol.affine)}
    why = {"short": "label map of shape (40, 30, 11), the image has (40, 30, 12)",
           "shifted": "lie up to 5.0 mm from the image's", "foreign": "label values [13] are not PriorSAM's organ ids"}
    box = ",".join(str(int(v)) for v in stored_box(vol, (25, 7, 2), (34, 18, 9)))
    for name, (array, affine) in bad.items():
        path = tmp_path / f"{name}.nii.gz"
        nib.save(nib.Nifti1Image(array, affine), str(path))
        out = tmp_path / f"out_{name}.nii.gz"
        proc = run_segment_box(vol.source.path, box, str(out), "--label", "spleen", "--organs", str(path))
        errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
        assert proc.returncode != 0 and len(errors) == 1 and why[name] in errors[0], proc.stderr
        assert not out.exists()
    # a label the organs method cannot answer leaves --organs unread: refused rather than ignored
    proc = run_segment_box(vol.source.path, box, str(tmp_path / "x.nii.gz"), "--label", "lesion", "--organs",
                           str(tmp_path / "short.nii.gz"))
    assert proc.returncode != 0 and "--organs is read by the organs method only" in proc.stderr


def test_an_organ_map_made_for_another_image_on_the_same_grid_is_refused(lps_volume, tmp_path):
    """Phases of one study often share a grid: the map of the arterial phase must not answer a box on the
    portal-venous one. PriorSAM's label maps carry the fingerprint of the image they were made for."""
    from priorsam.io import write_label_map

    vol, engine = lps_volume
    stored = np.asarray(nib.load(vol.source.path).dataobj)
    other = tmp_path / "other_phase.nii.gz"
    nib.save(nib.Nifti1Image(stored + 100.0, nib.load(vol.source.path).affine), str(other))
    other_map = write_label_map(read_volume(str(other)), engine, tmp_path / "other_organs.nii.gz")
    box = ",".join(str(int(v)) for v in stored_box(vol, (25, 7, 2), (34, 18, 9)))
    out = tmp_path / "spleen.nii.gz"
    proc = run_segment_box(vol.source.path, box, str(out), "--label", "spleen", "--organs", str(other_map))
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert proc.returncode != 0 and len(errors) == 1 and "made this label map for another image" in errors[0]
    assert not out.exists()
    # the same map given with the image it was made for answers
    proc = run_segment_box(str(other), box, str(out), "--label", "spleen", "--organs", str(other_map))
    assert proc.returncode == 0 and "does not say which image" not in proc.stderr, proc.stderr
