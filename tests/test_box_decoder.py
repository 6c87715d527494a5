"""The fine-tuned box decoder: its trainer (kept-out cases, only the mask decoder learns, resumption), and its
place in the checkpoint (round trip into the binary path, carried through compose, clear errors)."""
from __future__ import annotations

import csv
import json
from dataclasses import replace

import pytest
import torch

from priorsam.errors import AssetError


class Interrupt(Exception):
    pass


@pytest.fixture
def tiny_cache(tmp_path):
    """Two cases of two cached slices each: a liver and a spleen in every label, a 16-pixel kidney too small
    to prompt."""
    from priorsam.models.image_encoder import EncoderFeatures
    from priorsam.training.cache import FeatureCache

    cache = FeatureCache(tmp_path / "cache")
    g = torch.Generator().manual_seed(0)
    for case in ("keep", "held"):
        for z in range(2):
            feats = EncoderFeatures(torch.randn(256, 64, 64, generator=g), ())
            label = torch.zeros(256, 256, dtype=torch.uint8)
            label[40:140, 30:120] = 5
            label[60:120, 170:220] = 1
            label[200:204, 200:204] = 2
            cache.put(f"{case}{z:02d}", feats, label, {"case": case, "view": 0, "z": z, "context": 0,
                                                       "spacing_mm": 1.5, "augment": False, "present": [1, 2, 5]})
    return tmp_path / "cache"


def config(cache, out, **kw):
    from priorsam.training.box_decoder import BoxDecoderTrainConfig

    settings = dict(cache=str(cache), out_dir=str(out), exclude=["held"], steps=4, lr=1e-3, batch_size=3,
                    log_every=1, ckpt_every=2, threads=1, device="cpu")
    return BoxDecoderTrainConfig(**{**settings, **kw})


def test_excluded_cases_and_small_cross_sections_never_reach_training():
    from priorsam.training.box_decoder import is_excluded, organ_pool

    assert is_excluded("pseudo_btcv_0001_arms_table", ["pseudo_btcv_0001"])
    assert not is_excluded("pseudo_btcv_00012", ["pseudo_btcv_0001"]) and not is_excluded("x", [])
    label = torch.zeros(256, 256, dtype=torch.uint8)
    label[0:10, 0:10] = 5
    label[20:24, 20:24] = 2
    assert organ_pool([label, torch.zeros_like(label)], 8, 20) == [(0, 5)]


def test_the_engines_boxes_and_the_stop54_edge():
    from priorsam.models.refinement import boxes_from_masks
    from priorsam.training.box_decoder import label_boxes

    m = torch.zeros(1, 256, 256)
    m[0, 10:20, 30:50] = 1
    assert label_boxes(m).tolist() == boxes_from_masks(m.bool())[0].tolist() == [[30.0, 10.0, 49.0, 19.0]]
    assert label_boxes(m, 1.0).tolist() == [[30.0, 10.0, 50.0, 20.0]]


def test_it_trains_the_mask_decoder_alone_and_exports_it_with_its_digest(tiny_cache, tmp_path):
    from priorsam.assets import LITEMEDSAM_SHA256, load_litemedsam
    from priorsam.models.spec import read_box_decoder_checkpoint
    from priorsam.training.box_decoder import train_box_decoder

    said = []
    path = train_box_decoder(config(tiny_cache, tmp_path / "run"), log=said.append)
    state, spec = read_box_decoder_checkpoint(path)
    base = load_litemedsam("cpu").mask_decoder.state_dict()
    assert set(state) == set(base)
    assert any(not torch.equal(state[k], base[k]) for k in base)
    assert spec.trained_on == ["keep"] and spec.exclude == ["held"] and spec.steps == 4
    assert spec.base_sha256 == LITEMEDSAM_SHA256 and (spec.framing, spec.spacing_mm) == ("fixed", 1.5)
    assert spec.recipe["box_edge_px"] == 0.0 and "cache" not in spec.recipe
    assert "2 cache entries of 1 cases, 4 organ cross-sections" in said[0]
    assert json.loads((tmp_path / "run" / "config.json").read_text())["cases"] == ["keep"]
    with open(tmp_path / "run" / "log.csv", newline="") as fh:
        assert [int(r["step"]) for r in csv.DictReader(fh)] == [1, 2, 3, 4]


