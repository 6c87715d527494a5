"""Pseudo-patients exported as training cases for the 2D heads (synthetic bank, no ../shared needed)."""
from __future__ import annotations

import json

import numpy as np

from priorsam.data.pseudo_patients import PseudoPatient, save
from priorsam.io import read_label_map, read_volume
from priorsam.training.pseudo_cases import write_cases
from priorsam.training.views import Case, ViewSpec, iter_view


def _bank(tmp_path, ids):
    for i, cid in enumerate(ids):
        shape = (40, 36, 12)
        ct = np.full(shape, -1024, np.int16)
        ct[4:36, 4:32, :] = 40
        ours = np.zeros(shape, np.uint8)
        ours[6 + i:20 + i, 8:28, 2:10] = 5              # liver, shifted per case
        full = np.where(ours == 5, 5, 0).astype(np.uint8)   # TotalSegmentator id 5: liver
        affine = np.diag([3.0, 3.0, 3.0, 1.0])
        pp = PseudoPatient(cid, ct, full, ours, ours, np.ones(shape, np.uint8), affine,
                           {"case_id": cid, "kept": True})
        save(pp, tmp_path / "bank" / cid, key="k")
    return tmp_path / "bank"


def test_export_writes_aligned_cases_skips_held_out_ones_and_feeds_the_cache_views(tmp_path):
    bank = _bank(tmp_path, ["a", "b", "held"])
    rows = write_cases(str(bank), str(tmp_path / "out"), exclude={"held"}, arms=True, log=lambda m: None)
    assert [r["case_id"] for r in rows] == ["pseudo_a", "pseudo_a_arms_table", "pseudo_b", "pseudo_b_arms_table"]
    assert json.loads((tmp_path / "out" / "datalist.json").read_text()) == rows
    assert json.loads((tmp_path / "out" / "datalist_plain.json").read_text()) == rows[0::2]
    assert json.loads((tmp_path / "out" / "datalist_arms_table.json").read_text()) == rows[1::2]
    assert not (tmp_path / "out" / "held").exists()
    assert not list((tmp_path / "out").rglob("*.part*"))
    vol = read_volume(rows[2]["image"], force=True)
    lab = read_label_map(rows[2]["label"]).array
    assert vol.shape == lab.shape == (40, 36, 12) and np.allclose(vol.spacing, 3.0)
    assert (lab == 5).sum() == 14 * 20 * 8 and np.all(vol.array[lab == 5] == 40)
    arms = read_volume(rows[1]["image"], force=True).array
    plain = read_volume(rows[0]["image"], force=True).array
    assert (arms != plain).any() and np.array_equal(arms[lab == 5], plain[lab == 5])  # organs untouched
    # The cache's views read the case as it is written: labels (ours) and structure map (groups).
    slices = list(iter_view(Case(**rows[2]), ViewSpec(1, 7, augment=True, organ_fraction=1.0, empty_fraction=0.0)))
    assert len(slices) == 8 and all(int(s.label.max()) == 5 for s in slices)
