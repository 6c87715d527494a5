"""The MONAI bundle end to end (MONAI model-zoo style): ConfigWorkflow initialize → check_properties →
run → finalize for inference, training and evaluation on tiny random NIfTI files, equality with the
library's Python API on a crop of the sample CT, verify_net_in_out and ckpt_export.

These run the real LiteMedSAM encoder on CPU (a few slices each), so they are marked slow.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from conftest import save_nifti, synthetic_ct_array

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundle"
CONFIGS = BUNDLE / "configs"

pytestmark = pytest.mark.slow

# An affine that stores the volume far from RAS (x → L, array axis 1 → I, axis 2 → A), so reading
# to canonical RAS and writing back on the stored grid really have to permute and flip.
ODD_AFFINE = np.array([[-2.0, 0, 0, 40], [0, 0, 3.0, -10], [0, -2.0, 0, 20], [0, 0, 0, 1]])


def _workflow(config: str, workflow_type: str, **overrides):
    from monai.bundle import ConfigWorkflow

    wf = ConfigWorkflow(config_file=config, workflow_type=workflow_type, logging_file=False,
                        meta_file=str(CONFIGS / "metadata.json"), **overrides)
    wf.initialize()
    # train.json runs the library trainer, not MONAI's SupervisedTrainer, so MONAI's "train" property
    # set (trainer, max_epochs, …) does not apply to it: workflow_type None checks the metadata properties.
    assert wf.check_properties() == []
    return wf


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    """One oddly oriented 2-slice CT (for inference) and one labelled 2-slice case (train/eval)."""
    root = tmp_path_factory.mktemp("bundle_data")
    (root / "infer").mkdir()
    save_nifti(root / "infer" / "odd.nii.gz", synthetic_ct_array((36, 2, 30)), ODD_AFFINE)
    img = synthetic_ct_array((36, 30, 2), seed=3)
    lab = np.zeros(img.shape, np.uint8)
    lab[img > 50] = 5
    lab[img > 300] = 7
    for sub in ("imagesTr", "labelsTr"):
        (root / "labelled" / sub).mkdir(parents=True)
    save_nifti(root / "labelled" / "imagesTr" / "tiny.nii.gz", img)
    save_nifti(root / "labelled" / "labelsTr" / "tiny.nii.gz", lab)
    return root


def test_inference_workflow_from_inside_bundle(tiny_data, random_checkpoint, tmp_path, monkeypatch, capsys):
    from priorsam.engine.segment import segment_volume
    from priorsam.io import read_label_map, read_volume

    monkeypatch.chdir(BUNDLE)
    out = tmp_path / "out"
    wf = _workflow("configs/inference.json", "infer", dataset_dir=str(tiny_data / "infer"),
                   output_dir=str(out), ckpt_path=str(random_checkpoint))
    assert Path(wf.bundle_root) == BUNDLE
    wf.run()
    wf.finalize()
    assert "PRIORSAM_PROGRESS 2 2" in capsys.readouterr().out
    src, seg = tiny_data / "infer" / "odd.nii.gz", out / "odd_seg.nii.gz"
    written = nib.load(str(seg))
    assert written.shape == nib.load(str(src)).shape
    assert np.array_equal(written.affine, nib.load(str(src)).affine)
    assert written.get_data_dtype() == np.uint8
    api = segment_volume(read_volume(src), weights=str(random_checkpoint), device="cpu", show_bar=False)
    assert np.array_equal(read_label_map(seg).array.astype(np.uint8), api.labels)


def test_train_then_evaluate_workflows_from_repo_root(tiny_data, tmp_path, monkeypatch):
    from priorsam.engine.weights import load_priorsam
    from priorsam.models.spec import read_checkpoint

    monkeypatch.chdir(REPO)
    trained = tmp_path / "trained.pt"
    run_dir = tmp_path / "run"
    wf = _workflow("bundle/configs/train.json", None, dataset_dir=str(tiny_data / "labelled"),
                   ckpt_path=str(trained), cache_dir=str(tmp_path / "cache"), views=0, steps=3, warmup=1,
                   batch_size=2, output_dir=str(run_dir))
    wf.run()
    wf.finalize()
    # The library trainer ran (its config, CSV log and checkpoints), on the bundle's cached case.
    cfg = json.loads((run_dir / "config.json").read_text())
    assert cfg["steps"] == 3 and len(cfg["cases"]) == 1 and cfg["cases"][0].startswith("tiny-")
    assert cfg["device"] == str(torch.device("cuda" if torch.cuda.is_available() else "cpu"))  # the bundle's device
    rows = list(csv.DictReader(open(run_dir / "log.csv")))
    assert rows[-1]["step"] == "3" and np.isfinite(float(rows[-1]["loss"]))
    state, spec = read_checkpoint(trained)
    assert spec.prior_version == "v1" and spec.spacing_mm == 1.5 and spec.context == 0
    assert spec.training["recipe"]["steps"] == 3 and spec.encoder_sha256
    heads, _ = read_checkpoint(run_dir / "model.pt")
    assert all(torch.equal(heads[k], state[k]) for k in heads)
    assert not any(k.startswith(("encoder.", "binary.")) for k in state)
    load_priorsam.cache_clear()
    assert load_priorsam(str(trained), "cpu").binary is not None  # loads as a full model

    out = tmp_path / "eval"
    wf = _workflow("bundle/configs/evaluate.json", "eval", dataset_dir=str(tiny_data / "labelled"),
                   output_dir=str(out), ckpt_path=str(trained), progress=False)
    wf.run()
    wf.finalize()
    handler = wf.parser.get_parsed_content("metrics_handler")
    assert [c["case"] for c in handler.cases] == ["tiny"]
    # the handler's numbers are those of the saved prediction against the reference
    from priorsam.evaluation import evaluate_case

    pred = np.asarray(nib.load(str(out / "tiny_seg.nii.gz")).dataobj)
    gt = np.asarray(nib.load(str(tiny_data / "labelled" / "labelsTr" / "tiny.nii.gz")).dataobj).astype(np.uint8)
    expect = evaluate_case(pred, gt, (2.0, 2.0, 3.0), "tiny")["organs"]
    for name in ("liver", "aorta"):
        assert handler.cases[0]["organs"][name]["dice"] == pytest.approx(expect[name]["dice"], nan_ok=True)
        assert handler.cases[0]["organs"][name]["gt_voxels"] == int((gt == {"liver": 5, "aorta": 7}[name]).sum())
    report = (out / "report.md").read_text()
    assert "| liver | 1 |" in report and (out / "metrics_per_case.csv").is_file()


def test_train_localiser_workflow_runs_the_library_stages_and_composes_one_checkpoint(random_checkpoint, tmp_path,
                                                                                        monkeypatch):
    """train_localiser.json: the library's localiser trainer over two stages (the second continuing the first),
    then the heads it was given with the new localiser in one checkpoint; the same stages through the library
    give the same weights to the bit."""
    from priorsam.engine.weights import load_priorsam
    from priorsam.models.spec import read_checkpoint, read_localiser_checkpoint
    from priorsam.training.localiser import train_stages

    monkeypatch.chdir(REPO)
    small = dict(train_cases=["sample"], crop=[16, 16, 16], init_filters=8, batch_size=1, steps=2,
                 log_every=1, ckpt_every=1, threads=1)
    stages = []
    for k, seed in enumerate((0, 1), 1):
        stages.append(tmp_path / f"stage{k}.json")
        stages[-1].write_text(json.dumps({**small, "seed": seed, "init_from": "LOC/localiser.pt" if k > 1 else None}))
    out = tmp_path / "with_localiser.pt"
    source = {"name": "a test", "licence": "none", "use": "localiser"}
    wf = _workflow("bundle/configs/train_localiser.json", None, bank_dir=str(tmp_path / "bank"), anatomy_dir=None,
                   output_dir=str(tmp_path / "run"), stage_configs=[str(p) for p in stages],
                   heads_from=str(random_checkpoint), ckpt_path=str(out), data_sources=[source], device="cpu")
    wf.run()
    wf.finalize()
    # Stage 2 started from stage 1's export, not from its file's placeholder path.
    second = json.loads((tmp_path / "run" / "stage_2" / "config.json").read_text())
    assert second["init_from"] == str(tmp_path / "run" / "stage_1" / "localiser.pt")
    assert second["device"] == "cpu"
    state, spec = read_checkpoint(out)
    heads, _ = read_checkpoint(random_checkpoint)
    assert all(torch.equal(heads[k], state[k]) for k in heads)
    assert spec.localiser.steps == 4 and spec.localiser.init_filters == 8 and source in spec.data_sources
    direct, _ = read_localiser_checkpoint(train_stages(str(tmp_path / "bank"), [str(p) for p in stages],
                                                       str(tmp_path / "library"), log=lambda *_: None, device="cpu"))
    said = []
    train_stages(str(tmp_path / "bank"), [str(p) for p in stages], str(tmp_path / "library"), log=said.append,
                 device="cpu")
    assert sum("already trained" in line for line in said) == 2      # resumable: finished stages are not rerun
    loc = {k[len("localiser."):]: v for k, v in state.items() if k.startswith("localiser.")}
    assert loc.keys() == direct.keys() and all(torch.equal(loc[k], direct[k]) for k in loc)
    load_priorsam.cache_clear()
    assert load_priorsam(str(out), "cpu").localiser is not None


def _bank_and_localiser(tmp_path: Path, checkpoint: Path):
    """A tiny synthetic bank of anatomies "a", "b" and "held", the heads and spec of ``checkpoint``, and a random
    localiser that trained on "a" and "b" and holds "held" out (its spec and state): what the bank-trained
    workflows start from."""
    from test_pseudo_cases import _bank

    from priorsam.models.spec import LocaliserSpec, build_localiser, read_checkpoint

    bank = _bank(tmp_path, ["a", "b", "held"])
    heads, spec = read_checkpoint(checkpoint)
    loc_spec = LocaliserSpec(init_filters=8, holdout=["held"], trained_on=["a", "b"], steps=3)
    return bank, heads, spec, loc_spec, build_localiser(loc_spec).state_dict()


def test_train_heads_bank_workflow_trains_the_heads_on_pseudo_patients_and_keeps_the_localiser(random_checkpoint,
                                                                                              tmp_path, monkeypatch):
    """train_heads_bank.json: the bank's pseudo-patients (never the anatomies the localiser holds out) as cases,
    the feature cache in parts with their own views, the library trainer from given heads, then one checkpoint
    with the localiser of localiser_from unchanged; run again, it encodes and trains nothing more. A cache folder
    shared with another recipe's parts (same cases, other shares of slices) trains the same heads."""
    from dataclasses import replace

    from priorsam.models.spec import read_checkpoint, write_checkpoint
    from priorsam.training.cache import FeatureCache
    from priorsam.training.heads_bank import train_heads_on_bank

    monkeypatch.chdir(REPO)
    bank, heads, spec, loc_spec, loc_state = _bank_and_localiser(tmp_path, random_checkpoint)
    source = {"name": "a test bank", "licence": "none", "use": "localiser and heads"}
    with_loc = write_checkpoint(tmp_path / "with_localiser.pt", heads,
                                replace(spec, localiser=loc_spec, data_sources=[source]), loc_state)
    (tmp_path / "parts.json").write_text(json.dumps([{"cases": "plain", "views": 1, "fraction": 0.3},
                                                    {"cases": "arms_table", "views": 0, "fraction": 0.25}]))
    (tmp_path / "config.json").write_text(json.dumps({"steps": 2, "batch_size": 2, "lr": 1e-4, "warmup": 1,
                                                      "prompt_every": 2, "log_every": 1, "ckpt_every": 1,
                                                      "threads": 1, "seed": 7, "init_from": str(random_checkpoint)}))
    out = tmp_path / "new.pt"
    wf = _workflow("bundle/configs/train_heads_bank.json", None, bank_dir=str(bank), anatomy_dir=None,
                   output_dir=str(tmp_path / "run"), ckpt_path=str(out), localiser_from=str(with_loc),
                   heads_config=str(tmp_path / "config.json"), cache_parts=str(tmp_path / "parts.json"))
    wf.run()
    wf.finalize()
    records = FeatureCache(tmp_path / "run" / "cache").records()
    views = {}
    for r in records:
        views.setdefault(r["case"], set()).add(r["view"])
    assert views == {"pseudo_a": {0, 1}, "pseudo_b": {0, 1}, "pseudo_a_arms_table": {0}, "pseudo_b_arms_table": {0}}
    state, new_spec = read_checkpoint(out)
    loc = {k[len("localiser."):]: v for k, v in state.items() if k.startswith("localiser.")}
    assert loc.keys() == loc_state.keys() and all(torch.equal(loc[k], loc_state[k]) for k in loc)
    assert new_spec.localiser.holdout == ["held"] and source in new_spec.data_sources
    trained, _ = read_checkpoint(tmp_path / "run" / "heads" / "model.pt")
    assert all(torch.equal(trained[k], state[k]) for k in trained)
    assert any(not torch.equal(trained[k], heads[k]) for k in heads)          # the heads did train
    said = []
    again = train_heads_on_bank(str(bank), str(tmp_path / "run"), str(tmp_path / "config.json"),
                                str(tmp_path / "parts.json"), str(with_loc), log=said.append)
    cache_lines = [line for line in said if line.startswith("[cache]")]
    assert len(cache_lines) == 6 and all(line.endswith("total added 0") for line in cache_lines)
    assert not any(line.startswith("[train] step") for line in said)
    again_state, _ = read_checkpoint(again)
    assert all(torch.equal(again_state[k], trained[k]) for k in trained)
    # Another recipe fills the same cache folder (stop 58's heads ran in the box decoder's cache and trained on
    # both recipes' entries): each recipe still trains on its own entries, in its own order.
    (tmp_path / "other_parts.json").write_text(json.dumps([{"cases": "plain", "views": 2, "fraction": 0.5}]))
    shared = dict(cases_dir=str(tmp_path / "run" / "cases"), cache_dir=str(tmp_path / "run" / "cache"))
    other = train_heads_on_bank(str(bank), str(tmp_path / "other"), str(tmp_path / "config.json"),
                                str(tmp_path / "other_parts.json"), str(with_loc), log=said.append, **shared)
    everything = FeatureCache(tmp_path / "run" / "cache").records()
    assert len(everything) > len(records)
    _, other_spec = read_checkpoint(other)
    assert 0 < other_spec.training["cache_entries"] < len(everything)
    said.clear()
    same = train_heads_on_bank(str(bank), str(tmp_path / "same"), str(tmp_path / "config.json"),
                               str(tmp_path / "parts.json"), str(with_loc), log=said.append, **shared)
    assert any(f"also holds {len(everything) - len(records)} entries of other recipes" in line for line in said)
    same_state, same_spec = read_checkpoint(same)
    assert same_spec.training["cache_entries"] == len(records)
    assert all(torch.equal(same_state[k], trained[k]) for k in trained)


