"""First-use dependency check and consented installation that never replaces Slicer's packages.

Pure functions (no ``slicer`` import): :func:`unmet_requirements` checks installed versions with
``importlib.metadata``; :func:`constraints_lines` pins every distribution already installed to its
current version, which pip receives as a constraints file, so an install can add packages but never
upgrade or downgrade numpy, vtk, SimpleITK, torch or anything else Slicer ships. :func:`ensure`
drives Slicer's installer (``slicer.packaging.pip_ensure`` in Slicer ≥ 5.12, else
``slicer.util.pip_install`` after a confirmation dialog); it receives the ``slicer`` module. Outside
the Slicer application (slicer-core in a plain Python, as the tests run it) there is no installer of
Slicer's, so it runs the same ``python -m pip install`` command itself, in the Python that runs the jobs.

``requirements.txt`` names ``priorsam`` itself (its wheel carries the bundle, the demo weights and the
text priors) and every package it imports at run time except torch/torchvision, which the PyTorch
extension provides. The priorsam wheel comes from PyPI, or from a folder of wheels given as
``find_links`` (default: ``Resources/wheels`` beside the module when it exists).
"""
from __future__ import annotations

import importlib
import importlib.metadata as md
import re
import subprocess
import tempfile
from pathlib import Path
from typing import Callable, Iterable

VersionOf = Callable[[str], "str | None"]
REQUESTER = "PriorSAM"


class DependencyError(RuntimeError):
    """Dependencies are missing and were not (or could not be) installed."""


def installed_version(name: str) -> str | None:
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return None


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def load_requirements(path: str | Path) -> list[str]:
    """Requirement strings of a requirements.txt (comments and blank lines dropped)."""
    out = []
    for raw in Path(path).read_text(encoding="utf-8").splitlines():
        line = raw.split("#", 1)[0].strip()
        if line:
            out.append(line)
    return out


def _split(req: str) -> tuple[str, str]:
    """(distribution name, version specifier) of a simple requirement string."""
    m = re.match(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(\[[^\]]*\])?\s*(.*)$", req)
    if not m:
        raise ValueError(f"unreadable requirement {req!r}")
    return m.group(1), m.group(3).split(";", 1)[0].strip()


def satisfied(req: str, version_of: VersionOf = installed_version) -> bool:
    name, spec = _split(req)
    have = version_of(name)
    if have is None:
        return False
    if not spec:
        return True
    try:
        from packaging.specifiers import SpecifierSet
        from packaging.version import Version
    except ImportError:                       # no 'packaging': presence is all we can check
        return True
    return Version(have) in SpecifierSet(spec, prereleases=True)


def unmet_requirements(requirements: Iterable[str], version_of: VersionOf = installed_version) -> list[str]:
    return [r for r in requirements if not satisfied(r, version_of)]


def installed_distributions() -> dict[str, str]:
    """Normalized name → version of every distribution importable in this Python."""
    out: dict[str, str] = {}
    for dist in md.distributions():
        name = dist.metadata.get("Name") if dist.metadata else None
        if name and dist.version:
            out.setdefault(normalize(name), dist.version)
    return out


def constraints_lines(installed: dict[str, str], requirements: Iterable[str] = ()) -> list[str]:
    """``name==version`` for every installed distribution (sorted), so pip leaves them as they are.

    A requirement that asks for a different version of something installed then fails with a pip
    conflict instead of silently replacing Slicer's copy — :func:`ensure` reports it.
    """
    del requirements  # every installed package is protected, whether or not we also require it
    return [f"{n}=={v}" for n, v in sorted(installed.items())]


def write_constraints(lines: list[str], directory: str | Path | None = None) -> Path:
    fd = tempfile.NamedTemporaryFile("w", suffix="-constraints.txt", prefix="PriorSAM-", dir=directory,
                                     delete=False, encoding="utf-8")
    with fd:
        fd.write("\n".join(lines) + "\n")
    return Path(fd.name)


def torch_available(version_of: VersionOf = installed_version) -> bool:
    return version_of("torch") is not None


