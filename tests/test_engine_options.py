"""Volume-level savings and the framing switch of the prompt-free engine."""
import numpy as np
import pytest

from priorsam.data.preprocess import FixedScaleFrame, UpstreamFrame, make_frame
from priorsam.engine.segment import body_slices, interpolate_labels, labels_agree
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