def test_train_box_decoder_workflow_fine_tunes_the_decoder_and_keeps_the_heads_and_localiser(random_checkpoint,
                                                                                             tmp_path, monkeypatch):
    """train_box_decoder.json: the bank's pseudo-patients (never the anatomies the localiser holds out) as cases,
    the feature cache in parts, the library's decoder trainer, then one checkpoint: the heads and localiser of
    base_from unchanged, the new decoder in the engine's binary path; run again, it trains nothing more; in a cache
    folder another recipe has filled too, it trains the same decoder."""
    from dataclasses import replace

    from priorsam.models.spec import load_model, read_box_decoder_checkpoint, read_checkpoint, write_checkpoint
    from priorsam.training.box_decoder import train_box_decoder_on_bank

    monkeypatch.chdir(REPO)
    bank, heads, spec, loc_spec, loc_state = _bank_and_localiser(tmp_path, random_checkpoint)
    base = write_checkpoint(tmp_path / "base.pt", heads, replace(spec, localiser=loc_spec), loc_state)
    (tmp_path / "parts.json").write_text(json.dumps([{"cases": "plain", "views": 0, "fraction": 0.3}]))
    (tmp_path / "config.json").write_text(json.dumps({"steps": 2, "batch_size": 2, "lr": 1e-4, "log_every": 1,
                                                      "ckpt_every": 1, "threads": 1}))
    out = tmp_path / "new.pt"
    wf = _workflow("bundle/configs/train_box_decoder.json", None, bank_dir=str(bank), anatomy_dir=None,
                   output_dir=str(tmp_path / "run"), ckpt_path=str(out), base_from=str(base),
                   decoder_config=str(tmp_path / "config.json"), cache_parts=str(tmp_path / "parts.json"))
    wf.run()
    wf.finalize()
    decoder, dspec = read_box_decoder_checkpoint(tmp_path / "run" / "box_decoder" / "box_decoder.pt")
    assert dspec.trained_on == ["pseudo_a", "pseudo_b"] and dspec.steps == 2
    state, new_spec = read_checkpoint(out)
    assert new_spec.box_decoder == replace(dspec, file="new.box_decoder.pt") and new_spec.localiser == loc_spec
    assert (tmp_path / "new.box_decoder.pt").is_file()        # the decoder ships beside the checkpoint
    assert all(torch.equal(state[k], v) for k, v in heads.items() if not k.startswith("meta."))
    assert all(torch.equal(state["localiser." + k], v) for k, v in loc_state.items())
    model = load_model(out, encoder=None)
    assert all(torch.equal(model.binary.mask_decoder.state_dict()[k], v) for k, v in decoder.items())
    said = []
    again = train_box_decoder_on_bank(str(bank), str(tmp_path / "run"), str(tmp_path / "parts.json"),
                                      str(tmp_path / "config.json"), str(base), log=said.append)
    assert not any(line.startswith("[box_decoder] step") for line in said)
    assert read_box_decoder_checkpoint(again)[1] == dspec
    (tmp_path / "other_parts.json").write_text(json.dumps([{"cases": "plain", "views": 1, "fraction": 0.5}]))
    shared = dict(cases_dir=str(tmp_path / "run" / "cases"), cache_dir=str(tmp_path / "run" / "cache"))
    train_box_decoder_on_bank(str(bank), str(tmp_path / "other"), str(tmp_path / "other_parts.json"),
                              str(tmp_path / "config.json"), str(base), log=said.append, **shared)
    same = train_box_decoder_on_bank(str(bank), str(tmp_path / "same"), str(tmp_path / "parts.json"),
                                     str(tmp_path / "config.json"), str(base), log=said.append, **shared)
    same_decoder, _ = read_box_decoder_checkpoint(same)
    assert all(torch.equal(same_decoder[k], v) for k, v in decoder.items())
    assert any("entries of other recipes, which this training leaves out" in line for line in said)


