"""Shared helpers of the Slicer-module tests: PriorSAMLib on sys.path, optional slicer-core/PySide6."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

MODULE_DIR = Path(__file__).resolve().parents[1] / "slicer_extension" / "PriorSAM"
if str(MODULE_DIR) not in sys.path:
    sys.path.insert(0, str(MODULE_DIR))


def require_slicer_core():
    """The ``slicer`` module of slicer-core (not the unrelated PyPI package named 'slicer')."""
    if importlib.util.find_spec("slicer_core") is None:
        pytest.skip("slicer-core is not installed (pip install -e .[slicer])")
    import slicer

    if not hasattr(slicer, "vtkMRMLScene"):
        pytest.fail(f"'import slicer' resolves to {slicer.__file__}, not slicer-core's MRML module")
    return slicer
