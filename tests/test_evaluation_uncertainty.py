"""The bootstrap interval of a held-out mean Dice (priorsam.evaluation.uncertainty); no model runs."""
from __future__ import annotations

import json
import math

import pytest

from priorsam.labels import labels

ORGANS = [lab.name for lab in labels()]


def case(dice: dict[str, float], name: str = "c", run: str = "r", setting: str = "native") -> dict:
    """A row as anatomy_holdout stores it; organs not given are absent from the reference (NaN)."""
    organs = {}
    for o in ORGANS:
        d = dice.get(o, math.nan)
        present = not math.isnan(d)
        organs[o] = {"dice": d, "hd95_mm": 1.0 if present else math.nan, "hd95_vox": 1.0 if present else math.nan,
                     "gt_voxels": 10 if present else 0, "pred_voxels": 10, "missed": False, "false_positive": False}
    return {"case": name, "run": run, "setting": setting, "organs": organs}


def test_the_interval_is_the_mean_itself_when_the_anatomies_agree():
    from priorsam.evaluation.uncertainty import mean_dice_interval

    same = [case({o: 0.8 for o in ORGANS}, f"c{i}") for i in range(5)]
    mean, low, high = mean_dice_interval(same, n_resamples=200)
    assert mean == pytest.approx(0.8) and low == pytest.approx(0.8) and high == pytest.approx(0.8)


def test_the_interval_spans_the_spread_of_the_anatomies_and_is_reproducible():
    from priorsam.evaluation.uncertainty import mean_dice_interval

    # seven anatomies whose means lie 0.70 … 0.94; one has no gallbladder (left out, as the tables do)
    cases = [case({o: 0.70 + 0.04 * i for o in ORGANS}, f"c{i}") for i in range(7)]
    cases[3] = case({o: 0.82 for o in ORGANS if o != "gallbladder"}, "c3")
    mean, low, high = mean_dice_interval(cases, n_resamples=2000, seed=1)
    assert mean == pytest.approx(0.82)
    assert 0.70 < low < mean < high < 0.94
    assert high - low > 0.05                       # seven spread anatomies cannot pin the mean to 0.01
    assert mean_dice_interval(cases, n_resamples=2000, seed=1) == (mean, low, high)
    wider = mean_dice_interval(cases, confidence=0.99, n_resamples=2000, seed=1)
    assert wider[1] <= low and wider[2] >= high
    one = mean_dice_interval(cases[:1])
    assert one[0] == pytest.approx(0.70) and math.isnan(one[1]) and math.isnan(one[2])   # no interval from one case
    with pytest.raises(ValueError):
        mean_dice_interval([])


def test_the_table_and_the_command(tmp_path, capsys):
    from priorsam.evaluation.uncertainty import interval_table, main

    rows = [case({o: 0.8 + 0.02 * i for o in ORGANS}, f"c{i}", setting=st) for st in ("native", "cta_crop")
            for i in range(4)]
    rows += [case({o: 0.1 for o in ORGANS}, "x", run="other")]
    table = interval_table(rows, "r", ["cta_crop", "native"])
    lines = table.splitlines()
    assert len(lines) == 4 and lines[2].startswith("| cta_crop | 4 | 0.830 |") and lines[3].startswith("| native |")
    assert lines[2].endswith("| 0.800–0.860 |")
    path = tmp_path / "rows.json"
    path.write_text(json.dumps({"rows": rows}))
    assert main(["--rows", str(path), "--run", "r"]) == 0
    assert capsys.readouterr().out.splitlines()[2].startswith("| native | 4 | 0.830 |")
    assert main(["--rows", str(path), "--run", "nobody"]) == 1
    assert "no rows of the run 'nobody'" in capsys.readouterr().err
    assert main(["--rows", str(path), "--run", "r", "--confidence", "1.5"]) == 1
    assert main(["--rows", str(tmp_path / "missing.json"), "--run", "r"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(e.startswith("error: ") for e in err)


def test_each_organ_gets_the_interval_of_its_mean_and_the_report_shows_them(tmp_path):
    from priorsam.evaluation.metrics import dice_intervals, summarise, write_report

    # the liver is steady, the pancreas all over the place; the gallbladder is in two cases only
    cases = [case({"liver": 0.95, "pancreas": 0.2 + 0.15 * i, **({"gallbladder": 0.5} if i < 2 else {})}, f"c{i}")
             for i in range(5)]
    ci = dice_intervals(cases, ["liver", "pancreas", "gallbladder"], n_resamples=2000)
    assert ci["liver"] == pytest.approx((0.95, 0.95))
    assert ci["pancreas"][0] < 0.5 < ci["pancreas"][1] and ci["pancreas"][1] - ci["pancreas"][0] > 0.2
    mean = summarise(cases, ["liver", "pancreas", "gallbladder"])["mean"]["dice"]
    assert ci["mean"][0] < mean < ci["mean"][1]
    assert dice_intervals(cases, ["liver"], n_resamples=2000) == dice_intervals(cases, ["liver"], n_resamples=2000)
    assert all(math.isnan(v) for v in dice_intervals(cases[:1], ["liver"])["liver"])
    md = write_report(cases, tmp_path, names=["liver", "pancreas"])["markdown"].read_text()
    assert "| organ | cases | Dice | Dice 95 % interval |" in md
    assert "| liver | 5 | 0.950 | 0.950–0.950 |" in md
    single = write_report(cases[:1], tmp_path / "one", names=["liver"])["markdown"].read_text()
    assert "| liver | 1 | 0.950 | n/a |" in single
