"""Helpers of the install tests (no test functions here): build the distributions, make fresh venvs
outside the checkout, and expose chosen third-party packages of this test environment to them.

Installing torch into every fresh venv would copy about 5.5 GB and take minutes on CI's 2 cores, so
a fresh venv sees the heavy third-party packages through a ``.pth`` file pointing at a *view*: a
folder of symlinks to exactly the distributions asked for (and what they require), taken from this
interpreter's site-packages. priorsam's own files are never in a view (checked), so they can only
come from what pip installed into the fresh venv.
"""
from __future__ import annotations

import importlib.metadata as md
import os
import re
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[1]
# working directory of helper subprocesses: `python -c` puts it first on sys.path, and the checkout's
# priorsam (or its egg-info) must never be found that way
OUTSIDE = tempfile.gettempdir()


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without PYTHONPATH, PRIORSAM_* and the virtualenv markers, plus ``extra``."""
    env = {k: v for k, v in os.environ.items()
           if k != "PYTHONPATH" and not k.startswith("PRIORSAM_") and k not in ("VIRTUAL_ENV", "PYTHONHOME")}
    env.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONUNBUFFERED": "1", **extra})
    return env


def build_distributions(out_dir: Path) -> tuple[Path, Path]:
    """``python -m build`` of this checkout into ``out_dir`` (outside the repo): (wheel, sdist)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run([sys.executable, "-m", "build", "--outdir", str(out_dir), str(REPO)],
                          capture_output=True, text=True, env=clean_env())
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    wheels, sdists = sorted(out_dir.glob("priorsam-*.whl")), sorted(out_dir.glob("priorsam-*.tar.gz"))
    assert len(wheels) == 1 and len(sdists) == 1, list(out_dir.iterdir())
    return wheels[0], sdists[0]


def make_venv(path: Path, with_pip: bool = False) -> Path:
    """A fresh venv from the base interpreter this test environment was made from; returns its python."""
    base = getattr(sys, "_base_executable", sys.executable)
    args = [base, "-m", "venv", str(path)] + ([] if with_pip else ["--without-pip"])
    subprocess.run(args, check=True, capture_output=True, env=clean_env())
    return path / "bin" / "python"


def site_packages(python: Path) -> Path:
    out = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                         check=True, capture_output=True, text=True, env=clean_env(), cwd=OUTSIDE)
    return Path(out.stdout.strip())


def pip(python: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """This environment's pip acting on the venv of ``python`` (so a venv needs no pip of its own)."""
    proc = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), *args], capture_output=True,
                          text=True, env=clean_env(), cwd=OUTSIDE)
    if check:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def requirement_closure(requirements: list[str], exclude: set[str] = frozenset()) -> list[md.Distribution]:
    """The installed distributions that ``requirements`` need, transitively (extras and markers honoured),
    minus the names in ``exclude`` and their own requirements."""
    seen: dict[str, md.Distribution] = {}
    todo = [Requirement(r) for r in requirements]
    while todo:
        req = todo.pop()
        name = normalize(req.name)
        if name in seen or name in exclude:
            continue
        try:
            dist = md.distribution(req.name)
        except md.PackageNotFoundError:
            raise AssertionError(f"{req.name} (needed by the wheel) is not installed in the test environment")
        seen[name] = dist
        for raw in dist.requires or []:
            sub = Requirement(raw)
            extras = set(req.extras) | {""}
            if sub.marker is None or any(sub.marker.evaluate({"extra": e}) for e in extras):
                todo.append(sub)
    return list(seen.values())


def top_level_entries(dist: md.Distribution) -> set[str]:
    """First path components of a distribution's files inside site-packages (packages, modules, .libs, dist-info)."""
    out = set()
    for f in dist.files or []:
        parts = Path(str(f)).parts
        if parts and parts[0] != ".." and not parts[0].endswith(".pth"):
            out.add(parts[0])
    return out


def make_view(view: Path, dists: list[md.Distribution]) -> Path:
    """A folder of symlinks to ``dists``' files in this interpreter's site-packages (never priorsam's)."""
    site = Path(sysconfig.get_paths()["purelib"])
    view.mkdir(parents=True, exist_ok=True)
    for dist in dists:
        assert normalize(dist.metadata["Name"]) != "priorsam"
        for entry in top_level_entries(dist):
            target = site / entry
            link = view / entry
            if target.exists() and not link.exists():
                link.symlink_to(target)
    assert not any(p.name.startswith(("priorsam", "__editable__")) for p in view.iterdir())
    return view


def add_view(python: Path, view: Path) -> None:
    """Make ``view`` importable in the venv of ``python`` after checking it cannot supply priorsam."""
    probe = ("import importlib.util, sys; sys.path[:] = [sys.argv[1]] + [p for p in sys.path if 'site-packages' "
             "not in p]; print(importlib.util.find_spec('priorsam'))")
    out = subprocess.run([str(python), "-I", "-c", probe, str(view)], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "None", f"priorsam importable from {view}: {out.stdout}"
    (site_packages(python) / "zz_test_view.pth").write_text(str(view) + "\n")


def wheel_requirements(wheel: Path) -> list[str]:
    """The wheel's Requires-Dist without extras-only entries."""
    import zipfile

    with zipfile.ZipFile(wheel) as zf:
        meta = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        text = zf.read(meta).decode()
    reqs = [line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("Requires-Dist:")]
    return [r for r in reqs if "extra ==" not in r]


def sample_ct_crop(dest: Path, slices: int = 4, z0: int = 87) -> Path:
    """``slices`` axial slices of the sample CT (from z0; all 8 reference organs appear there) as NIfTI."""
    import nibabel as nib

    from priorsam.data.samples import sample_ct

    s = sample_ct()
    dest.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.load(str(s.image)).slicer[:, :, z0:z0 + slices], str(dest))
    return dest


def fresh_start(root: Path, venv_name: str):
    """What both install tests start from: the 4-slice CT crop, a freshly built wheel and sdist (in
    ``root/dist``) and a new, empty venv; skips when the sample CT cannot be had offline."""
    import pytest

    from priorsam.errors import AssetError

    try:
        ct = sample_ct_crop(root / "data" / "ct4.nii.gz")
    except AssetError as exc:
        pytest.skip(f"sample CT unavailable: {exc}")
    wheel, sdist = build_distributions(root / "dist")
    return ct, wheel, sdist, make_venv(root / venv_name)
