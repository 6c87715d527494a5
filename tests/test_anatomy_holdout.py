"""The held-out-anatomy evaluation's cropped CTA setting: a real 150 mm field around the aorta, the
voxels left where they are in space (synthetic pseudo-patient, no bank needed)."""
from __future__ import annotations

import numpy as np
import torch

from priorsam.data.pseudo_patients import PseudoPatient
from priorsam.evaluation.anatomy_holdout import CTA_FOV_MM, SLAB_SLICES, as_volume, field_of_view, render


def fake_patient(shape=(120, 100, 10), spacing=3.0) -> PseudoPatient:
    ours = np.zeros(shape, np.uint8)
    ours[70:76, 40:46, :] = 7   # aorta, off centre
    ours[20:60, 30:80, 2:8] = 5
    affine = np.diag([spacing, spacing, spacing, 1.0])
    affine[:3, 3] = (-100.0, -50.0, 20.0)
    return PseudoPatient(case_id="p", ct=np.zeros(shape, np.int16), full=ours.copy(), ours=ours, target=ours,
                         fov=np.ones(shape, np.uint8), affine=affine, qa={})


def test_cta_crop_is_centred_on_the_aorta_and_keeps_world_positions():
    pp = fake_patient()
    crop = field_of_view(pp, "cta_crop")
    assert field_of_view(pp, "arterial") == (slice(None), slice(None), slice(None))
    assert crop[2] == slice(None)
    width = [(c.stop - c.start) * 3.0 for c in crop[:2]]
    assert all(abs(w - CTA_FOV_MM) <= 3.0 for w in width)
    assert abs((crop[0].start + crop[0].stop) / 2 - 72.5) <= 1 and abs((crop[1].start + crop[1].stop) / 2 - 42.5) <= 1
    vol = as_volume(pp.ct.astype(np.float32), pp, crop)
    assert vol.shape == (crop[0].stop - crop[0].start, crop[1].stop - crop[1].start, 10)
    # voxel (0, 0, 0) of the crop is voxel (x0, y0, 0) of the whole volume
    assert np.allclose(vol.affine @ [0, 0, 0, 1], pp.affine @ [crop[0].start, crop[1].start, 0, 1])


def test_scored_where_the_pseudo_patient_has_an_image_and_all_voxels_kept_beside():
    from priorsam.evaluation.anatomy_holdout import _scores

    pp = fake_patient()
    pp.fov[:, :, 7:] = 0                  # the sample CT ends after slice 6; the labels go on
    pp.fov[:, :, 6][:60] = 0              # slice 6 only half covered: its pixels are the stretched edge
    support = pp.supported()
    assert support[:, :, :6].all() and not support[:, :, 6:].any()
    pred = pp.ours.copy()
    pred[:, :, 6:] = 0                    # a model that segments what the image shows
    s = _scores(pred, pp.ours, support, pp.spacing, "p")
    assert s["organs"]["aorta"]["dice"] == 1.0 and s["organs"]["liver"]["dice"] == 1.0
    assert s["dice_all_voxels"]["aorta"] == 2 * 6 / (6 + 10)   # 6 of the aorta's 10 slices
    assert np.isnan(s["dice_all_voxels"]["spleen"])


