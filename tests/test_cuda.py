"""The engine on a CUDA GPU, against the CPU engine on the same input. Skipped where no CUDA GPU is usable
(CI has none); run on a GPU machine with ``pytest tests/test_cuda.py``.

On a GPU the heads, the localiser and the box-prompt path run there while the engine builds the
localiser's boxes, and a CPU runtime (OpenVINO, ONNX Runtime) its features, on the CPU: every such
hand-over is crossed here with the shipped weights (localiser included) on real slices of the sample CT,
and the refinement alone with a stand-in box decoder.
"""
from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine")]
GPU = "cuda"   # the device of the tests that name it (a rehearsal on a machine without one may set it to "cpu")


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


def test_openvino_forced_on_cpu_feeds_heads_on_cuda(organ_slab, cpu_labels):
    """OpenVINO runs the encoder and the box decoder on the CPU, the heads and the localiser run on the GPU:
    the box decoder's logits come back to the heads' device (before, the refinement mixed devices)."""
    pytest.importorskip("openvino")
    import priorsam

    res = priorsam.segment(str(organ_slab[0]), device="cuda", encoder_backend="openvino", cpu_precision="fp32")
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


def _box_decoder(embedding: torch.Tensor, boxes: torch.Tensor):
    """A stand-in box decoder on the embedding's device: logit +1 inside each (B, 4) box, −1 outside."""
    assert boxes.device == embedding.device, (embedding.device, boxes.device)
    x = torch.arange(256, device=embedding.device, dtype=torch.float32)
    cols = (x >= boxes[:, 0, None]) & (x <= boxes[:, 2, None])              # (B, 256)
    rows = (x >= boxes[:, 1, None]) & (x <= boxes[:, 3, None])
    inside = rows[:, :, None] & cols[:, None, :]
    return (inside.float() * 2 - 1)[:, None], torch.zeros(len(boxes), 1, device=embedding.device)


@pytest.mark.parametrize("options", [{}, {"heads_veto": 0.3, "heads_fill": 0.6},
                                     {"box_source": "agree", "conflicts": "semantic"}])
@pytest.mark.parametrize("guided", [False, True])
def test_refinement_on_cuda_gives_the_cpu_labels(options, guided):
    """The refinement alone, every hand-over of its inputs: the heads' output and the embedding on the GPU,
    the localiser's boxes built on the CPU (as the engine builds them), a box decoder answering on the GPU."""
    from priorsam.models.refinement import RefineOptions, refine_to_labels

    g = torch.Generator().manual_seed(0)
    n, c = 3, 9
    logits = torch.randn(n, c, 256, 256, generator=g) * 3
    out = {"semantic_logits": logits, "round_logits": [logits], "presence_logits": torch.randn(n, c, generator=g)}
    embedding = torch.randn(n, 256, 64, 64, generator=g)
    guide = prompts = None
    if guided:
        guide = torch.full((n, c, 4), float("nan"))
        guide[:, 1] = torch.tensor([20.0, 20, 200, 200])
        guide[:, 2] = float("inf")                      # an organ the localiser found nowhere
        guide[:, 3:] = torch.tensor([10.0, 10, 250, 250])
        prompts = guide.clone()
        prompts[:, 2] = float("nan")
    opts = RefineOptions(**options)
    on_cpu = refine_to_labels(out, embedding, _box_decoder, guide, opts, prompts)
    gpu = torch.device("cuda")
    out_gpu = {"semantic_logits": logits.to(gpu), "round_logits": [logits.to(gpu)],
               "presence_logits": out["presence_logits"].to(gpu)}
    on_gpu = refine_to_labels(out_gpu, embedding.to(gpu), _box_decoder, guide, opts, prompts)
    assert on_gpu.device.type == "cuda"
    assert torch.equal(on_gpu.cpu(), on_cpu)


def _runs() -> dict[str, str]:
    return {"on_cpu": "cpu", "on_gpu": GPU}


