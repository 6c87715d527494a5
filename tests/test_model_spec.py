"""ModelSpec and the one checkpoint format: round trip, and clear errors for checkpoints that do not fit."""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from priorsam.errors import AssetError
from priorsam.models.spec import (LocaliserSpec, build_model, load_model, read_checkpoint, spec_for_bank,
                                  write_checkpoint)
from priorsam.priors.bank import load_prior_bank


@pytest.fixture(scope="module")
def bank():
    return load_prior_bank("v1")


def small_spec(bank, **kw):
    loc = LocaliserSpec(init_filters=8, trained_on=["btcv_0001"], holdout=["amos_0013"], steps=1)
    return spec_for_bank(bank, heads={"refine_rounds": 1}, localiser=loc,
                         data_sources=[{"name": "sample", "licence": "Apache-2.0", "use": "heads"}], **kw)


def test_spec_checkpoint_round_trip(bank, tmp_path):
    torch.manual_seed(0)
    spec = small_spec(bank)
    model = build_model(spec, encoder=None, binary_path=False, pretrained=False, prior_bank=bank)
    assert model.localiser is not None and model.localiser.net.convInit.conv.out_channels == 8
    path = write_checkpoint(tmp_path / "m.pt", model.trainable_state_dict(), spec)
    raw = torch.load(path, weights_only=True)                   # tensors only: MONAI 1.6 loads it so
    assert "meta.spec" in raw and any(k.startswith("localiser.") for k in raw)
    state, back = read_checkpoint(path)
    assert back == spec
    loaded = load_model(path, encoder=None, binary_path=False)
    own = model.trainable_state_dict()
    assert set(own) == set(loaded.trainable_state_dict())
    assert all(torch.equal(own[k], loaded.trainable_state_dict()[k]) for k in own)
    x = torch.randn(1, 2, 16, 16, 16)
    assert torch.equal(model.localiser.eval()(x), loaded.localiser(x))


def test_wrong_priors_encoder_or_localiser_are_clear_errors(bank, tmp_path):
    spec = small_spec(bank)
    model = build_model(spec, encoder=None, binary_path=False, pretrained=False, prior_bank=bank)
    state = model.trainable_state_dict()
    bad_priors = write_checkpoint(tmp_path / "p.pt", state, replace(spec, prior_embedding_sha256="0" * 64))
    with pytest.raises(AssetError, match="trained with priors"):
        load_model(bad_priors, encoder=None, binary_path=False)
    bad_encoder = write_checkpoint(tmp_path / "e.pt", state, replace(spec, encoder_sha256="f" * 64))
    with pytest.raises(AssetError, match="encoder weights"):
        load_model(bad_encoder, encoder=None, binary_path=False)
    wider = replace(spec, localiser=replace(spec.localiser, init_filters=16))
    bad_loc = write_checkpoint(tmp_path / "l.pt", state, wider)
    with pytest.raises(AssetError, match="localiser|does not fit"):
        load_model(bad_loc, encoder=None, binary_path=False)
    no_loc = {k: v for k, v in state.items() if not k.startswith("localiser.")}
    with pytest.raises(ValueError):
        write_checkpoint(tmp_path / "n.pt", no_loc, spec)


def test_legacy_checkpoint_is_read_as_a_spec(bank, tmp_path):
    from priorsam.models.spec import encode_json

    model = build_model(spec_for_bank(bank, heads={"refine_rounds": 1}), encoder=None, binary_path=False,
                        pretrained=False, prior_bank=bank)
    sd = model.trainable_state_dict()
    sd["meta.config"] = encode_json({"prior_version": "v1", "model": {"refine_rounds": 1}, "spacing_mm": 1.5,
                                     "context": 0, "framing": "fixed"})
    torch.save(sd, tmp_path / "old.pt")
    _, spec = read_checkpoint(tmp_path / "old.pt")
    assert spec.heads == {"refine_rounds": 1} and spec.localiser is None and spec.spacing_mm == 1.5
    assert load_model(tmp_path / "old.pt", encoder=None, binary_path=False).localiser is None