def test_thin_slab_is_centred_on_the_organs_largest_cross_section_where_there_is_an_image():
    pp = fake_patient(shape=(120, 100, 20))
    pp.ours[:] = 0
    pp.ours[20:60, 30:80, 4:16] = 5
    pp.ours[20:70, 30:90, 9] = 5            # the liver's largest cross-section: slice 9
    pp.ours[80:90, 30:40, 14:17] = 2        # kidney slices 14-16, widest at 16 ...
    pp.ours[80:95, 30:45, 16] = 2
    pp.fov[:, :, 16:] = 0                   # ... where the sample CT has no image: slab at 14-15
    pp.ours[80:90, 30:40, 15] = 2
    pp.ours[80:92, 30:42, 15] = 2
    liver = field_of_view(pp, "slab_liver")
    assert liver[:2] == (slice(None), slice(None)) and (liver[2].start, liver[2].stop) == (8, 8 + SLAB_SLICES)
    kid = field_of_view(pp, "slab_kidneys")
    assert (kid[2].start, kid[2].stop) == (14, 17)
    ct = render(pp, "slab_liver", {})
    vol = as_volume(ct, pp, liver)
    assert vol.shape == (120, 100, SLAB_SLICES)
    assert np.allclose(vol.affine @ [0, 0, 0, 1], pp.affine @ [0, 0, 8, 1])
    # A moved slab: the same rendered CT, its window shifted along z and kept inside the volume.
    up = field_of_view(pp, "slab_liver+2")
    assert (up[2].start, up[2].stop) == (10, 10 + SLAB_SLICES)
    assert (field_of_view(pp, "slab_liver-1")[2].start, field_of_view(pp, "slab_kidneys+9")[2].stop) == (7, 20)
    assert np.array_equal(render(pp, "slab_liver+2", {}), ct)


def test_partial_upper_scan_is_centred_where_most_organs_meet_and_keeps_the_coverage_asked():
    pp = fake_patient(shape=(120, 100, 30))
    pp.ours[:] = 0
    pp.ours[20:60, 30:80, 2:20] = 5           # liver, largest at slice 4 (area alone would centre there)
    pp.ours[10:70, 20:90, 4] = 5
    pp.ours[70:76, 40:46, 0:30] = 7           # aorta everywhere
    pp.ours[80:90, 30:40, 12:15] = 2          # kidney, slices 12-14
    pp.ours[85:95, 50:60, 14:16] = 1          # spleen, slices 14-15: four organs only at slice 14
    assert field_of_view(pp, "upper_15mm") == (slice(None), slice(None), slice(12, 17))
    assert field_of_view(pp, "upper_18mm")[2] == slice(11, 17)        # 6 slices: one more below
    assert field_of_view(pp, "upper_90mm")[2] == slice(0, 30)         # kept inside the volume
    assert field_of_view(pp, "upper_200mm")[2] == slice(0, 67)        # more than there is: all of it
    # every coverage shows one rendering, portal-venous with arms beside the trunk and a table
    pp.ct[:] = -1000
    pp.ct[25:95, 20:80] = 40                  # the trunk
    ct = render(pp, "upper_15mm", {})
    assert np.array_equal(render(pp, "upper_42mm", {}), ct)
    outside = np.ones(ct.shape, bool)
    outside[25:95, 20:80] = False
    assert (ct[outside] > -500).mean() > 0.05  # limbs and table beside the trunk


def test_an_unknown_setting_is_refused_in_one_line():
    import pytest

    from priorsam.evaluation.anatomy_holdout import main, parse_setting

    assert parse_setting("slab_kidneys-2") == ("slab_kidneys", -2) and parse_setting("native") == ("native", 0)
    assert parse_setting("upper_42mm") == ("upper_42mm", 0)
    for bad in ("slab_liver+x", "portal_venous+1", "venous", "upper_mm", "upper_0mm", "upper_42", "upper_4.5mm"):
        with pytest.raises(ValueError, match="unknown setting"):
            parse_setting(bad)
    with pytest.raises(SystemExit) as e:
        main(["--bank", "b", "--runs", "r.json", "--out", "o", "--settings", "native", "slab_liver+"])
    assert e.value.code == 2


