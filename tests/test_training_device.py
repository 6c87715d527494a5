"""Where the trainers run: the heads' and the localiser's trainers and the feature cache's encoder take a
device (auto, cpu, cuda, cuda:N). A GPU asked for where none is usable is refused in one line before any
data is read; the device reaches every localiser stage and is kept in each run's config. The GPU side itself
is in tests/test_cuda.py (skipped without one)."""
from __future__ import annotations

import json

import pytest
import torch

from priorsam.errors import InputError


@pytest.fixture
def no_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def test_a_gpu_asked_for_where_there_is_none_is_refused_before_anything_is_read(tmp_path, no_gpu):
    from priorsam.training import build_cache, heads_bank, localiser
    from priorsam.training.build_cache import cache_encoder
    from priorsam.training.localiser import LocaliserTrainConfig, train_localiser
    from priorsam.training.trainer import TrainConfig, train

    # Neither folder exists: without the early check each run would fail on its data instead.
    with pytest.raises(InputError, match="no CUDA GPU"):
        train(TrainConfig(cache=str(tmp_path / "no_cache"), out_dir=str(tmp_path / "heads"), device="cuda"))
    with pytest.raises(InputError, match="no CUDA GPU"):
        train_localiser(LocaliserTrainConfig(bank=str(tmp_path / "no_bank"), out_dir=str(tmp_path / "loc"),
                                             device="cuda:0"), log=lambda *_: None)
    with pytest.raises(InputError, match="unknown device 'tpu'"):
        train(TrainConfig(cache=str(tmp_path / "no_cache"), out_dir=str(tmp_path / "heads"), device="tpu"))
    with pytest.raises(InputError, match="no CUDA GPU"):
        cache_encoder("torch", "cuda")
    assert not (tmp_path / "heads").exists() and not (tmp_path / "loc").exists()
    assert localiser.main(["--bank", str(tmp_path / "no_bank"), "--out_dir", str(tmp_path / "loc"),
                           "--device", "cuda"]) != 0
    assert build_cache.main(["--cache", str(tmp_path / "cache"), "--device", "cuda"]) != 0
    assert not (tmp_path / "cache").exists()
    (tmp_path / "config.json").write_text(json.dumps({"steps": 1}))
    (tmp_path / "parts.json").write_text(json.dumps([{"cases": "sample", "views": 0}]))
    assert heads_bank.main(["--bank", str(tmp_path / "no_bank"), "--work", str(tmp_path / "work"), "--config",
                            str(tmp_path / "config.json"), "--parts", str(tmp_path / "parts.json"),
                            "--device", "cuda"]) != 0
    assert not (tmp_path / "work").exists()


def test_a_missing_cache_or_bank_is_one_line_and_leaves_no_folder(tmp_path, capsys):
    """Until 0.8.6 ``priorsam train`` on a wrong --cache ended in a traceback and left an empty cache folder and
    run folder behind; the localiser's trainer left its run folder."""
    from priorsam.cli import main as cli
    from priorsam.training import localiser
    from priorsam.training.trainer import TrainConfig, train

    with pytest.raises(InputError, match="no feature cache at"):
        train(TrainConfig(cache=str(tmp_path / "no_cache"), out_dir=str(tmp_path / "heads"), device="cpu"))
    assert cli(["train", "--cache", str(tmp_path / "no_cache"), "--out_dir", str(tmp_path / "heads")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: no feature cache at"), err
    assert localiser.main(["--bank", str(tmp_path / "no_bank"), "--out_dir", str(tmp_path / "loc"),
                           "--device", "cpu"]) == 1
    assert "holds no pseudo-patients" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_the_cache_encoder_is_onnx_runtime_on_a_cpu_and_pytorch_when_asked(no_gpu):
    from priorsam.models.onnx_encoder import OnnxLiteEncoder
    from priorsam.training.build_cache import EncoderOn, cache_encoder

    assert isinstance(cache_encoder("auto", "auto"), OnnxLiteEncoder)
    torch_encoder = cache_encoder("torch", "cpu")
    assert isinstance(torch_encoder, EncoderOn) and torch_encoder.device == torch.device("cpu")
    with pytest.raises(InputError, match="use auto, onnx or torch"):
        cache_encoder("tensorrt", "cpu")


def test_the_device_reaches_every_localiser_stage_and_is_kept_in_its_config(tmp_path):
    from priorsam.training.localiser import train_stages

    small = dict(train_cases=["sample"], crop=[16, 16, 16], init_filters=8, batch_size=1, steps=1, log_every=1,
                 ckpt_every=1, threads=1, device="cuda")   # each stage's own choice, overridden below
    said = []
    train_stages(str(tmp_path / "bank"), [small, {**small, "seed": 1}], str(tmp_path / "run"), log=said.append,
                 device="cpu")
    for k in (1, 2):
        assert json.loads((tmp_path / "run" / f"stage_{k}" / "config.json").read_text())["device"] == "cpu"
    assert sum(line.startswith("[localiser] on CPU") for line in said) == 2


def test_a_gpu_out_of_memory_is_one_line_and_other_faults_keep_their_traceback(capsys):
    """Every command reports PyTorch's out-of-memory error (here raised by hand: this machine may have no GPU)
    as one line saying what to do; any other unexpected error still raises, with its traceback."""
    from priorsam.errors import gpu_out_of_memory, one_line_errors

    def out_of_memory():
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 3.8 GiB total)\nmore")

    assert one_line_errors(out_of_memory)() == 1
    said = capsys.readouterr().err.strip().splitlines()
    assert len(said) == 1 and said[0].startswith("error: the GPU ran out of memory (CUDA out of memory. Tried")
    assert "--device cpu" in said[0]
    assert gpu_out_of_memory(torch.cuda.OutOfMemoryError("x")) and not gpu_out_of_memory(RuntimeError("x"))

    def fault():
        raise RuntimeError("a bug")

    with pytest.raises(RuntimeError, match="a bug"):
        one_line_errors(fault)()


@pytest.mark.slow
@pytest.mark.parametrize("config", ["train_localiser", "train_heads_bank"])
def test_the_bundles_training_ends_a_missing_gpu_with_one_line(config, tmp_path):
    """`python -m monai.bundle run` of a training config with --device cuda where no GPU is visible: one error
    line and exit 1, no traceback, nothing written."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    bundle = Path(__file__).resolve().parents[1] / "bundle"
    shipped = str(bundle / "models" / "model.pt")
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(bundle / "configs" / f"{config}.json"),
           "--meta_file", str(bundle / "configs" / "metadata.json"), "--bank_dir", str(tmp_path / "bank"),
           "--output_dir", str(tmp_path / "run"), "--ckpt_path", str(tmp_path / "out.pt"), "--device", "cuda",
           "--heads_from" if config == "train_localiser" else "--localiser_from", shipped]
    # An anatomy folder that does not exist: were the device checked after it, the bank build would fail first.
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PRIORSAM_ANATOMY_DIR": str(tmp_path / "no_anatomy")}
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=bundle.parent, timeout=600, env=env)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert errors == ["error: device 'cuda' requested but no CUDA GPU is usable here (use --device cpu or auto)"]
    assert not (tmp_path / "run").exists() and not (tmp_path / "out.pt").exists()
