"""The reliability corpus with the real engine (issue 14): real processes, real model, tiny inputs.

test_reliability.py covers every class with the model replaced; here each failure class that
reaches a result or a report gets at least one run with the real LiteMedSAM encoder and random
heads: the MONAI bundle going on past a truncated file and a non-CT image, a real batch with a
series without SeriesInstanceUID and a forced non-CT image, and the real ``priorsam`` process's
exit code for refusals.
"""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import reliability_helpers as rh
from conftest import save_nifti, synthetic_ct_array
from test_bad_inputs import error_lines

pytestmark = pytest.mark.reliability
REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def rows(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.mark.parametrize("builder", [rh.not_ct_mr_like, rh.dicom_missing_slice, rh.nifti_zero_pixdim])
def test_real_process_refuses_with_exit_1(builder, tmp_path):
    (tmp_path / "in").mkdir()
    image = builder(tmp_path / "in")
    out = tmp_path / "out" / "seg.nii.gz"
    proc = subprocess.run([sys.executable, "-m", "priorsam", "segment", "--image", str(image), "--out", str(out)],
                          env=ENV, capture_output=True, text=True, timeout=600)
    lines = error_lines(proc.stderr)
    assert proc.returncode == 1 and len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "out").exists()


@pytest.mark.slow
def test_bundle_goes_on_past_bad_files(tmp_path, random_checkpoint):
    """A truncated file and an MR-like image among three: the good one is written, both failures are
    listed (stderr and failures.csv), the run ends with exit 1 and one summary line, no traceback."""
    data = tmp_path / "data"
    data.mkdir()
    save_nifti(data / "a_good.nii.gz", synthetic_ct_array((36, 30, 2)))
    rh.truncated_nifti(data).rename(data / "b_truncated.nii.gz")
    save_nifti(data / "c_mr.nii.gz", (synthetic_ct_array((36, 30, 2)) + 1000).clip(0, 1000))
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "monai.bundle", "run", "--config_file",
                           str(REPO / "bundle/configs/inference.json"), "--dataset_dir", str(data),
                           "--output_dir", str(out), "--ckpt_path", str(random_checkpoint)],
                          env=ENV, capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr[-3000:]
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 3, proc.stderr[-3000:]
    assert errors[0].startswith(f"error: {data / 'b_truncated.nii.gz'}: ")
    assert "does not look like CT" in errors[1] and "override with --force True" in errors[1]
    assert errors[2].startswith("error: 2 of 3 inputs failed") and "Traceback" not in proc.stderr
    assert sorted(p.name for p in out.iterdir()) == ["a_good_seg.nii.gz", "failures.csv"]
    assert [Path(r["input"]).name for r in rows(out / "failures.csv")] == ["b_truncated.nii.gz", "c_mr.nii.gz"]
    # The override the message names works: the not-CT image is segmented, with a warning.
    (data / "a_good.nii.gz").unlink()
    (data / "b_truncated.nii.gz").unlink()
    proc = subprocess.run([sys.executable, "-m", "monai.bundle", "run", "--config_file",
                           str(REPO / "bundle/configs/inference.json"), "--dataset_dir", str(data),
                           "--output_dir", str(out), "--ckpt_path", str(random_checkpoint), "--force", "True"],
                          env=ENV, capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "warning:" in proc.stderr and "does not look like CT" in proc.stderr
    assert sorted(p.name for p in out.iterdir()) == ["a_good_seg.nii.gz", "c_mr_seg.nii.gz"]


@pytest.mark.slow
def test_real_batch_records_input_warnings(tmp_path, random_checkpoint):
    inputs = tmp_path / "in"
    inputs.mkdir()
    rh.dicom_no_series_uid(inputs)
    rh.not_ct_mr_like(inputs)
    rh.truncated_nifti(inputs)
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "priorsam", "batch", "--input", str(inputs), "--output", str(out),
                           "--device", "cpu", "--weights", str(random_checkpoint), "--force", "--quiet"],
                          env=ENV, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 1 and error_lines(proc.stderr)[-1].startswith("error: 1 of 3 cases failed"), \
        proc.stderr[-3000:]
    no_uid = json.loads((out / "no_uid.json").read_text())
    assert no_uid["status"] == "ok" and "no SeriesInstanceUID" in no_uid["warnings"][0]
    mr = json.loads((out / "mr.json").read_text())
    assert mr["warnings"][0].startswith("does not look like CT") and "--force" in mr["warnings"][0]
    assert [r["case_id"] for r in rows(out / "failures.csv")] == ["truncated"]
    assert not list(out.glob("truncated*"))
    summary = {r["case_id"]: r for r in rows(out / "summary.csv")}
    assert int(summary["no_uid"]["n_warnings"]) >= 1 and "no SeriesInstanceUID" in summary["no_uid"]["warnings"]