def test_a_run_can_name_weights_as_committed_at_an_earlier_revision(tmp_path, monkeypatch):
    import subprocess

    import pytest

    from priorsam.evaluation.runs import run_file

    monkeypatch.setenv("PRIORSAM_CACHE", str(tmp_path / "cache"))
    repo = tmp_path / "repo"
    repo.mkdir()

    def git(*args):
        return subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", *args],
                              check=True, capture_output=True, text=True).stdout.strip()

    git("init", "-q")
    (repo / "model.pt").write_bytes(b"old weights")
    git("add", "model.pt")
    git("commit", "-qm", "old")
    old = git("rev-parse", "HEAD")
    (repo / "model.pt").write_bytes(b"new weights")
    git("commit", "-qam", "new")
    assert run_file("model.pt", repo) == "model.pt"                     # a plain path is itself
    got = run_file(f"git:{old[:7]}:model.pt", repo)
    assert open(got, "rb").read() == b"old weights"
    assert run_file(f"git:{old}:model.pt", repo) == got                 # cached once per commit and path
    for bad, said in ((f"git:{old}:missing.pt", "missing.pt"), ("git:nosuchrev:model.pt", "not a commit"),
                      ("git:model.pt", "git:REV:PATH")):
        with pytest.raises(ValueError, match=said):
            run_file(bad, repo)


def test_committed_weights_come_with_the_box_decoder_file_committed_beside_them(tmp_path, monkeypatch):
    """``git:REV:PATH`` of a checkpoint whose decoder ships beside it brings both files from that commit."""
    import subprocess

    from priorsam.evaluation.runs import run_file
    from priorsam.models.cpu_runtime import state_digest
    from priorsam.models.spec import BoxDecoderSpec, ModelSpec, read_checkpoint, write_checkpoint

    monkeypatch.setenv("PRIORSAM_CACHE", str(tmp_path / "cache"))
    repo = tmp_path / "repo"
    (repo / "bundle" / "models").mkdir(parents=True)

    def git(*args):
        return subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", *args],
                              check=True, capture_output=True, text=True).stdout.strip()

    def commit(scale):
        dec = {"w": torch.full((3,), scale)}
        write_checkpoint(repo / "bundle" / "models" / "model.pt", {"aligner.w": torch.ones(2)},
                         ModelSpec(box_decoder=BoxDecoderSpec(sha256=state_digest(dec))), box_decoder_state=dec)
        git("add", "-A")
        git("commit", "-qm", str(scale))
        return git("rev-parse", "HEAD")

    git("init", "-q")
    old = commit(1.0)
    commit(2.0)
    got = run_file(f"git:{old}:bundle/models/model.pt", repo)
    state, spec = read_checkpoint(got)
    assert torch.equal(state["box_decoder.w"], torch.full((3,), 1.0)) and spec.box_decoder.file == "model.box_decoder.pt"


def test_a_localiser_only_row_where_the_localiser_gives_nothing_scores_nothing():
    """Too thin for the localiser (or refused by its anatomy guard): the row says why and scores an empty
    answer instead of failing the whole evaluation."""
    from priorsam.engine.segment import Segmenter
    from priorsam.evaluation.anatomy_holdout import _localiser_only

    pp = fake_patient(shape=(120, 100, 1))
    vol = as_volume(np.full(pp.ours.shape, 40.0, np.float32), pp)
    row = _localiser_only(Segmenter(None, "cpu"), vol, pp.ours, pp.supported(), "p")
    assert not row["localiser"]["usable"] and "too thin" in row["localiser"]["reason"]
    assert row["organs"]["aorta"]["dice"] == 0.0 and row["organs"]["aorta"]["missed"]   # the one organ in it