def test_an_interrupted_run_resumes_to_the_same_decoder(tiny_cache, tmp_path):
    from priorsam.models.spec import read_box_decoder_checkpoint
    from priorsam.training.box_decoder import train_box_decoder

    whole, _ = read_box_decoder_checkpoint(train_box_decoder(config(tiny_cache, tmp_path / "a"), log=lambda s: None))

    def stop_at_3(line):
        if "step 3/4" in line:
            raise Interrupt(line)

    with pytest.raises(Interrupt):
        train_box_decoder(config(tiny_cache, tmp_path / "b"), log=stop_at_3)
    said = []
    resumed, _ = read_box_decoder_checkpoint(train_box_decoder(config(tiny_cache, tmp_path / "b"), log=said.append))
    assert any("resumed at step 2" in s for s in said)
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)
    with open(tmp_path / "b" / "log.csv", newline="") as fh:
        assert [int(r["step"]) for r in csv.DictReader(fh)] == [1, 2, 3, 4]


def test_a_cache_that_holds_only_kept_out_cases_is_one_error_and_makes_no_folder(tiny_cache, tmp_path):
    from priorsam.errors import InputError
    from priorsam.training.box_decoder import main

    with pytest.raises(InputError, match="outside the excluded"):
        from priorsam.training.box_decoder import train_box_decoder
        train_box_decoder(config(tiny_cache, tmp_path / "none", exclude=["keep", "held"]))
    assert not (tmp_path / "none").exists()
    assert main(["--cache", str(tmp_path / "nothing"), "--out_dir", str(tmp_path / "o")]) == 1
    assert not (tmp_path / "o").exists()


@pytest.fixture(scope="module")
def shifted_decoder():
    """LiteMedSAM's mask decoder with one bias moved: a stand-in for a fine-tuned decoder, with its spec."""
    from priorsam.assets import LITEMEDSAM_SHA256, load_litemedsam
    from priorsam.models.cpu_runtime import state_digest
    from priorsam.models.spec import BoxDecoderSpec

    state = {k: v.clone() for k, v in load_litemedsam("cpu").mask_decoder.state_dict().items()}
    key = next(k for k in state if k.endswith("bias"))
    state[key] += 0.5
    return state, BoxDecoderSpec(sha256=state_digest(state), base_sha256=LITEMEDSAM_SHA256, trained_on=["x"], steps=1)


@pytest.fixture(scope="module")
def heads(tmp_path_factory):
    from priorsam.models.spec import build_model, spec_for_bank, write_checkpoint
    from priorsam.priors.bank import load_prior_bank

    bank = load_prior_bank("v1")
    spec = spec_for_bank(bank, heads={"refine_rounds": 1})
    torch.manual_seed(0)
    model = build_model(spec, encoder=None, binary_path=False, pretrained=False, prior_bank=bank)
    path = tmp_path_factory.mktemp("heads") / "heads.pt"
    return write_checkpoint(path, model.trainable_state_dict(), spec), spec, model.trainable_state_dict()