def test_bundle_equals_python_api_on_sample_ct(random_checkpoint, tmp_path):
    """4 slices through the kidneys of the sample CT: the bundle's label map equals the library's
    voxel for voxel and carries the input's exact affine."""
    from priorsam.data.samples import sample_ct
    from priorsam.engine.segment import segment_volume
    from priorsam.errors import AssetError
    from priorsam.io import read_label_map, read_volume

    try:
        sample = sample_ct()
    except AssetError as exc:
        pytest.skip(f"sample CT unavailable offline: {exc}")
    img, lab = nib.load(str(sample.image)), nib.load(str(sample.label))
    kid = np.isin(np.asarray(lab.dataobj), (2, 3)).any(axis=(0, 1))
    zs = np.flatnonzero(kid)
    z0 = int(zs[len(zs) // 2]) - 2
    crop = img.slicer[:, :, z0:z0 + 4]
    (tmp_path / "in").mkdir()
    src = tmp_path / "in" / "kidneys.nii.gz"
    nib.save(crop, str(src))

    out = tmp_path / "out"
    wf = _workflow(str(CONFIGS / "inference.json"), "infer", dataset_dir=str(src), output_dir=str(out),
                   ckpt_path=str(random_checkpoint), progress=False)
    wf.run()
    wf.finalize()
    seg = out / "kidneys_seg.nii.gz"
    assert np.array_equal(nib.load(str(seg)).affine, nib.load(str(src)).affine)
    api = segment_volume(read_volume(src), weights=str(random_checkpoint), device="cpu", show_bar=False)
    got = read_label_map(seg).array.astype(np.uint8)
    assert got.shape == api.labels.shape
    assert np.array_equal(got, api.labels), f"{int((got != api.labels).sum())} voxels differ"


def test_verify_net_in_out_and_ckpt_export(random_checkpoint, tmp_path, monkeypatch):
    from monai.bundle import ckpt_export, verify_net_in_out

    from priorsam.bundle_support.network import build_semantic_network

    monkeypatch.chdir(BUNDLE)
    common = dict(meta_file="configs/metadata.json", config_file="configs/inference.json",
                  ckpt_path=str(random_checkpoint))
    verify_net_in_out(net_id="network_def", device="cpu", **common)
    ts = tmp_path / "model.ts"
    ckpt_export(net_id="network_def", filepath=str(ts), ckpt_file=str(random_checkpoint), use_trace=True, **common)
    exported = torch.jit.load(str(ts))
    net = build_semantic_network(str(random_checkpoint))
    net.load_state_dict(torch.load(random_checkpoint, weights_only=True))
    x = torch.rand(1, 1, 256, 256) * 600 - 200  # another input than the one traced
    with torch.no_grad():
        ref, got = net(x), exported(x)
    assert got.shape == (1, 9, 256, 256)
    assert torch.allclose(ref, got, atol=1e-4)