def test_the_hd95_tables_give_each_organ_and_count_the_cases_a_run_missed():
    """A missed organ has no distance: it is left out of that organ's mean HD95 and said in the cell."""
    from priorsam.evaluation.anatomy_holdout import hd95_tables
    from priorsam.labels import labels as label_table

    nan = float("nan")

    def row(case, liver_hd, liver_missed):
        organs = {lab.name: {"dice": nan, "hd95_mm": nan, "hd95_vox": nan, "gt_voxels": 0, "pred_voxels": 0,
                             "missed": False, "false_positive": False} for lab in label_table()}
        organs["liver"] = {"dice": 0.0 if liver_missed else 0.9, "hd95_mm": liver_hd, "hd95_vox": liver_hd,
                           "gt_voxels": 100, "pred_voxels": 0 if liver_missed else 100, "missed": liver_missed,
                           "false_positive": False}
        organs["spleen"] = {**organs["liver"], "dice": 0.8, "hd95_mm": 2.0 + len(case), "missed": False}
        return {"run": "r", "case": case, "setting": "native", "organs": organs}

    md = hd95_tables([row("a", 4.0, False), row("bb", 8.0, False), row("ccc", nan, True)], ["r"],
                     ["native", "arterial"])
    lines = [ln for ln in md.splitlines() if ln.startswith("| native")]
    assert len(lines) == 1 and "arterial" not in md                      # a setting without rows is left out
    cells = [c.strip() for c in lines[0].strip("|").split("|")]
    names = [lab.name for lab in label_table()]
    assert cells[1] == "3"
    assert cells[2 + names.index("liver")] == "6.0 (1 missed)"            # mean of 4 and 8; the miss counted
    assert cells[2 + names.index("spleen")] == "4.0"                     # (3 + 4 + 5) / 3
    assert cells[2 + names.index("aorta")] == "–"                        # no case holds it
    assert cells[-1] == "5.0"                                           # mean over the organs that have one


def test_the_dice_tables_count_the_organs_drawn_where_the_reference_has_none():
    """An organ drawn where the reference has none has no Dice and is left out of the means; the table says how
    many there were and how large, so a setting's mean cannot hide them."""
    from priorsam.evaluation.anatomy_holdout import tables
    from priorsam.labels import labels as label_table

    nan = float("nan")

    def row(case, kidney_drawn):
        organs = {lab.name: {"dice": 0.9, "hd95_mm": 3.0, "hd95_vox": 3.0, "gt_voxels": 50, "pred_voxels": 50,
                             "missed": False, "false_positive": False} for lab in label_table()}
        organs["kidney_left"] = {"dice": nan, "hd95_mm": nan, "hd95_vox": nan, "gt_voxels": 0,
                                 "pred_voxels": kidney_drawn, "missed": False, "false_positive": kidney_drawn > 0}
        return {"run": "r", "case": case, "setting": "slab_liver", "organs": organs}

    def last_cell(rows):
        line = [ln for ln in tables(rows, ["r"], ["slab_liver"]).splitlines() if ln.startswith("| slab_liver")][0]
        return [c.strip() for c in line.strip("|").split("|")][-1]

    assert last_cell([row("a", 133), row("b", 0), row("c", 37)]) == "2 (37–133 vox)"
    assert last_cell([row("a", 40)]) == "1 (40 vox)"
    assert last_cell([row("a", 0), row("b", 0)]) == "0"


def test_the_device_is_checked_before_a_case_is_rendered_and_openvino_stays_on_cpus(monkeypatch, tmp_path):
    """--device: a GPU asked for where none is usable ends the run before the bank is read; a run pinning the
    CPU-only OpenVINO localiser is refused on a GPU in one line rather than by the loader's traceback."""
    import pytest
    import torch

    from priorsam.errors import InputError
    from priorsam.evaluation.anatomy_holdout import _segmenter, main, measure

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(InputError, match="no CUDA GPU"):
        measure(str(tmp_path / "no_bank"), [{"name": "shipped"}], ["btcv_0005"], ["native"], device="cuda")
    (tmp_path / "runs.json").write_text('[{"name": "shipped"}]')
    assert main(["--bank", str(tmp_path / "no_bank"), "--runs", str(tmp_path / "runs.json"), "--cases", "x",
                 "--out", str(tmp_path / "out"), "--device", "cuda"]) != 0
    assert main(["--bank", str(tmp_path / "no_bank"), "--runs", str(tmp_path / "runs.json"),
                 "--out", str(tmp_path / "new" / "out"), "--device", "cuda"]) != 0
    assert not (tmp_path / "new").exists()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with pytest.raises(InputError, match="CPUs only"):
        _segmenter({"name": "ov", "localiser_runtime": "openvino"}, torch.device("cuda"))