def test_a_checkpoint_with_a_box_decoder_loads_it_into_the_binary_path_and_compose_carries_it(
        heads, shifted_decoder, tmp_path):
    from priorsam.models.openvino_binary_path import weights_digest
    from priorsam.models.spec import (BOX_DECODER_SPEC_KEY, compose_checkpoint, encode_json, load_model,
                                      read_box_decoder_checkpoint, read_checkpoint, write_checkpoint)

    path, spec, state = heads
    dec, dspec = shifted_decoder
    with_dec = write_checkpoint(tmp_path / "d.pt", state, replace(spec, box_decoder=dspec), box_decoder_state=dec)
    _, back = read_checkpoint(with_dec)
    assert back.box_decoder == replace(dspec, file="d.box_decoder.pt")
    # the decoder is its own file beside the checkpoint, in the trainer's export format; model.pt holds none of it
    assert not any(k.startswith("box_decoder.") for k in torch.load(with_dec, weights_only=True))
    alone, alone_spec = read_box_decoder_checkpoint(tmp_path / "d.box_decoder.pt")
    assert alone_spec == dspec and all(torch.equal(alone[k], dec[k]) for k in dec)
    tuned = load_model(with_dec, encoder=None)
    plain = load_model(path, encoder=None)
    assert all(torch.equal(tuned.binary.mask_decoder.state_dict()[k], dec[k]) for k in dec)
    assert weights_digest(tuned.binary) != weights_digest(plain.binary)   # the OpenVINO graph's key follows
    emb, box = torch.randn(1, 256, 64, 64), torch.tensor([[60.0, 60.0, 160.0, 170.0]])
    with torch.inference_mode():
        assert not torch.equal(tuned.binary(emb, box)[0], plain.binary(emb, box)[0])
    assert load_model(with_dec, encoder=None, binary_path=False).binary is None   # heads only: nothing to load into

    # compose: the heads checkpoint's own decoder goes on; box_decoder_from (a box_decoder.pt) replaces it
    kept = compose_checkpoint(with_dec, None, tmp_path / "kept.pt")
    assert read_checkpoint(kept)[1].box_decoder == replace(dspec, file="kept.box_decoder.pt")
    exported = dict(dec)
    exported[BOX_DECODER_SPEC_KEY] = encode_json(dspec.__dict__)
    torch.save(exported, tmp_path / "box_decoder.pt")
    added = compose_checkpoint(path, None, tmp_path / "added.pt", box_decoder_from=tmp_path / "box_decoder.pt")
    assert read_checkpoint(added)[1].box_decoder == replace(dspec, file="added.box_decoder.pt")
    assert all(torch.equal(load_model(added, encoder=None).binary.mask_decoder.state_dict()[k], dec[k]) for k in dec)


def test_a_box_decoder_that_does_not_fit_is_a_clear_error(heads, shifted_decoder, tmp_path):
    from priorsam.models.spec import BOX_DECODER_PREFIX, SPEC_KEY, encode_json, load_model, write_checkpoint

    path, spec, state = heads
    dec, dspec = shifted_decoder
    with pytest.raises(ValueError, match="box decoder"):
        write_checkpoint(tmp_path / "n.pt", state, replace(spec, box_decoder=dspec))      # spec without tensors
    with pytest.raises(ValueError, match="digest"):
        write_checkpoint(tmp_path / "n.pt", state, replace(spec, box_decoder=replace(dspec, sha256="0" * 64)),
                         box_decoder_state=dec)

    def raw(name, spec_dict, decoder):
        sd = dict(state)
        sd.update({BOX_DECODER_PREFIX + k: v for k, v in decoder.items()})
        sd[SPEC_KEY] = encode_json(spec_dict)
        torch.save(sd, tmp_path / name)
        return tmp_path / name

    changed = {k: v.clone() for k, v in dec.items()}
    changed[next(iter(changed))] += 1.0
    cases = [(raw("tampered.pt", replace(spec, box_decoder=dspec).to_dict(), changed), "digest"),
             (raw("unnamed.pt", spec.to_dict(), dec), "does not name"),
             (raw("other_base.pt", replace(spec, box_decoder=replace(dspec, base_sha256="f" * 64)).to_dict(), dec),
              "fine-tuned from LiteMedSAM weights"),
             (raw("upstream.pt", replace(spec, box_decoder=replace(dspec, framing="upstream")).to_dict(), dec),
              "framing")]
    for p, message in cases:
        with pytest.raises(AssetError, match=message):
            load_model(p, encoder=None)


