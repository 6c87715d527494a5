"""``priorsam.segment`` (the one public entry point), ``priorsam segment --statistics/--preview``, DICOM SEG
from the single-case command, ``priorsam --version``, ``priorsam evaluate`` and ``priorsam bundle export``.

Model runs use the random-head checkpoint (plumbing and geometry, not accuracy) on tiny CTs.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from conftest import save_nifti, synthetic_ct_array

REPO = Path(__file__).resolve().parents[1]


def _cli(args, capsys=None):
    from priorsam.cli import main

    return main(list(args))


# ----------------------------------------------------------------------------- no model
def test_version_prints_the_package_version(capsys):
    import priorsam

    assert _cli(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"priorsam {priorsam.__version__}"


def test_bad_outputs_fail_before_the_model_loads(tmp_path, synthetic_ct, capsys, monkeypatch):
    from priorsam.engine import segment as engine

    def boom(*a, **k):
        raise AssertionError("the model must not load for bad arguments")

    monkeypatch.setattr(engine.Segmenter, "__init__", boom)
    out = tmp_path / "seg.nii.gz"
    for extra in (["--statistics", str(tmp_path / "s.txt")], ["--preview", str(tmp_path / "p.jpg")]):
        assert _cli(["segment", "--image", str(synthetic_ct), "--out", str(out), *extra]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: "), err
    # a DICOM SEG needs a DICOM series as input
    assert _cli(["segment", "--image", str(synthetic_ct), "--out", str(tmp_path / "seg.dcm")]) == 1
    assert "DICOM SEG output needs a DICOM series" in capsys.readouterr().err
    assert not out.exists() and not (tmp_path / "seg.dcm").exists()


def test_any_engine_option_can_be_set_from_the_command_line(tmp_path, synthetic_ct, capsys, monkeypatch):
    from priorsam.engine import segment as engine
    from priorsam.engine.option_values import parse_options

    seen = {}

    class Stop(Exception):
        pass

    def capture(self, weights=None, device="auto", options=None, **kw):
        seen["options"] = options
        raise Stop

    monkeypatch.setattr(engine.Segmenter, "__init__", capture)
    out = tmp_path / "seg.nii.gz"
    with pytest.raises(Stop):
        _cli(["segment", str(synthetic_ct), str(out), "--z_stride", "2",
              "--option", "localiser_shifts=4,localiser_fill=0,thin_presence_gating=true,z_stride=none"])
    o = seen["options"]
    assert (o.localiser_shifts, o.localiser_fill, o.thin_presence_gating) == (4, 0.0, True)
    assert o.z_stride is None and o.encoder_backend == "auto"  # --option overrides the flag; the rest stays
    assert isinstance(o.localiser_fill, float) and isinstance(o.localiser_shifts, int)
    # a typo or a value of the wrong type is one line naming it, before anything is read or loaded
    for bad, said in (("localiser_shift=4", "unknown option 'localiser_shift'"),
                      ("localiser_shifts=four", "localiser_shifts: 'four' is not a whole number or none"),
                      ("use_localiser=maybe", "use_localiser"), ("localiser_shifts", "name=value")):
        assert _cli(["segment", str(synthetic_ct), str(out), "--option", bad]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and said in err[0], err
        assert _cli(["batch", str(tmp_path), str(tmp_path / "batch"), "--option", bad]) == 1
        assert said in capsys.readouterr().err
    assert not out.exists() and not (tmp_path / "batch").exists()
    assert parse_options({"localiser_veto": 0, "encoder_backend": "torch"}) == {"localiser_veto": 0.0,
                                                                            "encoder_backend": "torch"}
    assert parse_options(None) == {} and parse_options(["use_localiser=0", "z_stride=3"]) == {
        "use_localiser": False, "z_stride": 3}


def test_segment_rejects_unknown_input_types():
    import priorsam
    from priorsam.errors import InputError

    with pytest.raises(InputError, match="cannot segment a int"):
        priorsam.segment(3)


def test_output_that_is_the_input_is_refused_and_the_input_kept(tmp_path, capsys):
    import priorsam
    from priorsam.errors import InputError

    ct = save_nifti(tmp_path / "ct.nii.gz", synthetic_ct_array())
    before = ct.read_bytes()
    (tmp_path / "link.nii.gz").symlink_to(ct.name)
    for out in (ct, tmp_path / "link.nii.gz", tmp_path / "sub" / ".." / "ct.nii.gz"):
        with pytest.raises(InputError, match="is the input ct.nii.gz itself"):
            priorsam.segment(ct, out)
    assert _cli(["segment", str(ct), str(tmp_path / "link.nii.gz")]) == 1
    assert _cli(["segment-box", str(ct), "2,2,1,20,20,3", str(ct)]) == 1
    assert capsys.readouterr().err.count("writing the result there would destroy it") == 2
    assert ct.read_bytes() == before and not (tmp_path / "sub").exists()


def test_a_series_uid_for_an_image_file_is_refused_not_ignored(tmp_path):
    import priorsam
    from priorsam.errors import InputError

    ct = save_nifti(tmp_path / "ct.nii.gz", synthetic_ct_array())
    with pytest.raises(InputError, match="picks one series of a DICOM folder; this input is a single image file"):
        priorsam.segment(ct, tmp_path / "out.nii.gz", series="1.2.3")
    assert not (tmp_path / "out.nii.gz").exists()


def test_evaluate_cli_per_case_and_mean(tmp_path, capsys):
    """Two cases with known overlaps: Dice and HD95 (mm) from MONAI, per case and as the mean."""
    from priorsam.evaluation import evaluate_case

    pred, ref, out = tmp_path / "pred", tmp_path / "ref", tmp_path / "report"
    pred.mkdir()
    ref.mkdir()
    aff = np.diag([1.5, 1.5, 3.0, 1.0])
    truth = {}
    for case, shift in (("c1", 0), ("c2", 2)):
        r = np.zeros((20, 20, 6), np.uint8)
        r[4:12, 4:12, 1:5] = 5       # liver
        r[14:18, 14:18, 2:4] = 1     # spleen
        p = np.roll(r, shift, axis=0)
        save_nifti(ref / f"{case}.nii.gz", r, aff)
        save_nifti(pred / f"{case}_seg.nii.gz", p, aff)
        truth[case] = evaluate_case(p, r, (1.5, 1.5, 3.0), case)
    assert _cli(["evaluate", "--pred", str(pred), "--ref", str(ref), "--labels", "liver,spleen",
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "mean_dice_95_interval" in printed       # two cases: the mean's bootstrap interval is given
    rows = list(csv.DictReader(open(out / "metrics_per_case.csv")))
    assert {(r["case"], r["organ"]) for r in rows} == {(c, o) for c in ("c1", "c2") for o in ("spleen", "liver")}
    c2_liver = next(r for r in rows if r["case"] == "c2" and r["organ"] == "liver")
    assert float(c2_liver["dice"]) == pytest.approx(truth["c2"]["organs"]["liver"]["dice"], abs=1e-4)
    assert float(c2_liver["hd95_mm"]) == pytest.approx(3.0)  # shifted 2 voxels of 1.5 mm
    md = (out / "report.md").read_text()
    assert "| c1 | 1.000 |" in md and "| c2 |" in md and "| **mean** |" in md
    assert "| kidney_left |" not in md  # only the organs asked for


def test_evaluate_cli_errors_are_one_line(tmp_path, capsys):
    (tmp_path / "p").mkdir()
    (tmp_path / "r").mkdir()
    save_nifti(tmp_path / "r" / "a.nii.gz", np.zeros((4, 4, 2), np.uint8))
    assert _cli(["evaluate", "--pred", str(tmp_path / "p"), "--ref", str(tmp_path / "r")]) == 1
    assert capsys.readouterr().err.startswith("error: ")
    save_nifti(tmp_path / "p" / "a_seg.nii.gz", np.zeros((4, 4, 3), np.uint8))
    assert _cli(["evaluate", "--pred", str(tmp_path / "p"), "--ref", str(tmp_path / "r")]) == 1
    assert "different grids" in capsys.readouterr().err
    assert _cli(["evaluate", "--pred", str(tmp_path / "p"), "--ref", str(tmp_path / "r"), "--labels", "lung"]) == 1
    assert "unknown organ" in capsys.readouterr().err
    # a CT given as the reference: its HU would wrap around in uint8 and score as labels
    ct = np.full((4, 4, 3), -1000, np.int16)
    ct[1:3, 1:3, :] = 40
    save_nifti(tmp_path / "r" / "a.nii.gz", ct)
    assert _cli(["evaluate", "--pred", str(tmp_path / "p"), "--ref", str(tmp_path / "r")]) == 1
    assert "holds -1000 to 40, not organ ids 0–8" in capsys.readouterr().err
    save_nifti(tmp_path / "r" / "a.nii.gz", np.full((4, 4, 3), 9, np.uint8))   # another dataset's ids
    assert _cli(["evaluate", "--pred", str(tmp_path / "p"), "--ref", str(tmp_path / "r")]) == 1
    assert "holds 9 to 9, not organ ids" in capsys.readouterr().err


def test_evaluate_cli_refuses_an_unusable_report_folder_before_scoring(tmp_path, capsys, monkeypatch):
    """A report folder that cannot be made is one line and exit 1 before any case is read; a new nested folder
    is made, and the report files appear whole (no temp file left beside them)."""
    from priorsam.evaluation import folders

    for d in ("p", "r"):
        (tmp_path / d).mkdir()
    lab = np.zeros((6, 6, 3), np.uint8)
    lab[1:4, 1:4, :] = 5
    save_nifti(tmp_path / "r" / "a.nii.gz", lab)
    save_nifti(tmp_path / "p" / "a_seg.nii.gz", lab)
    (tmp_path / "a_file").write_text("not a folder")
    real = folders.evaluate_folders

    def must_not_score(*a, **k):
        raise AssertionError("the cases must not be scored when the report cannot be written")

    monkeypatch.setattr(folders, "evaluate_folders", must_not_score)
    for bad in (tmp_path / "a_file", tmp_path / "a_file" / "report"):
        assert _cli(["evaluate", "--pred", str(tmp_path / "p"), "--ref", str(tmp_path / "r"), "--out", str(bad)]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert err == [f"error: output folder cannot be created: {tmp_path / 'a_file'} is not a folder"], err
    monkeypatch.setattr(folders, "evaluate_folders", real)
    out = tmp_path / "new" / "nested"
    assert _cli(["evaluate", "--pred", str(tmp_path / "p"), "--ref", str(tmp_path / "r"), "--out", str(out)]) == 0
    assert sorted(f.name for f in out.iterdir()) == ["metrics_per_case.csv", "report.md"]


def test_the_preview_makes_its_folder_and_never_leaves_half_a_png(tmp_path, monkeypatch):
    from PIL import Image

    from priorsam.errors import InputError
    from priorsam.labels import labels
    from priorsam.preview import montage

    ct = np.full((4, 16, 16), 40, np.int16)
    lab = np.zeros((4, 16, 16), np.uint8)
    lab[1:3, 4:9, 4:9] = 5
    png = montage(ct, lab, tmp_path / "new" / "p.png")
    assert Image.open(png).size == (64, 32 + 20)       # two organ slices drawn at twice their size, the legend
    liver = next(x for x in labels() if x.name == "liver")
    key = np.asarray(Image.open(png).convert("RGB"))[32:]
    assert (key == liver.color).all(-1).sum() >= 100    # the liver's swatch (no other organ is drawn)

    def disk_full(self, fp, *a, **k):
        with open(fp, "wb") as fh:
            fh.write(b"\x89PNG")                           # part of a file, then the disk is full
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", disk_full)
    with pytest.raises(InputError, match="No space left on device"):
        montage(ct, lab, tmp_path / "new" / "p.png")
    assert sorted(f.name for f in (tmp_path / "new").iterdir()) == ["p.png"]   # the earlier preview is kept
    assert Image.open(png).size == (64, 52)


def test_bundle_export_is_complete_and_verifies(tmp_path, capsys):
    from monai.bundle import verify_metadata

    from priorsam.bundle_support.export import REQUIRED
    from priorsam.bundle_support.paths import packaged_bundle

    dest = tmp_path / "exported"
    assert _cli(["bundle", "export", str(dest)]) == 0
    capsys.readouterr()
    for rel in REQUIRED:
        assert (dest / rel).is_file(), rel
    # the whole models/ folder travels, whatever it holds
    assert sorted(p.name for p in (dest / "models").iterdir()) == \
        sorted(p.name for p in (packaged_bundle() / "models").iterdir())
    verify_metadata(meta_file=str(dest / "configs/metadata.json"),
                    filepath=str(dest / "configs/schema/meta_schema_priorsam.json"))
    assert _cli(["bundle", "export", str(dest)]) == 1  # never overwrites
    assert "not an empty folder" in capsys.readouterr().err


def test_resources_resolve_without_environment(monkeypatch):
    from priorsam.bundle_support.paths import packaged_bundle
    from priorsam.engine.weights import default_weights_path
    from priorsam.priors.bank import prior_text_root

    for var in ("PRIORSAM_WEIGHTS", "PRIORSAM_PRIOR_TEXT", "PRIORSAM_BUNDLE"):
        monkeypatch.delenv(var, raising=False)
    assert default_weights_path().is_file()
    assert default_weights_path().parent.parent == packaged_bundle()
    assert (prior_text_root() / "v1" / "manifest.json").is_file()
    assert (packaged_bundle() / "configs" / "inference.json").is_file()


# ----------------------------------------------------------------------------- model runs
@pytest.mark.slow
def test_segment_accepts_path_nibabel_and_volume_alike(tmp_path, random_checkpoint):
    import priorsam
    from priorsam.io import read_label_map, read_volume

    src = save_nifti(tmp_path / "ct.nii.gz", synthetic_ct_array((48, 40, 3)), np.array(
        [[0, -2.0, 0, 10], [-2.0, 0, 0, 5], [0, 0, 3.0, -4], [0, 0, 0, 1]]))  # stored far from RAS
    out = tmp_path / "seg.nii.gz"
    by_path = priorsam.segment(str(src), out, weights=random_checkpoint, device="cpu",
                               statistics=tmp_path / "s.json", preview=tmp_path / "p.png")
    labels, stats = by_path
    by_nib = priorsam.segment(nib.load(str(src)), weights=random_checkpoint, device="cpu")
    by_vol = priorsam.segment(read_volume(src), weights=random_checkpoint, device="cpu")
    assert np.array_equal(by_nib.labels, labels) and np.array_equal(by_vol.labels, labels)
    written = nib.load(str(out))
    assert np.array_equal(written.affine, nib.load(str(src)).affine) and written.shape == (48, 40, 3)
    assert np.array_equal(read_label_map(out).array.astype(np.uint8), labels)
    assert set(by_path.outputs) == {"label_map", "statistics", "preview"}
    record = json.loads((tmp_path / "s.json").read_text())
    assert record["schema"] == "priorsam.segment.statistics/1"
    assert record["organs"] == json.loads(json.dumps(stats["organs"]))
    assert record["runtime"]["device"] == "cpu"
    from PIL import Image

    assert Image.open(tmp_path / "p.png").size[0] > 0


@pytest.mark.slow
def test_segment_cli_statistics_csv_match_batch_report(tmp_path, random_checkpoint, capsys):
    """The single-case statistics are batch's organ_stats of the written label map, not a second implementation."""
    from priorsam.batch.report import organ_stats
    from priorsam.io import read_label_map, read_volume

    src = save_nifti(tmp_path / "ct.nii.gz", synthetic_ct_array((48, 40, 3)))
    out, stats = tmp_path / "seg.nii.gz", tmp_path / "stats.csv"
    assert _cli(["segment", "--image", str(src), "--out", str(out), "--device", "cpu", "--weights",
                 str(random_checkpoint), "--statistics", str(stats), "--preview", str(tmp_path / "p.png")]) == 0
    capsys.readouterr()
    vol = read_volume(src)
    expect = organ_stats(vol.array, read_label_map(out).array.astype(np.uint8), vol.affine)
    rows = {r["organ"]: r for r in csv.DictReader(open(stats))}
    assert list(rows) == list(expect)
    for name, o in expect.items():
        assert float(rows[name]["volume_ml"]) == pytest.approx(o["volume_ml"])
        assert rows[name]["present"] == str(o["present"])
        assert float(rows[name]["extent_mm"]) == pytest.approx(o["extent_mm"])
    assert (tmp_path / "p.png").stat().st_size > 0


