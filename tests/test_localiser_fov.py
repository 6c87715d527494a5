"""The shipped 3D localiser on inputs the sample CT never looked like: a CT angiography reconstructed
150 mm around the aorta, and a 3-slice slab.

Synthetic, so it needs nothing from ../shared; it runs the real shipped localiser (bundle/models/model.pt).
"""
from __future__ import annotations

import numpy as np
import pytest

from priorsam.engine.localise import localise

pytestmark = pytest.mark.slow


def cta_crop(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """150 × 150 mm in-plane, 120 mm along z, 0.75 mm pixels, 1.5 mm slices (canonical RAS) of the
    lower retroperitoneum as a CT angiography shows it: fat, a vertebral body, the psoas muscles,
    gas-filled bowel loops in front, a bright aorta (380 HU) on the patient's left anterior of the
    spine and the IVC (120 HU) on the right."""
    rng = np.random.default_rng(seed)
    n, nz, px, sz = 200, 80, 0.75, 1.5
    c = (np.arange(n) - n / 2) * px
    x, y = np.meshgrid(c, c, indexing="ij")          # +x: patient's right, +y: anterior
    sl = np.full((n, n), -95.0)
    disc = lambda cx, cy, r: (x - cx) ** 2 + (y - cy) ** 2 < r ** 2
    sl[disc(0, -45, 16)] = 650.0                      # vertebral body
    for side in (-1, 1):
        sl[((x - side * 30) / 14) ** 2 + ((y + 40) / 18) ** 2 < 1] = 50.0   # psoas
    for cx, cy in ((-35, 30), (5, 40), (40, 25), (-10, 65), (30, 60)):
        sl[disc(cx, cy, 13)] = 30.0                   # bowel wall …
        sl[disc(cx, cy, 9)] = -900.0                  # … around gas
    sl[disc(-20, -15, 11)] = 380.0                    # aorta
    sl[disc(22, -15, 10)] = 120.0                     # IVC
    vol = np.repeat(sl[:, :, None], nz, 2) + rng.normal(0, 12, (n, n, nz))
    return vol.astype(np.float32), np.array([px, px, sz])


@pytest.fixture(scope="module")
def shipped_localiser():
    from priorsam.engine.weights import load_priorsam

    model = load_priorsam(None, "cpu")
    if model.localiser is None:
        pytest.fail("the shipped weights have no localiser")
    return model.localiser


def test_cropped_field_of_view_runs_and_gives_sane_presence(shipped_localiser):
    vol, spacing = cta_crop()
    res = localise(vol, spacing, shipped_localiser)
    assert res.usable, res.reason
    field_ml = np.prod(vol.shape) * np.prod(spacing) / 1000
    # No organ bigger than the field, every box inside the volume.
    assert all(ml <= field_ml for ml in res.volume_ml.values())
    for x0, y0, z0, x1, y1, z1 in res.boxes.values():
        assert 0 <= x0 <= x1 <= vol.shape[0] - 1 and 0 <= y0 <= y1 <= vol.shape[1] - 1
        assert 0 <= z0 <= z1 <= vol.shape[2] - 1
    # Not asserted here: that the bright tube is called aorta. On this synthetic crop (one slice repeated
    # in uniform fat) the 0.5.0 localiser gives the aorta 10 voxels of 4 mm (under its 1 mL presence floor)
    # and ≈290 mL of "spleen"; 0.4.2 found the aorta but called ≈400 mL of fat "liver". Where an organ
    # is found in a real CT's crop is asserted below (docs/generalisation.md has the held-out crops).


def test_a_real_ct_cropped_to_150_mm_around_the_aorta_finds_what_the_field_holds(shipped_localiser):
    """The sample CT (3 mm) reconstructed on a 150 mm field around its aorta: the localiser finds the
    aorta where it is and the organs the field holds, each inside the field and no bigger than its
    reference. The sample is the localiser's training scan: this checks the cropped-field path, not
    generalisation (docs/generalisation.md)."""
    from priorsam.data.pseudo_patients import load_sample

    ct, _, ours, _ = load_sample()
    cx, cy = np.argwhere(ours == 7)[:, :2].mean(0).round().astype(int)
    half = int(round(75 / ct.spacing[0]))
    crop = (slice(cx - half, cx + half), slice(cy - half, cy + half))
    vol, gt = np.ascontiguousarray(ct.array[crop], dtype=np.float32), ours[crop]
    res = localise(vol, ct.spacing, shipped_localiser)
    assert res.usable and res.present[7], res.volume_ml
    lab = res.labels_on(vol.shape)
    aorta = lab == 7
    assert 2 * (aorta & (gt == 7)).sum() / (aorta.sum() + (gt == 7).sum()) > 0.7
    ref_ml = {k: (gt == k).sum() * np.prod(ct.spacing) / 1000 for k in range(1, 9)}
    assert all(ml <= 1.5 * ref_ml[k] + 5 for k, ml in res.volume_ml.items() if res.present[k]), (res.volume_ml, ref_ml)


def test_thin_slab_falls_back_on_the_per_slice_model(shipped_localiser):
    vol, spacing = cta_crop()
    res = localise(vol[:, :, :3], spacing, shipped_localiser)
    assert not res.usable and "per-slice model" in res.reason
    # the engine's localiser_min_z_mm sets how much z is enough
    res = localise(vol[:, :, :3], spacing, shipped_localiser, min_z_mm=3 * spacing[2])
    assert res.usable and res.n_slices == 3 and res.coarse_labels.shape[2] == 1


def test_where_the_heads_answer_alone_presence_gating_is_off_unless_asked(tmp_path, monkeypatch):
    """Under 6 mm of z the localiser is skipped; the heads then run without presence gating (it dropped
    organs that were there on training anatomies kept out of the heads' training), and
    ``thin_presence_gating`` turns it back on. Whole volumes keep the option as set."""
    import nibabel as nib

    from priorsam.engine.segment import SegmentOptions, Segmenter
    from priorsam.io import read_volume

    vol, spacing = cta_crop()
    path = tmp_path / "slab.nii.gz"
    nib.save(nib.Nifti1Image(np.ascontiguousarray(vol[:, :, :3]), np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])),
             path)
    volume = read_volume(path)
    seen = {}
    for thin in (False, True):
        seg = Segmenter(None, "cpu", SegmentOptions(thin_presence_gating=thin))
        real = type(seg.model).segment_slices   # the shipped model is cached: patch it for this test only

        def spy(feats, guide, refine, *args, _thin=thin, _model=seg.model, **kwargs):
            seen.setdefault(_thin, set()).add(refine.presence_gating)
            return real(_model, feats, guide, refine, *args, **kwargs)

        monkeypatch.setattr(seg.model, "segment_slices", spy)
        res = seg.segment(volume, show_bar=False)
        assert not res.localiser["usable"] and res.slices_run > 0
    assert seen == {False: {False}, True: {True}}
    assert SegmentOptions().presence_gating   # the per-slice option itself is unchanged


