"""Command-line values are read by each command's signature, and engine options out of range are refused.

python-fire hands arguments over as it parsed them (a file named 123 as an int, ``--force=false`` as a
true string); these tests hold the commands to one clear error line, or to the value the user meant."""
from __future__ import annotations

import inspect
import subprocess
import sys

import pytest

from priorsam.cli.flags import typed_flags
from priorsam.cli.train import training_settings
from priorsam.engine.segment import SegmentOptions
from priorsam.errors import InputError, OptionError, PriorSAMError


def _command(image: str, out: str, z_stride: int | None = None, force: bool = False, margin_mm: float = 5.0,
             box: str = "", option=None):
    """A command shaped like the real ones."""
    return dict(image=image, out=out, z_stride=z_stride, force=force, margin_mm=margin_mm, box=box, option=option)


def test_values_are_read_as_the_signature_types():
    run = typed_flags(_command)
    got = run(7, 123, z_stride="3", force="false", margin_mm="2.5", box=(2, 2, 1, 20, 20, 3), option=("a=1",))
    assert got == dict(image="7", out="123", z_stride=3, force=False, margin_mm=2.5, box="2,2,1,20,20,3",
                       option=("a=1",))   # unannotated: passed on as it came
    assert run("a", "b", z_stride="none", force=True)["z_stride"] is None
    assert run("a", "b", force="yes")["force"] is True


@pytest.mark.parametrize("kwargs, said", [
    ({"z_stride": "abc"}, "--z_stride: 'abc' is not a whole number or none"),
    ({"z_stride": 2.5}, "--z_stride: 2.5 is not a whole number"),
    ({"force": "maybe"}, "--force: 'maybe' is not true or false"),
    ({"margin_mm": "wide"}, "--margin_mm: 'wide' is not a number"),
])
def test_wrong_values_are_one_clear_error(kwargs, said):
    with pytest.raises(InputError, match=said):
        typed_flags(_command)("a.nii.gz", "b.nii.gz", **kwargs)


def test_fire_still_sees_the_signature():
    # fire maps positional arguments and writes --help from getfullargspec, which ignores __wrapped__
    run = typed_flags(_command)
    assert inspect.getfullargspec(run).args == inspect.getfullargspec(_command).args
    assert run.__doc__ == _command.__doc__


@pytest.mark.parametrize("options, said", [
    ({"z_stride": 0}, "z_stride: 0 must be ≥ 1"),
    ({"z_stride": -3}, "z_stride: -3 must be ≥ 1"),
    ({"localiser_shifts": 9}, "localiser_shifts: 9 must be 1 to 8"),
    ({"localiser_shifts": 0}, "localiser_shifts: 0 must be 1 to 8"),
    ({"localiser_fill": 1.5}, "localiser_fill: 1.5 must lie between 0 and 1"),
    ({"presence_threshold": -0.1}, "presence_threshold: -0.1 must lie between 0 and 1"),
    ({"encoder_backend": "tensorrt"}, "encoder_backend: 'tensorrt' is not one of auto, torch, onnx, openvino"),
    ({"localiser_interpolation": "cubic"}, "localiser_interpolation: 'cubic' is not one of linear, nearest"),
    ({"batch_size": 0}, "batch_size: 0 must be ≥ 1"),
    ({"z_step_mm": 0.0}, "z_step_mm: 0.0 must be above 0"),
    ({"tight_fov_mm": -1.0}, "tight_fov_mm: -1.0 must be ≥ 0"),
    ({"framing": "square"}, "framing: 'square' is not one of fixed, upstream"),
    ({"box_source": "x"}, "box_source: 'x' is not one of"),
])
def test_engine_options_out_of_range_are_refused(options, said):
    with pytest.raises(OptionError, match=said) as caught:
        SegmentOptions(**options)
    assert isinstance(caught.value, PriorSAMError) and isinstance(caught.value, ValueError)


def test_engine_options_at_their_edges_are_accepted():
    # 0 is a documented "never" for the localiser's rules and the tight-field answer; None is "automatic"
    SegmentOptions(z_stride=1, localiser_agreement=0.0, localiser_veto=0.0, localiser_fill=0.0, tight_fov_mm=0.0,
                   localiser_shifts=8, framing=None, spacing_mm=None, localiser_min_z_mm=0.0)
    SegmentOptions(z_stride=None, localiser_shifts=None, localiser_fill=1.0)


def test_training_overrides_are_read_and_unknown_ones_named():
    assert training_settings({"steps": "200", "lr": "5e-4", "resume": "false", "model": {"refine_rounds": 1}}) == \
        {"steps": 200, "lr": 5e-4, "resume": False, "model": {"refine_rounds": 1}}
    with pytest.raises(InputError, match="--steps: 'many' is not a whole number"):
        training_settings({"steps": "many"})


@pytest.mark.parametrize("args, said", [
    (["segment", "in.nii.gz", "123"], "123: unsupported output type"),
    (["segment", "in.nii.gz", "out.nii.gz", "--z_stride", "abc"], "--z_stride: 'abc' is not a whole number"),
    (["segment", "in.nii.gz", "out.nii.gz", "--z_stride", "0"], "option z_stride: 0 must be ≥ 1"),
    (["segment", "in.nii.gz", "out.nii.gz", "--encoder", "xyz"], "option encoder_backend: 'xyz' is not one of"),
    (["train", "cache", "run", "--stepz", "3"], "priorsam train: unknown setting(s) stepz"),
    (["train", "cache", "run", "--config", "nope.json"], "training config nope.json: no such file"),
])
def test_cli_refuses_bad_flags_in_one_line(tmp_path, args, said):
    # in.nii.gz does not exist: flags and options are checked before the image is read
    done = subprocess.run([sys.executable, "-m", "priorsam", *args], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    errors = [ln for ln in done.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and said in errors[0], done.stderr
    assert not (tmp_path / "out.nii.gz").exists()


@pytest.mark.parametrize("module, args, files, said", [
    ("priorsam.training.localiser", ["--bank", "bank", "--out_dir", "run", "--config", "c.json"],
     {"c.json": '{"stepz": 3}'}, "localiser config c.json: unknown setting(s) stepz"),
    ("priorsam.training.localiser", ["--bank", "bank", "--out_dir", "run", "--config", "c.json"],
     {"c.json": '{"steps": 3,'}, "localiser config c.json is not valid JSON"),
    ("priorsam.evaluation.anatomy_holdout", ["--bank", "bank", "--runs", "runs.json", "--out", "o"],
     {}, "runs file runs.json: no such file"),
    ("priorsam.evaluation.anatomy_holdout", ["--bank", "bank", "--runs", "runs.json", "--out", "o"],
     {"runs.json": '{"name": "x"}'}, "must hold a JSON list of runs"),
    ("priorsam.evaluation.generalisation", ["--runs", "runs.json", "--out", "g.md"], {}, "runs file runs.json: no such file"),
    ("priorsam.evaluation.generalisation", ["--runs", "runs.json", "--out", "g.md", "--device", "tpu"], {},
     "unknown device 'tpu'"),
    ("priorsam.training.build_cache", ["--cache", "cache", "--datalist", "d.json"],
     {"d.json": '[{"case_id": "a", "imagez": "x"}]'}, "datalist d.json: unknown setting(s) imagez"),
])
def test_module_entry_points_refuse_bad_files_in_one_line(tmp_path, module, args, files, said):
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    done = subprocess.run([sys.executable, "-m", module, *args], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    errors = [ln for ln in done.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and said in errors[0], done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(files)   # nothing written