@pytest.mark.slow
def test_segment_cli_writes_dicom_seg_for_a_dicom_series(tmp_path, random_checkpoint, capsys):
    import pydicom

    from test_batch import write_dicom_series

    series = tmp_path / "series"
    write_dicom_series(series, n=3)
    out = tmp_path / "seg.dcm"
    assert _cli(["segment", "--image", str(series), "--out", str(out), "--device", "cpu", "--weights",
                 str(random_checkpoint)]) == 0
    capsys.readouterr()
    ds = pydicom.dcmread(out)
    assert ds.Modality == "SEG" and len(ds.SegmentSequence) == 8
    src = pydicom.dcmread(next(series.iterdir()), stop_before_pixels=True)
    assert ds.StudyInstanceUID == src.StudyInstanceUID and ds.FrameOfReferenceUID == src.FrameOfReferenceUID


def test_inference_config_follows_model_zoo_idioms():
    """network_def / @network, the checkpoint loaded by a CheckpointLoader handler, a StatsHandler, and a
    plain ``device`` value that the config resolves itself (what ``--device auto|cpu|cuda`` overrides)."""
    import torch

    from priorsam.bundle_support.inference import bundle_device
    from priorsam.bundle_support.paths import packaged_bundle
    from priorsam.errors import InputError

    cfg = json.loads((packaged_bundle() / "configs" / "inference.json").read_text())
    assert cfg["device"] == "auto"
    assert "@network_def" in cfg["network"] and "@resolved_device" in cfg["network"]
    assert cfg["evaluator"]["network"] == "@network" and cfg["evaluator"]["device"] == "@resolved_device"
    handlers = [cfg[h[1:]] if isinstance(h, str) else h for h in cfg["handlers"]]
    loader = next(h for h in handlers if h["_target_"] == "CheckpointLoader")
    assert loader["load_path"] == "@ckpt_path" and loader["load_dict"] == {"model": "@network"}
    assert any(h["_target_"] == "StatsHandler" for h in handlers)
    assert bundle_device("auto").type in ("cpu", "cuda") and bundle_device("cpu") == torch.device("cpu")
    assert bundle_device(torch.device("cpu")) == torch.device("cpu")  # an expression override still works
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="no CUDA GPU"):
            bundle_device("cuda")


