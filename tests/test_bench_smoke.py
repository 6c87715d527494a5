"""Smoke tests of the benchmark harness (bench/): only the cheap pieces, a few seconds in all.

The heavy measurements (encoders, peers, volumes) are exercised by ``python bench/run_all.py --quick``,
never here.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))

import common  # noqa: E402
import report  # noqa: E402


def test_stats_and_table_formatting():
    s = common.stats([3.0, 1.0, 2.0])
    assert (s["median"], s["min"], s["max"], s["n"]) == (2.0, 1.0, 3.0, 3)
    assert common.fmt_stats(s) == "2.00 (1.00–3.00, n=3)"
    assert common.fmt_stats(common.stats([])) == "n/a"
    table = common.md_table(["a", "b|c"], [[1, "x|y"]])
    assert table.splitlines() == ["| a | b\\|c |", "|---|---|", "| 1 | x\\|y |"]


def test_time_runs_measures_each_call():
    calls = []
    times = common.time_runs(lambda: calls.append(sum(range(20000))), runs=3, warmup=1)
    assert len(calls) == 4 and len(times) == 3 and all(t > 0 for t in times)


def test_child_peak_memory_is_the_childs_own():
    # A child that holds ~300 MB must report at least that; the parent's own peak is not mixed in.
    code = "import numpy as np; a = np.ones(300 * 2**20 // 8); print(a.sum() > 0)"
    res = common.run_child_rss([sys.executable, "-c", code], timeout=60)
    assert res["rc"] == 0
    assert 300 <= res["peak_rss_mb"] < 2000


def test_vit_peer_counts_macs():
    torch = pytest.importorskip("torch")
    pytest.importorskip("segment_anything")
    import peers

    small = peers.build_vit(64, 2, 32, 2, (1,))
    big = peers.build_vit(64, 4, 32, 2, (1, 3))
    x = torch.zeros(1, 3, 64, 64)
    assert 0 < peers.gmacs(small, x) < peers.gmacs(big, x)


@pytest.mark.slow
def test_encoder_bench_builds_the_engines_runtimes():
    """The encoder part times the engine's own ONNX Runtime and OpenVINO encoders; a refactor of
    those classes must not leave the benchmark calling what is gone."""
    pytest.importorskip("openvino")
    import encoders
    import numpy as np

    x = np.random.default_rng(0).random((2, 3, 256, 256), dtype=np.float32)
    for backend in ("onnxruntime", "openvino"):
        run, info = encoders.build(backend, threads=2)
        out = run(x[:1]) if backend == "onnxruntime" else run(x)
        n = 1 if backend == "onnxruntime" else 2
        assert [o.shape for o in out] == [(n, 256, 64, 64), (n, 128, 128, 128), (n, 160, 64, 64)], backend
        assert info["build_s"] > 0
    assert info["infer_requests"] >= 1 and info["inference_precision"] in ("bf16", "f32")


def _results(quick: bool = False) -> dict:
    """A results dict as run_all assembles it (numbers are small literals: this tests the report only)."""
    return {
        "machine": {"cpu": "test cpu", "cores": 2, "threads_used": 2, "loadavg_start": [1.0, 1.0, 1.0],
                    "loadavg_end": [2.0, 2.0, 2.0]},
        "args": {"runs": 3, "quick": quick},
        "encoders": {
            "torch_eager": {"times_s": [2.0, 2.2, 2.1], "peak_rss_mb": 1000, "build_s": 3.0, "gmac": 37.5},
            "onnxruntime": {"times_s": [1.0, 1.1, 0.9], "peak_rss_mb": 1100, "build_s": 2.0,
                            "accuracy": {"embedding": {"cos_mean": 1.0, "cos_min": 1.0, "max_abs": 1e-6,
                                                       "rel_l2": 1e-6}}},
            "fast_but_wrong": {"times_s": [0.5, 0.5, 0.5], "peak_rss_mb": 900,
                               "accuracy": {"embedding": {"cos_mean": 0.9, "cos_min": 0.5, "max_abs": 0.5,
                                                          "rel_l2": 0.5}}},
        },
        "peers": {"pgsam_vith224": {"times_s": [8.0, 8.0, 8.0], "gmac_per_slice": 254.1}},
        "volume": {"cli": {"large": {"runs": [{"wall_s": w, "peak_rss_mb": 2000, "dice": {"mean": 0.8}}
                                              for w in (150.0, 160.0, 170.0)]}},
                   "variants": [{"volume": "large", "backend": "openvino", "z_stride": 2,
                                 "runs": [{"wall_s": 55.0, "peak_rss_mb": 1500, "slices": 150, "encoded_slices": 80,
                                           "dice": {"mean": 0.79}, "backend": "openvino", "z_stride": 2,
                                           "import_s": 1, "read_s": 1, "model_load_s": 3, "segment_s": 49,
                                           "write_s": 1}]}]},
    }


def test_report_picks_fastest_accurate_backend_and_states_targets():
    res = _results()
    assert report.fastest_accurate(res) == "onnxruntime"  # the faster one fails the cosine bar
    text = report.render(res)
    assert "| torch_eager | 2.10 (2.00–2.20, n=3) | n/a | 1.00× |" in text
    assert "**missed** by 100 s (2.7× the target)" in text
    assert "openvino encoder and z_stride 2: 55.0 s (meets it" in text
    # PG-SAM 8 s/slice vs our engine 160 s / 150 slices
    assert "7.5× — **met**" in text
    assert "GPU: ≤ 3 s per volume — not measured in this run (the run had no GPU part)" in text
    assert "QUICK" not in text and "QUICK" in report.render(_results(quick=True))


def test_gpu_bench_refuses_cuda_without_a_gpu(tmp_path):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present")
    import subprocess

    proc = subprocess.run([sys.executable, str(BENCH / "gpu.py"), "--out", str(tmp_path / "g"), "--device", "cuda"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("bench/gpu.py:")]
    assert len(lines) == 1 and "no CUDA GPU" in lines[0]
    assert not (tmp_path / "g").exists()


def test_bank_training_bench_refuses_a_missing_gpu_before_registering(tmp_path, monkeypatch, capsys):
    torch = pytest.importorskip("torch")
    import bank_training

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert bank_training.main(["--anatomy", str(tmp_path), "--out", str(tmp_path / "out"), "--device", "cuda"]) == 1
    assert capsys.readouterr().err.startswith("error: device 'cuda' requested but no CUDA GPU")
    assert not (tmp_path / "out").exists()


def test_gpu_bench_compares_with_the_reference_runs_label_maps(tmp_path):
    nib = pytest.importorskip("nibabel")
    import json

    import gpu
    import numpy as np

    lab = np.zeros((6, 6, 4), np.uint8)
    lab[1:4, 1:4, 1:3] = 5
    other = lab.copy()
    other[1, 1:4, 1:3] = 0          # 12 of 18 liver voxels kept: Dice 2·12 / (18 + 12)
    for folder, arr in (("ref", lab), ("run", other)):
        (tmp_path / folder).mkdir()
        for name in ("large_x.nii.gz", "large_box_x.nii.gz"):
            nib.save(nib.Nifti1Image(arr, np.eye(4)), str(tmp_path / folder / name))
    ref_run = {"labels": "large_x.nii.gz", "box": {"labels": "large_box_x.nii.gz"}, "image_sha256": "a"}
    (tmp_path / "ref" / "gpu.json").write_text(json.dumps({"device": "cpu", "volumes": {"large": ref_run}}))
    got = gpu.agreement({**ref_run, "image_sha256": "b"}, tmp_path / "run", tmp_path / "ref", "large")
    assert got["same_input"] is False
    assert got["labels"]["organs"] == {"liver": pytest.approx(2 * 12 / 30)}
    assert got["box"]["mean"] == pytest.approx(2 * 12 / 30)
    assert gpu.agreement(ref_run, tmp_path / "run", tmp_path / "ref", "sample") is None


def test_report_gpu_line_judges_the_loaded_model_time():
    gpu = {"machine": {"gpu": "NVIDIA H200"},
           "volumes": {"large": {"total_s": {"median": 2.4}}}, "cli": {"large": {"wall_s": {"median": 14.0, "n": 3}}}}
    line = report._gpu_target(gpu)
    assert "NVIDIA H200" in line and "2.40 s read → segment → write" in line and "14.0 s" in line
    assert line.endswith("**met**.")
    gpu["volumes"]["large"]["total_s"]["median"] = 3.5
    assert report._gpu_target(gpu).endswith("**missed**.")
    assert "not measured in this run (no CUDA GPU on this machine)" in report._gpu_target(
        {"skipped": "no CUDA GPU on this machine"})


def test_profile_call_names_the_functions_that_took_the_time(tmp_path):
    profile_call = common.profile_call

    def slow_part():
        return sum(i * i for i in range(200_000))

    def run():
        slow_part()
        raise RuntimeError("a failing run still leaves the profiler off")

    with pytest.raises(RuntimeError):
        profile_call(run, tmp_path / "p.txt", "t")
    assert profile_call(slow_part, tmp_path / "p.txt", "a title", restrict="slow_part") > 0
    text = (tmp_path / "p.txt").read_text()
    assert text.startswith("# a title\n# ") and "slow_part" in text and "cumulative" in text


def test_localiser_scales_wrapper_keeps_the_grid_and_the_single_scale_answer():
    import torch

    import localiser_scales

    class Pointwise:
        """A stand-in localiser whose class logits are a voxel's own two input channels: any resize of its
        input shows up in its output, so the wrapper's resize-and-back can be checked exactly."""
        num_classes, spacing_mm, windows, min_shape = 2, 4.0, [(40.0, 400.0), (0.0, 2000.0)], (48, 48, 48)

        def prepare(self, hu):
            return hu

        def __call__(self, x):
            return x.clone()

    x = torch.zeros(1, 2, 48, 56, 64)
    x[:, 0, 10:30, 12:40, 20:50] = 10.0         # a box of class 0 inside background 1
    x[:, 1] = 10.0 - x[:, 0]
    net = Pointwise()
    same = localiser_scales.ScaledPasses(net, [1.0])(x).exp()
    assert torch.allclose(same, net(x).softmax(1))
    several = localiser_scales.ScaledPasses(net, [0.85, 1.0, 1.15])(x).exp()
    assert several.shape == x.shape
    assert torch.allclose(several.sum(1), torch.ones(1, 48, 56, 64), atol=1e-5)
    # Deep inside the box and far outside it every scale agrees; only the boundary is averaged.
    assert several[0, 0, 20, 26, 35] > 0.99 and several[0, 0, 44, 4, 4] < 0.01


