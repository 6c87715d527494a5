"""Anatomy bank loader, label-driven registration QA and pseudo-patient building on small synthetic maps.

Nothing here needs ../shared: the bank's layout is recreated in tmp_path with synthetic label maps.
"""
from __future__ import annotations


import nibabel as nib
import numpy as np
import pytest

from priorsam.data.anatomy import check_orientation, discover, load_anatomy
from priorsam.errors import InputError


def synthetic_abdomen(shape=(40, 36, 32), shift=(0, 0, 0), scale=1.0) -> np.ndarray:
    """Our 8 organs as boxes/ellipsoids in canonical RAS voxel order (larger x = patient's right)."""
    lab = np.zeros(shape, np.uint8)
    x, y, z = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    cx, cy, cz = (np.array(shape) / 2) + np.array(shift)

    def ell(k, c, r):
        m = sum(((a - ci) / (ri * scale)) ** 2 for a, ci, ri in zip((x, y, z), c, r)) <= 1
        lab[m & (lab == 0)] = k

    ell(5, (cx + 9, cy + 2, cz + 4), (8, 9, 7))     # liver, patient's right
    ell(1, (cx - 11, cy - 3, cz + 4), (4, 5, 5))    # spleen, left
    ell(2, (cx + 8, cy - 8, cz - 6), (3, 3, 5))     # right kidney
    ell(3, (cx - 8, cy - 8, cz - 6), (3, 3, 5))     # left kidney
    ell(4, (cx + 5, cy + 8, cz - 1), (2, 2, 2))     # gallbladder
    ell(6, (cx - 5, cy + 4, cz + 5), (4, 4, 4))     # stomach
    ell(7, (cx, cy - 6, cz), (1.5, 1.5, 12))        # aorta
    ell(8, (cx - 2, cy - 1, cz - 2), (5, 1.5, 1.5))  # pancreas
    return lab


def write_bank(root, maps: dict[str, np.ndarray], affine=None):
    folder = root / "btcv_learn2reg"
    folder.mkdir(parents=True)
    raw_of = {1: 1, 2: 2, 3: 3, 4: 4, 5: 6, 6: 7, 7: 8, 8: 11}  # our id → BTCV id
    aff = np.diag([3.0, 3.0, 3.0, 1.0]) if affine is None else affine
    for name, ours in maps.items():
        raw = np.zeros_like(ours)
        for o, r in raw_of.items():
            raw[ours == o] = r
        nib.save(nib.Nifti1Image(raw, aff), str(folder / f"{name}.nii.gz"))
    return root


def test_loader_maps_ids_and_checks_orientation(tmp_path):
    root = write_bank(tmp_path / "bank", {"0001": synthetic_abdomen()})
    cases = discover(root)
    assert [c.case_id for c in cases] == ["btcv_0001"]
    a = load_anatomy(cases[0])
    assert set(np.unique(a.ours)) == set(range(9))
    assert np.array_equal(a.ours, synthetic_abdomen())
    assert "research" in cases[0].licence


def test_loader_refuses_mirrored_map(tmp_path):
    """A header whose x axis is mirrored puts the liver on the patient's left: refused with one line."""
    lab = synthetic_abdomen()
    mirrored = np.diag([-3.0, 3.0, 3.0, 1.0])  # voxel data unchanged, x flipped: what the raw Learn2Reg maps had
    root = write_bank(tmp_path / "bank", {"0002": lab}, affine=mirrored)
    with pytest.raises(InputError, match="mirrored left/right") as e:
        load_anatomy(discover(root)[0])
    assert "\n" not in str(e.value)


def test_orientation_check_catches_swapped_kidneys():
    lab = synthetic_abdomen()
    swapped = lab.copy()
    swapped[lab == 2], swapped[lab == 3] = 3, 2
    check_orientation(lab, np.diag([3.0, 3, 3, 1]), "ok")
    with pytest.raises(InputError, match="mirrored kidneys"):
        check_orientation(swapped, np.diag([3.0, 3, 3, 1]), "swapped")


def test_missing_bank_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.delenv("PRIORSAM_ANATOMY_DIR", raising=False)
    with pytest.raises(InputError, match="no anatomy bank given"):
        discover(None)
    with pytest.raises(InputError, match="not found"):
        discover(tmp_path / "nowhere")
    from priorsam.data.pseudo_patients import main as build_main

    # the bank command: one line, and no empty bank folder left behind
    assert build_main(["--anatomy", str(tmp_path / "nowhere"), "--cache", str(tmp_path / "bank")]) == 1
    assert not (tmp_path / "bank").exists()


