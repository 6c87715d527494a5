"""The encoder runtimes the engine can pick: same features as PyTorch, and the choice logic."""
from __future__ import annotations

import pytest
import torch

from priorsam.models.encoder_backend import resolve_backend


def test_auto_prefers_openvino_then_onnx_on_cpu_and_torch_on_gpu(monkeypatch):
    import priorsam.models.encoder_backend as eb

    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    monkeypatch.setattr(eb, "_installed", lambda m: True)
    assert resolve_backend("auto", cpu) == "openvino" and resolve_backend("auto", gpu) == "torch"
    monkeypatch.setattr(eb, "_installed", lambda m: m == "onnxruntime")
    assert resolve_backend("auto", cpu) == "onnx"
    monkeypatch.setattr(eb, "_installed", lambda m: False)
    assert resolve_backend("auto", cpu) == "torch"
    assert resolve_backend("onnx", gpu) == "onnx"
    with pytest.raises(ValueError, match="unknown encoder backend 'tensorrt'"):
        resolve_backend("tensorrt", cpu)


def test_the_compiled_localiser_is_chosen_on_a_cpu_only(monkeypatch):
    """With the heads on a GPU the localiser stays a PyTorch module there, even with OpenVINO forced for the
    encoder: load_model refuses the CPU-only compiled localiser off the CPU, which once stopped
    ``priorsam segment --device cuda --encoder openvino`` at loading with an error about a localiser the
    user never chose."""
    import priorsam.models.encoder_backend as eb

    monkeypatch.setattr(eb, "_installed", lambda m: True)
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert eb.localiser_runtime("auto", cpu) == eb.localiser_runtime("openvino", cpu) == "openvino"
    assert eb.localiser_runtime("onnx", cpu) == eb.localiser_runtime("torch", cpu) == "torch"
    for backend in ("auto", "openvino", "onnx", "torch"):
        assert eb.localiser_runtime(backend, gpu) == "torch"


def test_weights_on_another_encoder_never_run_the_litemedsam_runtimes(monkeypatch):
    import priorsam.models.encoder_backend as eb

    monkeypatch.setattr(eb, "_installed", lambda m: True)
    assert resolve_backend("auto", torch.device("cpu"), encoder="vit_b") == "torch"
    with pytest.raises(ValueError, match="holds LiteMedSAM's encoder, not 'vit_b'"):
        resolve_backend("openvino", torch.device("cpu"), encoder="vit_b")


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a.flatten(1), b.flatten(1)).min())


@pytest.mark.slow
def test_onnx_and_openvino_match_the_pytorch_encoder():
    from priorsam.models.image_encoder import LiteImageEncoder
    from priorsam.models.onnx_encoder import OnnxLiteEncoder
    from priorsam.models.openvino_encoder import OpenVinoLiteEncoder

    g = torch.Generator().manual_seed(0)
    # A CT-like input: smooth blobs, not white noise (bf16 error on noise says little about CT).
    x = torch.nn.functional.interpolate(torch.rand(2, 3, 16, 16, generator=g), size=256, mode="bilinear")
    with torch.inference_mode():
        ref = LiteImageEncoder(pretrained=True).eval()(x)
    ort = OnnxLiteEncoder(threads=2)(x)
    assert (ort.embedding - ref.embedding).abs().max() < 1e-3
    ov = OpenVinoLiteEncoder(threads=2)
    f = ov(x)
    assert f.embedding.shape == ref.embedding.shape == (2, 256, 64, 64)
    assert [s.shape for s in f.skips] == [s.shape for s in ref.skips]
    # OpenVINO may run bf16 on this CPU: close, not equal.
    assert _cos(f.embedding, ref.embedding) > 0.99, ov.precision
    assert min(_cos(a, b) for a, b in zip(f.skips, ref.skips)) > 0.98, ov.precision
    # Slices of a batch run as parallel requests: the order must survive.
    single = ov(x[1:2])
    assert _cos(single.embedding, f.embedding[1:2]) > 0.9999


def test_openvino_box_decoder_matches_the_pytorch_binary_path(tmp_path, monkeypatch):
    """The refinement's box decoder compiled by OpenVINO (fp32) gives PyTorch's logits, pair for pair,
    in the order given, from the model's own (here random) weights; its IR is reused from the cache."""
    import priorsam.models.openvino_binary_path as ovb
    from priorsam.models.binary_path import BinaryPromptPath

    monkeypatch.setenv("PRIORSAM_CACHE", str(tmp_path))
    torch.manual_seed(0)
    path = BinaryPromptPath(pretrained=False).eval()
    emb = torch.randn(3, 256, 64, 64) * 0.3
    boxes = torch.tensor([[40.0, 50.0, 120.0, 150.0], [100.0, 90.0, 200.0, 140.0], [10.0, 10.0, 60.0, 250.0]])
    with torch.inference_mode():
        ref, ref_iou = path(emb, boxes)
    fast = ovb.OpenVinoBinaryPath(path, threads=2, precision="f32")
    got, iou = fast(emb, boxes)
    assert got.shape == ref.shape == (3, 1, 256, 256) and iou.shape == ref_iou.shape
    assert (got - ref).abs().max() < 1e-3
    assert fast(emb[:0], boxes[:0])[0].shape == (0, 1, 256, 256)
    assert len(list((tmp_path / "openvino").glob("box_decoder_*.xml"))) == 1
    ovb.OpenVinoBinaryPath(path, threads=2, precision="f32")   # second build: the cached IR
    assert len(list((tmp_path / "openvino").glob("box_decoder_*.xml"))) == 1
    other = BinaryPromptPath(pretrained=False)
    assert ovb.weights_digest(other) != ovb.weights_digest(path)


def test_the_box_decoder_runs_where_the_encoder_runs(monkeypatch):
    import priorsam.models.encoder_backend as eb

    monkeypatch.setattr(eb, "_installed", lambda m: m == "onnxruntime")
    assert eb.cpu_binary_path("auto", torch.device("cpu"), object()) is None   # ONNX Runtime: PyTorch path
    assert eb.cpu_binary_path("openvino", torch.device("cpu"), None) is None  # no binary path in the model


def test_cpu_precision_fp32_holds_openvino_to_fp32_on_any_cpu(random_checkpoint):
    """``cpu_precision=fp32`` reaches the compiled encoder and box decoder (on a CPU with AVX-512 bf16 or AMX,
    OpenVINO's own choice would be bf16); other values are refused by name."""
    pytest.importorskip("openvino")
    from priorsam.engine.segment import SegmentOptions, Segmenter
    from priorsam.errors import OptionError

    seg = Segmenter(str(random_checkpoint), "cpu", SegmentOptions(encoder_backend="openvino", cpu_precision="fp32"))
    assert seg.encoder.runtime.precision == "f32" and seg.binary.runtime.precision == "f32"
    with pytest.raises(OptionError, match="cpu_precision"):
        SegmentOptions(cpu_precision="fp16")
