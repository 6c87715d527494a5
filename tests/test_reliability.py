"""No silent wrong answers (issue 14): the adversarial corpus through the real command line.

Each case asserts the exit code, the first word of the message (``error:`` / ``warning:``) and
what is, or is not, on disk afterwards. Refusals happen before any model work, so they run the
real CLI in-process with no model at all; cases that go on to segment replace only the model
(``FakeSegmenter``: weights + forward pass) so the check, the write and the report are real.
The same classes with the real engine are in test_reliability_e2e.py.
"""
from __future__ import annotations

import errno
import json
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

import reliability_helpers as rh
from test_bad_inputs import error_lines

pytestmark = pytest.mark.reliability


def run(args: list[str], capsys) -> tuple[int, list[str], str]:
    from priorsam.cli import main

    capsys.readouterr()
    rc = main(args)
    out = capsys.readouterr()
    return rc, error_lines(out.err), out.out


def snapshot(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


@pytest.fixture
def fake_weights(tmp_path) -> Path:
    p = tmp_path / "fake_weights.pt"
    p.write_bytes(b"stand-in for a checkpoint: only its sha256 is recorded")
    return p


# ------------------------------------------------------------------ refused before any model work

REFUSED = {
    # name: (builder, needles in the one error line)
    "not_ct_mr_like": (rh.not_ct_mr_like, ("does not look like CT", "no negative values", "--force")),
    "not_ct_uint8": (rh.not_ct_uint8, ("does not look like CT", "no negative values")),
    "not_ct_mask": (rh.not_ct_mask, ("does not look like CT", "range 0 to 1")),
    "not_ct_zscored": (rh.not_ct_zscored, ("does not look like CT", "no air")),
    "not_ct_out_of_range": (rh.not_ct_out_of_range, ("outside any CT's range",)),
    "nifti_zero_pixdim": (rh.nifti_zero_pixdim, ("pixdim[3] = 0",)),
    "nifti_negative_pixdim": (rh.nifti_negative_pixdim, ("pixdim[3] = -3",)),
    "nifti_degenerate_sform": (rh.nifti_degenerate_sform, ("sform (srow_x/srow_y/srow_z)", "axis 2")),
    "dicom_missing_slice": (rh.dicom_missing_slice, ("not evenly spaced", "4.000 mm", "missing slice")),
    "dicom_mixed_orientation": (rh.dicom_mixed_orientation, ("disagree in ImageOrientationPatient",)),
    "dicom_duplicate_position": (rh.dicom_duplicate_position, ("same position",)),
    "dicom_no_position": (rh.dicom_no_position, ("ImagePositionPatient",)),
    "dicom_zero_pixel_spacing": (rh.dicom_zero_pixel_spacing, ("PixelSpacing", "must be positive")),
}


@pytest.mark.parametrize("name", list(REFUSED))
def test_segment_refuses_before_the_model(name, tmp_path, capsys, monkeypatch, fake_weights):
    builder, needles = REFUSED[name]
    fake = rh.install_fake_model(monkeypatch, fake_weights)
    (tmp_path / "in").mkdir()
    image = builder(tmp_path / "in")
    out = tmp_path / "results" / "seg.nii.gz"
    before = snapshot(tmp_path)
    rc, lines, _ = run(["segment", "--image", str(image), "--out", str(out)], capsys)
    assert rc == 1
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert fake.calls == []                                   # refused before any model work
    assert not out.exists() and snapshot(tmp_path) == before  # nothing written, no temp file, no folder


def test_dicom_missing_slice_would_otherwise_get_an_invented_grid(tmp_path):
    """The refusal is not overcautious: ITK alone spaces the 4 slices 2.67 mm apart instead of 2/4/2 mm."""
    import itk

    series = rh.dicom_missing_slice(tmp_path)
    names = itk.GDCMSeriesFileNames.New()
    names.SetDirectory(str(series))
    files = names.GetFileNames(names.GetSeriesUIDs()[0])
    reader = itk.ImageSeriesReader[itk.Image[itk.F, 3]].New(FileNames=files)
    reader.Update()
    assert abs(reader.GetOutput().GetSpacing()[2] - 8.0 / 3.0) < 1e-3


def test_not_ct_with_force_is_a_warning(tmp_path, capsys, monkeypatch, fake_weights):
    fake = rh.install_fake_model(monkeypatch, fake_weights)
    image = rh.not_ct_mr_like(tmp_path)
    out = tmp_path / "seg.nii.gz"
    rc, lines, _ = run(["segment", "--image", str(image), "--out", str(out), "--force"], capsys)
    assert rc == 0 and len(fake.calls) == 1
    assert lines and all(ln.startswith("warning: ") for ln in lines), lines
    assert "does not look like CT" in lines[0] and "--force" in lines[0]
    assert out.is_file()


WARNED = {
    "dicom_no_series_uid": (rh.dicom_no_series_uid, "no SeriesInstanceUID"),
    "nifti_no_orientation": (rh.nifti_no_orientation, "states no orientation"),
    "nifti_qform_sform_disagree": (rh.nifti_qform_sform_disagree, "qform and sform disagree"),
}


@pytest.mark.parametrize("name", list(WARNED))
def test_segment_warns_and_writes(name, tmp_path, capsys, monkeypatch, fake_weights):
    builder, needle = WARNED[name]
    fake = rh.install_fake_model(monkeypatch, fake_weights)
    image = builder(tmp_path)
    out = tmp_path / "out" / "seg.nii.gz"
    rc, lines, _ = run(["segment", "--image", str(image), "--out", str(out)], capsys)
    assert rc == 0 and len(fake.calls) == 1
    assert len(lines) == 1 and lines[0].startswith("warning: ") and needle in lines[0], lines
    assert out.is_file() and not [p for p in out.parent.iterdir() if p.name.startswith(".")]


def test_no_orientation_is_written_back_as_stated(tmp_path, capsys, monkeypatch, fake_weights):
    """qform_code = sform_code = 0 stays so in the label map: any viewer then places both alike."""
    rh.install_fake_model(monkeypatch, fake_weights)
    image = rh.nifti_no_orientation(tmp_path)
    out = tmp_path / "seg.nii.gz"
    assert run(["segment", "--image", str(image), "--out", str(out)], capsys)[0] == 0
    src, seg = nib.load(str(image)), nib.load(str(out))
    assert int(seg.header["qform_code"]) == 0 and int(seg.header["sform_code"]) == 0
    np.testing.assert_allclose(seg.affine, src.affine)
    np.testing.assert_allclose(seg.header["pixdim"][1:4], src.header["pixdim"][1:4])


def test_series_without_uid_reads_like_one_with_uid(tmp_path):
    from priorsam.io import read_volume

    good = read_volume(rh.dicom_good(tmp_path, "with_uid"))
    nouid = read_volume(rh.dicom_no_series_uid(tmp_path))
    assert good.warnings == [] and "no SeriesInstanceUID" in nouid.warnings[0]
    np.testing.assert_array_equal(good.array, nouid.array)
    np.testing.assert_allclose(good.affine, nouid.affine)
    assert nouid.source.series_uid is None


def test_two_series_without_uid_in_one_folder_are_not_mixed(tmp_path):
    from priorsam.errors import InputError
    from priorsam.io import read_volume

    folder = tmp_path / "study"
    rh.write_series(folder, rh.phantom(z=3, rows=24, cols=20), prefix="a", series_uid="1.2.3.1")
    rh.write_series(folder, rh.phantom(z=4, rows=28, cols=22, seed=1), prefix="b", series_uid="1.2.3.2")
    rh._edit_series(folder, lambda ds, f: setattr(ds, "SeriesInstanceUID", ""))
    with pytest.raises(InputError, match="2 DICOM series found"):
        read_volume(folder)


# ------------------------------------------------------------------ outputs checked before the model

def test_dicom_seg_with_empty_sop_class_refused_before_the_model(tmp_path, capsys, monkeypatch, fake_weights):
    fake = rh.install_fake_model(monkeypatch, fake_weights)
    series = rh.dicom_empty_sop_class(tmp_path)
    out = tmp_path / "seg.dcm"
    rc, lines, _ = run(["segment", "--image", str(series), "--out", str(out)], capsys)
    assert rc == 1 and len(lines) == 1 and lines[0].startswith("error: "), lines
    assert "empty SOPClassUID (0008,0016)" in lines[0] and "KeyError" not in lines[0]
    assert fake.calls == [] and not out.exists()


def test_dicom_seg_takes_sop_uids_from_the_file_meta(tmp_path, capsys, monkeypatch, fake_weights):
    """Anonymisers that blank only the dataset's SOP Class/Instance UID leave the file meta's copy, which
    the standard makes identical: the SEG references the instances by it (no refusal, no KeyError)."""
    import pydicom

    rh.install_fake_model(monkeypatch, fake_weights)
    series = rh.dicom_uids_only_in_file_meta(tmp_path)
    out = tmp_path / "seg.dcm"
    rc, lines, _ = run(["segment", "--image", str(series), "--out", str(out)], capsys)
    assert rc == 0 and lines == [], lines
    seg = pydicom.dcmread(out)
    referenced = {i.ReferencedSOPInstanceUID for i in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    assert referenced == {pydicom.dcmread(f).file_meta.MediaStorageSOPInstanceUID for f in series.glob("*.dcm")}


def test_output_under_proc_is_one_line_before_the_model(tmp_path, capsys, monkeypatch, fake_weights):
    fake = rh.install_fake_model(monkeypatch, fake_weights)
    out = Path("/proc/priorsam-reliability/seg.nii.gz")
    rc, lines, _ = run(["segment", "--image", str(rh.good_nifti(tmp_path)), "--out", str(out)], capsys)
    assert rc == 1 and len(lines) == 1 and lines[0].startswith("error: output folder is not writable: /proc"), lines
    assert fake.calls == []


def test_output_without_free_inodes_is_one_line_before_the_model(tmp_path, capsys, monkeypatch, fake_weights):
    """No inodes left: creating any file fails with ENOSPC (the OS call is simulated; nothing else is)."""
    fake = rh.install_fake_model(monkeypatch, fake_weights)
    image = rh.good_nifti(tmp_path)

    def no_inodes(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(tempfile, "mkstemp", no_inodes)
    out = tmp_path / "out" / "seg.nii.gz"
    rc, lines, _ = run(["segment", "--image", str(image), "--out", str(out)], capsys)
    assert rc == 1 and len(lines) == 1, lines
    assert lines[0] == f"error: output folder is not writable: {tmp_path} (No space left on device)"
    assert fake.calls == [] and not (tmp_path / "out").exists()


def test_disk_full_while_writing_leaves_nothing(tmp_path, capsys, monkeypatch, fake_weights):
    """The write itself fails half-way (ENOSPC from the NIfTI writer): one line, no file, no temp file."""
    rh.install_fake_model(monkeypatch, fake_weights)
    image = rh.good_nifti(tmp_path)
    real_save = nib.save

    def half_then_full(img, filename):
        Path(filename).write_bytes(b"\x1f\x8b half a label map")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(nib, "save", half_then_full)
    out = tmp_path / "out" / "seg.nii.gz"
    rc, lines, _ = run(["segment", "--image", str(image), "--out", str(out)], capsys)
    monkeypatch.setattr(nib, "save", real_save)
    assert rc == 1 and lines == [f"error: could not write {out}: No space left on device"], lines
    assert not out.exists() and list(out.parent.iterdir()) == []


# ------------------------------------------------------------------ batch: reports, atomic failure, lock

def _batch(args: list[str], capsys):
    return run(["batch", *args, "--quiet", "--device", "cpu"], capsys)


def test_batch_corpus_records_and_discards(tmp_path, capsys, monkeypatch, fake_weights):
    """One batch over the corpus: refused cases fail alone with their one-line reason and leave no
    output; warned cases are written with the warning in their JSON; a series without UID is not skipped."""
    fake = rh.install_fake_model(monkeypatch, fake_weights)
    inputs = tmp_path / "in"
    inputs.mkdir()
    rh.good_nifti(inputs, "a_good.nii.gz")
    rh.not_ct_mr_like(inputs)
    rh.nifti_zero_pixdim(inputs)
    rh.truncated_nifti(inputs)
    rh.dicom_no_series_uid(inputs)
    rh.dicom_missing_slice(inputs)
    rh.dicom_mixed_orientation(inputs)
    out = tmp_path / "out"
    rc, lines, _ = _batch(["--input", str(inputs), "--output", str(out)], capsys)
    assert rc == 1 and lines[-1].startswith("error: 5 of 7 cases failed"), lines
    failures = {r["case_id"]: r["error"] for r in rh_csv(out / "failures.csv")}
    assert sorted(failures) == ["missing_slice", "mixed_iop", "mr", "truncated", "zero_pixdim"]
    assert "does not look like CT" in failures["mr"] and "pixdim[3] = 0" in failures["zero_pixdim"]
    assert "not evenly spaced" in failures["missing_slice"] and "ImageOrientationPatient" in failures["mixed_iop"]
    for case in failures:
        assert not list(out.glob(f"{case}*")), f"failed case {case} left files"
    ok = json.loads((out / "no_uid.json").read_text())
    assert ok["status"] == "ok" and ok["input"]["series_uid"] is None and ok["input"]["n_files"] == 5
    assert any("no SeriesInstanceUID" in w for w in ok["warnings"])
    assert set(ok["outputs"]) == {"label_map"}
    assert len(fake.calls) == 2                               # the good file and the series without UID
    summary = {r["case_id"]: r for r in rh_csv(out / "summary.csv")}
    assert "no SeriesInstanceUID" in summary["no_uid"]["warnings"]
    assert not [p for p in out.iterdir() if p.name.startswith(".") and p.name != ".priorsam.lock"]


def test_batch_force_records_the_not_ct_warning(tmp_path, capsys, monkeypatch, fake_weights):
    rh.install_fake_model(monkeypatch, fake_weights)
    inputs = tmp_path / "in"
    inputs.mkdir()
    rh.not_ct_uint8(inputs)
    out = tmp_path / "out"
    rc, _, _ = _batch(["--input", str(inputs), "--output", str(out), "--force"], capsys)
    record = json.loads((out / "ct_uint8.json").read_text())
    assert rc == 0 and record["status"] == "ok"
    assert record["warnings"][0].startswith("does not look like CT") and "--force" in record["warnings"][0]


def test_batch_rerun_with_other_engine_options_redoes_the_cases(tmp_path, capsys, monkeypatch, fake_weights):
    """A finished case is reused only when it was segmented with the same engine options."""
    fake = rh.install_fake_model(monkeypatch, fake_weights)
    inputs = tmp_path / "in"
    inputs.mkdir()
    rh.good_nifti(inputs, "a.nii.gz")
    out = tmp_path / "out"
    args = ["--input", str(inputs), "--output", str(out)]
    assert _batch(args, capsys)[0] == 0 and len(fake.calls) == 1
    assert _batch(args, capsys)[0] == 0 and len(fake.calls) == 1                     # same options: reused
    assert _batch([*args, "--option", "localiser_shifts=4"], capsys)[0] == 0 and len(fake.calls) == 2
    assert json.loads((out / "a.json").read_text())["model"]["options"]["localiser_shifts"] == 4
    assert _batch([*args, "--option", "localiser_shifts=4"], capsys)[0] == 0 and len(fake.calls) == 2
    # back to the default shifts (another encoder runtime too): redone; then only the runtime differs: reused
    assert _batch([*args, "--option", "encoder_backend=torch"], capsys)[0] == 0 and len(fake.calls) == 3
    assert _batch([*args, "--option", "encoder_backend=onnx"], capsys)[0] == 0 and len(fake.calls) == 3


def test_batch_failed_seg_write_leaves_no_label_map(tmp_path, capsys, monkeypatch, fake_weights):
    """--format both: the label map is written, then the DICOM SEG fails; the label map must go too."""
    from priorsam.batch import dicom_seg

    rh.install_fake_model(monkeypatch, fake_weights)
    inputs = tmp_path / "in"
    rh.dicom_good(inputs, "p1")

    def seg_fails(*args, **kwargs):
        raise ValueError("simulated DICOM SEG encoder failure")

    monkeypatch.setattr(dicom_seg, "write_dicom_seg", seg_fails)
    out = tmp_path / "out"
    rc, lines, _ = _batch(["--input", str(inputs), "--output", str(out), "--format", "both"], capsys)
    assert rc == 1 and "1 of 1 cases failed" in lines[-1]
    assert [r["error"] for r in rh_csv(out / "failures.csv")] == ["ValueError: simulated DICOM SEG encoder failure"]
    assert not (out / "p1_seg.nii.gz").exists() and not (out / "p1.json").exists()
    assert not list(out.glob("p1*")) and not list(out.glob(".p1*"))


def test_batch_empty_sop_class_fails_before_the_model(tmp_path, capsys, monkeypatch, fake_weights):
    fake = rh.install_fake_model(monkeypatch, fake_weights)
    inputs = tmp_path / "in"
    rh.dicom_empty_sop_class(inputs)
    out = tmp_path / "out"
    rc, _, _ = _batch(["--input", str(inputs), "--output", str(out), "--format", "both"], capsys)
    (row,) = rh_csv(out / "failures.csv")
    assert rc == 1 and "empty SOPClassUID (0008,0016)" in row["error"] and "KeyError" not in row["error"]
    assert fake.calls == [] and not list(out.glob("empty_sop_class*"))
    # The same series as NIfTI needs no SOP class: it is segmented.
    rc, _, _ = _batch(["--input", str(inputs), "--output", str(tmp_path / "nifti")], capsys)
    assert rc == 0 and (tmp_path / "nifti" / "empty_sop_class_seg.nii.gz").is_file()


def test_batch_refuses_a_locked_output_folder(tmp_path, capsys, monkeypatch, fake_weights):
    from priorsam.batch.lock import FolderLock

    fake = rh.install_fake_model(monkeypatch, fake_weights)
    inputs = tmp_path / "in"
    inputs.mkdir()
    rh.good_nifti(inputs)
    out = tmp_path / "out"
    out.mkdir()
    with FolderLock(out):
        before = snapshot(out)
        rc, lines, _ = _batch(["--input", str(inputs), "--output", str(out)], capsys)
        assert rc == 1 and len(lines) == 1, lines
        assert lines[0].startswith(f"error: output folder {out} is in use by another batch (pid ")
        assert snapshot(out) == before and fake.calls == []
    rc, _, _ = _batch(["--input", str(inputs), "--output", str(out)], capsys)   # free again
    assert rc == 0 and len(fake.calls) == 1


def test_batch_clears_a_killed_runs_temp_files(tmp_path, capsys, monkeypatch, fake_weights):
    rh.install_fake_model(monkeypatch, fake_weights)
    inputs = tmp_path / "in"
    inputs.mkdir()
    rh.good_nifti(inputs)
    out = tmp_path / "out"
    out.mkdir()
    stale = [out / ".ct_seg.nii.gz.k3j2_x.part.nii.gz", out / ".ct.json.abcd.part.json", out / ".priorsam-probe.zz"]
    for p in stale:
        p.write_bytes(b"half")
    keep = out / ".my_notes"
    keep.write_text("not ours")
    assert _batch(["--input", str(inputs), "--output", str(out)], capsys)[0] == 0
    assert not any(p.exists() for p in stale) and keep.exists()


def test_batch_output_under_proc_is_one_line(tmp_path, capsys):
    rc, lines, _ = _batch(["--input", str(rh.good_nifti(tmp_path)), "--output", "/proc/priorsam-reliability"],
                          capsys)
    assert rc == 1 and len(lines) == 1 and lines[0].startswith("error: output folder cannot be created"), lines


def rh_csv(path: Path) -> list[dict]:
    import csv

    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


# ------------------------------------------------------------------ header fuzzing (seeded, no hypothesis needed)

def test_nifti_header_fuzz_never_silently_changes_the_spacing(tmp_path):
    """Random pixdim / qform / sform fields: every file is refused with one line, or read with exactly
    the voxel size its header states (never nibabel's silent 1 mm)."""
    from priorsam.errors import InputError
    from priorsam.io import read_volume

    rng = np.random.default_rng(14)
    values = np.array([0.0, -2.5, np.nan, np.inf, 1e-9, 0.7, 2.0, 3.0])
    weights = np.array([1, 1, 1, 1, 1, 6, 6, 6]) / 23   # mostly valid, so both outcomes are common
    hu = rh.good_ct()[:16, :12, :3]
    outcomes = {"read": 0, "refused": 0}
    for i in range(120):
        pixdim = tuple(rng.choice(values, 3, p=weights))
        qcode, scode = (int(c) for c in rng.choice([0, 1, 2], 2))
        srows = np.c_[np.diag(rng.choice(values, 3, p=weights)), rng.normal(0, 50, 3)] if scode else None
        path = rh._raw_nifti(tmp_path / f"f{i}.nii.gz", hu, pixdim=pixdim, qform_code=qcode, sform_code=scode,
                             srows=srows)
        try:
            vol = read_volume(path)
        except InputError as exc:
            assert "\n" not in str(exc) and str(path) in str(exc)
            outcomes["refused"] += 1
            continue
        stated = np.sqrt((srows[:, :3] ** 2).sum(0)) if scode else np.abs(np.asarray(pixdim))
        np.testing.assert_allclose(sorted(vol.spacing), sorted(stated), rtol=1e-5)
        outcomes["read"] += 1
    assert outcomes["read"] > 10 and outcomes["refused"] > 10, outcomes


def test_dicom_position_fuzz_never_invents_a_grid(tmp_path):
    """Random slice steps, jitter, dropped and duplicated slices: every series is refused, or read onto a
    grid on which every instance lies (within the tolerance) at its own slice index."""
    import pydicom

    from priorsam.errors import InputError
    from priorsam.io import read_volume

    rng = np.random.default_rng(14)
    outcomes = {"read": 0, "refused": 0}
    for i in range(24):
        step = float(rng.choice([0.5, 1.25, 2.0, 5.0]))
        series = rh.dicom_good(tmp_path, f"s{i}", z=5)
        files = rh._sorted_by_z(series)
        z = -786.5 + step * np.arange(len(files)) + rng.normal(0, float(rng.choice([0.0, 0.002, 0.3 * step])), 5)
        for f, zk in zip(files, z):
            ds = pydicom.dcmread(f)
            ds.ImagePositionPatient = [-30.0, -20.0, float(zk)]
            ds.save_as(f)
        fault = rng.choice(["none", "drop", "duplicate"])
        if fault == "drop":
            files.pop(int(rng.integers(1, 4))).unlink()
        elif fault == "duplicate":
            ds = pydicom.dcmread(files[2])
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = rh.generate_uid()
            ds.save_as(series / "copy.dcm")
        try:
            vol = read_volume(series)
        except InputError:
            outcomes["refused"] += 1
            continue
        outcomes["read"] += 1
        inv = np.linalg.inv(vol.source.affine)
        slice_mm = float(np.linalg.norm(vol.source.affine[:3, 2]))
        seen = []
        for f in series.glob("*.dcm"):
            ras = np.diag([-1.0, -1.0, 1.0]) @ np.asarray(pydicom.dcmread(f).ImagePositionPatient, float)
            k = inv[:3, :3] @ ras + inv[:3, 3]
            assert abs(k[2] - round(k[2])) * slice_mm <= max(0.02, 0.01 * slice_mm) + 1e-6, (f.name, k)
            seen.append(int(round(k[2])))
        assert sorted(seen) == list(range(vol.source.shape[2]))
    assert outcomes["read"] > 3 and outcomes["refused"] > 3, outcomes