def test_localiser_output_shapes_and_guidance():
    """Shapes through the network, and what the engine derives from a localiser's output."""
    import numpy as np

    from priorsam.engine.localise import localise
    from priorsam.models.localiser import OrganLocaliser

    torch.manual_seed(0)
    net = OrganLocaliser(init_filters=8).eval()
    x = net.prepare(torch.zeros(2, 24, 32, 16))
    assert x.shape == (2, 2, 24, 32, 16) and float(x.min()) >= 0 and float(x.max()) <= 1
    assert net(x).shape == (2, 9, 24, 32, 16)
    # A 0.8 mm × 0.8 mm × 2.5 mm volume: resampled to 4 mm, padded to 48³, cropped back.
    hu = np.full((100, 90, 30), 40.0, np.float32)
    res = localise(hu, np.array([0.8, 0.8, 2.5]), net)
    assert res.usable and res.coarse_labels.shape == (20, 18, 19)
    assert set(res.present) == set(range(1, 9))
    for k, (x0, y0, z0, x1, y1, z1) in res.boxes.items():
        assert 0 <= x0 <= x1 <= 99 and 0 <= y0 <= y1 <= 89 and 0 <= z0 <= z1 <= 29
        assert all(0 <= z < 30 for z in res.slice_boxes[k])
        # A prompt box lies inside its slice's search box (the search box is grown, the prompt is not).
        for z, (px0, py0, px1, py1) in res.prompt_boxes[k].items():
            sx0, sy0, sx1, sy1 = res.slice_boxes[k][z]
            assert sx0 <= px0 <= px1 <= sx1 and sy0 <= py0 <= py1 <= sy1
    thin = localise(hu[:, :, :3], np.array([0.8, 0.8, 1.0]), net)
    assert not thin.usable and "too thin" in thin.reason and "per-slice model" in thin.reason


def test_slice_guide_marks_expected_absent_and_missed_organs():
    """Per slice: a located organ gets its box in model pixels, NaN where it is not expected, and an
    organ the localiser did not find anywhere is +inf (the 2D heads then decide alone)."""
    import numpy as np

    from priorsam.data.framed_volume import FramedVolume, Framing
    from priorsam.engine.localise import LocaliserResult
    from priorsam.engine.segment import _slice_guide
    from priorsam.models.refinement import box_masks

    loc = LocaliserResult(True, present={k: k != 4 for k in range(1, 9)},
                          slice_boxes={5: {2: (10.0, 20.0, 30.0, 40.0)}},
                          prompt_boxes={5: {2: (12.0, 22.0, 28.0, 38.0)}})
    framed = FramedVolume(np.zeros((5, 64, 64), np.float32), 1.0, 1.0, Framing.upstream())
    guide, prompts = _slice_guide(loc, (64, 64, 5), framed, 9)(np.array([1, 2]))
    assert guide.shape == prompts.shape == (2, 9, 4)
    # The localiser's own (tight) box as a prompt, only where its mask is; NaN elsewhere, never inf.
    assert torch.allclose(prompts[1, 5], torch.tensor([35.0, 25.0, 51.0, 41.0]) * 4)
    assert torch.isnan(prompts[0]).all() and torch.isnan(prompts[1, [1, 2, 3, 4, 6, 7, 8]]).all()
    assert torch.isinf(guide[:, 4]).all()                       # gallbladder: missed → heads decide
    assert torch.isnan(guide[0, 5]).all() and torch.isnan(guide[:, 1]).all()
    # RAS x 10..30, y 20..40 on a 64² slice → display columns 33..53, rows 23..43, ×4 to the model frame.
    assert torch.allclose(guide[1, 5], torch.tensor([33.0, 23.0, 53.0, 43.0]) * 4)
    m = box_masks(torch.where(torch.isinf(guide), torch.nan, guide), (256, 256))
    assert m[1, 5].sum() > 0 and not m[0, 5].any() and not m[:, 4].any()