def consent_text(missing: list[str]) -> str:
    return ("PriorSAM needs these Python packages in Slicer's Python:\n  " + "\n  ".join(missing) +
            "\n\nThey will be downloaded from PyPI (a few hundred MB). Packages Slicer already has are kept "
            "at their current versions. Install now?")


def _packaging_module(slicer):
    try:
        return importlib.import_module("slicer.packaging")
    except ImportError:
        return getattr(slicer, "packaging", None)


def default_wheel_folder() -> Path | None:
    """``Resources/wheels`` beside the module, when the extension ships wheels there."""
    folder = Path(__file__).resolve().parents[1] / "Resources" / "wheels"
    return folder if folder.is_dir() and any(folder.glob("*.whl")) else None


def pip_args(missing: list[str], constraints: Path, find_links: list[str | Path] = ()) -> list[str]:
    """Arguments after ``pip install``: constraints first, the wheel folders, then the requirements."""
    args = ["-c", str(constraints)]
    for folder in find_links:
        args += ["--find-links", str(folder)]
    return args + list(missing)


def run_pip(args: list[str], python: str | None = None) -> None:
    """``python -m pip install ARGS`` in the Python that runs PriorSAM's jobs (what Slicer's own
    ``pip_install`` does inside the application); pip's last lines become the error on failure."""
    from .commands import python_executable

    proc = subprocess.run([python or python_executable(), "-m", "pip", "install", "--disable-pip-version-check",
                           *args], capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr.strip() or proc.stdout.strip()).splitlines()[-3:]
        raise RuntimeError("pip failed: " + " / ".join(tail))


def ensure(slicer, requirements_file: str | Path, confirm: Callable[[str], bool] | None = None,
           version_of: VersionOf = installed_version, find_links: list[str | Path] | None = None,
           python: str | None = None) -> list[str]:
    """Install what is missing (after consent); returns the requirements that were missing.

    ``find_links``: folders of wheels to install from besides the package index (default: the
    module's ``Resources/wheels`` if present). ``python``: the interpreter to install into when
    this runs outside the Slicer application (default: the one that runs the jobs).

    Raises :class:`DependencyError` when the user declines, PyTorch is absent, or pip could not
    satisfy a requirement without touching installed packages.
    """
    if not torch_available(version_of):
        raise DependencyError("PyTorch is not installed in Slicer: install the 'PyTorch' extension from the "
                              "Extensions Manager (it picks the right CUDA/CPU build), restart Slicer, try again")
    missing = unmet_requirements(load_requirements(requirements_file), version_of)
    if not missing:
        return []
    if find_links is None:
        folder = default_wheel_folder()
        find_links = [folder] if folder else []
    constraints = write_constraints(constraints_lines(installed_distributions(), missing))
    try:
        packaging = _packaging_module(slicer)
        in_app = hasattr(slicer, "app")
        # pip_ensure has no parameter for pip options such as --find-links; pip_install passes a list of
        # arguments straight to `pip install`, so a local wheel folder goes through pip_install.
        if in_app and not find_links and packaging is not None and hasattr(packaging, "pip_ensure"):
            # Slicer ≥ 5.12: its own dialog asks for consent, shows progress and offers a restart.
            packaging.pip_ensure(missing, requester=REQUESTER, constraints=str(constraints))
        else:
            ask = confirm or (lambda text: slicer.util.confirmOkCancelDisplay(text, windowTitle="PriorSAM"))
            if not ask(consent_text(missing)):
                raise DependencyError("installation declined: PriorSAM cannot run without " + ", ".join(missing))
            if in_app:
                slicer.util.pip_install(pip_args(missing, constraints, find_links))
            else:
                run_pip(pip_args(missing, constraints, find_links), python)
    except DependencyError:
        raise
    except Exception as exc:
        raise DependencyError(f"could not install {', '.join(missing)} without changing Slicer's own packages "
                              f"({type(exc).__name__}: {exc})") from exc
    finally:
        constraints.unlink(missing_ok=True)
    importlib.invalidate_caches()
    still = unmet_requirements(missing, version_of)
    if still:
        raise DependencyError("still missing after installation: " + ", ".join(still))
    return missing
