"""A left–right mirrored image (a header that swaps the patient's sides, or situs inversus) is said, not answered
silently: the localiser reads a correctly oriented abdomen more surely than its mirror image
(bench/results/localiser_mirror_check.md)."""
from __future__ import annotations

import numpy as np
import pytest

from priorsam.engine.localise import looks_mirrored, organ_confidence


def test_organ_confidence_is_the_mean_top_probability_over_the_voxels_given_an_organ():
    probs = np.zeros((3, 2, 2, 1), np.float32)
    probs[:, 0, 0, 0] = [0.9, 0.05, 0.05]        # background: not counted
    probs[:, 0, 1, 0] = [0.1, 0.8, 0.1]          # organ 1 at 0.8
    probs[:, 1, 0, 0] = [0.2, 0.2, 0.6]          # organ 2 at 0.6
    probs[:, 1, 1, 0] = [0.6, 0.3, 0.1]          # background
    assert organ_confidence(probs) == pytest.approx(0.7)
    assert np.isnan(organ_confidence(probs[:, :1, :1]))     # no organ drawn: no confidence


def test_only_a_flipped_copy_read_more_surely_by_over_the_margin_is_called_mirrored():
    assert looks_mirrored(0.95, 0.92, 0.02) == ""
    assert looks_mirrored(0.92, 0.93, 0.02) == ""                 # within the margin
    text = looks_mirrored(0.90, 0.95, 0.02)
    assert "mirrored left-right" in text and "0.950 against 0.900" in text and "\n" not in text
    assert looks_mirrored(float("nan"), float("nan"), 0.02) == ""


def test_a_spleen_larger_than_the_liver_in_a_whole_volume_is_called_mirrored():
    """On a mirrored abdomen the localiser calls the liver "spleen" (bench/results/localiser_mirror_check.md): given
    the kept sizes of a whole volume, a "spleen" larger than the "liver" warns even when the confidences do not."""
    assert looks_mirrored(0.95, 0.93, 0.02, (300.0, 1500.0)) == ""
    text = looks_mirrored(0.95, 0.93, 0.02, (1200.0, 600.0))
    assert "spleen (1200 mL) is larger than its liver (600 mL)" in text and "reads it flipped" not in text
    both = looks_mirrored(0.90, 0.95, 0.02, (1200.0, 600.0))
    assert "reads it flipped more surely" in both and "spleen (1200 mL)" in both


@pytest.fixture(scope="module")
def sample_and_localiser():
    from priorsam.data.pseudo_patients import load_sample
    from priorsam.engine.weights import load_priorsam

    ct, _, _, _ = load_sample()
    return ct, load_priorsam(None, "cpu").localiser


def test_the_sample_ct_flipped_left_right_is_called_mirrored_and_as_given_is_not(sample_and_localiser):
    """The shipped localiser and the engine's default margin on the one real abdomen here: as given no warning,
    flipped (the header unchanged) the warning, and the two readings are the same two passes swapped."""
    from priorsam.engine.localise import localise
    from priorsam.engine.segment import SegmentOptions

    ct, loc = sample_and_localiser
    margin = SegmentOptions().mirror_margin
    hu = ct.array.astype(np.float32)
    given = localise(hu, ct.spacing, loc, mirror_margin=margin, mirror_volumes=True)
    flipped = localise(np.ascontiguousarray(hu[::-1]), ct.spacing, loc, mirror_margin=margin, mirror_volumes=True)
    assert given.usable and flipped.usable
    assert given.warnings == [] and given.confidence > given.flipped_confidence
    assert len(flipped.warnings) == 1 and "mirrored left-right" in flipped.warnings[0]
    assert "reads it flipped more surely" in flipped.warnings[0] and "is larger than its liver" in flipped.warnings[0]
    assert given.volume_ml[1] < given.volume_ml[5] and flipped.volume_ml[1] > flipped.volume_ml[5]
    assert flipped.confidence == pytest.approx(given.flipped_confidence, abs=1e-6)
    assert flipped.flipped_confidence == pytest.approx(given.confidence, abs=1e-6)
    assert given.summary()["confidence"]["flipped"] == round(given.flipped_confidence, 4)
    unchecked = localise(hu, ct.spacing, loc)
    assert unchecked.flipped_confidence is None and "confidence" not in unchecked.summary()


def test_the_engines_warnings_reach_the_statistics_a_batch_report_keeps(tmp_path, capsys):
    """What the engine says on stderr about its answer (here: a 150 mm field answered by the localiser's masks)
    is also in ``statistics["warnings"]``, which batch reports and statistics files keep."""
    import nibabel as nib

    import priorsam
    from test_localiser_fov import cta_crop

    vol, spacing = cta_crop()
    path = tmp_path / "cta.nii.gz"
    nib.save(nib.Nifti1Image(vol, np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])), path)
    labels, stats = priorsam.segment(str(path), show_bar=False)
    said = [w for w in stats["warnings"] if w.startswith("tight field of view (150 × 150 mm")]
    assert len(said) == 1 and said[0] in capsys.readouterr().err


def test_a_summary_without_organs_either_way_stays_valid_json():
    """No organ drawn in either reading gives nan confidences; the summary (written into JSON reports) says None."""
    import json

    from priorsam.engine.localise import LocaliserResult

    res = LocaliserResult(True, confidence=float("nan"), flipped_confidence=float("nan"))
    assert res.summary()["confidence"] == {"as_given": None, "flipped": None}
    json.loads(json.dumps(res.summary(), allow_nan=False))


def test_the_engine_compares_the_sizes_only_on_whole_volumes(monkeypatch):
    """A tight field or a partial scan cuts the spleen and the liver unevenly: there the engine asks the localiser for
    the confidence check alone; on a whole volume for both (when mirror_check is on)."""
    import priorsam.engine.localise as localise_module
    from priorsam.engine.segment import PARTIAL_Z_MM, SegmentOptions, Segmenter
    from priorsam.io import Volume
    from priorsam.io.volume import Source

    asked = []

    def fake(hu, spacing, localiser, device, **kw):
        asked.append((kw["mirror_margin"], kw["mirror_volumes"]))
        return localise_module.LocaliserResult(False, "stub")

    monkeypatch.setattr(localise_module, "localise", fake)

    def volume(n_xy: int, n_z: int, mm: float) -> Volume:
        arr = np.full((n_xy, n_xy, n_z), 40.0, np.float32)          # all tissue: a small field cuts the trunk
        ras = np.diag([mm, mm, mm, 1.0])
        return Volume(arr, ras, Source("synthetic", "nifti", arr.shape, ras, np.eye(3)))

    seg = Segmenter(None, "cpu", SegmentOptions(mirror_check=True, mirror_volumes=True))
    seg.locate(volume(100, 40, 3.0))                                  # 300 mm field, 120 mm of z: whole
    seg.locate(volume(50, 40, 3.0))                                   # 150 mm field: tight
    seg.locate(volume(100, int(PARTIAL_Z_MM / 3.0) - 1, 3.0))         # under 60 mm of z: partial
    assert asked == [(0.02, True), (0.02, False), (0.02, False)]
    Segmenter(None, "cpu", SegmentOptions(mirror_check=False)).locate(volume(100, 40, 3.0))
    assert asked[-1] == (None, False)                                 # switched off: neither check
