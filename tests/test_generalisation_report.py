"""The generalisation report's bookkeeping: notes kept across re-renders, and --only measuring one run."""
import json

import pytest


def _runs(tmp_path):
    runs = []
    for name in ("old", "new"):
        w = tmp_path / f"{name}.pt"
        w.write_bytes(name.encode())
        runs.append({"name": name, "weights": str(w), "what": f"the {name} run"})
    return runs


def test_a_re_render_keeps_the_notes_that_follow_the_tables():
    from priorsam.evaluation.generalisation import notes_of, render

    rows = [{"name": "a", "what": "x", "val_liver_dice": 0.9, "val_liver_hd95_mm": 5.0, "train_mean_dice": 0.8,
             "train_mean_hd95_mm": 4.0, "train_organs": {"liver": 0.95}}]
    notes = "## Held out\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\nText after a table of the notes."
    report = render(rows, "cmd", notes)
    assert notes_of(report) == notes
    assert render(rows, "cmd", notes_of(report)) == report
    assert notes_of(render(rows, "cmd")) == "" and notes_of("no tables here") == ""


def test_only_keeps_the_other_runs_as_stored_and_refuses_a_run_with_nothing_stored(tmp_path):
    from priorsam.errors import InputError
    from priorsam.evaluation.generalisation import _run_key, measure

    runs = _runs(tmp_path)
    stored_old = {"name": "old", "code": "an earlier digest", "val_liver_dice": 0.5, "train_mean_dice": 0.6}
    stored_new = {"name": "new", "code": "an earlier digest", "val_liver_dice": 0.7, "train_mean_dice": 0.8}
    previous = {_run_key(runs[0]): stored_old, _run_key(runs[1]): stored_new}
    log = []
    # Nothing to measure here (no validation patient, no training scan): "new" would be measured again
    # without --only because its stored code differs; with --only naming it, "old" is kept as stored.
    rows = measure(runs, None, train_case=False, previous=previous, only=["new"], log=log.append)
    assert rows[0]["val_liver_dice"] == 0.5 and rows[0]["code"] == "an earlier digest"
    assert rows[0]["what"] == "the old run"
    assert any("old: kept as stored (--only)" in line for line in log)
    assert "val_liver_dice" not in rows[1]          # measured afresh: its stale row was dropped
    with pytest.raises(InputError, match="'old' has no stored result"):
        measure(runs, None, train_case=False, previous={_run_key(runs[1]): stored_new}, only=["new"])
    with pytest.raises(InputError, match="does not have: nosuch"):
        measure(runs, None, train_case=False, previous=previous, only=["nosuch"])
    json.dumps(rows)