def test_tight_field_hybrid_takes_the_localiser_for_organs_at_the_edge():
    import numpy as np

    import tight_field_hybrid

    loc = np.zeros((6, 6, 2), np.uint8)
    loc[0:2, 2:4] = 1                 # organ 1 reaches the first row: cut by the field
    loc[2:4, 2:4] = 2                 # organ 2 lies inside
    per_slice = np.zeros_like(loc)
    per_slice[1:3, 2:4] = 1           # the per-slice model's organ 1, shifted inwards
    per_slice[3:5, 2:4] = 2
    assert tight_field_hybrid.touching_edge(loc) == [1]
    out = tight_field_hybrid.hybrid(per_slice, loc, [1])
    assert (out[0:2, 2:4] == 1).all() and (out[2, 2:4] == 0).all()   # organ 1 is the localiser's, only there
    assert (out[3:5, 2:4] == 2).all() and (out[2:4, 2:4] != 2).sum() == 4   # organ 2 stays the per-slice one


def test_the_feature_head_keeps_the_stacks_shape_and_its_loss_learns_the_labels():
    """bench/localiser_feature_head.py's 3D head over stacked encoder embeddings: (B, 256, Z, H, W) → (B, 9,
    Z, H, W); its loss is finite with organs absent from a crop, and lower for logits that are the labels."""
    import torch

    import localiser_feature_head as fh

    head = fh.FeatureHead()
    out = head(torch.zeros(1, 256, 5, 12, 12))
    assert out.shape == (1, 9, 5, 12, 12)
    labels = torch.zeros(1, 5, 12, 12, dtype=torch.long)
    labels[0, 1:3, 4:8, 4:8] = 5                                     # one organ in the crop, the others absent
    perfect = torch.nn.functional.one_hot(labels, 9).permute(0, 4, 1, 2, 3).float() * 20
    assert torch.isfinite(fh._loss(out, labels)) and fh._loss(perfect, labels) < fh._loss(out, labels)
    cells = fh._Cells(labels[0].numpy())
    assert torch.equal(cells(None).argmax(1), labels)