def _said_on(device: str) -> str:
    return "[localiser] on " + ("CUDA GPU" if device.startswith("cuda") else "CPU")


def _first_loss(run) -> float:
    import csv

    with open(run / "log.csv", newline="") as f:
        return float(next(csv.DictReader(f))["loss"])


def test_the_localiser_trains_on_cuda_resumes_on_either_device_and_exports_cpu_weights(tmp_path):
    """The same seed draws the same crops and initial weights on both devices, so the first step's loss
    agrees; a run stopped on the GPU goes on on the CPU from its last.pt and the other way round."""
    from priorsam.models.spec import read_localiser_checkpoint
    from priorsam.training.localiser import LocaliserTrainConfig, train_localiser

    small = dict(bank=str(tmp_path / "no_bank"), train_cases=["sample"], crop=(16, 16, 16), init_filters=8,
                 batch_size=1, steps=2, log_every=1, ckpt_every=1, threads=1)
    for run, dev in _runs().items():
        said = []
        train_localiser(LocaliserTrainConfig(out_dir=str(tmp_path / run), device=dev, **small), log=said.append)
        assert any(line.startswith(_said_on(dev)) for line in said)
    assert _first_loss(tmp_path / "on_gpu") == pytest.approx(_first_loss(tmp_path / "on_cpu"), abs=0.02)
    state, _ = read_localiser_checkpoint(tmp_path / "on_gpu" / "localiser.pt")
    assert all(v.device.type == "cpu" for v in state.values())
    for run, other in (("on_gpu", "cpu"), ("on_cpu", GPU)):
        said = []
        train_localiser(LocaliserTrainConfig(out_dir=str(tmp_path / run), device=other, **{**small, "steps": 3}),
                        log=said.append)
        assert "[localiser] resumed at step 2" in said
        assert read_localiser_checkpoint(tmp_path / run / "localiser.pt")[1].steps == 3


def test_the_heads_train_on_cuda_from_a_cache_encoded_there(tmp_path):
    """train.json's path on a GPU: the cache encoded by the PyTorch encoder on the GPU, the heads (box
    prompts every step, so the frozen box decoder too) trained there; the first step's loss agrees with
    the CPU's, the exported weights are CPU tensors and load as a full model."""
    from conftest import save_nifti, synthetic_ct_array
    from priorsam.bundle_support.training import build_training_cache
    from priorsam.engine.weights import load_priorsam
    from priorsam.models.spec import read_checkpoint
    from priorsam.training.trainer import TrainConfig, train

    img = synthetic_ct_array((36, 30, 2), seed=3)
    lab = np.zeros(img.shape, np.uint8)
    lab[img > 50] = 5
    lab[img > 300] = 7
    item = {"image": str(save_nifti(tmp_path / "case.nii.gz", img)),
            "label": str(save_nifti(tmp_path / "case_label.nii.gz", lab))}
    cases = build_training_cache([item], str(tmp_path / "cache"), views=0, device=GPU)
    for run, dev in _runs().items():
        train(TrainConfig(cache=str(tmp_path / "cache"), out_dir=str(tmp_path / run), cases=cases, steps=2,
                          batch_size=2, warmup=1, prompt_every=1, log_every=1, ckpt_every=1, device=dev),
              log=lambda *_: None)
    assert _first_loss(tmp_path / "on_gpu") == pytest.approx(_first_loss(tmp_path / "on_cpu"), abs=0.02)
    state, _ = read_checkpoint(tmp_path / "on_gpu" / "model.pt")
    assert all(v.device.type == "cpu" for v in state.values())
    load_priorsam.cache_clear()
    assert load_priorsam(str(tmp_path / "on_gpu" / "model.pt"), "cpu").binary is not None