def test_the_bundles_network_loads_the_box_decoder_as_the_engine_does(heads, shifted_decoder, tmp_path):
    """inference.json's network_def + CheckpointLoader (MONAI's load_state_dict) put a fine-tuned decoder into
    the binary path, and refuse a tampered one, like load_model."""
    from priorsam.bundle_support.network import build_semantic_network
    from priorsam.models.spec import write_checkpoint

    path, spec, state = heads
    dec, dspec = shifted_decoder
    with_dec = write_checkpoint(tmp_path / "d.pt", state, replace(spec, box_decoder=dspec), box_decoder_state=dec)
    net = build_semantic_network(str(with_dec), encoder=None, binary_path=True)
    raw = torch.load(with_dec, weights_only=True)     # what CheckpointLoader hands over: model.pt alone
    net.load_state_dict(raw)
    assert all(torch.equal(net.binary.mask_decoder.state_dict()[k], dec[k]) for k in dec)
    beside = tmp_path / "d.box_decoder.pt"
    tampered = torch.load(beside, weights_only=True)
    key = next(iter(dec))
    tampered[key] = tampered[key] + 1.0
    torch.save(tampered, beside)
    with pytest.raises(AssetError, match="digest"):
        build_semantic_network(str(with_dec), encoder=None, binary_path=True).load_state_dict(raw)


def test_a_box_decoder_file_missing_or_from_another_checkpoint_is_refused_and_an_inline_one_still_loads(
        heads, shifted_decoder, tmp_path):
    """The decoder ships beside the checkpoint: copying model.pt alone, or pairing it with another checkpoint's
    decoder, is one clear line; bundle 0.9.0's layout (the decoder inline, ``box_decoder.*``) still loads."""
    import shutil

    from priorsam.models.cpu_runtime import state_digest
    from priorsam.models.spec import BOX_DECODER_PREFIX, SPEC_KEY, encode_json, load_model, write_checkpoint

    path, spec, state = heads
    dec, dspec = shifted_decoder
    (tmp_path / "a").mkdir()
    write_checkpoint(tmp_path / "a" / "model.pt", state, replace(spec, box_decoder=dspec), box_decoder_state=dec)
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(tmp_path / "a" / "model.pt", alone / "model.pt")
    with pytest.raises(AssetError, match="model.box_decoder.pt is missing; it ships beside the checkpoint"):
        load_model(alone / "model.pt", encoder=None)

    other = {k: v.clone() for k, v in dec.items()}
    other[next(iter(other))] -= 0.25
    (tmp_path / "b").mkdir()
    write_checkpoint(tmp_path / "b" / "model.pt", state,
                     replace(spec, box_decoder=replace(dspec, sha256=state_digest(other))), box_decoder_state=other)
    shutil.copy(tmp_path / "b" / "model.box_decoder.pt", alone / "model.box_decoder.pt")
    with pytest.raises(AssetError, match="is not the box decoder its checkpoint names"):
        load_model(alone / "model.pt", encoder=None)
    (alone / "model.box_decoder.pt").write_bytes(b"\x1f\x8b truncated")
    with pytest.raises(AssetError, match="box decoder weights unreadable: .*model.box_decoder.pt"):
        load_model(alone / "model.pt", encoder=None)

    inline = dict(state)
    inline.update({BOX_DECODER_PREFIX + k: v for k, v in dec.items()})
    inline[SPEC_KEY] = encode_json(replace(spec, box_decoder=dspec).to_dict())
    torch.save(inline, tmp_path / "inline.pt")
    loaded = load_model(tmp_path / "inline.pt", encoder=None)
    assert all(torch.equal(loaded.binary.mask_decoder.state_dict()[k], dec[k]) for k in dec)