def test_registration_qa_on_a_synthetic_pair():
    """Greedy aligns a shifted, scaled copy: Dice rises from the affine step to the deformable one,
    the deformation does not fold, and extra images follow the same transform."""
    pytest.importorskip("picsl_greedy")
    from priorsam.data.registration import dice_per_label, register_labels

    fixed = synthetic_abdomen()
    moving = synthetic_abdomen(shift=(2, -1, 1), scale=0.85)
    before = np.nanmean(list(dice_per_label(moving, fixed, range(1, 9)).values()))
    intensity = np.where(moving > 0, 40.0 + 10 * moving, -1000.0).astype(np.float32)
    r = register_labels(fixed, moving, 3.0, {"ct": (intensity, "LINEAR", -1024.0)},
                        affine_iters="40x20", deform_iters="40x20")
    after = np.mean([v for v in r.dice.values()])
    assert after > 0.8 and after > before + 0.1, (before, r.dice)
    assert np.mean(list(r.dice.values())) >= np.mean(list(r.dice_affine.values())) - 0.02
    assert r.folded_fraction < 0.01
    assert r.warped["ct"].shape == fixed.shape and r.warped["labels"].dtype == np.uint8
    # The warped intensities follow the warped labels (liver voxels carry the liver's value).
    liver = r.warped["labels"] == 5
    assert abs(float(np.median(r.warped["ct"][liver])) - 90.0) < 15


def test_appearance_phase_changes_only_labelled_structures():
    from priorsam.data import appearance as app

    names = {1: "spleen", 2: "aorta", 3: "kidney_left", 4: "vertebrae_L1"}
    full = np.zeros((20, 20, 20), np.uint8)
    full[2:8, 2:8, 2:8] = 1
    full[10:13, 10:13, :] = 2
    full[12:19, 2:9, 5:15] = 3
    full[2:6, 14:18, :] = 4
    ct = np.full(full.shape, 40.0, np.float32)
    ct[full == 0] = -100.0
    rng = np.random.default_rng(0)
    out, draws = app.apply_phase(ct, full, names, "arterial", rng, 4.0)
    assert np.all(out[full == 0] == ct[full == 0])                        # fat untouched
    assert np.all(out[full == 4] == ct[full == 4])                        # bone untouched
    lo, hi = app.ARTERIAL_AORTA_HU
    assert lo - 1 <= float(np.median(out[full == 2])) <= hi + 1           # CT angiography aorta
    kid = out[full == 3]
    assert kid.max() - kid.min() > 30                                     # cortex enhances more than medulla
    syn = app.apply_synthseg(ct, full, rng)
    assert np.all(syn[full == 0] == ct[full == 0])
    assert len({float(syn[full == k][0]) for k in (1, 2, 3, 4)}) == 4     # one offset per structure


def test_field_of_view_and_slab_are_edge_padded():
    from priorsam.data import appearance as app

    ct = np.arange(40 * 40 * 20, dtype=np.float32).reshape(40, 40, 20)
    f = app.crop_field_of_view(ct, 4.0, np.random.default_rng(0), (20, 20), 80.0)
    assert f.shape == ct.shape and np.array_equal(f[10:30, 10:30], ct[10:30, 10:30])
    assert np.array_equal(f[0, 10:30], ct[10, 10:30])                     # the edge, not air
    s = app.crop_slab(ct, 5, 9)
    assert np.array_equal(s[:, :, 0], ct[:, :, 5]) and np.array_equal(s[:, :, 19], ct[:, :, 8])
    padded, crop = app.pad_edge(np.ones((10, 30, 3)), (48, 48, 48))
    assert padded.shape == (48, 48, 48) and padded[crop].shape == (10, 30, 3)


def test_registration_start_weights_each_organ_once():
    """An enlarged organ must not drag the affine's start (BTCV 0009's 3.2 L spleen did, with the
    centroid of the organ union): the start is the mean of the organ centroids."""
    from priorsam.data.registration import organ_centroids_mean_mm

    lab = np.zeros((30, 10, 10), np.uint8)
    lab[0:2, 4:6, 4:6] = 1       # small organ, centroid x 0.5
    lab[10:30, :, :] = 2         # huge organ, centroid x 19.5
    assert np.allclose(organ_centroids_mean_mm(lab, [1, 2], 3.0), [30.0, 13.5, 13.5])