def test_the_onnx_cache_encoder_is_refused_on_a_gpu():
    from priorsam.errors import InputError
    from priorsam.training.build_cache import EncoderOn, cache_encoder

    with pytest.raises(InputError, match="CPU only"):
        cache_encoder("onnx", GPU)
    assert isinstance(cache_encoder("auto", GPU), EncoderOn)


@pytest.mark.parametrize("slices", [2, 14])
def test_thin_and_partial_scans_on_cuda_agree_with_the_cpu(organ_slab, tmp_path, slices):
    """Two slices whose header says 2 mm apart (4 mm of z, under the localiser's 6 mm: the heads answer alone)
    and 14 slices of 3 mm (42 mm: a partial scan, the localiser's probabilities over four shifted passes)."""
    import nibabel as nib

    import priorsam

    path, _ = organ_slab
    img = nib.load(str(path))
    z0 = (img.shape[2] - slices) // 2
    part = img.slicer[:, :, z0:z0 + slices]
    if slices == 2:
        affine = part.affine.copy()
        affine[:3, 2] *= 2.0 / 3.0
        part = nib.Nifti1Image(np.asarray(part.dataobj), affine)
    crop = tmp_path / f"organs{slices}.nii.gz"
    nib.save(part, str(crop))
    on = {dev: priorsam.segment(str(crop), device=dev, encoder_backend="torch").labels for dev in ("cpu", GPU)}
    per_organ = agreement(on["cpu"], on[GPU])
    assert per_organ and np.mean(list(per_organ.values())) >= 0.95, per_organ


def test_the_mirror_check_reads_the_same_on_cuda(organ_slab):
    """The localiser's two passes (as given and flipped) and the warning they lead to, on both devices."""
    from priorsam.engine.localise import localise
    from priorsam.engine.segment import SegmentOptions
    from priorsam.engine.weights import load_priorsam
    from priorsam.io import read_volume

    vol = read_volume(organ_slab[0])
    hu = np.ascontiguousarray(vol.array.astype(np.float32)[::-1])     # flipped left-right, header unchanged
    margin = SegmentOptions().mirror_margin
    read = {dev: localise(hu, vol.spacing, load_priorsam(None, dev).localiser, device=dev, mirror_margin=margin)
            for dev in ("cpu", GPU)}
    assert read["cpu"].usable and read[GPU].usable
    assert [w.split(":")[0] for w in read["cpu"].warnings] == [w.split(":")[0] for w in read[GPU].warnings]
    assert read[GPU].confidence == pytest.approx(read["cpu"].confidence, abs=0.01)
    assert read[GPU].flipped_confidence == pytest.approx(read["cpu"].flipped_confidence, abs=0.01)


def test_the_box_command_answers_with_the_engines_organ_on_cuda(organ_slab, tmp_path, capsys):
    """``priorsam segment-box --method organs --label auto`` on a GPU: the engine runs there, the boxed organ is
    matched and named as on the CPU, and the masks agree."""
    from priorsam.cli import main as cli
    from priorsam.labels import labels

    path, truth = organ_slab
    spleen = next(lab.id for lab in labels() if lab.name == "spleen")
    idx = np.argwhere(truth == spleen)
    box = ",".join(str(int(v)) for v in (*idx.min(0), *idx.max(0)))
    masks, printed = {}, {}
    for dev in ("cpu", GPU):
        out = tmp_path / f"spleen_{dev}.nii.gz"
        assert cli(["segment-box", "--image", str(path), "--box", box, "--label", "auto", "--method", "organs",
                    "--out", str(out), "--device", dev]) == 0
        printed[dev] = [line for line in capsys.readouterr().out.splitlines() if line.startswith("PRIORSAM_LABEL")]
        masks[dev] = np.asarray(nib.load(str(out)).dataobj)
    assert printed["cpu"] == printed[GPU] == [f"PRIORSAM_LABEL spleen {spleen}"]
    assert dice(masks["cpu"], masks[GPU], spleen) >= 0.97