def test_validation_box_ceiling_prompts_with_the_references_own_box():
    """bench/validation_box_ceiling.py: a decoder that draws exactly its box returns, in both framings and on the
    volume's own axes, the reference organ's box grown by the margin, only in the slices that hold the organ."""
    import types

    import numpy as np
    import torch

    import validation_box_ceiling as vbc
    from priorsam.data.framed_volume import Framing
    from priorsam.io import Volume
    from priorsam.io.volume import Source

    arr = np.full((96, 80, 4), -1000.0, np.float32)
    arr[10:86, 8:72, :] = 40.0                                        # a trunk, so the fixed frame finds a centre
    ras = np.diag([2.0, 2.0, 3.0, 1.0])
    vol = Volume(arr, ras, Source("synthetic", "nifti", arr.shape, ras, np.eye(3)))
    organ = np.zeros(arr.shape, bool)
    organ[30:51, 20:41, 1:3] = True                                   # a 42 × 42 mm organ in slices 1 and 2

    def encoder(images):
        return types.SimpleNamespace(embedding=torch.zeros(images.shape[0], 256, 64, 64))

    def box_decoder(embedding, boxes):
        yy, xx = torch.meshgrid(torch.arange(256.0), torch.arange(256.0), indexing="ij")
        inside = [(xx >= b[0]) & (xx <= b[2]) & (yy >= b[1]) & (yy <= b[3]) for b in boxes]
        return torch.stack(inside)[:, None].float() * 20 - 10, None

    for framing in (Framing(), Framing.upstream()):
        drawn = vbc.reference_box_masks(vol, organ, framing, 0.0, encoder, box_decoder)
        assert drawn.shape == organ.shape and not drawn[..., [0, 3]].any()
        assert vbc.score(drawn, organ, vol.spacing)["dice"] > 0.9      # the box of a box is itself (model-pixel rounding)
        grown = vbc.reference_box_masks(vol, organ, framing, 6.0, encoder, box_decoder)
        assert grown.sum() > drawn.sum() and (grown | organ).sum() == grown.sum()
        assert vbc.score(grown, organ, vol.spacing)["extra_fraction"] > 0.2


