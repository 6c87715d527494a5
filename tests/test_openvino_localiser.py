"""The 3D localiser's OpenVINO runtime: PyTorch's answer, a cache keyed by its weights, and an engine that
loads it in a fresh process without importing MONAI."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

pytest.importorskip("openvino")

from priorsam.engine.localise import localise, probabilities  # noqa: E402
from priorsam.models import openvino_localiser as ovl  # noqa: E402
from priorsam.models.openvino_localiser import OpenVinoLocaliser  # noqa: E402
from priorsam.models.spec import LocaliserSpec, build_localiser, load_model, spec_for_bank, write_checkpoint  # noqa: E402
from priorsam.priors.bank import load_prior_bank  # noqa: E402


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PRIORSAM_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def small_localiser(seed: int):
    torch.manual_seed(seed)
    spec = LocaliserSpec(init_filters=8, min_shape=[16, 16, 16])
    net = build_localiser(spec).eval()
    # Random biases make the classes differ, so the argmax below is a real comparison.
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return net, spec


def test_it_gives_pytorchs_logits_on_grids_of_any_size(cache):
    net, spec = small_localiser(0)
    ov_loc = OpenVinoLocaliser(net.state_dict(), spec, build_localiser)
    assert (ov_loc.num_classes, ov_loc.spacing_mm, ov_loc.min_shape) == (9, 4.0, (16, 16, 16))
    for shape in ((16, 16, 16), (24, 40, 16), (32, 16, 48)):
        hu = torch.rand(1, *shape) * 1400 - 1000
        x = ov_loc.prepare(hu)
        assert torch.equal(x, net.prepare(hu))
        with torch.inference_mode():
            ref = net(x)
        out = ov_loc(x)
        assert out.shape == ref.shape == (1, 9, *shape)
        assert torch.allclose(out, ref, atol=1e-3, rtol=1e-3), (out - ref).abs().max()
        assert (out.argmax(1) == ref.argmax(1)).float().mean() > 0.999


def test_the_converted_graph_is_cached_per_weights_and_reused_without_building_the_network(cache):
    net, spec = small_localiser(0)
    xml = ovl.localiser_ir(net.state_dict(), spec, build_localiser)
    assert xml.is_file() and xml.with_suffix(".bin").is_file() and xml.parent.parent == cache
    other, _ = small_localiser(1)
    assert ovl.localiser_ir(other.state_dict(), spec, build_localiser) != xml   # other weights, another graph

    def no_network(spec):
        raise AssertionError("the cached graph should have been used")

    assert ovl.localiser_ir(net.state_dict(), spec, no_network) == xml
    OpenVinoLocaliser(net.state_dict(), spec, no_network)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from priorsam.models.spec import build_model

    bank = load_prior_bank("v1")
    torch.manual_seed(0)
    spec = spec_for_bank(bank, heads={"refine_rounds": 1}, localiser=LocaliserSpec(init_filters=8))
    model = build_model(spec, encoder=None, binary_path=False, pretrained=False, prior_bank=bank)
    return write_checkpoint(tmp_path_factory.mktemp("ckpt") / "m.pt", model.trainable_state_dict(), spec)


def test_load_model_attaches_it_and_the_engine_step_gives_the_same_answer(cache, checkpoint):
    torch_model = load_model(checkpoint, encoder=None, binary_path=False)
    ov_model = load_model(checkpoint, encoder=None, binary_path=False, localiser_runtime="openvino")
    assert isinstance(ov_model.localiser, OpenVinoLocaliser)
    assert set(ov_model.trainable_state_dict()) == {k for k in torch_model.trainable_state_dict()
                                                    if not k.startswith("localiser.")}
    rng = np.random.default_rng(0)
    coarse = (rng.normal(40, 300, (40, 32, 24))).astype(np.float32)
    a = probabilities(coarse, torch_model.localiser, shifts=2)
    b = probabilities(coarse, ov_model.localiser, shifts=2)
    assert np.abs(a - b).max() < 1e-3
    hu = rng.normal(40, 300, (64, 56, 40)).astype(np.float32)
    spacing = np.array([3.0, 3.0, 3.0])
    ra, rb = localise(hu, spacing, torch_model.localiser), localise(hu, spacing, ov_model.localiser)
    assert {k: v for k, v in ra.summary().items() if k != "seconds"} == \
        {k: v for k, v in rb.summary().items() if k != "seconds"}
    assert ra.boxes == rb.boxes and np.array_equal(ra.coarse_labels, rb.coarse_labels)
    with pytest.raises(ValueError, match="runs on the CPU"):
        load_model(checkpoint, device="cuda", encoder=None, binary_path=False, localiser_runtime="openvino")
    with pytest.raises(ValueError, match="torch or openvino"):
        load_model(checkpoint, encoder=None, binary_path=False, localiser_runtime="onnx")


def test_a_localiser_that_does_not_fit_its_spec_is_a_clear_error(cache, checkpoint, tmp_path):
    from dataclasses import replace

    from priorsam.errors import AssetError
    from priorsam.models.spec import read_checkpoint

    state, spec = read_checkpoint(checkpoint)
    wider = write_checkpoint(tmp_path / "w.pt", state,
                             replace(spec, localiser=replace(spec.localiser, init_filters=16)))
    with pytest.raises(AssetError, match="localiser weights do not fit"):
        load_model(wider, encoder=None, binary_path=False, localiser_runtime="openvino")


def test_the_engine_asks_for_it_where_the_encoder_runs_in_openvino(monkeypatch):
    from types import SimpleNamespace

    from priorsam.engine import weights
    from priorsam.engine.segment import Segmenter, SegmentOptions

    asked = []
    monkeypatch.setattr(weights, "load_priorsam",
                        lambda path, device, runtime: asked.append(runtime) or SimpleNamespace(config={}, binary=None))
    for backend in ("auto", "openvino", "onnx", "torch"):
        Segmenter(device="cpu", options=SegmentOptions(encoder_backend=backend), encoder=lambda images: None)
    assert asked == ["openvino", "openvino", "torch", "torch"]
    from priorsam.models.encoder_backend import localiser_runtime

    assert localiser_runtime("auto", torch.device("cuda")) == "torch"      # a GPU keeps the PyTorch localiser


def test_a_fresh_process_with_the_graph_cached_loads_the_engine_without_importing_monai(cache, checkpoint):
    # The first load converts the graph (building the network imports MONAI); a later process reuses it.
    script = ("import json, sys, torch\n"
              "import priorsam.cli, priorsam.engine.segment\n"
              "from priorsam.engine.weights import load_priorsam\n"
              "from priorsam.models.encoder_backend import localiser_runtime\n"
              "runtime = localiser_runtime('auto', torch.device('cpu'))\n"
              f"model = load_priorsam({str(checkpoint)!r}, 'cpu', runtime)\n"
              "print(json.dumps([runtime, type(model.localiser).__name__, 'monai' in sys.modules]))\n")
    env = {**os.environ, "PRIORSAM_CACHE": str(cache)}
    runs = [json.loads(subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                                      check=True).stdout.strip().splitlines()[-1]) for _ in range(2)]
    assert runs == [["openvino", "OpenVinoLocaliser", True], ["openvino", "OpenVinoLocaliser", False]]
