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


def test_the_localisers_mask_stands_where_the_per_slice_mask_disagrees_with_it():
    from priorsam.engine.consistency import agree_with_localiser

    loc = np.zeros((40, 40, 4), np.uint8)
    loc[10:30, 10:30, :] = 5                      # the localiser's liver in every slice
    lab = np.zeros_like(loc)
    lab[11:29, 10:30, 0] = 5                      # slice 0: agrees (Dice 0.95) — its own boundary is kept
    lab[30:40, 0:10, 1] = 5                       # slice 1: drawn somewhere else — replaced
    lab[12:20, 12:20, 2] = 1                      # slice 2: no liver, a spleen inside the localiser's liver
    lab[5:8, 5:8, 3] = 7                          # slice 3: no liver at all — filled; the aorta stays
    out = agree_with_localiser(lab, loc, min_dice=0.8)
    np.testing.assert_array_equal(out[:, :, 0], lab[:, :, 0])
    np.testing.assert_array_equal(out[:, :, 1] == 5, loc[:, :, 1] == 5)
    assert (out[12:20, 12:20, 2] == 1).all()      # another organ's pixels are not taken
    assert ((out[:, :, 2] == 5) == ((loc[:, :, 2] == 5) & (lab[:, :, 2] != 1))).all()
    assert (out[5:8, 5:8, 3] == 7).all() and (out[:, :, 3] == 5).sum() == 400
    # An organ the localiser does not have is left alone, and 0 < Dice threshold decides.
    np.testing.assert_array_equal(agree_with_localiser(lab, np.zeros_like(loc)), lab)
    np.testing.assert_array_equal(agree_with_localiser(lab, loc, min_dice=0.0), lab)


def test_where_the_localiser_is_sure_its_probability_overrules_the_per_slice_mask():
    from priorsam.engine.consistency import fuse_with_localiser

    # The localiser's probabilities on a grid half as fine as the volume's (40³ → 20³).
    scores = np.zeros((9, 20, 20, 20), np.float32)
    scores[0] = 1.0
    scores[5, 5:15, 5:15, 5:15], scores[0, 5:15, 5:15, 5:15] = 0.95, 0.05   # its liver: sure
    scores[5, 4, 5:15, 5:15] = scores[0, 4, 5:15, 5:15] = 0.5                # a doubtful rim above it
    loc = np.zeros((40, 40, 40), np.uint8)
    loc[10:30, 10:30, 10:30] = 5
    lab = np.zeros_like(loc)
    lab[12:30, 10:30, 10:30] = 5                  # the per-slice liver stops 2 voxels short...
    lab[8:10, 10:30, 10:30] = 5                   # ...except a band in the doubtful rim (kept)
    lab[30:36, 10:30, 10:30] = 5                  # and spills where the localiser has no liver (dropped)
    lab[20:24, 20:24, 20:24] = 1                  # a spleen inside the localiser's liver: not taken
    lab[0:3, 0:3, 0:3] = 7                        # an organ the localiser did not locate: left alone
    out = fuse_with_localiser(lab, loc, scores, organs=[5], veto_below=0.1, fill_above=0.8)
    expect = np.zeros_like(lab)
    expect[8:30, 10:30, 10:30] = 5
    expect[20:24, 20:24, 20:24] = 1
    expect[0:3, 0:3, 0:3] = 7
    np.testing.assert_array_equal(out, expect)
    # 0 switches each part off.
    assert (fuse_with_localiser(lab, loc, scores, [5], 0.0, 0.8)[30:36, 10:30, 10:30] == 5).all()
    assert (fuse_with_localiser(lab, loc, scores, [5], 0.1, 0.0)[10:12, 10:30, 10:30] == 0).all()
    np.testing.assert_array_equal(fuse_with_localiser(lab, loc, scores, [5], 0.0, 0.0), lab)


def test_clean_up_keeps_the_pieces_the_localiser_draws_and_drops_the_rest():
    from priorsam.engine.consistency import clean_labels

    lab = np.zeros((40, 40, 6), np.uint8)
    lab[2:12, 10:16, 1:5] = 8                     # pancreas head (the largest piece)
    lab[20:26, 10:16, 1:5] = 8                    # its tail, cut off from the head
    lab[32:36, 30:34, 1:3] = 8                    # a stray blob the localiser has no pancreas at
    loc = np.zeros_like(lab)
    loc[4:10, 11:15, 2:4] = 8                     # the localiser's pancreas: two pieces
    loc[21:25, 11:15, 2:4] = 8
    kept = clean_labels(lab, fill_holes=False, localiser_labels=loc)
    assert (kept[2:12, 10:16, 1:5] == 8).all() and (kept[20:26, 10:16, 1:5] == 8).all()
    assert not kept[32:36, 30:34].any()
    alone = clean_labels(lab, fill_holes=False)   # without the localiser: the largest component only
    assert (alone == 8).sum() == 10 * 6 * 4
    np.testing.assert_array_equal(clean_labels(lab, largest_component=False, fill_holes=False), lab)


def test_holes_are_filled_per_slice_even_where_they_open_along_z():
    from priorsam.engine.consistency import clean_labels

    lab = np.zeros((30, 30, 8), np.uint8)
    lab[5:25, 5:25, 2:6] = 5
    lab[10:20, 10:20, 2:6] = 0                    # a tube open at both ends: a hole in each slice, none in 3D
    lab[22:24, 2:4, 2:6] = 5                      # and a piece apart from the main one
    out = clean_labels(lab)
    assert (out[5:25, 5:25, 2:6] == 5).all()      # every slice's hole filled
    assert not out[22:24, 2:4].any() and not out[:, :, [0, 1, 6, 7]].any()
    # Another organ's ring in the same slices is filled on its own, without taking the liver's voxels.
    lab[0:4, 26:30, 3] = 1
    lab[1:3, 27:29, 3] = 0
    out = clean_labels(lab)
    assert (out[0:4, 26:30, 3] == 1).all() and (out[5:25, 5:25, 2:6] == 5).all()
