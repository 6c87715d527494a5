"""Build the inference subprocess command lines (one place for the engine's CLI contract).

Organ segmentation has two equivalent back ends running the same engine (``priorsam.segment``):

* ``bundle`` — ``python -m monai.bundle run --config_file <bundle>/configs/inference.json
  --dataset_dir IN --output_dir OUT --device DEV``; writes ``<case>_seg.nii.gz`` under OUT.
* ``cli`` — ``python -m priorsam segment --image IN --out OUT --device DEV --progress``.

``<bundle>`` is the MONAI bundle installed with the ``priorsam`` package in the Python that runs the
job, asked from that package (never derived from where this module lies, so the module works from
an installed extension). ``auto`` picks the bundle when that Python has it, else the CLI. Both print
``PRIORSAM_PROGRESS <done> <total>`` lines on stdout.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

# "auto" picks the MONAI bundle whenever the installed priorsam carries it, else the library CLI
# (same engine, same progress lines).
DEFAULT_BACKEND = "auto"
CASE_NAME = "input"                     # the exported volume is <tmp>/in/input.nii.gz
DEVICES = {"auto": "auto", "gpu": "cuda", "cuda": "cuda", "cpu": "cpu"}


# Run in the job's Python: prints where its priorsam package keeps the bundle (nothing if not installed).
_LOCATE_CODE = (
    "try:\n"
    "    from priorsam.bundle_support.paths import packaged_bundle\n"
    "except ImportError:\n"
    "    raise SystemExit(0)\n"
    "print(packaged_bundle())\n"
)
_located: dict[str, Path] = {}


def _same_interpreter(python: str) -> bool:
    # Not resolve(): every venv's python links to the same base binary; the link's own folder
    # (its pyvenv.cfg) decides which environment it runs.
    return os.path.abspath(python) == os.path.abspath(sys.executable)


def bundle_config(python: str | None = None) -> Path | None:
    """``configs/inference.json`` of the bundle that the ``priorsam`` package installed in ``python``'s
    environment carries, or None when priorsam (or its bundle) is not installed there.

    Asked from the package (in this process when ``python`` is this interpreter, else with a short
    subprocess), so the answer is right for an installed extension, a wheel or a checkout alike.
    """
    python = python or python_executable()
    if python not in _located:
        folder = None
        if _same_interpreter(python):
            try:
                from priorsam.bundle_support.paths import packaged_bundle
            except ImportError:
                packaged_bundle = None
            folder = str(packaged_bundle()) if packaged_bundle else None
        else:
            try:
                out = subprocess.run([python, "-c", _LOCATE_CODE], capture_output=True, text=True, timeout=120)
                folder = out.stdout.strip() if out.returncode == 0 else None
            except (OSError, subprocess.SubprocessError):
                folder = None
        config = Path(folder) / "configs" / "inference.json" if folder else None
        if config is None or not config.is_file():
            return None              # not remembered: it appears once the dependencies are installed
        _located[python] = config
    return _located[python]


def python_executable() -> str:
    """Slicer's ``PythonSlicer`` when running inside Slicer, else this interpreter."""
    found = shutil.which("PythonSlicer")
    if found:
        return found
    exe_dir = Path(sys.executable).parent
    for cand in (exe_dir / "PythonSlicer", exe_dir / "PythonSlicer.exe"):
        if cand.is_file():
            return str(cand)
    return sys.executable


def engine_device(choice: str) -> str:
    """UI choice (auto, GPU, CPU) → the engine's ``--device`` value."""
    key = (choice or "auto").strip().lower()
    if key not in DEVICES:
        raise ValueError(f"unknown device {choice!r}: use auto, GPU or CPU")
    return DEVICES[key]


def choose_backend(backend: str = "auto", python: str | None = None) -> str:
    if backend == "auto":
        return "bundle" if bundle_config(python) is not None else "cli"
    if backend not in ("bundle", "cli"):
        raise ValueError(f"unknown backend {backend!r}: use auto, bundle or cli")
    return backend


@dataclass
class Job:
    """One subprocess run: its command, extra environment and where its result will appear."""

    command: list[str]
    env: dict[str, str] = field(default_factory=dict)
    input_path: Path | None = None
    output_dir: Path | None = None
    output_path: Path | None = None     # exact output file when known in advance

    def find_output(self) -> Path | None:
        """The label map the run wrote (bundle output names depend on its saver settings)."""
        if self.output_path is not None:
            return self.output_path if self.output_path.is_file() else None
        if self.output_dir is None or not self.output_dir.is_dir():
            return None
        hits = sorted(self.output_dir.rglob(f"{CASE_NAME}_seg.nii*")) or sorted(self.output_dir.rglob("*_seg.nii*"))
        return hits[0] if hits else None


def subprocess_env(weights: str | None = None) -> dict[str, str]:
    """Environment additions: no model-hub access, unbuffered output, and the user's weights if chosen.

    Nothing is put on PYTHONPATH: the job's Python imports the installed priorsam package.
    """
    env = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    if weights:
        env["PRIORSAM_WEIGHTS"] = str(weights)
    return env