def test_multimask_tokens_scores_each_token_and_both_iou_rules():
    """bench/multimask_tokens.py: the decoder's four masks come back as token 0 then 1–3, and each column of its
    table is scored from the mask it names (the two IoU rules pick by the decoder's predicted IoU)."""
    import numpy as np
    import torch

    import multimask_tokens as mt
    from priorsam.models.binary_path import BinaryPromptPath

    masks, iou = mt.token_masks(BinaryPromptPath(pretrained=False).eval(), torch.randn(1, 256, 64, 64),
                                torch.tensor([[40.0, 50.0, 120.0, 140.0]]))
    assert masks.shape == (4, 256, 256) and masks.dtype == torch.bool and iou.shape == (4,)

    ref = np.zeros((256, 256), bool)
    ref[10:20, 10:20] = True
    drawn = torch.zeros(4, 256, 256, dtype=torch.bool)
    drawn[0, 10:20, 10:20] = True                       # token 0 exact
    drawn[1, 10:20, 10:15] = True                       # token 1 half: Dice 2·50/150
    drawn[3, 10:20, 10:20] = True                       # token 2 empty, token 3 exact
    row = mt.scores_for(drawn, torch.tensor([0.1, 0.9, 0.2, 0.3]), ref)
    assert len(row) == len(mt.COLUMNS)
    assert row[:4] == pytest.approx([1.0, 2 / 3, 0.0, 1.0])
    assert row[4] == pytest.approx(2 / 3) and row[5] == pytest.approx(2 / 3)   # both rules follow token 1's IoU
    row = mt.scores_for(drawn, torch.tensor([0.9, 0.1, 0.2, 0.3]), ref)
    assert row[4] == 1.0 and row[5] == 1.0                                     # token 0 overall, token 3 among 1–3


