"""Batch jobs: discovery, a real 3-case batch (NIfTI, DICOM series, corrupt file), resume,
DICOM SEG read-back and the per-case report.

The batch runs the real engine (LiteMedSAM encoder + binary path, random heads) once per
session on tiny volumes; the tests that need model output share that run.
"""
from __future__ import annotations

import csv
import hashlib
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pytest
from conftest import save_nifti, synthetic_ct_array

SCT = {"1": "78961009", "2": "9846003", "3": "18639004", "4": "28231008", "5": "10200004", "6": "69695003",
       "7": "15825003", "8": "15776009"}


def write_dicom_series(folder: Path, n: int = 3, rows: int = 32, cols: int = 32, seed: int = 0,
                       orientation=(1, 0, 0, 0, 1, 0), series_number: int = 2, series_uid: str | None = None,
                       study_uid: str | None = None, prefix: str = "") -> str:
    """A CT Image Storage series of ``n`` single-frame slices (2.0 mm columns, 1.5 mm rows, 2.5 mm
    apart), written in reverse z order with instance numbers that do not follow position."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    study, series, frame = study_uid or generate_uid(), series_uid or generate_uid(), generate_uid()
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:rows, 0:cols]
    body = ((x - cols / 2) / (cols * 0.42)) ** 2 + ((y - rows / 2) / (rows * 0.36)) ** 2 < 1
    row_dir, col_dir = np.asarray(orientation[:3], float), np.asarray(orientation[3:], float)
    normal = np.cross(row_dir, col_dir)
    for k in range(n):
        meta = FileMetaDataset()
        sop = generate_uid()
        meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = CTImageStorage, sop
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, sop
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Batch^Test", "B001", "", "O"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.StudyID, ds.StudyDate, ds.StudyTime, ds.AccessionNumber, ds.ReferringPhysicianName = "1", "20240101", "120000", "", ""
        ds.Modality, ds.SeriesNumber, ds.InstanceNumber, ds.Manufacturer = "CT", series_number, (7 * k) % n + 1, "test"
        origin = np.array([-30.0, -20.0, 100.0]) - 2.5 * k * normal
        ds.ImagePositionPatient = [float(v) for v in origin]
        ds.ImageOrientationPatient = [float(v) for v in orientation]
        ds.PixelSpacing, ds.SliceThickness = [1.5, 2.0], 2.5
        ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = rows, cols, 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        img = np.where(body, 1064 + 20 * k, 24) + rng.normal(0, 5, (rows, cols))
        ds.PixelData = img.astype(np.int16).tobytes()
        ds.save_as(folder / f"{prefix}IM{n - k:04d}.dcm", enforce_file_format=True)
    return series


def make_inputs(root: Path) -> Path:
    """3 cases: a NIfTI file, a DICOM series in a nested folder, a corrupt .nii.gz."""
    root.mkdir(parents=True, exist_ok=True)
    save_nifti(root / "ct_a.nii.gz", synthetic_ct_array((48, 40, 2)))
    write_dicom_series(root / "patient_b" / "series1", n=3)
    (root / "broken.nii.gz").write_bytes(b"\x1f\x8b\x08" + bytes(range(200)))
    return root


class CountingSegment:
    """Wraps the real Segmenter.segment and counts calls (which case volume it ran on)."""

    def __init__(self):
        from priorsam.engine.segment import Segmenter

        self.real = Segmenter.segment
        self.calls: list[str] = []

    def install(self, mp: pytest.MonkeyPatch) -> "CountingSegment":
        from priorsam.engine.segment import Segmenter

        counter = self

        def segment(self_, volume, *args, **kwargs):
            counter.calls.append(volume.source.path)
            return counter.real(self_, volume, *args, **kwargs)

        mp.setattr(Segmenter, "segment", segment)
        return self


def run_cli(args: list[str], counter_mp: pytest.MonkeyPatch | None = None) -> int:
    from priorsam.cli import main

    return main(["batch", *args])


@pytest.fixture(scope="session")
def first_run(tmp_path_factory, random_checkpoint):
    """The real batch once: ``priorsam batch --format both`` over the 3 cases."""
    root = tmp_path_factory.mktemp("batch")
    inputs = make_inputs(root / "in")
    out = root / "out"
    with pytest.MonkeyPatch.context() as mp:
        counter = CountingSegment().install(mp)
        rc = run_cli(["--input", str(inputs), "--output", str(out), "--format", "both", "--device", "cpu",
                      "--weights", str(random_checkpoint), "--quiet"])
    return SimpleNamespace(inputs=inputs, out=out, rc=rc, calls=list(counter.calls), weights=random_checkpoint)


def _copy_out(first_run, tmp_path) -> Path:
    dst = tmp_path / "out"
    shutil.copytree(first_run.out, dst)
    return dst


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def _csv(p: Path) -> list[dict]:
    with open(p, newline="") as fh:
        return list(csv.DictReader(fh))


# ---------------------------------------------------------------- discovery and partition (no model)

def test_discover_folder_nifti_dicom_series_and_exclusions(tmp_path):
    from priorsam.batch.discover import discover_cases

    root = tmp_path / "in"
    save_nifti((root / "p1").mkdir(parents=True) or root / "p1" / "ct.nii.gz", synthetic_ct_array((8, 8, 2)))
    save_nifti(root / "p1_ct.nii", synthetic_ct_array((8, 8, 2)))          # same id as p1/ct → p1_ct_2
    write_dicom_series(root / "p2", n=2, rows=8, cols=8)
    two = root / "mixed"
    write_dicom_series(two / "a", n=2, rows=8, cols=8, series_number=3)
    write_dicom_series(two / "a", n=2, rows=8, cols=8, series_number=4, prefix="b_")  # two series, one folder
    (root / ".hidden.nii.gz").write_bytes(b"x")
    (root / "notes.txt").write_text("not an image")
    out = root / "results"                                                # output inside input: not searched
    save_nifti(out.mkdir() or out / "old_seg.nii.gz", synthetic_ct_array((8, 8, 2)))

    cases = discover_cases(root, out)
    ids = [c.case_id for c in cases]
    assert ids == sorted(ids)
    assert ids == ["mixed_a_s3", "mixed_a_s4", "p1_ct", "p1_ct_2", "p2"]
    by_id = {c.case_id: c for c in cases}
    assert by_id["p2"].kind == "dicom" and len(by_id["p2"].files) == 2 and by_id["p2"].series_uid
    assert by_id["mixed_a_s3"].series_uid != by_id["mixed_a_s4"].series_uid
    assert {Path(by_id["p1_ct"].path).name, Path(by_id["p1_ct_2"].path).name} == {"ct.nii.gz", "p1_ct.nii"}


def test_output_folder_that_is_the_input_folder_does_not_feed_results_back(tmp_path):
    # A second run into the input folder found the first run's <case>_seg.nii.gz as a case: refused as not CT,
    # the batch failed (with --force it would have segmented a label map).
    from priorsam.batch.discover import discover_cases

    save_nifti(tmp_path / "a.nii.gz", synthetic_ct_array((8, 8, 2)))
    save_nifti(tmp_path / "a_seg.nii.gz", np.zeros((8, 8, 2), np.uint8))
    (tmp_path / "a_seg.dcm").write_bytes(b"\0" * 128 + b"DICM")
    assert [c.case_id for c in discover_cases(tmp_path, tmp_path)] == ["a"]
    # written elsewhere, a file of that name is an input like any other
    (tmp_path / "a_seg.dcm").unlink()
    assert [c.case_id for c in discover_cases(tmp_path, tmp_path / "results")] == ["a", "a_seg"]


def test_label_maps_priorsam_wrote_are_never_cases(tmp_path):
    # Results of an earlier run kept under the input folder (another output folder, renamed files) are known by
    # the header PriorSAM writes, whatever their name.
    from priorsam.batch.discover import discover_cases
    from priorsam.errors import InputError
    from priorsam.io import read_volume, write_label_map

    save_nifti(tmp_path / "a.nii.gz", synthetic_ct_array((8, 8, 2)))
    vol = read_volume(tmp_path / "a.nii.gz")
    (tmp_path / "old_run").mkdir()
    write_label_map(vol, np.zeros(vol.shape, np.uint8), tmp_path / "old_run" / "a_labels.nii.gz")
    write_label_map(vol, np.zeros(vol.shape, np.uint8), tmp_path / "old_run" / "a_labels.nrrd")
    assert [c.case_id for c in discover_cases(tmp_path, tmp_path / "new_run")] == ["a"]
    with pytest.raises(InputError, match=r"no NIfTI/NRRD images or DICOM series found \(only 2 label map\(s\) PriorSAM wrote\)"):
        discover_cases(tmp_path / "old_run")


def test_case_list_csv(tmp_path):
    from priorsam.batch.discover import discover_cases, resolve_input_files
    from priorsam.errors import InputError

    save_nifti(tmp_path / "a.nii.gz", synthetic_ct_array((8, 8, 2)))
    uid = write_dicom_series(tmp_path / "dcm", n=2, rows=8, cols=8)
    write_dicom_series(tmp_path / "dcm", n=2, rows=8, cols=8, series_number=9, prefix="s9_")  # a second series beside it
    lst = tmp_path / "cases.csv"
    one = sorted((tmp_path / "dcm").glob("IM*.dcm"))[0]
    lst.write_text(f"case_id,path,series_uid\nzz,a.nii.gz,\nmr 1,dcm,{uid}\nmissing,nowhere.nii.gz,\n"
                   f"by_file,{one},\n")
    cases = discover_cases(lst)
    assert [c.case_id for c in cases] == ["by_file", "missing", "mr_1", "zz"]
    by_file = cases.pop(0)                     # one instance named: its whole series is the case
    assert by_file.kind == "dicom" and by_file.series_uid == uid and by_file.path == str(tmp_path / "dcm")
    assert cases[2].path == str(tmp_path / "a.nii.gz") and cases[2].kind == "file"
    assert cases[1].kind == "dicom" and len(resolve_input_files(cases[1])) == 2
    with pytest.raises(InputError, match="not found"):
        resolve_input_files(cases[0])   # a per-case error at run time, not a discovery error

    bad = tmp_path / "bad.csv"
    bad.write_text("case_id,file\na,a.nii.gz\n")
    with pytest.raises(InputError, match="'path' column"):
        discover_cases(bad)
    dup = tmp_path / "dup.csv"
    dup.write_text("case_id,path\na,a.nii.gz\na,a.nii.gz\n")
    with pytest.raises(InputError, match="duplicate case_id"):
        discover_cases(dup)
    ambiguous = tmp_path / "amb.csv"
    ambiguous.write_text("case_id,path\nx,dcm\n")
    with pytest.raises(InputError, match="2 DICOM series"):
        resolve_input_files(discover_cases(ambiguous)[0])


@pytest.mark.parametrize("world", [1, 2, 3, 5])
def test_partition_is_disjoint_and_complete(world):
    from priorsam.batch.discover import Case, partition

    cases = [Case(f"c{i:02d}", f"/x/{i}") for i in (7, 3, 11, 0, 5, 9, 1)]
    shares = [partition(cases, r, world) for r in range(world)]
    ids = [c.case_id for s in shares for c in s]
    assert sorted(ids) == sorted(c.case_id for c in cases) and len(ids) == len(set(ids))
    ordered = sorted(c.case_id for c in cases)
    for r, share in enumerate(shares):
        assert [c.case_id for c in share] == ordered[r::world]
    with pytest.raises(ValueError):
        partition(cases, world, world)


def test_bad_format_and_missing_input_are_one_line_errors(tmp_path, capsys):
    assert run_cli(["--input", str(tmp_path), "--output", str(tmp_path / "o"), "--format", "png"]) == 1
    assert "error: unknown format 'png'" in capsys.readouterr().err
    assert run_cli(["--input", str(tmp_path / "none"), "--output", str(tmp_path / "o")]) == 1
    assert "error: input not found" in capsys.readouterr().err


def test_missing_weights_fail_the_batch_before_any_case(tmp_path, capsys):
    inputs = tmp_path / "in"
    save_nifti(inputs.mkdir() or inputs / "a.nii.gz", synthetic_ct_array((8, 8, 2)))
    rc = run_cli(["--input", str(inputs), "--output", str(tmp_path / "o"), "--weights", str(tmp_path / "no.pt"),
                  "--quiet"])
    assert rc == 1 and "PriorSAM weights missing" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()        # the folder this refused run created is gone again


def test_refused_case_list_leaves_no_new_folder_and_logs_why_in_an_old_one(tmp_path, capsys):
    bad = tmp_path / "cases.csv"
    bad.write_text('case_id,path\n"a,b\n')
    assert run_cli(["--input", str(bad), "--output", str(tmp_path / "new"), "--quiet"]) == 1
    assert "empty path" in capsys.readouterr().err and not (tmp_path / "new").exists()
    kept = tmp_path / "old"
    (kept / "notes.txt").parent.mkdir()
    (kept / "notes.txt").write_text("mine")
    assert run_cli(["--input", str(bad), "--output", str(kept), "--quiet"]) == 1
    assert (kept / "notes.txt").read_text() == "mine"
    assert "batch refused before any case" in (kept / "batch.log").read_text()


# ---------------------------------------------------------------- the real 3-case batch

@pytest.mark.slow
def test_three_cases_two_results_one_failure(first_run):
    out = first_run.out
    assert first_run.rc != 0                                   # not every case succeeded
    assert len(first_run.calls) == 2                           # the corrupt file fails before the model
    for case in ("ct_a", "patient_b_series1"):
        record = json.loads((out / f"{case}.json").read_text())
        assert record["status"] == "ok"
        assert (out / f"{case}_seg.nii.gz").is_file()
    assert (out / "patient_b_series1_seg.dcm").is_file()
    assert not (out / "ct_a_seg.dcm").exists()                 # a NIfTI source has no instances to reference
    assert not (out / "broken.json").exists()
    failures = _csv(out / "failures.csv")
    assert [f["case_id"] for f in failures] == ["broken"]
    assert failures[0]["error"].startswith(str(first_run.inputs / "broken.nii.gz") + ": ")
    assert "corrupt" in failures[0]["error"] or "not a readable" in failures[0]["error"]
    summary = _csv(out / "summary.csv")
    assert [r["case_id"] for r in summary] == ["broken", "ct_a", "patient_b_series1"]
    assert [r["status"] for r in summary] == ["failed", "ok", "ok"]
    log_text = (out / "batch.log").read_text()
    for case in ("broken", "ct_a", "patient_b_series1"):
        assert f"case {case}: processing" in log_text
    assert "case broken failed" in log_text
    assert not [p for p in out.iterdir() if p.name.startswith(".")]   # no temp files left behind


@pytest.mark.slow
def test_case_report_matches_outputs_and_inputs(first_run):
    from priorsam.labels import labels, typical_volume_ml

    out = first_run.out
    record = json.loads((out / "ct_a.json").read_text())
    assert record["input"]["sha256"] == _sha(first_run.inputs / "ct_a.nii.gz")
    for entry in record["outputs"].values():
        assert _sha(out / entry["path"]) == entry["sha256"]
    assert record["model"]["weights_sha256"] == _sha(first_run.weights)
    assert record["model"]["prior_version"] == "v1" and len(record["model"]["prior_embedding_sha256"]) == 64
    assert record["software"]["priorsam"] and record["runtime"]["segment_seconds"] > 0

    seg = nib.load(str(out / "ct_a_seg.nii.gz"))
    lab = np.asarray(seg.dataobj)
    ct = nib.load(str(first_run.inputs / "ct_a.nii.gz"))
    hu = np.asarray(ct.dataobj, dtype=np.float64)
    assert np.allclose(seg.affine, ct.affine)
    voxel_ml = abs(np.linalg.det(ct.affine[:3, :3])) / 1000
    ranges = typical_volume_ml()
    for org in labels():
        o = record["organs"][org.name]
        mask = lab == org.id
        assert o["present"] == bool(mask.any()) and o["voxels"] == int(mask.sum())
        assert o["volume_ml"] == pytest.approx(mask.sum() * voxel_ml, abs=1e-3)
        if mask.any():
            assert o["hu_mean"] == pytest.approx(hu[mask].mean(), abs=0.01)
            assert o["hu_std"] == pytest.approx(hu[mask].std(), abs=0.01)
            zs = np.nonzero(mask.any((0, 1)))[0]
            assert o["slices"] == [int(zs[0]), int(zs[-1])]
            lo, hi = ranges[org.name]
            implausible = not lo <= o["volume_ml"] <= hi
            assert any(w.startswith(f"implausible volume: {org.name} ") for w in record["warnings"]) == implausible
    row = next(r for r in _csv(out / "summary.csv") if r["case_id"] == "ct_a")
    assert float(row["liver_ml"]) == record["organs"]["liver"]["volume_ml"]
    assert int(row["n_warnings"]) == len(record["warnings"])


@pytest.mark.slow
def test_rerun_does_no_model_work_for_finished_cases(first_run, tmp_path, capsys):
    out = _copy_out(first_run, tmp_path)
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.suffix in (".json", ".gz", ".dcm")}
    with pytest.MonkeyPatch.context() as mp:
        counter = CountingSegment().install(mp)
        rc = run_cli(["--input", str(first_run.inputs), "--output", str(out), "--format", "both", "--device", "cpu",
                      "--weights", str(first_run.weights), "--quiet"])
    assert counter.calls == []
    assert rc == 1 and "1 of 3 cases failed" in capsys.readouterr().err   # the corrupt file is retried and fails
    after = {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.suffix in (".json", ".gz", ".dcm")}
    assert after == before                                                 # finished outputs untouched
    summary = {r["case_id"]: r for r in _csv(out / "summary.csv")}
    assert summary["ct_a"]["reused"] == "true" and summary["patient_b_series1"]["reused"] == "true"
    assert "case ct_a: finished earlier, skipped" in (out / "batch.log").read_text()


@pytest.mark.slow
def test_rerun_redoes_a_partial_case(first_run, tmp_path):
    from priorsam.batch.runner import run_batch

    out = _copy_out(first_run, tmp_path)
    with open(out / "ct_a_seg.nii.gz", "ab") as fh:   # a damaged output: its hash no longer matches
        fh.write(b"\0")
    with pytest.MonkeyPatch.context() as mp:
        counter = CountingSegment().install(mp)
        result = run_batch(first_run.inputs, out, format="both", device="cpu", weights=first_run.weights,
                           show_progress=False)
    assert counter.calls == [str(first_run.inputs / "ct_a.nii.gz")]
    assert result.done == ["ct_a"] and result.reused == ["patient_b_series1"] and list(result.failed) == ["broken"]
    assert not result.ok and result.total_failed == 1
    record = json.loads((out / "ct_a.json").read_text())
    assert _sha(out / "ct_a_seg.nii.gz") == record["outputs"]["label_map"]["sha256"]


@pytest.mark.slow
def test_finished_checks_every_output_input_and_weights(first_run, tmp_path):
    from priorsam.batch.discover import discover_cases
    from priorsam.batch.runner import answer_options, finished
    from priorsam.engine.segment import SegmentOptions

    out = _copy_out(first_run, tmp_path)
    inputs = tmp_path / "in"
    shutil.copytree(first_run.inputs, inputs)
    cases = {c.case_id: c for c in discover_cases(inputs)}
    wsha = _sha(first_run.weights)
    dcm = cases["patient_b_series1"]
    assert finished(dcm, out, "both", wsha) is not None
    assert finished(dcm, out, "both", "0" * 64) is None                      # other weights
    (out / "patient_b_series1_seg.dcm").unlink()
    assert finished(dcm, out, "both", wsha) is None                          # SEG missing
    assert finished(dcm, out, "nifti", wsha) is None                         # …and recorded, so still partial
    a = cases["ct_a"]
    assert finished(a, out, "nifti", wsha) is not None
    assert finished(a, out, "dicom-seg", wsha) is not None                   # NIfTI source: label map only
    same, other = answer_options(None), answer_options(SegmentOptions(localiser_shifts=4))
    assert finished(a, out, "nifti", wsha, same) is not None                 # the defaults it ran with
    assert finished(a, out, "nifti", wsha, answer_options(SegmentOptions(encoder_backend="torch"))) is not None
    assert finished(a, out, "nifti", wsha, other) is None                    # other engine options
    save_nifti(inputs / "ct_a.nii.gz", synthetic_ct_array((48, 40, 2), seed=1))
    assert finished(a, out, "nifti", wsha) is None                           # input changed
    (out / "ct_a.json").write_text("{\"schema\": ")                          # torn JSON
    assert finished(a, out, "nifti", wsha) is None


# ---------------------------------------------------------------- DICOM SEG

def _seg_vs_nifti(seg_path: Path, nifti_path: Path, series_dir: Path) -> int:
    """Compare SEG frames with the label map slice by slice; returns the labelled pixels compared."""
    import highdicom as hd
    import pydicom

    seg = hd.seg.segread(str(seg_path))
    nii = nib.load(str(nifti_path))
    lab = np.asarray(nii.dataobj)
    inv = np.linalg.inv(nii.affine)
    sources = sorted(series_dir.glob("*.dcm"))
    uids = []
    total = 0
    for f in sources:
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        uids.append(ds.SOPInstanceUID)
        ras = np.diag([-1.0, -1.0, 1.0]) @ np.asarray(ds.ImagePositionPatient, float)
        ijk = inv[:3, :3] @ ras + inv[:3, 3]
        assert np.allclose(ijk[:2], 0, atol=1e-3)
        # NIfTI of a DICOM source: (column, row, slice) of the DICOM grid.
        expected = lab[:, :, int(round(ijk[2]))].T
        got = seg.get_pixels_by_source_instance(source_sop_instance_uids=[ds.SOPInstanceUID],
                                                combine_segments=True)[0]
        assert got.shape == expected.shape == (ds.Rows, ds.Columns)
        np.testing.assert_array_equal(got, expected)
        total += int((expected > 0).sum())
    referenced = {i.ReferencedSOPInstanceUID for i in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    assert referenced == set(uids)
    return total


@pytest.mark.slow
def test_dicom_seg_reads_back_and_matches_label_map(first_run):
    import highdicom as hd
    import pydicom

    out, series_dir = first_run.out, first_run.inputs / "patient_b" / "series1"
    raw = pydicom.dcmread(out / "patient_b_series1_seg.dcm")
    src = pydicom.dcmread(next(series_dir.glob("*.dcm")))
    assert raw.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4" and raw.Modality == "SEG"
    assert raw.StudyInstanceUID == src.StudyInstanceUID and raw.PatientID == src.PatientID
    assert raw.FrameOfReferenceUID == src.FrameOfReferenceUID
    assert raw.ReferencedSeriesSequence[0].SeriesInstanceUID == src.SeriesInstanceUID
    seg = hd.seg.segread(str(out / "patient_b_series1_seg.dcm"))
    assert seg.number_of_segments == 8
    for number in range(1, 9):
        desc = seg.get_segment_description(number)
        assert desc.segmented_property_type.value == SCT[str(number)]
        assert desc.segmented_property_type.scheme_designator == "SCT"
    _seg_vs_nifti(out / "patient_b_series1_seg.dcm", out / "patient_b_series1_seg.nii.gz", series_dir)


@pytest.mark.parametrize("orientation", [(1, 0, 0, 0, 1, 0), (-1, 0, 0, 0, -1, 0), (0, 1, 0, 1, 0, 0)])
def test_dicom_seg_geometry_with_known_labels(tmp_path, orientation):
    """No model: a known non-trivial label map through the SEG writer, for several orientations."""
    from priorsam.batch.dicom_seg import write_dicom_seg
    from priorsam.io import read_volume, write_label_map

    series_dir = tmp_path / "dcm"
    write_dicom_series(series_dir, n=4, rows=12, cols=10, orientation=orientation)
    volume = read_volume(series_dir)
    rng = np.random.default_rng(3)
    labels_ras = np.zeros(volume.shape, np.uint8)
    labels_ras[2:6, 1:5, 1] = 5
    labels_ras[..., 3] = rng.integers(0, 9, volume.shape[:2])   # every organ somewhere, asymmetric
    write_label_map(volume, labels_ras, tmp_path / "seg.nii.gz")
    write_dicom_seg(volume, labels_ras, tmp_path / "seg.dcm", software_version="test", algorithm_version="test")
    n = _seg_vs_nifti(tmp_path / "seg.dcm", tmp_path / "seg.nii.gz", series_dir)
    assert n == int((labels_ras > 0).sum())
