"""The sample CT's label map, voxel for voxel, against a hash stored before the engine refactor
(issue 15): restructuring the code must not change what a user gets.

The hash was made on this project's CPU machine with the shipped ``bundle/models/model.pt``
(bundle 0.4.0) and the engine's defaults (encoder runtime ``auto``: OpenVINO on CPU). A change that
is meant to alter the output (new weights, new defaults) updates the hash in the same commit, and
says so in its message.
"""
from __future__ import annotations

import hashlib

import numpy as np
import pytest

import priorsam
from priorsam.data.samples import sample_ct

SAMPLE_LABELS_SHA256 = "457eaa563e3251887dbb86417fa7a65f9e50c0868f672ca62e30218a5dd22a66"
SAMPLE_VOXELS_PER_LABEL = [1303925, 9882, 7548, 5424, 1608, 44573, 4672, 1916, 516]


@pytest.mark.slow
def test_sample_ct_label_map_is_unchanged():
    labels, _ = priorsam.segment(str(sample_ct().image))
    a = np.ascontiguousarray(labels, dtype=np.uint8)
    # The counts first: when the hash differs they say by how much.
    assert np.bincount(a.ravel(), minlength=9).tolist() == SAMPLE_VOXELS_PER_LABEL
    assert hashlib.sha256(a.tobytes()).hexdigest() == SAMPLE_LABELS_SHA256