def test_decoder_finetune_trains_the_decoder_alone_and_scores_both_decoders_on_the_same_boxes():
    """bench/decoder_finetune.py: the dev anatomies (and their arms-and-table copies) never reach training; a
    training step changes the mask decoder and nothing else and leaves it frozen after; the measurement gives
    every decoder the same cross-sections, and skips those under MIN_PIXELS."""
    import copy

    import torch

    import decoder_finetune as dft
    from priorsam.models.binary_path import BinaryPromptPath

    assert dft.is_dev("pseudo_btcv_0001") and dft.is_dev("pseudo_btcv_0001_arms_table")
    assert not dft.is_dev("pseudo_btcv_0002") and not dft.is_dev("example_ct")

    label = torch.zeros(256, 256, dtype=torch.uint8)
    label[40:90, 60:120] = 5                                  # a liver cross-section
    label[150:154, 150:154] = 4                               # 16 pixels: under MIN_PIXELS, never prompted
    entries = [(torch.randn(256, 64, 64).half(), label, {"case": "x"})]
    torch.manual_seed(0)
    path = BinaryPromptPath(pretrained=False)
    before_dec = copy.deepcopy(path.mask_decoder.state_dict())
    before_prompt = copy.deepcopy(path.prompt_encoder.state_dict())
    cfg = dft.BoxDecoderTrainConfig(cache="", out_dir="", steps=2, lr=1e-3, batch_size=2, max_margin_px=4,
                                    jitter_px=1, box_edge_px=dft.STOP54_EDGE_PX, min_pixels=dft.MIN_PIXELS)
    curve = dft.train(path, entries, cfg, n_organs=8, log=lambda s: None)
    assert [r["step"] for r in curve] == [2]
    assert any(not torch.equal(before_dec[k], v) for k, v in path.mask_decoder.state_dict().items())
    assert all(torch.equal(before_prompt[k], v) for k, v in path.prompt_encoder.state_dict().items())
    assert not any(p.requires_grad for p in path.parameters()) and not path.mask_decoder.training

    scores = dft.evaluate({"a": path, "b": path}, entries, n_organs=8)
    for margin in map(str, dft.EVAL_MARGINS_PX):
        assert len(scores["a"][margin][5]) == 1 and scores["a"][margin][4] == []
        assert scores["a"][margin][5] == scores["b"][margin][5]
    table = dft.summarise(scores, ["o%d" % i for i in range(1, 9)])
    assert table["a"]["3.0"]["cross_sections"] == 1 and list(table["a"]["3.0"]["per_organ"]) == ["o5"]


def test_localiser_mirror_check_flips_left_right_and_counts_per_setting():
    """bench/localiser_mirror_check.py: the flipped copy mirrors the canonical x axis under the same header, and the
    table's columns come from the rows of each orientation (a flipped row's difference is the as-given one's negated)."""
    import numpy as np

    import localiser_mirror_check as lmc
    from priorsam.io import Volume
    from priorsam.io.volume import Source

    arr = np.arange(24, dtype=np.float32).reshape(4, 3, 2)
    ras = np.diag([2.0, 2.0, 3.0, 1.0])
    vol = Volume(arr, ras, Source("synthetic", "nifti", arr.shape, ras, np.eye(3)))
    f = lmc.flipped(vol)
    np.testing.assert_array_equal(f.array, arr[::-1])
    np.testing.assert_array_equal(f.affine, vol.affine)

    def row(case, orientation, diff, warned, reason=""):
        return {"case": case, "setting": "native", "orientation": orientation, "usable": not reason, "reason": reason,
                "difference": diff, "warned": warned}

    rows = [row("a", "as given", -0.03, False), row("a", "flipped", 0.03, True),
            row("b", "as given", 0.01, False), row("b", "flipped", -0.01, False),
            row("c", "as given", None, False, "3D context too thin"),
            row("c", "flipped", None, False, "the 3D localiser's organs contradict anatomy (liver)")]
    line = lmc.table(rows, ["native"]).splitlines()[2]
    assert line == "| native | 3 | 2 / 2 | +0.0100 | -0.0100 | 0 | 1 | 1 |"


