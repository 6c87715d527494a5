"""An interrupted training run, resumed by running it again: its loss log holds every step once, and the same
interruption resumed twice gives the same weights (both trainers)."""
from __future__ import annotations

import csv

import pytest
import torch


class Interrupt(Exception):
    pass


def interrupt_at(marker: str):
    """A log callback that stops the run when it logs ``marker`` (after that step's loss row is written and
    before its checkpoint): what a kill between two checkpoints leaves behind."""
    def log(line: str):
        if marker in line:
            raise Interrupt(line)
    return log


def logged_steps(path) -> list[int]:
    with open(path, newline="") as fh:
        return [int(r["step"]) for r in csv.DictReader(fh)]


@pytest.fixture
def tiny_cache(tmp_path):
    """Three cached slice-views with random features and a liver and a spleen in each label."""
    from priorsam.models.image_encoder import EncoderFeatures
    from priorsam.training.cache import FeatureCache

    cache = FeatureCache(tmp_path / "cache")
    g = torch.Generator().manual_seed(0)
    for z in range(3):
        feats = EncoderFeatures(torch.randn(256, 64, 64, generator=g),
                                (torch.randn(128, 128, 128, generator=g), torch.randn(160, 64, 64, generator=g)))
        label = torch.zeros(256, 256, dtype=torch.uint8)
        label[40:140, 30:120] = 5
        label[60:120, 170:220] = 1
        cache.put(f"entry{z:02d}", feats, label, {"case": "tiny", "view": 0, "z": z, "context": 0,
                                                    "spacing_mm": 1.5, "augment": False, "present": [1, 5]})
    return tmp_path / "cache"


def test_the_heads_resume_with_one_log_row_per_step_and_the_same_weights(tiny_cache, tmp_path):
    from priorsam.models.spec import read_checkpoint
    from priorsam.training.trainer import TrainConfig, train

    weights = []
    for run in ("a", "b"):
        cfg = TrainConfig(cache=str(tiny_cache), out_dir=str(tmp_path / run), steps=4, batch_size=2, warmup=1,
                          log_every=1, ckpt_every=2, threads=1, device="cpu")
        with pytest.raises(Interrupt):
            train(cfg, log=interrupt_at("[train] step 3/4"))
        assert logged_steps(tmp_path / run / "log.csv") == [1, 2, 3]     # step 3 logged, its checkpoint not made
        said = []
        train(cfg, log=said.append)
        assert "[train] resumed at step 2" in said
        assert logged_steps(tmp_path / run / "log.csv") == [1, 2, 3, 4]
        weights.append(read_checkpoint(tmp_path / run / "model.pt")[0])
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_the_localiser_resumes_with_one_log_row_per_step_and_the_same_weights(tmp_path):
    from priorsam.models.spec import read_localiser_checkpoint
    from priorsam.training.localiser import LocaliserTrainConfig, train_localiser

    weights = []
    for run in ("a", "b"):
        cfg = LocaliserTrainConfig(bank=str(tmp_path / "no_bank"), out_dir=str(tmp_path / run), train_cases=["sample"],
                                   crop=(16, 16, 16), init_filters=8, batch_size=1, steps=4, log_every=1,
                                   ckpt_every=2, threads=1, device="cpu")
        with pytest.raises(Interrupt):
            train_localiser(cfg, log=interrupt_at("[localiser] step 3/4"))
        assert logged_steps(tmp_path / run / "log.csv") == [1, 2, 3]
        said = []
        train_localiser(cfg, log=said.append)
        assert "[localiser] resumed at step 2" in said
        assert logged_steps(tmp_path / run / "log.csv") == [1, 2, 3, 4]
        state, spec = read_localiser_checkpoint(tmp_path / run / "localiser.pt")
        assert spec.steps == 4
        weights.append(state)
    assert weights[0] and weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
