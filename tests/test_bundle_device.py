"""The MONAI bundle run with every ``--device`` value the Slicer module can send, through the exact command
line the module builds (``PriorSAMLib.commands.organ_job``). ``cuda`` runs where a CUDA GPU is usable;
elsewhere it must end with one ``error: …`` line and exit 1, not a traceback. Slow: real model runs.
"""
from __future__ import annotations

import os
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
import torch

import slicer_helpers  # noqa: F401  (puts PriorSAMLib on sys.path)
from conftest import save_nifti, synthetic_ct_array
from PriorSAMLib import commands

pytestmark = pytest.mark.slow

SENT = sorted(set(commands.DEVICES.values()))   # what the module's device choices map to


def test_the_module_sends_auto_cpu_and_cuda():
    assert SENT == ["auto", "cpu", "cuda"]


@pytest.mark.parametrize("device", SENT)
def test_bundle_runs_with_each_device_the_module_sends(device, tmp_path, random_checkpoint, monkeypatch):
    monkeypatch.chdir(tmp_path)  # not the checkout: the bundle is found from the installed package
    job = commands.organ_job(tmp_path / "work", device, backend="bundle", python=sys.executable,
                             weights=str(random_checkpoint))
    assert job.command[job.command.index("--device") + 1] == device
    job.input_path.parent.mkdir(parents=True)
    save_nifti(job.input_path, synthetic_ct_array((48, 40, 2)))
    env = {**os.environ, **job.env}
    proc = subprocess.run(job.command, capture_output=True, text=True, env=env, timeout=1200)
    if device == "cuda" and not torch.cuda.is_available():
        assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
        assert "Traceback" not in proc.stderr
        errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
        assert errors == ["error: device 'cuda' requested but no CUDA GPU is usable here (use --device cpu or auto)"]
        assert job.find_output() is None
        return
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = job.find_output()
    assert out is not None
    written = nib.load(str(out))
    assert written.shape == (48, 40, 2) and np.array_equal(written.affine, nib.load(str(job.input_path)).affine)
    assert "PRIORSAM_PROGRESS 2 2" in proc.stdout
    assert "Restored all variables from" in proc.stdout + proc.stderr  # the CheckpointLoader handler ran