def test_registration_with_a_fixed_seed_is_repeatable():
    pytest.importorskip("picsl_greedy")
    from priorsam.data.registration import register_labels

    fixed = synthetic_abdomen()
    moving = synthetic_abdomen(shift=(2, -1, 1), scale=0.85)
    intensity = np.where(moving > 0, 40.0 + 10 * moving, -1000.0).astype(np.float32)
    runs = [register_labels(fixed, moving, 3.0, {"ct": (intensity, "LINEAR", -1024.0)}, seed=7,
                            affine_iters="40x20", deform_iters="40x20") for _ in range(2)]
    assert np.array_equal(runs[0].warped["labels"], runs[1].warped["labels"])
    assert np.array_equal(runs[0].warped["ct"], runs[1].warped["ct"])
    assert runs[0].dice == runs[1].dice


def test_a_case_failing_qa_is_registered_again_with_the_next_seed(tmp_path):
    """QA that no registration can pass: every allowed try is made (seeds 1, 2), each is recorded, the
    best one is kept in the pseudo-patient, and the case is dropped."""
    pytest.importorskip("picsl_greedy")
    from types import SimpleNamespace

    from priorsam.data.pseudo_patients import BankRecipe, build_one, qa_table, save
    from priorsam.labels import mapping, remap

    root = write_bank(tmp_path / "bank", {"0001": synthetic_abdomen()})
    case = discover(root)[0]
    moving = synthetic_abdomen(shift=(2, -1, 1), scale=0.85)
    full = np.zeros_like(moving)
    for ts_id, ours_id in mapping("totalsegmentator").items():
        full[moving == ours_id] = ts_id
    ct = SimpleNamespace(array=np.where(moving > 0, 40.0, -1000.0).astype(np.float32), spacing=np.full(3, 3.0))
    sample = (ct, full, remap(full, mapping("totalsegmentator")), None)

    pp = build_one(case, sample, BankRecipe(min_case_dice=1.01, attempts=2))
    tries = pp.qa["tries"]
    assert [t["seed"] for t in tries] == [1, 2] and not pp.qa["kept"]
    best = max(tries, key=lambda t: t["mean_dice"])
    assert pp.qa["seed"] == best["seed"] and pp.qa["mean_dice"] == best["mean_dice"] > 0.8
    save(pp, tmp_path / "cache" / case.case_id, "k")
    assert "| no | 2 |" in qa_table(tmp_path / "cache").splitlines()[-1]   # dropped after two tries
    passed = build_one(case, sample, BankRecipe(attempts=2))  # the ordinary QA: the first try passes
    assert passed.qa["kept"] and [t["seed"] for t in passed.qa["tries"]] == [1]


def test_bank_json_lists_every_case_built_with_the_recipe_after_a_partial_rebuild(tmp_path, monkeypatch):
    """Building one case again (``cases=[…]``) keeps the others in bank.json, which training reads as the bank."""
    import json
    from types import SimpleNamespace

    import priorsam.data.pseudo_patients as ppm

    root = write_bank(tmp_path / "anatomy", {"0001": synthetic_abdomen(), "0002": synthetic_abdomen(shift=(1, 0, 0))})
    image = tmp_path / "sample.nii.gz"
    image.write_bytes(b"sample")
    monkeypatch.setattr(ppm, "load_sample", lambda: (None, None, None, SimpleNamespace(image=image)))
    built = []

    def fake_build_one(case, sample, recipe, log_path=None):
        built.append(case.case_id)
        z = np.zeros((2, 2, 2), np.int16)
        return ppm.PseudoPatient(case.case_id, z.astype(np.float32), z, z, z, z.astype(bool), np.eye(4),
                                 {"case_id": case.case_id, "mean_dice": 0.9, "dice": {}, "dice_affine": {"1": 0.4},
                                  "folded_fraction": 0.0, "unreliable_organs": [], "kept": True, "seconds": 1.0,
                                  "tries": [{"seed": 1}]})

    monkeypatch.setattr(ppm, "build_one", fake_build_one)
    cache = tmp_path / "cache"
    ids = [c.case_id for c in discover(root)]
    ppm.build_bank(str(root), str(cache), log=lambda *_: None)
    assert built == ids
    ppm.build_bank(str(root), str(cache), cases=[ids[1]], log=lambda *_: None)   # cached: nothing registered
    assert built == ids
    listed = json.loads((cache / "bank.json").read_text())["cases"]
    assert [c["case_id"] for c in listed] == ids and not list(cache.glob(".bank.json.*"))
    # A case cached under another recipe is not listed as part of this one.
    ppm.build_bank(str(root), str(cache), cases=[ids[0]], recipe=ppm.BankRecipe(spacing_mm=2.0), log=lambda *_: None)
    assert [c["case_id"] for c in json.loads((cache / "bank.json").read_text())["cases"]] == [ids[0]]
