"""Fault injection (issue 14): a batch killed with SIGKILL at random points and resumed, and two
batches started on one output folder at once.

The batch runs as a real child process (``batch_driver.py``: the real CLI, discovery, checks,
writers, reports and lock) with only the model replaced by a deterministic stand-in, so a kill
can land anywhere from discovery to the last rename. After every kill, whatever is on disk must be
either complete or absent; after the resume, every output must match its JSON and no temp file
may remain. The seed of the kill points is printed (PRIORSAM_FAULT_SEED picks one).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

import reliability_helpers as rh
from test_bad_inputs import error_lines

pytestmark = pytest.mark.reliability

DRIVER = Path(__file__).with_name("batch_driver.py")
DELAY = 0.4   # model seconds per case


def start(inputs: Path, out: Path, weights: Path, *extra: str, delay: float = DELAY, kill_after: int = 0,
          hold: Path | None = None):
    env = {**os.environ, "PRIORSAM_TEST_WEIGHTS": str(weights), "PRIORSAM_TEST_DELAY": str(delay),
           "PRIORSAM_TEST_KILL_AFTER_REPLACE": str(kill_after), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "PRIORSAM_TEST_HOLD": str(hold or "")}
    cmd = [sys.executable, str(DRIVER), "--input", str(inputs), "--output", str(out), "--format", "both",
           "--device", "cpu", "--quiet", *extra]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_log(out: Path, text: str, proc: subprocess.Popen, timeout: float = 180.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        log = out / "batch.log"
        if log.is_file() and text in log.read_text():
            return
        if proc.poll() is not None:
            return  # finished (or died) before: the caller checks what is on disk
        time.sleep(0.02)
    raise TimeoutError(f"no {text!r} in {out / 'batch.log'} after {timeout} s")


def make_inputs(root: Path) -> Path:
    root.mkdir(parents=True)
    rh.good_nifti(root, "a.nii.gz", seed=1)
    rh.good_nifti(root, "b.nii.gz", seed=2)
    rh.dicom_good(root, "c")                       # DICOM: a label map and a DICOM SEG, two renames
    return root


def sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def temp_files(out: Path) -> list[str]:
    return sorted(p.name for p in out.rglob(".*") if p.name != ".priorsam.lock")


def assert_nothing_torn(out: Path) -> dict[str, dict]:
    """Whatever a kill left: every case JSON is whole and its outputs match it; every output is complete."""
    records = {}
    for j in out.glob("*.json"):
        record = json.loads(j.read_text())                   # never half a JSON
        for entry in record["outputs"].values():
            assert sha(out / entry["path"]) == entry["sha256"], f"{entry['path']} differs from {j.name}"
        records[record["case_id"]] = record
    for f in out.glob("*_seg.nii.gz"):
        np.asarray(nib.load(str(f)).dataobj)                  # never half a label map
    for f in out.glob("*_seg.dcm"):
        pydicom.dcmread(f).pixel_array                       # never half a SEG
    return records


def labels_of(out: Path) -> dict[str, np.ndarray]:
    return {f.name: np.asarray(nib.load(str(f)).dataobj) for f in sorted(out.glob("*_seg.nii.gz"))}


@pytest.fixture
def fake_weights(tmp_path) -> Path:
    p = tmp_path / "fake_weights.pt"
    p.write_bytes(b"stand-in for a checkpoint")
    return p


def test_sigkill_at_random_points_then_resume(tmp_path, fake_weights):
    inputs = make_inputs(tmp_path / "in")
    clean = tmp_path / "clean"
    proc = start(inputs, clean, fake_weights, delay=0)
    assert proc.wait(timeout=300) == 0, proc.stderr.read()
    expected = labels_of(clean)
    assert sorted(expected) == ["a_seg.nii.gz", "b_seg.nii.gz", "c_seg.nii.gz"]

    seed = int(os.environ.get("PRIORSAM_FAULT_SEED", time.time_ns() % 10_000))
    print(f"kill points: PRIORSAM_FAULT_SEED={seed}")
    rng = np.random.default_rng(seed)
    out = tmp_path / "out"
    killed = 0
    for _ in range(3):
        proc = start(inputs, out, fake_weights)
        wait_for_log(out, "processing", proc)
        time.sleep(float(rng.uniform(0.0, 3 * DELAY + 0.5)))   # anywhere in the model calls and writes
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            killed += 1
        proc.wait(timeout=60)
        assert_nothing_torn(out)
    # And once exactly between a case's first output and its JSON (the narrowest window).
    for c in ("a", "b", "c"):
        for p in (out / f"{c}.json", out / f"{c}_seg.nii.gz", out / f"{c}_seg.dcm"):
            p.unlink(missing_ok=True)
    proc = start(inputs, out, fake_weights, kill_after=1)
    assert proc.wait(timeout=300) == -signal.SIGKILL
    assert (out / "a_seg.nii.gz").is_file() and not (out / "a.json").exists()   # an output without its JSON
    assert_nothing_torn(out)

    proc = start(inputs, out, fake_weights)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr
    records = assert_nothing_torn(out)
    assert sorted(records) == ["a", "b", "c"] and all(r["status"] == "ok" for r in records.values())
    assert set(records["c"]["outputs"]) == {"label_map", "dicom_seg"}
    assert temp_files(out) == [], "temp files remain after the resume"
    got = labels_of(out)
    assert sorted(got) == sorted(expected)
    for name in expected:
        np.testing.assert_array_equal(got[name], expected[name])
    print(f"{killed} random kills landed inside a run")


def test_two_runs_on_one_folder(tmp_path, fake_weights):
    """While one batch runs, a second on the same folder is refused at once, and a third with --wait
    waits and then finds every case finished: no case is computed twice and nothing is corrupted."""
    inputs = make_inputs(tmp_path / "in")
    out = tmp_path / "out"
    go = tmp_path / "go"                                   # the first run's model waits for this file
    first = start(inputs, out, fake_weights, delay=0.2, hold=go)
    wait_for_log(out, "case a: processing", first)
    assert first.poll() is None, first.stderr.read()
    waiting = start(inputs, out, fake_weights, "--wait", "300")
    refused = start(inputs, out, fake_weights)
    r_out, r_err = refused.communicate(timeout=300)
    assert refused.returncode == 1
    lines = error_lines(r_err)
    assert len(lines) == 1 and lines[0].startswith(f"error: output folder {out} is in use by another batch (pid "), r_err
    assert waiting.poll() is None, "the --wait run did not wait"
    go.touch()
    assert first.wait(timeout=300) == 0, first.stderr.read()
    w_out, w_err = waiting.communicate(timeout=300)
    assert waiting.returncode == 0, w_err
    assert re.search(r"segmented:\s+0\n", w_out) and re.search(r"reused:\s+3\n", w_out), w_out
    log = (out / "batch.log").read_text()
    assert sum(f"case {c}: processing" in line for c in "abc" for line in log.splitlines()) == 3
    records = assert_nothing_torn(out)
    assert sorted(records) == ["a", "b", "c"]
    assert temp_files(out) == []
