"""Shared fixtures: tiny synthetic CT volumes and a PriorSAM checkpoint with untrained heads.

The untrained checkpoint exercises the real pipeline (real LiteMedSAM encoder and binary
path, real heads architecture); only the head weights are random, so tests check plumbing
and geometry, never accuracy.
"""
from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

SHARED = Path(__file__).resolve().parents[2] / "shared"
VALIDATION = SHARED / "data" / "validation" / "patient_d"


def synthetic_ct_array(shape=(48, 40, 5), seed: int = 0) -> np.ndarray:
    """(X, Y, Z) HU: air, an elliptical soft-tissue trunk, a brighter 'liver' blob and a 'spine'."""
    rng = np.random.default_rng(seed)
    x, y = np.meshgrid(np.linspace(-1, 1, shape[0]), np.linspace(-1, 1, shape[1]), indexing="ij")
    vol = np.full(shape, -1000.0, dtype=np.float32)
    trunk = (x / 0.85) ** 2 + (y / 0.7) ** 2 < 1
    liver = ((x + 0.35) / 0.3) ** 2 + ((y - 0.1) / 0.3) ** 2 < 1
    spine = (x / 0.12) ** 2 + ((y + 0.45) / 0.12) ** 2 < 1
    for z in range(shape[2]):
        s = np.where(trunk, 40.0, -1000.0)
        s[liver] = 60.0
        s[spine] = 500.0
        vol[:, :, z] = s + rng.normal(0, 5, shape[:2])
    return vol


def save_nifti(path: Path, array: np.ndarray, affine: np.ndarray | None = None) -> Path:
    affine = np.diag([2.0, 2.0, 3.0, 1.0]) if affine is None else affine
    nib.save(nib.Nifti1Image(array, affine), str(path))
    return path


@pytest.fixture
def synthetic_ct(tmp_path) -> Path:
    """A 48×40×5 synthetic CT NIfTI (2 mm × 2 mm × 3 mm, RAS)."""
    return save_nifti(tmp_path / "synthetic_ct.nii.gz", synthetic_ct_array())


def build_random_checkpoint(path: Path, seed: int = 0, **model_kwargs) -> Path:
    """A real PriorSAM checkpoint (v1 priors) whose trained heads are randomly initialised."""
    from priorsam.models.spec import build_model, spec_for_bank, write_checkpoint
    from priorsam.priors.bank import load_prior_bank

    torch.manual_seed(seed)
    bank = load_prior_bank("v1")
    spec = spec_for_bank(bank, heads={"refine_rounds": 1, **model_kwargs}, training={"note": "random heads for tests"})
    model = build_model(spec, encoder=None, binary_path=False, pretrained=False, prior_bank=bank)
    return write_checkpoint(path, model.trainable_state_dict(), spec)


@pytest.fixture(scope="session")
def random_checkpoint(tmp_path_factory) -> Path:
    return build_random_checkpoint(tmp_path_factory.mktemp("ckpt") / "random_heads.pt")


def require_shared():
    if not VALIDATION.is_dir():
        pytest.skip("../shared/data/validation is absent (the suite runs without it)")