def organ_job(work_dir: Path, device: str = "auto", backend: str = "auto", python: str | None = None,
              weights: str | None = None) -> Job:
    """Command for prompt-free 8-organ segmentation of ``work_dir/in/input.nii.gz``."""
    python = python or python_executable()
    dev = engine_device(device)
    in_dir, out_dir = Path(work_dir) / "in", Path(work_dir) / "out"
    image = in_dir / f"{CASE_NAME}.nii.gz"
    env = subprocess_env(weights)
    if choose_backend(backend, python) == "bundle":
        cmd = [python, "-m", "monai.bundle", "run", "--config_file", str(bundle_config(python)),
               "--dataset_dir", str(in_dir), "--output_dir", str(out_dir), "--device", dev]
        if weights:             # the bundle reads its weights from the config id ckpt_path
            cmd += ["--ckpt_path", str(weights)]
        return Job(cmd, env, image, out_dir)
    out = out_dir / f"{CASE_NAME}_seg.nii.gz"
    cmd = [python, "-m", "priorsam", "segment", "--image", str(image), "--out", str(out), "--device", dev,
           "--progress"]
    return Job(cmd, env, image, out_dir, out)


def format_box(bounds_ras) -> str:
    """``[x0, y0, z0, x1, y1, z1]`` RAS mm → the CLI's ``x0,y0,z0,x1,y1,z1``."""
    vals = [float(v) for v in bounds_ras]
    if len(vals) != 6:
        raise ValueError("a box needs six numbers x0,y0,z0,x1,y1,z1")
    return ",".join(f"{v:.3f}" for v in vals)


def box_job(work_dir: Path, bounds_ras, label: str = "auto", device: str = "auto", python: str | None = None,
            progress: bool = True, organs: Path | None = None, weights: str | None = None) -> Job:
    """Command for one organ from a 3D box (RAS mm) on ``work_dir/in/input.nii.gz``.

    ``label='auto'`` lets the engine name the organ (it prints a ``PRIORSAM_LABEL`` line); an organ name
    fixes the label. ``progress`` adds ``--progress`` (PRIORSAM_PROGRESS lines from segment-box; on by
    default). ``organs``: an organ label map of this image from an earlier organ run (``--organs``), which
    answers the box instead of a new whole-volume segmentation. ``weights``: the user's checkpoint, which
    segments the volume for the box and names the organ (as in :func:`organ_job`).
    """
    python = python or python_executable()
    image = Path(work_dir) / "in" / f"{CASE_NAME}.nii.gz"
    out = Path(work_dir) / "out" / f"{CASE_NAME}_box.nii.gz"
    cmd = [python, "-m", "priorsam", "segment-box", "--image", str(image), "--box", format_box(bounds_ras),
           "--space", "ras", "--label", str(label), "--out", str(out), "--device", engine_device(device)]
    if progress:
        cmd.append("--progress")
    if organs is not None:
        cmd += ["--organs", str(organs)]
    return Job(cmd, subprocess_env(weights), image, out.parent, out)


# Printed as one JSON line by the device probe; run in the subprocess Python, never in Slicer's.
PROBE_CODE = (
    "import json\n"
    "info = {'torch': None, 'cuda': False, 'name': None, 'cuda_build': None}\n"
    "try:\n"
    "    import torch\n"
    "    info['torch'] = torch.__version__\n"
    "    info['cuda_build'] = torch.version.cuda\n"
    "    info['cuda'] = bool(torch.cuda.is_available())\n"
    "    if info['cuda']:\n"
    "        info['name'] = torch.cuda.get_device_name(0)\n"
    "except Exception as exc:\n"
    "    info['error'] = type(exc).__name__ + ': ' + str(exc)\n"
    "print('PRIORSAM_DEVICE ' + json.dumps(info), flush=True)\n"
)


def probe_job(python: str | None = None) -> Job:
    """A short subprocess that reports whether torch sees a CUDA GPU (never import torch in Slicer's UI)."""
    return Job([python or python_executable(), "-c", PROBE_CODE])


def parse_probe(line: str) -> dict | None:
    import json

    if not line.startswith("PRIORSAM_DEVICE "):
        return None
    try:
        return json.loads(line[len("PRIORSAM_DEVICE "):])
    except ValueError:
        return None


def describe_probe(info: dict | None) -> str:
    """One line for the UI: what was detected and what 'auto' will use."""
    if not info:
        return "Device: not checked yet"
    if not info.get("torch"):
        return "PyTorch is not installed (install the PyTorch extension); cannot run"
    if info.get("cuda"):
        return f"GPU detected: {info.get('name')} (PyTorch {info['torch']})"
    build = info.get("cuda_build")
    why = "CUDA build but no usable GPU/driver" if build else "CPU-only PyTorch build"
    return f"No CUDA GPU ({why}): will run on the CPU (PyTorch {info['torch']})"