def test_localiser_keeps_the_component_with_the_most_probability():
    """Per organ: the confident component is kept, not a larger doubtful one far from it; pieces of the
    same organ near the main one are kept with it (the pancreas at 4 mm), far or faint ones are not."""
    import numpy as np

    from priorsam.engine.localise import localise

    class Fixed(torch.nn.Module):
        spacing_mm, min_shape, num_classes = 4.0, (24, 24, 24), 9

        def prepare(self, x):
            return x[:, None]

        def forward(self, x):
            logits = torch.zeros(1, 9, *x.shape[2:])
            logits[0, 1, 2:4, 2:4, 2:4] = 9.0        # spleen: 8 voxels, confident
            logits[0, 1, 18:21, 18:21, 18:21] = 0.3  # spleen: 27 voxels, barely above background, 60 mm away
            logits[0, 8, 2:6, 12:14, 12:14] = 9.0    # pancreas head: 16 voxels
            logits[0, 8, 10:13, 12:14, 12:14] = 9.0  # pancreas tail: 12 voxels, 20 mm from the head
            logits[0, 8, 20:22, 2:4, 2:4] = 9.0      # pancreas elsewhere: 8 voxels, 64 mm away
            logits[0, 8, 2:3, 17:18, 12:13] = 9.0    # one voxel 12 mm away: under a quarter of the head's mass
            return logits

    res = localise(np.zeros((24, 24, 24), np.float32), np.array([4.0, 4.0, 4.0]), Fixed(), margin_mm=0.0,
                   z_margin_mm=0.0, min_ml=0.0)
    assert res.coarse_labels[2:4, 2:4, 2:4].all() and not (res.coarse_labels[18:, 18:, 18:] == 1).any()
    pancreas = res.coarse_labels == 8
    assert pancreas[2:6, 12:14, 12:14].all() and pancreas[10:13, 12:14, 12:14].all() and pancreas.sum() == 28
    assert res.boxes[8][:3] == (1.5, 11.5, 11.5)
    only_main = localise(np.zeros((24, 24, 24), np.float32), np.array([4.0, 4.0, 4.0]), Fixed(), min_ml=0.0,
                         pieces=False)
    assert (only_main.coarse_labels == 8).sum() == 16
    assert res.boxes[1] == (1.5, 1.5, 1.5, 3.5, 3.5, 3.5)   # the voxels' extent, not their centres


def test_an_organs_main_component_is_the_one_among_the_other_organs():
    """A confident blob far from every other organ (a "stomach" in the pelvic bowel) loses to the
    stomach beside the liver and spleen, even with more probability mass; an organ whose components
    are all far from the rest keeps its heaviest one; context 0 is the mass-only rule."""
    import numpy as np

    from priorsam.engine.localise import keep_components

    probs = np.zeros((9, 40, 40, 40), np.float32)
    probs[0] = 1.0

    def put(k, region, p):
        probs[k][region], probs[0][region] = p, 1.0 - p

    put(5, np.s_[2:14, 2:14, 28:38], 0.9)      # liver
    put(1, np.s_[28:36, 4:10, 28:36], 0.9)     # spleen
    put(6, np.s_[18:24, 6:12, 30:34], 0.8)     # stomach between them: 144 voxels
    put(6, np.s_[10:18, 20:30, 2:6], 0.95)     # "stomach" 100 mm below: 320 voxels, more mass
    put(4, np.s_[30:32, 30:32, 2:4], 0.9)      # gallbladder: two blobs, both far from every organ
    put(4, np.s_[34:38, 34:38, 2:4], 0.9)
    labels = probs.argmax(0)
    out = keep_components(labels, probs, 4.0, pieces=False)
    assert (out == 6).sum() == 144 and (out[18:24, 6:12, 30:34] == 6).all()
    assert (out == 4).sum() == 32 and (out[34:38, 34:38, 2:4] == 4).all()
    assert (out == 5).sum() == 12 * 12 * 10
    mass_only = keep_components(labels, probs, 4.0, pieces=False, context_mm=0)
    assert (mass_only == 6).sum() == 320