def _holdout_rows(run, dice_by_pair):
    """anatomy_holdout rows of one run: (case, setting) → the same Dice for every organ."""
    from priorsam.labels import labels

    return [{"run": run, "case": c, "setting": st,
             "organs": {lab.name: {"dice": d, "hd95_mm": 5.0, "hd95_vox": 2.0, "gt_voxels": 10, "missed": False,
                                   "false_positive": False} for lab in labels()}}
            for (c, st), d in dice_by_pair.items()]


def test_localiser_reproduction_applies_the_plans_rule(tmp_path):
    import json

    import localiser_reproduction as lr

    def rows(run, dice_by_setting):
        return _holdout_rows(run, {(c, st): d for st, d in dice_by_setting.items() for c in ("a", "b")})

    shipped = {"native": 0.85, "arterial": 0.86, "cta_crop": 0.80}
    close = rows("s", shipped) + rows("r", {"native": 0.86, "arterial": 0.85, "cta_crop": 0.81})
    path = tmp_path / "h.json"
    path.write_text(json.dumps({"rows": close}))
    assert lr.main(["--holdout", str(path), "--shipped", "s", "--reproduced", "r", "--out", str(tmp_path / "o")]) == 0
    got = json.loads((tmp_path / "o.json").read_text())
    assert got["reproduced"] and got["per_setting"]["native"]["difference"] == pytest.approx(0.01)
    # One setting 0.03 off fails the rule even though the average moves by 0.0067 only.
    far = rows("s", shipped) + rows("r", {"native": 0.88, "arterial": 0.85, "cta_crop": 0.79})
    v = lr.verdict(lr.setting_means(far, "s"), lr.setting_means(far, "r"))
    assert v["mean_within"] and not v["per_setting"]["native"]["within"] and not v["reproduced"]
    # The average alone can fail it too.
    drift = rows("s", shipped) + rows("r", {k: d - 0.015 for k, d in shipped.items()})
    v = lr.verdict(lr.setting_means(drift, "s"), lr.setting_means(drift, "r"))
    assert all(r["within"] for r in v["per_setting"].values()) and not v["reproduced"]


def test_bank_recipe_compare_applies_the_plans_rule(tmp_path):
    import json

    import bank_recipe_compare as brc

    def build(folder, means, kept=(True, True)):
        for case, mean, k in zip(("btcv_0001", "btcv_0009"), means, kept):
            d = tmp_path / folder / case
            d.mkdir(parents=True)
            (d / "pseudo.npz").write_bytes(b"")
            (d / "qa.json").write_text(json.dumps({
                "case_id": case, "mean_dice": mean, "dice": {"1": mean}, "dice_affine": {"1": 0.4},
                "folded_fraction": 0.0, "kept": k, "seconds": 50.0, "tries": [{"seed": 1}]}))
        return str(tmp_path / folder)

    ref = tmp_path / "ref.md"
    ref.write_text("| case | source | spleen | mean | affine mean | folded | kept | s |\n|---|---|---|---|---|---|---|---|\n"
                   "| btcv_0001 | btcv | 0.90 | 0.900 | 0.300 | 0.0e+00 | yes | 26 |\n"
                   "| btcv_0009 | btcv | 0.85 | 0.850 | 0.076 | 0.0e+00 | yes | 55 |\n")
    good = build("good", (0.89, 0.874))
    assert brc.main(["--cache", good, "--reference", str(ref), "--repeat", good, "--out", str(tmp_path / "o")]) == 0
    got = json.loads((tmp_path / "o.json").read_text())
    assert got["stays"] and got["repeat_identical"] == {"btcv_0001": True, "btcv_0009": True}
    assert got["affine_mean"] == pytest.approx(0.4) and got["reference_affine_mean"] == pytest.approx(0.188)
    # One case 0.06 below its reference row fails the rule though the mean over cases rises.
    v = brc.verdict(brc.cache_rows(build("fallen", (0.84, 0.95))), brc.reference_rows(ref.read_text()))
    assert v["mean_dice"] > v["reference_mean_dice"] and v["fallen_cases"] == ["btcv_0001"] and not v["stays"]
    # So does a dropped case, and a second build that differs is reported.
    dropped = build("dropped", (0.9, 0.86), kept=(True, False))
    assert not brc.verdict(brc.cache_rows(dropped), brc.reference_rows(ref.read_text()))["stays"]
    assert brc.repeat_check(brc.cache_rows(good), brc.cache_rows(dropped)) == {"btcv_0001": False, "btcv_0009": False}
    # Another build's OUT.json as the reference: the cases with the same figures are counted and named.
    assert brc.main(["--cache", dropped, "--reference", str(tmp_path / "o.json"), "--out", str(tmp_path / "x")]) == 0
    got = json.loads((tmp_path / "x.json").read_text())
    assert got["same_as_reference"] == [] and not got["stays"]
    assert brc.main(["--cache", good, "--reference", str(tmp_path / "o.json"), "--out", str(tmp_path / "y")]) == 0
    assert json.loads((tmp_path / "y.json").read_text())["same_as_reference"] == ["btcv_0001", "btcv_0009"]
    assert "2 of 2 cases." in (tmp_path / "y.md").read_text()