def test_one_checkpoint_spelt_several_ways_is_loaded_once(random_checkpoint, monkeypatch):
    """The bundle asks for a model without a localiser runtime, the engine with "torch"; paths come absolute,
    relative or as PRIORSAM_WEIGHTS: all of them name one model in the cache, not one copy each."""
    import os

    from priorsam.engine.weights import load_priorsam

    load_priorsam.cache_clear()
    try:
        first = load_priorsam(str(random_checkpoint), "cpu")
        assert load_priorsam(os.path.relpath(random_checkpoint), "cpu", "torch") is first
        monkeypatch.setenv("PRIORSAM_WEIGHTS", str(random_checkpoint))
        assert load_priorsam(None, "cpu") is first
    finally:
        load_priorsam.cache_clear()


def test_the_current_gpu_spelt_cuda_or_cuda_n_is_loaded_once(random_checkpoint, monkeypatch):
    """"cuda" means the current GPU: with GPU 1 current, "cuda" and "cuda:1" are one model, "cuda:0" another
    (the loader itself is stood in for: this machine may have no GPU)."""
    import torch

    import priorsam.models.spec as spec
    from priorsam.engine.weights import load_priorsam

    loads = []
    monkeypatch.setattr(spec, "load_model", lambda path, device, localiser_runtime: loads.append(device) or object())
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    load_priorsam.cache_clear()
    try:
        first = load_priorsam(str(random_checkpoint), "cuda")
        assert load_priorsam(str(random_checkpoint), "cuda:1") is first
        assert load_priorsam(str(random_checkpoint), torch.device("cuda")) is first
        assert load_priorsam(str(random_checkpoint), "cuda:0") is not first
        assert loads == ["cuda:1", "cuda:0"]
    finally:
        load_priorsam.cache_clear()
