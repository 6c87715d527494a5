"""The engine on a CUDA GPU, against the CPU engine on the same input. Skipped where no CUDA GPU is usable
(CI has none); run on a GPU machine with ``pytest tests/test_cuda.py``.

On a GPU the heads, the localiser and the box-prompt path run there while the engine builds the
localiser's boxes, and a CPU runtime (OpenVINO, ONNX Runtime) its features, on the CPU: every such
hand-over is crossed here with the shipped weights (localiser included) on real slices of the sample CT.
"""
from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine")]


@pytest.fixture(scope="module")
def organ_slab(tmp_path_factory):
    """32 slices of the sample CT through its organs (NIfTI) and their labels (array)."""
    from priorsam.data.samples import sample_ct

    s = sample_ct()
    img, lab = nib.load(str(s.image)), nib.load(str(s.label))
    labels = np.asarray(lab.dataobj).astype(np.uint8)
    z = np.flatnonzero(labels.any(axis=(0, 1)))
    z0 = int((z.min() + z.max()) // 2) - 16
    crop = img.slicer[:, :, z0:z0 + 32]
    path = tmp_path_factory.mktemp("cuda") / "sample_organs32.nii.gz"
    nib.save(crop, str(path))
    return path, labels[:, :, z0:z0 + 32]


def dice(a: np.ndarray, b: np.ndarray, k: int) -> float:
    x, y = a == k, b == k
    return float(2 * (x & y).sum() / max(x.sum() + y.sum(), 1))


def agreement(a: np.ndarray, b: np.ndarray) -> dict[int, float]:
    """Dice per label present in ``a`` with ≥ 500 voxels (tiny organ tips flip on rounding)."""
    return {int(k): dice(a, b, k) for k in np.unique(a) if k and (a == k).sum() >= 500}


@pytest.fixture(scope="module")
def cpu_labels(organ_slab):
    import priorsam

    # PyTorch on both sides: the same runtime, so what differs is the device alone.
    return priorsam.segment(str(organ_slab[0]), device="cpu", encoder_backend="torch").labels


def test_segment_on_cuda_agrees_with_the_cpu(organ_slab, cpu_labels):
    import priorsam

    res = priorsam.segment(str(organ_slab[0]), device="cuda")
    per_organ = agreement(cpu_labels, res.labels)
    assert len(per_organ) >= 4, per_organ
    assert np.mean(list(per_organ.values())) >= 0.95, per_organ
    assert min(per_organ.values()) >= 0.85, per_organ


def test_a_cpu_encoder_runtime_feeds_heads_on_cuda(organ_slab, cpu_labels):
    import priorsam

    res = priorsam.segment(str(organ_slab[0]), device="cuda", encoder_backend="onnx")
    per_organ = agreement(cpu_labels, res.labels)
    assert np.mean(list(per_organ.values())) >= 0.95, per_organ


def test_box_prompt_and_its_name_on_cuda(organ_slab):
    from priorsam.engine.box_segment import segment_box
    from priorsam.engine.naming import name_prompted_organ
    from priorsam.io import read_volume
    from priorsam.labels import labels

    path, truth = organ_slab
    liver = next(lab.id for lab in labels() if lab.name == "liver")
    idx = np.argwhere(truth == liver)
    box = ",".join(str(int(v)) for v in (*idx.min(0), *idx.max(0)))
    vol = read_volume(path)
    on = {dev: segment_box(vol, box, space="voxel", device=dev, show_bar=False) for dev in ("cpu", "cuda")}
    assert dice(on["cpu"].astype(np.uint8), on["cuda"].astype(np.uint8), 1) >= 0.97
    # The same answer on both devices; whether it is right is bench/results/naming.md's question.
    named = {dev: name_prompted_organ(vol, on["cuda"], device=dev) for dev in ("cpu", "cuda")}
    assert named["cpu"][:2] == named["cuda"][:2]
    assert abs(named["cpu"][2] - named["cuda"][2]) < 0.05
