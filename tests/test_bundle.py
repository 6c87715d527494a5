"""Bundle files and the light pieces of priorsam.bundle_support / priorsam.evaluation (no model runs)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import save_nifti, synthetic_ct_array

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundle"


def test_bundle_files_present():
    for rel in ["configs/metadata.json", "configs/inference.json", "configs/train.json", "configs/train_localiser.json",
                "configs/train_heads_bank.json", "configs/train_box_decoder.json", "configs/evaluate.json",
                "configs/multi_gpu_train.json", "configs/multi_gpu_evaluate.json", "configs/logging.conf",
                "configs/schema/meta_schema_priorsam.json", "large_files.yml", "docs/README.md",
                "docs/data_license.txt", "LICENSE"]:
        assert (BUNDLE / rel).is_file(), rel
    assert (REPO / "LICENSE").read_text() == (BUNDLE / "LICENSE").read_text()
    assert "Apache License" in (REPO / "LICENSE").read_text()


def test_verify_metadata_offline(monkeypatch):
    from monai.bundle import verify_metadata

    monkeypatch.chdir(BUNDLE)  # the schema URL in metadata is relative to the bundle
    verify_metadata(meta_file="configs/metadata.json", filepath="configs/schema/meta_schema_priorsam.json")


def test_verify_metadata_rejects_missing_keys(tmp_path):
    from monai.bundle import verify_metadata

    meta = json.loads((BUNDLE / "configs/metadata.json").read_text())
    del meta["network_data_format"]["outputs"]["pred"]["channel_def"]
    bad = tmp_path / "metadata.json"
    bad.write_text(json.dumps(meta))
    with pytest.raises(ValueError):
        verify_metadata(meta_file=str(bad), filepath=str(BUNDLE / "configs/schema/meta_schema_priorsam.json"))


def test_metadata_channels_match_label_table():
    from priorsam.labels import labels

    meta = json.loads((BUNDLE / "configs/metadata.json").read_text())
    out = meta["network_data_format"]["outputs"]["pred"]
    assert out["num_channels"] == 9
    assert out["channel_def"] == {"0": "background", **{str(l.id): l.name for l in labels()}}
    inp = meta["network_data_format"]["inputs"]["image"]
    assert (inp["num_channels"], inp["format"], inp["modality"]) == (1, "hounsfield", "CT")
    assert meta["license"]["code"] == "Apache-2.0"
    assert any("2503.18227" in r for r in meta["references"]) and any("SEG-SAM" in r for r in meta["references"])


def test_shipped_weights_are_two_files_each_small_enough_for_git_and_the_spec_names_the_decoder():
    """models/ holds the checkpoint and, beside it, the fine-tuned box decoder its spec names (digest checked
    by reading them); each under 25 MB, so neither needs LFS or an external download."""
    from priorsam.models.spec import read_checkpoint

    files = sorted(p.name for p in (BUNDLE / "models").iterdir() if p.is_file())
    assert files == ["model.box_decoder.pt", "model.pt"]
    for name in files:
        assert (BUNDLE / "models" / name).stat().st_size < 25 * 1024 * 1024, name
    state, spec = read_checkpoint(BUNDLE / "models" / "model.pt")
    assert spec.box_decoder.file == "model.box_decoder.pt"
    assert any(k.startswith("box_decoder.") for k in state)
    assert not any(k.startswith("box_decoder.") for k in torch.load(BUNDLE / "models" / "model.pt", weights_only=True))


def test_large_files_names_sam_vit_b():
    import yaml

    entry = yaml.safe_load((BUNDLE / "large_files.yml").read_text())["large_files"][0]
    assert entry["path"] == "models/sam_vit_b_01ec64.pth"
    assert entry["url"] == "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth"
    assert entry["hash_type"] == "sha256" and len(entry["hash_val"]) == 64


def test_bundle_root_from_any_cwd(tmp_path, monkeypatch):
    from priorsam.bundle_support import bundle_root

    monkeypatch.delenv("PRIORSAM_BUNDLE", raising=False)
    for cwd in (tmp_path, REPO, BUNDLE):
        monkeypatch.chdir(cwd)
        assert Path(bundle_root()) == BUNDLE
    monkeypatch.setenv("PRIORSAM_BUNDLE", str(tmp_path))
    assert Path(bundle_root()) == tmp_path


def test_image_datalist_files_and_dicom_folders(tmp_path):
    from priorsam.bundle_support import case_name, image_datalist
    from priorsam.errors import InputError

    save_nifti(tmp_path / "b.nii.gz", synthetic_ct_array((8, 8, 2)))
    save_nifti(tmp_path / "a.nii", synthetic_ct_array((8, 8, 2)))
    dcm = tmp_path / "series1"
    dcm.mkdir()
    (dcm / "1.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\0" * 16)
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "empty_dir").mkdir()
    items = image_datalist(tmp_path)
    assert [case_name(i["image"]) for i in items] == ["a", "b", "series1"]
    assert image_datalist(tmp_path / "b.nii.gz") == [{"image": str(tmp_path / "b.nii.gz")}]
    with pytest.raises(InputError):
        image_datalist(tmp_path / "empty_dir")
    with pytest.raises(InputError):
        image_datalist(tmp_path / "missing")


def test_image_datalist_leaves_out_label_maps_priorsam_wrote(tmp_path):
    # With --output_dir equal to --dataset_dir, a second run read the first one's ct_seg.nii.gz as an image,
    # refused it and exited 1.
    from priorsam.bundle_support import image_datalist
    from priorsam.errors import InputError
    from priorsam.io import read_volume, write_label_map

    save_nifti(tmp_path / "ct.nii.gz", synthetic_ct_array((8, 8, 2)))
    vol = read_volume(tmp_path / "ct.nii.gz")
    write_label_map(vol, np.zeros(vol.shape, np.uint8), tmp_path / "ct_seg.nii.gz")
    save_nifti(tmp_path / "ct_seg_manual.nii.gz", np.zeros((8, 8, 2), np.uint8))   # not ours: an input like any other
    (tmp_path / "scan.nhdr").write_text("NRRD0004\n")                            # a detached NRRD header counts too
    assert [Path(i["image"]).name for i in image_datalist(tmp_path)] == ["ct.nii.gz", "ct_seg_manual.nii.gz",
                                                                         "scan.nhdr"]
    only_ours = tmp_path / "results"
    only_ours.mkdir()
    write_label_map(vol, np.zeros(vol.shape, np.uint8), only_ours / "ct_seg.nii.gz")
    with pytest.raises(InputError, match="only label maps PriorSAM wrote"):
        image_datalist(only_ours)


def test_labelled_datalist_folder_and_json(tmp_path):
    from priorsam.bundle_support import labelled_datalist
    from priorsam.errors import InputError

    (tmp_path / "imagesTr").mkdir()
    (tmp_path / "labelsTr").mkdir()
    save_nifti(tmp_path / "imagesTr" / "c1_0000.nii.gz", synthetic_ct_array((8, 8, 2)))
    save_nifti(tmp_path / "labelsTr" / "c1.nii.gz", np.zeros((8, 8, 2), np.uint8))
    assert labelled_datalist(tmp_path) == [{"image": str(tmp_path / "imagesTr" / "c1_0000.nii.gz"),
                                            "label": str(tmp_path / "labelsTr" / "c1.nii.gz")}]
    js = tmp_path / "list.json"
    js.write_text(json.dumps({"validation": [{"image": "imagesTr/c1_0000.nii.gz", "label": "labelsTr/c1.nii.gz"}]}))
    got = labelled_datalist(None, js, "validation")
    assert got[0]["label"] == str(tmp_path / "labelsTr" / "c1.nii.gz")
    with pytest.raises(InputError):
        labelled_datalist(None, js, "training")
    (tmp_path / "labelsTr" / "c1.nii.gz").unlink()
    with pytest.raises(InputError):
        labelled_datalist(tmp_path)


def test_window_tensor_matches_library_window():
    from priorsam.bundle_support.network import window_tensor
    from priorsam.data.preprocess import window

    hu = np.linspace(-1200, 1500, 1000, dtype=np.float32)
    np.testing.assert_allclose(window_tensor(torch.from_numpy(hu)).numpy(), window(hu), rtol=0, atol=1e-4)


def test_remap_labels_keeps_meta():
    from monai.data import MetaTensor

    from priorsam.bundle_support.evaluation import RemapLabelsd

    lab = MetaTensor(torch.tensor([[[[0., 6.], [11., 5.]]]]), affine=torch.diag(torch.tensor([2., 2., 3., 1.])))
    lab.applied_operations.append({"class": "Orientationd"})
    out = RemapLabelsd("label", "synapse_raw")({"label": lab})["label"]
    assert out.tolist() == [[[[0, 5], [8, 0]]]] and out.dtype == torch.uint8
    assert torch.equal(out.affine, lab.affine) and len(out.applied_operations) == 1
    with pytest.raises(ValueError):
        RemapLabelsd("label", None)({"label": lab})  # 11 is not one of our ids


def test_evaluate_case_known_geometry():
    from priorsam.evaluation import evaluate_case, summarise

    gt = np.zeros((30, 30, 12), np.uint8)
    gt[5:15, 5:15, 2:10] = 1          # spleen cube
    gt[20:26, 20:26, 3:7] = 5         # liver block
    gt[2:4, 25:28, 1:3] = 4           # gallbladder, missed below
    pred = gt.copy()
    pred[gt == 4] = 0
    pred[5:15, 15, 2:10] = 1           # spleen one voxel too wide along y (spacing 2 mm)
    pred[1, 1, 1] = 7                  # aorta absent from the reference: a false positive
    r = evaluate_case(pred, gt, (1.0, 2.0, 3.0), "c")["organs"]
    assert r["spleen"]["dice"] == pytest.approx(2 * 800 / (800 + 880), abs=1e-6)
    assert r["spleen"]["hd95_mm"] == pytest.approx(2.0) and r["spleen"]["hd95_vox"] == pytest.approx(1.0)
    assert r["liver"]["dice"] == pytest.approx(1.0) and r["liver"]["hd95_mm"] == 0.0
    assert r["gallbladder"]["missed"] and r["gallbladder"]["dice"] == 0.0 and math.isnan(r["gallbladder"]["hd95_mm"])
    assert r["aorta"]["false_positive"] and math.isnan(r["aorta"]["dice"])
    s = summarise([{"case": "c", "organs": r}])
    assert s["mean"]["dice"] == pytest.approx((r["spleen"]["dice"] + 1.0 + 0.0) / 3)
    with pytest.raises(ValueError):
        evaluate_case(pred, gt[:, :, :5], (1, 1, 1))


def test_synapse_averaging_per_organ_then_mean(tmp_path):
    from priorsam.evaluation import summarise, write_report
    from priorsam.labels import label_names

    def case(name, dice_liver, dice_spleen):
        organs = {n: {"dice": math.nan, "hd95_mm": math.nan, "hd95_vox": math.nan, "gt_voxels": 0,
                      "pred_voxels": 0, "missed": False, "false_positive": False} for n in label_names()}
        organs["liver"].update(dice=dice_liver, hd95_mm=4.0, hd95_vox=2.0, gt_voxels=10)
        if dice_spleen is not None:
            organs["spleen"].update(dice=dice_spleen, hd95_mm=2.0, hd95_vox=1.0, gt_voxels=10)
        return {"case": name, "organs": organs}

    cases = [case("a", 0.9, 0.5), case("b", 0.7, None)]
    s = summarise(cases)
    assert s["organs"]["liver"]["dice"] == pytest.approx(0.8)
    assert s["organs"]["spleen"]["dice"] == pytest.approx(0.5) and s["organs"]["spleen"]["cases"] == 1
    assert s["mean"]["dice"] == pytest.approx(0.65)  # organs averaged after cases, not pooled
    paths = write_report(cases, tmp_path, note="labels are model output")
    rows = paths["csv"].read_text().splitlines()
    assert len(rows) == 1 + 2 * 8 and rows[0].startswith("case,organ,dice")
    md = paths["markdown"].read_text()
    assert "| liver | 2 | 0.800 |" in md and "**0.650**" in md and "labels are model output" in md


def test_bundle_preprocessing_reads_dicom_folder_like_the_library():
    """A DICOM series folder goes through the bundle's LoadVolumed to exactly the volume the library
    reads, geometry of the stored file included (so the engine sees the same input and the label map
    is written on the same grid), named after the folder."""
    from monai.bundle import ConfigParser

    from priorsam.bundle_support.io_transforms import volume_of
    from priorsam.data.samples import sample_ct
    from priorsam.errors import AssetError
    from priorsam.io import read_volume

    try:
        folder = sample_ct().dicom_dir
    except AssetError as exc:
        pytest.skip(f"sample CT unavailable offline: {exc}")
    parser = ConfigParser()
    parser.read_config(str(BUNDLE / "configs/inference.json"))
    item = parser.get_parsed_content("preprocessing")({"image": str(folder)})
    got, ref = volume_of(item["image"]), read_volume(folder)
    assert np.array_equal(got.array, ref.array)
    assert np.allclose(got.affine, ref.affine, atol=1e-6)
    assert (got.source.format, got.source.shape) == (ref.source.format, ref.source.shape)
    assert np.array_equal(got.source.to_canonical, ref.source.to_canonical)
    assert Path(item["image"].meta["filename_or_obj"]).name == folder.name


def test_load_and_save_transforms_keep_the_stored_grid_through_collation(tmp_path):
    """LoadVolumed → MONAI collate/decollate → SaveLabelMapd writes the label map exactly as the command
    line's writer does: same stored array, affine and header codes, for a file stored far from RAS."""
    import nibabel as nib
    from monai.data import decollate_batch, list_data_collate

    from priorsam.bundle_support.io_transforms import LoadVolumed, SaveLabelMapd, volume_of
    from priorsam.io import read_volume, write_label_map

    odd = np.array([[-2.0, 0, 0, 40], [0, 0, 3.0, -10], [0, -2.0, 0, 20], [0, 0, 0, 1]])
    src = save_nifti(tmp_path / "odd.nii.gz", synthetic_ct_array((36, 6, 30)), odd)
    item = LoadVolumed("image")({"image": str(src)})
    item = decollate_batch(list_data_collate([item]))[0]
    volume = volume_of(item["image"])
    ref = read_volume(src)
    assert np.array_equal(volume.array, ref.array) and np.allclose(volume.affine, ref.affine)
    labels = (volume.array > 0).astype(np.uint8) * 5
    pred = item["image"].clone()
    pred[0] = torch.from_numpy(labels)
    SaveLabelMapd("pred", str(tmp_path / "bundle"))({"pred": pred})
    write_label_map(ref, labels, tmp_path / "cli_seg.nii.gz")
    got, want = nib.load(str(tmp_path / "bundle" / "odd_seg.nii.gz")), nib.load(str(tmp_path / "cli_seg.nii.gz"))
    assert np.array_equal(np.asarray(got.dataobj), np.asarray(want.dataobj))
    assert np.allclose(got.affine, odd) and np.allclose(want.affine, odd)
    assert int(got.header["sform_code"]) == int(want.header["sform_code"])


