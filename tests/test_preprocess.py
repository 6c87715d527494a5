"""Slice preprocessing: LiteMedSAM's own framing, the fixed-scale trunk framing, and the trunk centre."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from priorsam.data.preprocess import FixedScaleFrame, UpstreamFrame, stack_channels, trunk_centre, window


def upstream_reference(slice_windowed: np.ndarray) -> np.ndarray:
    """LiteMedSAM's steps written out directly: 3 channels, longest side → 256 (INTER_AREA), min-max, pad."""
    h, w = slice_windowed.shape
    img = np.repeat(slice_windowed[:, :, None], 3, axis=-1)
    scale = 256 / max(h, w)
    nh, nw = int(h * scale + 0.5), int(w * scale + 0.5)
    img = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_AREA)
    img = (img - img.min()) / np.clip(img.max() - img.min(), 1e-8, None)
    img = np.pad(img, ((0, 256 - nh), (0, 256 - nw), (0, 0)))
    return img.transpose(2, 0, 1)


@pytest.mark.parametrize("hw", [(101, 122), (122, 101), (512, 512), (300, 77)])
def test_upstream_frame_matches_reference(hw):
    rng = np.random.default_rng(0)
    hu = rng.normal(0, 300, size=(2, *hw)).astype(np.float32)
    win = window(hu)
    assert win.min() >= 0 and win.max() <= 255
    frame = UpstreamFrame(*hw)
    got = frame.images(stack_channels(win, np.arange(2), 0)).numpy()
    assert got.shape == (2, 3, 256, 256)
    for i in range(2):
        np.testing.assert_allclose(got[i], upstream_reference(win[i]), atol=1e-6)
    nh, nw = frame.resized
    assert max(nh, nw) == 256
    assert not got[:, :, nh:, :].any() and not got[:, :, :, nw:].any()


def test_window_is_l40_w400():
    np.testing.assert_allclose(window(np.array([-160.0, 40.0, 240.0, -1000.0, 3000.0])),
                               [0.0, 127.5, 255.0, 0.0, 255.0])


@pytest.mark.parametrize("hw", [(101, 122), (300, 77)])
def test_upstream_box_scale_and_inverse_shape(hw):
    h, w = hw
    frame = UpstreamFrame(h, w)
    np.testing.assert_allclose(frame.box_to_model([0, 0, w - 1, h - 1]),
                               np.array([0, 0, w - 1, h - 1]) * 256 / max(h, w), rtol=1e-6)
    nh, nw = frame.resized
    maps = torch.full((1, 2, 256, 256), 100.0)
    maps[..., :nh, :nw] = -100.0  # the valid region; the pad must not leak back
    back = frame.maps_from_model(maps)
    assert back.shape == (1, 2, h, w)
    assert torch.all(back == -100.0)


def frame_for(h, w, row_mm, col_mm, spacing, centre=None):
    cr, cc = centre if centre is not None else ((h - 1) / 2, (w - 1) / 2)
    return FixedScaleFrame(h, w, row_mm, col_mm, cr, cc, spacing)


@pytest.mark.parametrize("row_mm,col_mm,spacing,centre", [
    (2.0, 2.0, 1.5, None),
    (3.0, 1.7, 1.2, None),          # anisotropic pixels
    (2.5, 1.6, 1.5, (20.3, 31.0)),  # off-centre trunk
])
def test_fixed_scale_label_roundtrip_exact_when_upsampling(row_mm, col_mm, spacing, centre):
    h, w = 48, 64
    assert 256 * spacing >= max(h * row_mm, w * col_mm)  # the whole slice fits in the frame
    labels = np.random.default_rng(2).integers(0, 9, size=(3, h, w))
    frame = frame_for(h, w, row_mm, col_mm, spacing, centre)
    model = frame.labels_to_model(labels)
    assert model.shape == (3, 256, 256)
    back = frame.labels_from_model(model)
    np.testing.assert_array_equal(back.numpy(), labels)


def test_fixed_scale_is_physical_and_box_maps_invert():
    """A 60 mm disc drawn on anisotropic pixels (3 mm rows, 1.5 mm columns) is round in model space."""
    h, w, row_mm, col_mm, spacing = 60, 120, 3.0, 1.5, 1.5
    rr, cc = np.mgrid[:h, :w]
    disc = ((rr - 30) * row_mm) ** 2 + ((cc - 60) * col_mm) ** 2 <= 30.0 ** 2
    frame = frame_for(h, w, row_mm, col_mm, spacing, centre=(30, 60))
    m = frame.labels_to_model(disc[None].astype(int))[0].numpy().astype(bool)
    rows, cols = np.flatnonzero(m.any(1)), np.flatnonzero(m.any(0))
    assert abs((rows[-1] - rows[0] + 1) - 60 / spacing) <= 2
    assert abs((cols[-1] - cols[0] + 1) - 60 / spacing) <= 2
    box = np.array([40.0, 10.0, 80.0, 50.0])
    np.testing.assert_allclose(frame.box_from_model(frame.box_to_model(box)), box, atol=1e-4)
    # the box's size in model pixels follows the physical size: 40 cols × 1.5 mm, 40 rows × 3 mm
    mb = frame.box_to_model(box)
    np.testing.assert_allclose([mb[2] - mb[0], mb[3] - mb[1]], [40 * col_mm / spacing, 40 * row_mm / spacing], atol=1e-4)


def test_fixed_scale_maps_outside_frame_are_background():
    frame = frame_for(300, 300, 2.0, 2.0, 1.0)  # 600 mm slice, 256 mm frame
    probs = torch.zeros(1, 3, 256, 256)
    probs[:, 2] = 1.0
    out = frame.maps_from_model(probs)
    assert out.shape == (1, 3, 300, 300)
    assert torch.allclose(out[0, :, 150, 150], torch.tensor([0.0, 0.0, 1.0]))
    assert torch.allclose(out[0, :, 0, 0], torch.tensor([1.0, 0.0, 0.0]))
    np.testing.assert_allclose(out.sum(1).numpy(), 1.0, atol=1e-5)


def test_trunk_centre_ignores_a_separate_arm():
    z, h, w, mm = 6, 160, 200, 2.0
    rr, cc = np.mgrid[:h, :w]
    slices = np.full((z, h, w), -1000.0, dtype=np.float32)
    trunk = ((rr - 90) / 50.0) ** 2 + ((cc - 80) / 65.0) ** 2 <= 1   # centre (90, 80)
    arm = ((rr - 90) / 18.0) ** 2 + ((cc - 180) / 12.0) ** 2 <= 1    # separate blob at the right edge
    table = (rr >= 150) & (rr <= 152)                                 # a thin table line
    slices[:, trunk | arm] = 30.0
    slices[:, table] = 200.0
    r, c = trunk_centre(slices, mm, mm)
    assert abs(r - 90) <= 1 and abs(c - 80) <= 1
    # without the arm suppression the bounding-box centre would move towards the arm
    both = trunk | arm
    cols = np.flatnonzero(both.any(0))
    assert abs((cols[0] + cols[-1]) / 2 - 80) > 10


def test_trunk_centre_falls_back_to_slice_centre_without_body():
    slices = np.full((3, 40, 50), -1000.0, dtype=np.float32)
    assert trunk_centre(slices, 1.0, 1.0) == (19.5, 24.5)