def test_loss_of_a_crop_with_no_labelled_voxel_is_finite():
    """A training crop entirely outside the labelled field of view has no CE term (not NaN)."""
    import torch

    from priorsam.training.localiser import IGNORE, localiser_loss

    logits = torch.randn(1, 9, 8, 8, 8, requires_grad=True)
    loss, parts = localiser_loss(logits, torch.full((1, 8, 8, 8), IGNORE))
    loss.backward()
    assert torch.isfinite(loss) and parts["ce"] == 0.0 and torch.isfinite(logits.grad).all()
    half = torch.full((1, 8, 8, 8), IGNORE)
    half[..., :4] = 5
    assert parts["ce"] == 0.0 and localiser_loss(logits, half)[1]["ce"] > 0


def test_localiser_training_can_start_from_exported_weights_and_refuses_another_width(tmp_path):
    """``init_from``: a run fine-tunes an exported localiser (here with a zero learning rate, so the
    export must equal what it started from); a localiser of another width is refused in one line."""
    import torch

    from priorsam.errors import AssetError
    from priorsam.models.spec import read_localiser_checkpoint
    from priorsam.training.localiser import LocaliserTrainConfig, train_localiser

    small = dict(bank=str(tmp_path / "no_bank"), train_cases=["sample"], crop=(16, 16, 16), init_filters=8,
                 batch_size=1, steps=1, log_every=1, ckpt_every=1)
    first = train_localiser(LocaliserTrainConfig(out_dir=str(tmp_path / "a"), **small), log=lambda *_: None)
    again = train_localiser(LocaliserTrainConfig(out_dir=str(tmp_path / "b"), init_from=str(first), lr=0.0, seed=5,
                                                 **small), log=lambda *_: None)
    a, _ = read_localiser_checkpoint(first)
    b, spec = read_localiser_checkpoint(again)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert spec.steps == 2                # its own step and the one it continued
    with pytest.raises(AssetError, match="width-8"):
        train_localiser(LocaliserTrainConfig(out_dir=str(tmp_path / "c"), init_from=str(first),
                                             **{**small, "init_filters": 16}), log=lambda *_: None)