def test_the_localisers_masks_on_the_volume_grid_follow_its_probabilities():
    """On a finer grid the localiser's organ ends where its probability does, between 4 mm voxel
    centres, not on a voxel's face; a component the clean-up dropped stays background."""
    import numpy as np

    from priorsam.engine.localise import localise

    centre_mm = (np.indices((16, 16, 16)) + 0.5) * 4.0 - 32.0
    r_mm = np.sqrt((centre_mm ** 2).sum(0))

    class Sphere(torch.nn.Module):
        spacing_mm, min_shape, num_classes = 4.0, (16, 16, 16), 9

        def prepare(self, x):
            return x[:, None]

        def forward(self, x):
            logits = torch.zeros(1, 9, 16, 16, 16)
            logits[0, 5] = torch.from_numpy((18.0 - r_mm) / 2.0)   # a "liver" of radius 18 mm
            logits[0, 5, 15, 15, 15] = 1.0                          # a faint voxel apart: dropped
            return logits

    res = localise(np.zeros((64, 64, 64), np.float32), np.array([1.0, 1.0, 1.0]), Sphere(), min_ml=0.0)
    fine_r = np.sqrt((((np.indices((64, 64, 64)) + 0.5) - 32.0) ** 2).sum(0))
    truth = fine_r < 18.0
    dice = lambda m: 2 * (m & truth).sum() / (m.sum() + truth.sum())  # noqa: E731
    linear, nearest = res.labels_on((64, 64, 64)), res.labels_on((64, 64, 64), "nearest")
    assert dice(linear == 5) > 0.95 > dice(nearest == 5)
    assert not linear[60:, 60:, 60:].any() and not nearest[60:, 60:, 60:].any()
    with pytest.raises(ValueError, match="linear or nearest"):
        res.labels_on((64, 64, 64), "cubic")
    # The probabilities the engine reads per voxel: on a grid twice the localiser's, the same labels.
    scores = res.scores_on((64, 64, 64))
    assert scores.shape == (9, 32, 32, 32) and scores.dtype == np.float32
    np.testing.assert_array_equal(res.labels_on((64, 64, 64), scores=scores), linear)
    assert scores[5, 16, 16, 16] > 0.99 and scores[5, 31, 31, 31] == 0.0     # the centre; the dropped voxel
    assert res.scores_on((64, 64, 64), "nearest").shape == (9, 16, 16, 16)


def test_an_evaluation_run_can_take_its_heads_and_its_localiser_from_two_checkpoints(bank, tmp_path, monkeypatch):
    from priorsam.evaluation.runs import run_weights

    monkeypatch.setenv("PRIORSAM_CACHE", str(tmp_path / "cache"))
    torch.manual_seed(0)
    spec = small_spec(bank)
    a = build_model(spec, encoder=None, binary_path=False, pretrained=False, prior_bank=bank).trainable_state_dict()
    b = build_model(spec, encoder=None, binary_path=False, pretrained=False, prior_bank=bank).trainable_state_dict()
    heads_only = {k: v for k, v in a.items() if not k.startswith("localiser.")}
    pa = write_checkpoint(tmp_path / "heads.pt", heads_only, replace(spec, localiser=None))
    pb = write_checkpoint(tmp_path / "full.pt", b, spec)
    assert run_weights({"weights": str(pa)}) == str(pa)
    composed = run_weights({"weights": str(pa), "localiser_from": str(pb)})
    state, back = read_checkpoint(composed)
    assert back.localiser == spec.localiser
    assert all(torch.equal(state[k], a[k]) for k in heads_only)
    assert all(torch.equal(state[k], b[k]) for k in b if k.startswith("localiser."))
    assert run_weights({"weights": str(pa), "localiser_from": str(pb)}) == composed     # written once
    with pytest.raises(ValueError, match="no localiser"):
        run_weights({"weights": str(pb), "localiser_from": str(pa)})
