"""Volume-level savings and the framing switch of the prompt-free engine."""
import numpy as np
import pytest

from priorsam.data.preprocess import FixedScaleFrame, UpstreamFrame, make_frame
from priorsam.engine.segment import body_slices
from priorsam.engine.zstride import interpolate_labels, labels_agree
from priorsam.evaluation.generalisation import render


def test_body_slices_skip_air_only_slices():
    s = np.full((5, 40, 40), -1000.0, np.float32)
    s[1:4, 10:30, 10:30] = 40.0  # 20×20 px of tissue at 2 mm = 16 cm² … below 25 cm²
    assert body_slices(s, 2.0, 2.0).tolist() == [0, 1, 2, 3, 4]  # nothing qualifies → run everything
    s[1:4, 5:35, 5:35] = 40.0  # 30×30 px = 36 cm²
    assert body_slices(s, 2.0, 2.0).tolist() == [1, 2, 3]


def test_labels_agree_and_interpolate_between_shifted_squares():
    a = np.zeros((30, 30), np.uint8)
    a[5:15, 5:15] = 5
    b = np.zeros_like(a)
    b[9:19, 9:19] = 5
    assert labels_agree(a, a, 0.99) and not labels_agree(a, b, 0.85)
    mid = interpolate_labels(a, b, 0.5)
    rows, cols = np.nonzero(mid == 5)
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (7, 16, 7, 16)  # halfway, same size
    assert set(np.unique(mid)) <= {0, 5}
    np.testing.assert_array_equal(interpolate_labels(a, b, 0.0), a)


def test_make_frame_switch():
    s = np.zeros((2, 50, 60), np.float32)
    assert isinstance(make_frame("fixed", s, 1.0, 1.0), FixedScaleFrame)
    assert isinstance(make_frame("upstream", s, 1.0, 1.0), UpstreamFrame)
    with pytest.raises(ValueError):
        make_frame("other", s, 1.0, 1.0)


def test_upstream_labels_to_model_nearest_and_padded():
    f = UpstreamFrame(64, 128)
    lab = np.zeros((1, 64, 128), np.int64)
    lab[0, :, 64:] = 3
    out = f.labels_to_model(lab)[0].numpy()
    assert out.shape == (256, 256) and set(np.unique(out)) == {0, 3}
    assert (out[128:] == 0).all()  # padding below the resized 128×256 image
    assert (out[:128, 128:] == 3).all() and (out[:128, :128] == 0).all()


def test_generalisation_report_renders_every_run():
    rows = [{"name": "a", "what": "x", "val_liver_dice": 0.9, "val_liver_hd95_mm": 3.0, "train_mean_dice": 0.8,
             "train_mean_hd95_mm": 5.0, "train_organs": {"liver": 0.95}},
            {"name": "b", "what": "y", "val_liver_dice": float("nan")}]
    md = render(rows, "cmd")
    assert "| a | x | 0.900 | 3.0 | 0.800 | 5.0 |" in md
    assert "| b | y | n/a |" in md and "Do not edit by hand" in md
    assert "rows measured on cpu)" in md                      # rows stored before they named a device: CPU runs
    assert "rows measured on cpu, cuda)" in render([*rows, {"name": "c", "what": "z", "device": "cuda"}], "cmd")


def test_generalisation_measures_only_what_a_stored_row_lacks(monkeypatch, tmp_path):
    # A row stored from a --no-train-case run keeps its validation numbers; only the missing part is measured.
    import types

    import numpy as np

    from priorsam.evaluation import generalisation as g
    calls = []

    class CountingSegmenter:
        def __init__(self, weights, device, options):
            self.feature_memo = None

        def segment(self, volume, show_bar=False):
            calls.append(volume)
            return types.SimpleNamespace(labels=np.full((2, 4, 4), 5, np.uint8))

    monkeypatch.setattr(g, "Segmenter", CountingSegmenter)
    monkeypatch.setattr(g, "_run_key", lambda run: run["name"])
    monkeypatch.setattr(g, "_validation_case", lambda root: (types.SimpleNamespace(spacing=(1, 1, 1)),
                                                              np.ones((2, 4, 4), bool)))
    monkeypatch.setattr(g, "organ_metrics", lambda pred, gt, spacing: {"dice": 1.0, "hd95_mm": 0.0})
    monkeypatch.setattr(g, "read_volume", lambda p: types.SimpleNamespace(spacing=(1, 1, 1)))
    monkeypatch.setattr(g, "read_label_map", lambda p: types.SimpleNamespace(array=np.zeros((2, 4, 4))))
    monkeypatch.setattr(g, "sample_ct", lambda: types.SimpleNamespace(image="i", label="l"))
    runs = [{"name": "a", "weights": "w"}, {"name": "b", "weights": "w"}]
    stored = {"a": {"name": "a", "key": "a", "val_liver_dice": 0.5, "val_liver_hd95_mm": 9.0},
              "b": {"name": "b", "key": "b", "val_liver_dice": 0.7, "val_liver_hd95_mm": 1.0,
                    "train_mean_dice": 0.6, "train_mean_hd95_mm": 2.0, "train_organs": {}}}
    (tmp_path / "v").mkdir()
    rows = g.measure(runs, tmp_path / "v", previous=stored, log=lambda *a: None)
    assert rows[0]["val_liver_dice"] == 0.5          # kept, not re-measured (the fake would give 1.0)
    assert "train_mean_dice" in rows[0]              # the missing part was measured
    assert rows[1] == stored["b"] | {"what": "", "weights": "w", "options": {}}
    assert len(calls) == 1                           # one segment call: run a's training scan only
    assert "code" not in rows[0] and "code" not in rows[1]   # parts measured before stamps: not stamped now
    # A row stamped with other code is measured again, and every row measured now carries the digest.
    from priorsam.version import source_digest

    stale = {"b": {**stored["b"], "code": "0000000000000000"}}
    calls.clear()
    rows = g.measure(runs, tmp_path / "v", previous=stale, log=lambda *a: None)
    assert len(calls) == 4 and rows[1]["val_liver_dice"] == 1.0
    assert rows[0]["code"] == rows[1]["code"] == source_digest()
    again = g.measure(runs, tmp_path / "v", previous={r["key"]: r for r in rows}, log=lambda *a: None)
    assert len(calls) == 4 and again == rows           # current rows are reused as they are


def test_the_encoder_window_is_the_trained_one_unless_the_options_set_it():
    """``window_level`` / ``window_width`` (tried at stop 35, not adopted) change the encoder's input window;
    unset, the framing keeps the window the weights were trained with."""
    from priorsam.data.preprocess import WINDOW_LEVEL, WINDOW_WIDTH
    from priorsam.engine.segment import SegmentOptions, Segmenter

    default = Segmenter(None, "cpu").framing()
    assert (default.level, default.width) == (WINDOW_LEVEL, WINDOW_WIDTH)
    narrow = Segmenter(None, "cpu", SegmentOptions(window_level=50, window_width=250)).framing()
    assert (narrow.level, narrow.width) == (50.0, 250.0) and narrow.key() != default.key()
