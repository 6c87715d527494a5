"""3D consistency of per-slice label maps (priorsam.engine.consistency)."""
from __future__ import annotations

import numpy as np


def test_box_smoothing_cuts_a_one_slice_leak_and_keeps_a_smooth_organ():
    from priorsam.engine.consistency import smooth_organ_boxes

    lab = np.zeros((60, 60, 9), np.uint8)
    for z in range(9):
        lab[20:40, 20 + z:40 + z, z] = 5          # a liver drifting smoothly along z
    np.testing.assert_array_equal(smooth_organ_boxes(lab), lab)
    leaky = lab.copy()
    leaky[40:58, 24:44, 4] = 5                    # slice 4 leaks far below its neighbours' boxes
    out = smooth_organ_boxes(leaky)
    assert out[:, :, 4].sum() // 5 < leaky[:, :, 4].sum() // 5
    np.testing.assert_array_equal(out[20:40, :, 4], lab[20:40, :, 4])   # the organ itself is kept
    assert not out[45:, :, 4].any()                                     # the leak beyond the margin is cut
