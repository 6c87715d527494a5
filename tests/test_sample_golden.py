"""The sample CT's label map, voxel for voxel, against a hash stored before the engine refactor
(issue 15): restructuring the code must not change what a user gets.

The hash was made on this project's CPU machine with the shipped ``bundle/models/model.pt``
and the engine's defaults (runtime ``auto``: OpenVINO for the encoder and the box decoder on CPU);
last updated for bundle 0.5.0 (the localiser fine-tuned on 64³ crops; the localiser's mask standing
where a per-slice mask disagrees with it). A change that
is meant to alter the output (new weights, new defaults) updates the hash in the same commit, and
says so in its message.
"""
from __future__ import annotations

import hashlib

import numpy as np
import pytest

import priorsam
from priorsam.data.samples import sample_ct

SAMPLE_LABELS_SHA256 = "9bcbf7b13fc9e6d5626155986c58df94fdba43ee8d7187422803eb673c4e90f4"
SAMPLE_VOXELS_PER_LABEL = [1306464, 9791, 7270, 5226, 1117, 43188, 4551, 1925, 532]


@pytest.mark.slow
def test_sample_ct_label_map_is_unchanged():
    labels, _ = priorsam.segment(str(sample_ct().image))
    a = np.ascontiguousarray(labels, dtype=np.uint8)
    # The counts first: when the hash differs they say by how much.
    assert np.bincount(a.ravel(), minlength=9).tolist() == SAMPLE_VOXELS_PER_LABEL
    assert hashlib.sha256(a.tobytes()).hexdigest() == SAMPLE_LABELS_SHA256
