"""The sample CT's label map, voxel for voxel, against a hash stored before the engine refactor
(issue 15): restructuring the code must not change what a user gets.

The hash was made on this project's CPU machine with the shipped ``bundle/models/model.pt``
and the engine's defaults (runtime ``auto``: OpenVINO for the encoder and the box decoder on CPU);
last updated for bundle 0.5.0's weights (the localiser fine-tuned on 64³ crops; same heads, same
inference as 0.4.2). A change that
is meant to alter the output (new weights, new defaults) updates the hash in the same commit, and
says so in its message.
"""
from __future__ import annotations

import hashlib

import numpy as np
import pytest

import priorsam
from priorsam.data.samples import sample_ct

SAMPLE_LABELS_SHA256 = "a8d0e6617a009c29aff9586df71a29b58fb5039cbc1105377e32e496138e9eaf"
SAMPLE_VOXELS_PER_LABEL = [1304696, 9811, 7379, 5247, 1137, 44907, 4568, 1908, 411]


@pytest.mark.slow
def test_sample_ct_label_map_is_unchanged():
    labels, _ = priorsam.segment(str(sample_ct().image))
    a = np.ascontiguousarray(labels, dtype=np.uint8)
    # The counts first: when the hash differs they say by how much.
    assert np.bincount(a.ravel(), minlength=9).tolist() == SAMPLE_VOXELS_PER_LABEL
    assert hashlib.sha256(a.tobytes()).hexdigest() == SAMPLE_LABELS_SHA256
