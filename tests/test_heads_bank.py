"""The shipped heads' recipe on the anatomy bank: its cache-parts file (fast) — the whole recipe through the
bundle is in test_bundle_workflows.py."""
from __future__ import annotations

import json

import pytest

from priorsam.errors import InputError
from priorsam.training.heads_bank import CachePart, read_cache_parts


def test_the_shipped_cache_parts_read_as_the_readme_describes_them():
    from pathlib import Path

    parts = read_cache_parts(Path(__file__).resolve().parents[1] / "bundle/docs/training/heads_bank_cache.json")
    assert parts == [CachePart("sample", 3, 0.5), CachePart("plain", 2, 0.4), CachePart("arms_table", 1, 0.3)]


@pytest.mark.parametrize("content, says", [
    ({"cases": "plain", "views": 1}, "must hold a JSON list"),
    ([], "must hold a JSON list"),
    ([{"cases": "ct", "views": 1}], "cases must be one of sample, plain, arms_table"),
    ([{"cases": "plain", "views": -1}], "views must be a whole number"),
    ([{"cases": "plain", "views": 1.5}], "views must be a whole number"),
    ([{"cases": "plain", "views": 1, "fraction": 0}], "fraction must be in (0, 1]"),
    ([{"cases": "plain", "views": 1, "share": 0.5}], "unknown setting(s) share"),
])
def test_a_bad_cache_parts_file_is_refused_in_one_line(tmp_path, content, says):
    path = tmp_path / "parts.json"
    path.write_text(json.dumps(content))
    with pytest.raises(InputError, match=None) as err:
        read_cache_parts(path)
    assert says in str(err.value) and "\n" not in str(err.value)


def test_a_recipe_takes_its_own_entries_of_a_shared_cache_in_its_parts_order():
    """Whatever order the index lists them in (sittings, another recipe filling the folder between), a recipe's
    entries come back pair by pair in its order and by slice within each, and nobody else's."""
    from priorsam.training.cache import entries_of

    pairs = [("sample", "v0"), ("sample", "v1"), ("pseudo_a", "w0")]
    index = [{"case": "pseudo_a", "view_key": "w0", "z": 7}, {"case": "pseudo_a", "view_key": "decoder", "z": 1},
             {"case": "sample", "view_key": "v1", "z": 3}, {"case": "sample", "view_key": "v0", "z": 9},
             {"case": "sample", "view_key": "v0", "z": 2}, {"case": "pseudo_b", "view_key": "w0", "z": 4},
             {"case": "pseudo_a", "view_key": "w0", "z": 5}]
    got = [(r["case"], r["view_key"], r["z"]) for r in entries_of(index, pairs)]
    assert got == [("sample", "v0", 2), ("sample", "v0", 9), ("sample", "v1", 3), ("pseudo_a", "w0", 5),
                   ("pseudo_a", "w0", 7)]
    assert entries_of(index, []) == []
