"""``priorsam bundle export DIR``: write the MONAI bundle the package carries as a standalone folder.

The folder is what ``python -m monai.bundle run --config_file DIR/configs/inference.json`` and
``verify_metadata`` expect (configs, metadata and its schema, the demo weights in ``models/``, docs,
licences). Its configs import ``priorsam`` by dotted path, so the package must be installed in the
Python that runs it; run from inside DIR (model-zoo style) or pass ``--bundle_root DIR``.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from ..errors import AssetError, InputError
from .paths import _is_our_bundle, packaged_bundle

# what a bundle folder must hold to run and be verified (a test checks the export has each)
REQUIRED = ("configs/metadata.json", "configs/inference.json", "configs/schema/meta_schema_priorsam.json",
            "configs/logging.conf", "models/model.pt", "models/model.box_decoder.pt", "docs/README.md",
            "LICENSE")


def export_bundle(dest: str | os.PathLike) -> Path:
    """Copy the packaged bundle to ``dest`` (which must not exist, or be an empty folder)."""
    src = packaged_bundle()
    if not _is_our_bundle(src):
        raise AssetError(f"the priorsam bundle is missing from this installation ({src}); reinstall priorsam")
    missing = [r for r in REQUIRED if not (src / r).is_file()]
    if missing:
        raise AssetError(f"the installed bundle at {src} is incomplete (missing {', '.join(missing)}); reinstall priorsam")
    out = Path(dest).expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InputError(f"{out} exists and is not an empty folder; choose a new folder")
    parent = out.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        # Copy beside the target and rename, so an interrupted export leaves no half bundle under DIR.
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=parent))
    except OSError as exc:
        raise InputError(f"cannot write into {parent}: {exc.strerror or exc}") from exc
    try:
        shutil.copytree(src, tmp / "b", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        if out.exists():
            out.rmdir()
        os.replace(tmp / "b", out)
    except OSError as exc:
        raise InputError(f"could not export the bundle to {out}: {exc.strerror or exc}") from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
