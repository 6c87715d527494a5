"""The sample CT's label map, voxel for voxel, against a hash stored before the engine refactor
(issue 15): restructuring the code must not change what a user gets.

The hash was made on this project's CPU machine with the shipped ``bundle/models/model.pt``
and the engine's defaults (runtime ``auto``: OpenVINO for the encoder and the box decoder on CPU);
last updated for bundle 0.4.2's inference (box prompts from the localiser's mask, conflicts by the
box decoder, the localiser's component by probability mass, the OpenVINO box decoder). A change that
is meant to alter the output (new weights, new defaults) updates the hash in the same commit, and
says so in its message.
"""
from __future__ import annotations

import hashlib

import numpy as np
import pytest

import priorsam
from priorsam.data.samples import sample_ct

SAMPLE_LABELS_SHA256 = "7c21d0a6c553d533944513d78ed0864d9aa3f688c5a38e458813c33197313e59"
SAMPLE_VOXELS_PER_LABEL = [1304664, 9686, 7394, 5222, 1209, 44553, 4757, 1913, 666]


@pytest.mark.slow
def test_sample_ct_label_map_is_unchanged():
    labels, _ = priorsam.segment(str(sample_ct().image))
    a = np.ascontiguousarray(labels, dtype=np.uint8)
    # The counts first: when the hash differs they say by how much.
    assert np.bincount(a.ravel(), minlength=9).tolist() == SAMPLE_VOXELS_PER_LABEL
    assert hashlib.sha256(a.tobytes()).hexdigest() == SAMPLE_LABELS_SHA256