def test_volume_of_refuses_an_image_without_its_source():
    from monai.data import MetaTensor

    from priorsam.bundle_support.io_transforms import volume_of
    from priorsam.errors import InputError

    with pytest.raises(InputError, match="LoadVolumed"):
        volume_of(MetaTensor(torch.zeros((1, 4, 4, 4))))


def test_segment_options_are_checked_when_the_config_is_parsed():
    from priorsam.bundle_support.inference import SegmentOrgansInferer
    from priorsam.errors import InputError

    assert SegmentOrgansInferer({"localiser_shifts": 4, "sam_refine": "false"}).options == {
        "localiser_shifts": 4, "sam_refine": False}
    with pytest.raises(InputError, match="unknown option 'localiser_shift'"):
        SegmentOrgansInferer({"localiser_shift": 4})


def test_the_evaluation_handler_checks_its_report_folder_when_the_config_is_built(tmp_path):
    from priorsam.bundle_support.evaluation import CaseMetricsHandler
    from priorsam.errors import InputError

    (tmp_path / "a_file").write_text("not a folder")
    with pytest.raises(InputError, match="is not a folder"):
        CaseMetricsHandler(output_dir=str(tmp_path / "a_file" / "eval"))
    CaseMetricsHandler(output_dir=str(tmp_path / "eval"))
    assert not (tmp_path / "eval").exists()          # checked, not made: a run that fails later leaves nothing