def test_holdout_builds_compare_judges_the_target_only_when_every_whole_volume_pair_is_measured(tmp_path):
    import json

    import holdout_builds_compare as hbc

    rows = _holdout_rows

    pairs = {("a", "native"): 0.86, ("b", "native"): 0.88, ("a", "cta_crop"): 0.80, ("b", "cta_crop"): 0.82}
    ref = tmp_path / "ref.json"
    ref.write_text(json.dumps({"rows": rows("old", pairs)}))
    new = tmp_path / "new.partial.json"      # the evaluation's partial file is a bare list
    new.write_text(json.dumps(rows("new", {("a", "native"): 0.84, ("a", "cta_crop"): 0.79})))
    assert hbc.main(["--reference", str(ref), "--reference-run", "old", "--new", str(new), "--new-run", "new",
                     "--out", str(tmp_path / "p")]) == 0
    got = json.loads((tmp_path / "p.json").read_text())
    # Only case a is compared, on both builds, and the target is not judged on half the pairs.
    assert not got["complete"] and got["whole_volume_under_target"] is None
    assert got["per_setting"]["native"]["reference"] == pytest.approx(0.86)
    assert got["per_setting"]["native"]["difference"] == pytest.approx(-0.02)
    assert "**Partial**: 2 of the reference's 4" in (tmp_path / "p.md").read_text()
    # Complete: native under 0.85 is named; the crop is not a whole volume.
    new.write_text(json.dumps(rows("new", {**pairs, ("a", "native"): 0.83, ("b", "native"): 0.85})))
    v = hbc.compare(hbc.load_rows(str(ref), "old"), hbc.load_rows(str(new), "new"))
    assert v["complete"] and v["whole_volume_under_target"] == ["native"]
    # A reference setting the new build never measured (a slab) does not hold back the whole-volume verdict...
    ref.write_text(json.dumps({"rows": rows("old", {**pairs, ("a", "slab_3"): 0.6, ("b", "slab_3"): 0.7})}))
    v = hbc.compare(hbc.load_rows(str(ref), "old"), hbc.load_rows(str(new), "new"))
    assert v["complete"] and v["whole_volume_under_target"] == ["native"] and v["not_measured"] == ["slab_3"]
    assert "slab_3" not in v["per_setting"] and "not measured on the new build: slab_3" in hbc.report(v)
    # ...but a whole-volume pair missing does, even with the slab present.
    fewer = {p: d for p, d in {**pairs, ("a", "slab_3"): 0.6, ("b", "slab_3"): 0.7}.items() if p != ("b", "native")}
    new.write_text(json.dumps(rows("new", fewer)))
    v = hbc.compare(hbc.load_rows(str(ref), "old"), hbc.load_rows(str(new), "new"))
    assert not v["complete"] and v["whole_volume_under_target"] is None and v["not_measured"] == ["native"]
    with pytest.raises(SystemExit, match="no rows for the run"):
        hbc.load_rows(str(ref), "missing")


