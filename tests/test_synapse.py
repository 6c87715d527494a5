"""The TransUNet-format Synapse converter: HU restored, labels remapped, display order kept."""
import json

import h5py
import numpy as np
import pytest

from priorsam.data.synapse import prepare
from priorsam.io import read_label_map, read_volume


def _write_dataset(root):
    (root / "train_npz").mkdir(parents=True)
    (root / "test_vol_h5").mkdir()
    (root / "lists" / "lists_Synapse").mkdir(parents=True)
    names = []
    for z in range(3):
        img = np.full((8, 10), 0.5, np.float32)
        img[0, 0] = 1.0  # top-left marker: anterior, patient right
        lab = np.zeros((8, 10), np.uint8)
        lab[2:4, 2:4] = 7  # TransUNet 7 = spleen
        lab[5:7, 5:7] = 1  # TransUNet 1 = aorta
        np.savez(root / "train_npz" / f"case0005_slice{z:03d}.npz", image=img, label=lab)
        names.append(f"case0005_slice{z:03d}")
    (root / "lists" / "lists_Synapse" / "train.txt").write_text("\n".join(names) + "\n")
    with h5py.File(root / "test_vol_h5" / "case0001.npy.h5", "w") as h5:
        h5["image"] = np.zeros((2, 8, 10), np.float32)
        h5["label"] = np.full((2, 8, 10), 5, np.uint8)  # liver
    (root / "lists" / "lists_Synapse" / "test_vol.txt").write_text("case0001\n")


def test_prepare_converts_and_remaps(tmp_path):
    _write_dataset(tmp_path / "syn")
    dl = prepare(tmp_path / "syn", tmp_path / "out", pixel_mm=0.8, slice_mm=3.0)
    assert [c["case_id"] for c in dl["training"]] == ["case0005"]
    assert json.loads((tmp_path / "out" / "datalist.json").read_text()) == dl
    # TransUNet's release is clipped to [−125, 275] HU: no air, so a user's segment would refuse it;
    # training reads it with force (priorsam.training.views.load_case), and says why.
    vol = read_volume(dl["training"][0]["image"], force=True)
    assert any("does not look like CT" in w for w in vol.warnings)
    assert vol.shape == (10, 8, 3)
    np.testing.assert_allclose(vol.spacing, [0.8, 0.8, 3.0])
    disp = vol.axial_slices()
    assert disp[0, 0, 0] == 275.0 and disp[0, 1, 1] == 75.0  # [0,1] → HU, marker stays top-left
    lab = read_label_map(dl["training"][0]["label"]).axial_slices()
    assert set(np.unique(lab)) == {0, 1, 7}  # spleen → 1, aorta → 7 (our ids)
    assert (lab[:, 2:4, 2:4] == 1).all() and (lab[:, 5:7, 5:7] == 7).all()
    test = read_label_map(dl["validation"][0]["label"]).array
    assert (test == 5).all()  # TransUNet 5 = liver = ours 5


@pytest.mark.slow
def test_the_recipe_converts_caches_trains_and_reports_on_one_device(tmp_path):
    """The whole command on a tiny release: its cache, 2 head steps and the test case's report, all on the
    device asked for (before 0.8.5 the heads trained on the CPU whatever was asked)."""
    from priorsam.training.synapse_recipe import run

    _write_dataset(tmp_path / "syn")
    with h5py.File(tmp_path / "syn" / "test_vol_h5" / "case0001.npy.h5", "r+") as h5:
        h5["image"][...] = np.linspace(0, 1, 160, dtype=np.float32).reshape(2, 8, 10)   # a constant one is refused
    said = []
    report = run(str(tmp_path / "syn"), str(tmp_path / "work"), views=0, steps=2, device="cpu", log=said.append)
    assert "| liver |" in report.read_text()
    assert json.loads((tmp_path / "work" / "run" / "config.json").read_text())["device"] == "cpu"
    assert "[train] on CPU" in " ".join(said) and any(line.startswith("[train] step 2/2") for line in said)