def test_localiser_training_refuses_a_bank_without_pseudo_patients(tmp_path):
    """Without this a run on a wrong or unbuilt bank folder would quietly learn the sample CT alone."""
    from priorsam.errors import InputError
    from priorsam.training.localiser import main, train_stages

    with pytest.raises(InputError, match="holds no pseudo-patients"):
        train_stages(str(tmp_path / "not_built"), [{"steps": 1}], str(tmp_path / "run"), log=lambda *_: None)
    assert main(["--bank", str(tmp_path / "not_built"), "--out_dir", str(tmp_path / "run")]) != 0
    with pytest.raises(InputError, match="unknown setting"):
        train_stages(str(tmp_path / "not_built"), [{"stepz": 1}], str(tmp_path / "run"), log=lambda *_: None)


def test_tight_field_of_view_takes_the_localisers_masks_and_says_so(tmp_path, capsys):
    """A 150 mm field (under ``tight_fov_mm``): the engine answers with the localiser's own masks on the
    volume grid (from 4 passes over shifted grids), runs no slice through the per-slice model, and says
    why on stderr."""
    import nibabel as nib

    from priorsam.engine.localise import localise
    from priorsam.engine.segment import SegmentOptions, Segmenter
    from priorsam.io import read_volume

    vol, spacing = cta_crop()
    path = tmp_path / "cta.nii.gz"
    nib.save(nib.Nifti1Image(vol, np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])), path)
    volume = read_volume(path)
    seg = Segmenter(None, "cpu", SegmentOptions())
    res = seg.segment(volume, show_bar=False)
    assert res.slices_run == 0 and res.localiser["answer"].startswith("localiser")
    assert "tight field of view (150 × 150 mm" in capsys.readouterr().err
    loc = localise(volume.array, volume.spacing, seg.model.localiser, shifts=4)
    np.testing.assert_array_equal(res.labels, loc.labels_on(volume.shape))
    assert set(np.unique(res.labels)) == {0} | {k for k, here in loc.present.items() if here}
    # Switched off, the per-slice model runs as on a whole-trunk scan.
    off = Segmenter(None, "cpu", SegmentOptions(tight_fov_mm=0.0)).segment(volume, show_bar=False)
    assert off.slices_run > 0 and "answer" not in off.localiser