def test_candidate_rule_adopts_only_a_large_enough_gain_with_no_setting_fallen(tmp_path):
    import json

    import candidate_rule as cr

    base_whole = {(c, st): d for c in ("a", "b") for st, d in (("native", 0.84), ("unseen", 0.86))}
    slabs = {(c, "slab_liver"): 0.6 for c in ("a", "b")}
    shipped = tmp_path / "shipped.json"        # measured at an earlier stop, the run named differently there
    shipped.write_text(json.dumps({"rows": _holdout_rows("0.8.2", base_whole)}))

    def candidate(native, unseen, slab):
        whole = {(c, st): d for c in ("a", "b") for st, d in (("native", native), ("unseen", unseen))}
        both = tmp_path / "slabs.json"
        both.write_text(json.dumps({"rows": _holdout_rows("0.8.3", slabs)
                                    + _holdout_rows("cand", {p: slab for p in slabs})}))
        (tmp_path / "cand.json").write_text(json.dumps({"rows": _holdout_rows("cand", whole)}))
        return ["--base", str(shipped), "0.8.2", "--base", str(both), "0.8.3",
                "--candidate", str(tmp_path / "cand.json"), "cand", "--candidate", str(both), "cand",
                "--averaged", "native", "unseen", "--gain", "0.005", "--worst", "0.005", "--out", str(tmp_path / "o")]

    assert cr.main(candidate(0.86, 0.86, 0.6)) == 0
    got = json.loads((tmp_path / "o.json").read_text())
    assert got["adopt"] and got["mean_gain"] == pytest.approx(0.01) and got["lower_than_allowed"] == []
    assert "**Adopt** by this rule" in (tmp_path / "o.md").read_text()
    # The same average gain with one setting 0.01 lower is not adopted; nor is a fallen slab, nor a small gain.
    cr.main(candidate(0.89, 0.85, 0.6))
    got = json.loads((tmp_path / "o.json").read_text())
    assert not got["adopt"] and got["lower_than_allowed"] == ["unseen"]
    cr.main(candidate(0.86, 0.86, 0.59))
    assert json.loads((tmp_path / "o.json").read_text())["lower_than_allowed"] == ["slab_liver"]
    cr.main(candidate(0.848, 0.86, 0.6))
    got = json.loads((tmp_path / "o.json").read_text())
    assert not got["adopt"] and got["mean_gain"] == pytest.approx(0.004)
    # A setting's own allowance: the slab may fall by 0.02 where the others may not fall by 0.005.
    cr.main(candidate(0.86, 0.86, 0.59)[:-2] + ["--worst-for", "slab_liver", "0.02", "--out", str(tmp_path / "o")])
    assert json.loads((tmp_path / "o.json").read_text())["adopt"]
    # An organ averaged over the settings: the candidate's spleen 0.03 lower in native alone (0.015 over two).
    args = candidate(0.86, 0.86, 0.6)
    rows = json.loads((tmp_path / "cand.json").read_text())["rows"]
    for r in rows:
        if r["setting"] == "native":
            r["organs"]["spleen"]["dice"] = 0.81
    (tmp_path / "cand.json").write_text(json.dumps({"rows": rows}))
    cr.main(args + ["--organ-worst", "0.01"])
    got = json.loads((tmp_path / "o.json").read_text())
    assert not got["adopt"] and got["organs_lower_than_allowed"] == ["spleen"]
    assert got["organs_over_averaged"]["spleen"]["difference"] == pytest.approx(-0.015)
    assert got["organs_over_averaged"]["liver"]["difference"] == pytest.approx(0.01)
    cr.main(args + ["--organ-worst", "0.02"])
    assert json.loads((tmp_path / "o.json").read_text())["adopt"]
    # A candidate missing a pair the base has is not judged.
    args = candidate(0.86, 0.86, 0.6)
    (tmp_path / "cand.json").write_text(json.dumps({"rows": _holdout_rows("cand", {("a", "native"): 0.9})}))
    cr.main(args)
    got = json.loads((tmp_path / "o.json").read_text())
    assert not got["complete"] and not got["adopt"] and "**Not judged**" in (tmp_path / "o.md").read_text()
