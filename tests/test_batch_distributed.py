"""The batch under ``torchrun --nproc_per_node 2`` on CPU (gloo): cases split by rank with no
overlap, per-rank logs and table parts, summary merged by rank 0, and a rerun that reuses
everything. Each rank runs the real engine on one tiny NIfTI case.
"""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import pytest
from conftest import save_nifti, synthetic_ct_array

# Sorted order a_ok, b_bad, c_bad, d_ok → rank 0: a_ok, c_bad; rank 1: b_bad, d_ok (one model case each).
EXPECTED_RANK = {"a_ok": 0, "b_bad": 1, "c_bad": 0, "d_ok": 1}


def _torchrun(inputs, out, weights, timeout=900):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "priorsam", "batch", "--input", str(inputs), "--output", str(out), "--device", "cpu",
           "--weights", str(weights), "--quiet"]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)


def _processed(log_path):
    lines = log_path.read_text().splitlines()
    return {line.split("case ", 1)[1].split(":")[0] for line in lines if ": processing " in line}


def _rows(p):
    with open(p, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.mark.slow
def test_torchrun_gloo_splits_cases_without_overlap(tmp_path, random_checkpoint):
    inputs = tmp_path / "in"
    inputs.mkdir()
    save_nifti(inputs / "a_ok.nii.gz", synthetic_ct_array((48, 40, 2), seed=1))
    save_nifti(inputs / "d_ok.nii.gz", synthetic_ct_array((48, 40, 2), seed=2))
    (inputs / "b_bad.nii.gz").write_bytes(b"not a nifti at all")
    (inputs / "c_bad.nii.gz").write_bytes(b"\x1f\x8b\x08\x00truncated")
    out = tmp_path / "out"

    run = _torchrun(inputs, out, random_checkpoint)
    assert run.returncode != 0, run.stderr[-3000:]          # 2 corrupt cases → the batch is incomplete
    assert "2 of 4 cases failed" in run.stderr, run.stderr[-3000:]

    done0, done1 = _processed(out / "batch.rank0.log"), _processed(out / "batch.rank1.log")
    assert done0.isdisjoint(done1)
    assert done0 | done1 == set(EXPECTED_RANK)
    assert done0 == {c for c, r in EXPECTED_RANK.items() if r == 0}
    for case in ("a_ok", "d_ok"):
        record = json.loads((out / f"{case}.json").read_text())
        assert record["status"] == "ok"
        assert record["job"] == {"rank": EXPECTED_RANK[case], "world_size": 2, "format": "nifti"}
        assert (out / f"{case}_seg.nii.gz").is_file()

    summary = _rows(out / "summary.csv")                     # merged by rank 0 from both parts
    assert [r["case_id"] for r in summary] == sorted(EXPECTED_RANK)
    assert {r["case_id"]: int(r["rank"]) for r in summary} == EXPECTED_RANK
    failures = _rows(out / "failures.csv")
    assert [(f["case_id"], int(f["rank"])) for f in failures] == [("b_bad", 1), ("c_bad", 0)]

    # A rerun: both finished cases are reused on their ranks, only the corrupt ones are retried.
    rerun = _torchrun(inputs, out, random_checkpoint)
    assert rerun.returncode != 0
    for rank, log in ((0, out / "batch.rank0.log"), (1, out / "batch.rank1.log")):
        text = log.read_text()
        ok_case = "a_ok" if rank == 0 else "d_ok"
        assert text.count(f"case {ok_case}: processing") == 1
        assert f"case {ok_case}: finished earlier, skipped" in text
        assert "loading model" in text and text.count("loading model") == 1   # no model load on the rerun
    assert [r["reused"] for r in _rows(out / "summary.csv")] == ["true", "false", "false", "true"]