def test_shifted_passes_of_the_localiser_are_put_back_where_they_belong():
    """``probabilities`` with shifts: each pass's output is cropped back onto the unshifted grid, so a
    network that looks at each voxel alone gives the same map with any number of shifts, and a network
    that sees context gives a proper average (probabilities that sum to 1, same shape)."""
    import torch

    from priorsam.engine.localise import probabilities

    class Local(torch.nn.Module):
        spacing_mm, min_shape, num_classes = 4.0, (16, 16, 16), 3

        def __init__(self, kernel: int):
            super().__init__()
            torch.manual_seed(0)
            self.conv = torch.nn.Conv3d(1, 3, kernel, padding=kernel // 2)

        def prepare(self, x):
            return x[:, None] / 100.0

        def forward(self, x):
            return self.conv(x)

    coarse = np.random.default_rng(0).normal(0, 100, (20, 13, 9)).astype(np.float32)
    pointwise = Local(1)
    one = probabilities(coarse, pointwise, shifts=1)
    assert one.shape == (3, 20, 13, 9)
    np.testing.assert_allclose(probabilities(coarse, pointwise, shifts=4), one, atol=1e-6)
    wide = Local(5)
    avg = probabilities(coarse, wide, shifts=4)
    assert avg.shape == one.shape and np.allclose(avg.sum(0), 1.0, atol=1e-5)
    assert not np.allclose(avg, probabilities(coarse, wide, shifts=1), atol=1e-4)   # the edges differ


def test_a_field_that_cuts_through_the_trunk_is_told_from_one_cropped_to_the_body():
    from priorsam.engine.segment import cuts_trunk

    vol, _ = cta_crop()
    assert cuts_trunk(vol)                                 # tissue all along the field's edge
    x, y = np.meshgrid(np.linspace(-1, 1, 83), np.linspace(-1, 1, 111), indexing="ij")
    body = np.where(x ** 2 + y ** 2 <= 1.0, 40.0, -1000.0)   # a trunk filling a field cropped to its outline
    assert not cuts_trunk(np.repeat(body[:, :, None], 20, 2))


def _vessel_case():
    """A 60³ grid at 16 mm: an aorta (a 3×3 column) beside a liver block with a small gallbladder."""
    from priorsam.training.localiser import TrainCase

    ours = np.zeros((60, 60, 60), np.uint8)
    ours[25:28, 40:43, :] = 7                       # aorta, centre (26, 41)
    ours[30:45, 15:35, 20:40] = 5                   # liver
    ours[36:38, 20:22, 28:30] = 4                   # gallbladder, 8 voxels
    ct = np.where(ours > 0, 60.0, -100.0).astype(np.float32)
    return TrainCase("synthetic", ct, ours.copy(), ours, (0, 60), [], [4, 5, 7])


def test_tight_fields_can_be_centred_on_the_aorta_as_a_cta_is():
    """``p_fov_on_vessel``: a tight field of view is centred on the aorta (the part of the crop the loss sees
    is around it), not on the crop's centre (the organ the crop was drawn for, jittered) as by default.
    The crop (96 voxels) is wide enough that no field (≤ 300 mm: 9.4 voxels either side) is clipped."""
    from priorsam.training.localiser import IGNORE, LocaliserTrainConfig, draw_sample

    case = _vessel_case()
    plain = dict(bank="-", out_dir="-", spacing_mm=16.0, crop=(96, 96, 16), p_phase=0.0, p_synthseg=0.0,
                 p_arms=0.0, p_table=0.0, p_slab=0.0, p_thick=0.0, p_kernel=0.0, p_noise=0.0, p_fov=1.0,
                 organ_weights={"liver": 1.0, "gallbladder": 0.0, "aorta": 0.0})
    for share in (1.0, 0.0):
        cfg = LocaliserTrainConfig(**plain, p_fov_on_vessel=share)
        rng = np.random.default_rng(3)
        for _ in range(10):
            _, lab, info = draw_sample(case, cfg, rng, {})
            assert info["organ"] == 5 and 150 <= info["fov_mm"] <= 300
            field_centre = np.argwhere((lab != IGNORE).any(2)).mean(0)
            if share:
                assert np.abs(field_centre - np.argwhere((lab == 7).any(2)).mean(0)).max() <= 3   # jitter ±2
            else:
                assert np.abs(field_centre - 48).max() <= 5                                      # jitter ±4


def test_organ_weights_change_which_organ_a_crop_is_drawn_for():
    from priorsam.training.localiser import LocaliserTrainConfig, draw_sample, organ_chances

    case = _vessel_case()
    np.testing.assert_allclose(organ_chances([4, 5, 7], {"gallbladder": 2.0}), [0.5, 0.25, 0.25])
    assert organ_chances([4, 5, 7], None) is None
    with pytest.raises(ValueError, match="gall_bladder"):
        organ_chances([4, 5, 7], {"gall_bladder": 2.0})
    with pytest.raises(ValueError, match="≥ 0"):
        organ_chances([4, 5, 7], {"liver": -1.0})
    assert organ_chances([4], {"gallbladder": 0.0}) is None    # only zero-weighted organs: uniform
    cfg = LocaliserTrainConfig(bank="-", out_dir="-", spacing_mm=8.0, crop=(16, 16, 16), p_phase=0.0,
                               p_synthseg=0.0, p_arms=0.0, p_table=0.0, p_fov=0.0, p_slab=0.0, p_thick=0.0,
                               p_kernel=0.0, p_noise=0.0, organ_weights={"gallbladder": 8.0})
    rng = np.random.default_rng(0)
    drawn = [draw_sample(case, cfg, rng, {})[2]["organ"] for _ in range(200)]
    assert 0.7 < np.mean(np.array(drawn) == 4) < 0.9          # 8 / 10 expected


def test_rotated_and_scaled_crops_keep_left_and_right_and_their_labels():
    """``p_spatial``: a crop rotated and scaled about its centre stays the configured size, keeps the liver on
    the patient's right of the spleen (never mirrored), and its organs grow or shrink with the drawn scale;
    with no rotation and unit scale it is the plain crop."""
    from priorsam.training.localiser import (IGNORE, LocaliserTrainConfig, TrainCase, draw_sample,
                                             rotate_and_scale, spatial_source_size)

    ours = np.zeros((60, 60, 40), np.uint8)
    ours[22:32, 26:38, 14:26] = 5                   # liver (1,440 voxels): low x, the patient's right
    ours[34:40, 28:34, 16:22] = 1                   # spleen: high x
    ct = np.where(ours > 0, 60.0, -100.0).astype(np.float32)
    case = TrainCase("synthetic", ct, ours.copy(), ours, (0, 40), [], [1, 5])
    cfg = LocaliserTrainConfig(bank="-", out_dir="-", spacing_mm=8.0, crop=(64, 64, 48), p_phase=0.0,
                               p_synthseg=0.0, p_arms=0.0, p_table=0.0, p_fov=0.0, p_slab=0.0, p_thick=0.0,
                               p_kernel=0.0, p_noise=0.0, p_spatial=1.0, organ_weights={"spleen": 0.0})
    rng = np.random.default_rng(1)
    for _ in range(8):
        img, lab, info = draw_sample(case, cfg, rng, {})
        assert img.shape == lab.shape == (64, 64, 48)
        rot, scale = info["spatial"]["rotate_deg"], info["spatial"]["scale"]
        assert abs(rot[2]) <= 15 and all(abs(r) <= 5 for r in rot[:2])
        assert all(0.85 * 0.95 - 1e-3 <= s <= 1.15 * 1.05 + 1e-3 for s in scale)
        liver, spleen = np.argwhere(lab == 5), np.argwhere(lab == 1)
        assert len(spleen) and liver[:, 0].mean() < spleen[:, 0].mean()
        # The crop is centred in the liver, which lies whole inside it: its voxels scale with 1 / the
        # volume factor.
        assert len(liver) == pytest.approx(1440 / np.prod(scale), rel=0.08)

    size = np.array(cfg.crop)
    src = spatial_source_size(size, cfg)
    assert np.all(src >= size * 1.15 * 1.05) and np.all(src % 2 == 0)
    still = LocaliserTrainConfig(bank="-", out_dir="-", spatial_scale=(1.0, 1.0), spatial_axis_scale=0.0,
                                 spatial_rotate_deg=(0.0, 0.0, 0.0))
    block = np.random.default_rng(0).normal(0, 50, tuple(src)).astype(np.float32)
    labels = (np.arange(src.prod()) % 9).reshape(tuple(src)).astype(np.uint8)
    c, f, lab, _ = rotate_and_scale(block, labels, labels, size, still, rng)
    cut = tuple(slice((s - t) // 2, (s - t) // 2 + t) for s, t in zip(src, size))
    np.testing.assert_allclose(c, block[cut], atol=0.01)      # grid_sample's rounding
    np.testing.assert_array_equal(lab, labels[cut])
    np.testing.assert_array_equal(f, labels[cut])
    # Zoomed out beyond the source crop, the labels there are unknown, not background.
    wide = LocaliserTrainConfig(bank="-", out_dir="-", spatial_scale=(2.0, 2.0), spatial_axis_scale=0.0,
                                spatial_rotate_deg=(0.0, 0.0, 0.0))
    _, _, lab, _ = rotate_and_scale(block, labels, labels + 1, size, wide, rng)
    assert lab[0, 0, 0] == IGNORE and lab[tuple(size // 2)] != IGNORE and (lab != IGNORE).mean() < 0.9


def test_rotation_and_scaling_settings_that_would_mirror_or_tumble_are_refused():
    from priorsam.training.localiser import LocaliserTrainConfig, check_spatial

    check_spatial(LocaliserTrainConfig(bank="-", out_dir="-", p_spatial=0.5))
    for bad in ({"spatial_scale": (-1.0, 1.0)}, {"spatial_scale": (1.2, 0.9)}, {"spatial_axis_scale": 1.0},
                {"p_spatial": 1.5}, {"spatial_rotate_deg": (0.0, 0.0, 180.0)}, {"spatial_rotate_deg": (10.0,)}):
        with pytest.raises(ValueError, match="spatial"):
            check_spatial(LocaliserTrainConfig(bank="-", out_dir="-", **bad))


def test_partial_scans_get_four_shifted_localiser_passes(tmp_path, monkeypatch):
    """Under PARTIAL_Z_MM of z (a few centimetres of the upper abdomen) the localiser's probabilities are
    averaged over 4 shifted grids, as on tight fields; a longer scan gets one pass; the option decides
    when set."""
    import nibabel as nib

    import priorsam.engine.localise as localise_module
    from priorsam.engine.segment import PARTIAL_Z_MM, SegmentOptions, Segmenter
    from priorsam.io import read_volume

    class Reached(Exception):
        pass

    seen = []

    def spy(*args, shifts=1, **kwargs):
        seen.append(shifts)
        raise Reached   # the number of passes is all this test asks about

    monkeypatch.setattr(localise_module, "localise", spy)
    rng = np.random.default_rng(0)
    for options in (SegmentOptions(), SegmentOptions(localiser_shifts=2)):
        seg = Segmenter(None, "cpu", options)
        for nz in (14, 20):                    # 42 mm and 60 mm of z on a 300 mm field (not tight)
            assert (nz * 3.0 < PARTIAL_Z_MM) == (nz == 14)
            path = tmp_path / f"v{nz}.nii.gz"
            ct = rng.normal(40, 20, (100, 100, nz)).astype(np.float32)
            ct[:15], ct[-15:] = -1000.0, -1000.0   # air beside the body, as CT has
            nib.save(nib.Nifti1Image(ct, np.diag([-3.0, -3.0, 3.0, 1.0])), path)
            with pytest.raises(Reached):
                seg.segment(read_volume(path), show_bar=False)
    assert seen == [4, 1, 2, 2]


def test_organs_on_the_wrong_sides_are_named():
    """The left–right order that both the bank loader and the localiser's guard check."""
    from priorsam.engine.localise import contradicted_sides
    from priorsam.labels import sides_contradicted

    assert sides_contradicted({"liver": 80.0, "spleen": 20.0, "kidney_right": 70.0, "kidney_left": 30.0}) == ""
    assert "liver" in sides_contradicted({"liver": 20.0, "spleen": 80.0})
    assert "right kidney" in sides_contradicted({"liver": 80.0, "spleen": 20.0, "kidney_right": 30.0,
                                                 "kidney_left": 70.0})
    assert sides_contradicted({"liver": 20.0}) == ""           # one organ of a pair proves nothing
    lab = np.zeros((40, 10, 4), np.uint8)
    lab[25:38, :, :2], lab[2:8, :, :2] = 5, 1                   # liver on the right (larger x), spleen on the left
    assert contradicted_sides(lab) == ""
    assert "liver" in contradicted_sides(lab[::-1])


def test_a_localiser_answer_with_organs_on_the_wrong_sides_is_not_used(shipped_localiser, monkeypatch):
    """On a real patient's three 1 mm slices the localiser once called the lateral liver "spleen", on the
    patient's right of its liver (bench/results/localiser_one_slice_decision.md). Such an answer is refused
    with a reason, and it is not mistaken for a volume too thin for the localiser (which changes how the
    heads answer). Here the shipped localiser reads the sample CT and its liver and spleen are swapped."""
    import priorsam.engine.localise as localise_module
    from priorsam.data.pseudo_patients import load_sample

    ct, _, _, _ = load_sample()
    hu = ct.array.astype(np.float32)
    res = localise_module.localise(hu, ct.spacing, shipped_localiser)
    assert res.usable and not res.too_thin and res.present[1] and res.present[5]
    real = localise_module.keep_components

    def swapped(*args, **kwargs):
        lab = real(*args, **kwargs)
        out = lab.copy()
        out[lab == 1], out[lab == 5] = 5, 1
        return out

    monkeypatch.setattr(localise_module, "keep_components", swapped)
    res = localise_module.localise(hu, ct.spacing, shipped_localiser)
    assert not res.usable and not res.too_thin
    assert "contradict anatomy" in res.reason and "per-slice model" in res.reason and "\n" not in res.reason
    thin = localise_module.localise(hu[:, :, :1], ct.spacing, shipped_localiser)
    assert not thin.usable and thin.too_thin
