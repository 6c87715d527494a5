"""A fresh 3D Slicer, simulated: the module's first-use install against a freshly built local wheel, then
the exact command lines of both buttons on a 4-slice CT, with the results imported into a real MRML scene.

The simulated Slicer Python is a new venv holding only:

* the Python packages Slicer's own build installs (``SLICER_PACKAGES``: the pins of
  ``SuperBuild/External_python-*.cmake`` in the Slicer repository, main branch as of commit
  583e9b37d50e, August 2026; VTK, ITK/SimpleITK's C++ parts and Qt are built, not pip packages —
  VTK here comes as slicer-core's pinned ``vtk`` wheel);
* ``slicer-core`` (PyPI), for the real MRML scene, volume and segmentation nodes;
* torch and torchvision, standing in for the SlicerPyTorch extension: not reinstalled (≈5.5 GB), but
  made visible through a ``.pth`` file pointing at a folder of symlinks to exactly those distributions
  and what they require, from this test environment (see ``dist_helpers``).

Then ``SegmentationLogic.ensure_dependencies`` (the module's install routine; the user's consent is
given) installs ``priorsam`` from the wheel folder and every other requirement from the package index,
with all of the above pinned by the constraints file. Outside the Slicer application it runs
``python -m pip install`` itself — inside Slicer the same arguments go to Slicer's installer, which
cannot run here. Differences from a real Slicer: Python 3.11 here (Slicer ≥ 5.10 embeds 3.12; the
torch view must match this environment's Python), no Qt GUI, no ``slicer.app``.

Slow: it builds the wheel, creates the venv (≈2 min with a warm pip cache), installs (measured and
printed as the first-use install time) and runs the model twice on CPU.
"""
from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

import dist_helpers as dh

pytestmark = pytest.mark.slow

MODULE_DIR = dh.REPO / "slicer_extension" / "PriorSAM"

# Slicer's SuperBuild/External_python-*.cmake pins (commit 583e9b37d50e): numpy, scipy, SimpleITK,
# DICOM, requests, pythonqt, extension-manager (+ssl) requirements, pip, setuptools, wheel.
SLICER_PACKAGES = """
numpy==2.4.6 scipy==1.17.1 simpleitk==2.5.5
dcmqi==0.4.0 dicomweb-client==0.61.0 highdicom==0.27.0 pillow==12.2.0 pydicom==3.0.2 pyjpegls==1.5.1
retrying==1.4.2 six==1.17.0 typing_extensions==4.15.0
GitPython==3.1.50 chardet==7.4.3 couchdb==1.2 gitdb==4.0.12 smmap==5.0.3
Deprecated==1.3.1 PyGithub==2.9.1 PyJWT==2.13.0 PyNaCl==1.6.2 cffi==2.0.0 cryptography==48.0.0 pycparser==3.0
python-dateutil==2.9.0.post0 wrapt==2.2.1
packaging==26.2 pyparsing==3.3.2
certifi==2026.5.20 charset-normalizer==3.4.7 idna==3.16 requests==2.34.2 urllib3==2.7.0
pip==26.1.1 setuptools==82.0.1 wheel==0.47.0
""".split()


def _installed(python: Path) -> dict[str, str]:
    code = ("import importlib.metadata as md, json; "
            "print(json.dumps({d.metadata['Name'].lower(): d.version for d in md.distributions()}))")
    out = subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=True, env=dh.clean_env(),
                         cwd=dh.OUTSIDE)
    return json.loads(out.stdout)


@pytest.fixture(scope="module")
def simulated_slicer(tmp_path_factory):
    root = tmp_path_factory.mktemp("fresh_slicer")
    ct, wheel, _, python = dh.fresh_start(root, "slicer_python")
    pins = root / "slicer_pins.txt"
    pins.write_text("\n".join(SLICER_PACKAGES) + "\n")
    dh.pip(python, "install", "-q", "-c", str(pins), *SLICER_PACKAGES, "slicer-core")
    before_torch = _installed(python)
    assert "priorsam" not in before_torch and "monai" not in before_torch
    # SlicerPyTorch stand-in: this environment's torch and torchvision (and what they need that Slicer lacks)
    exclude = {dh.normalize(n) for n in before_torch}
    view = dh.make_view(root / "pytorch_extension", dh.requirement_closure(["torch", "torchvision"], exclude))
    dh.add_view(python, view)
    return {"root": root, "python": python, "wheel": wheel, "ct": ct, "before": _installed(python)}


def _liver_box(ct: Path, root: Path) -> Path:
    """A box (RAS mm) around the sample's reference liver in the crop's slices."""
    from priorsam.data.samples import sample_ct

    ref = nib.load(str(sample_ct().label)).slicer[:, :, 87:91]
    ijk = np.argwhere(np.asarray(ref.dataobj) == 5)
    ras = nib.affines.apply_affine(ref.affine, np.vstack([ijk.min(0), ijk.max(0)]))
    lo, hi = ras.min(0) - 3, ras.max(0) + 3
    path = root / "box.json"
    path.write_text(json.dumps([lo.tolist(), hi.tolist()]))
    return path


def test_first_use_install_then_both_buttons(simulated_slicer, capsys):
    s = simulated_slicer
    python, root = s["python"], s["root"]
    out = root / "report.json"
    t0 = time.monotonic()
    proc = subprocess.run([str(python), str(Path(__file__).with_name("slicer_fresh_driver.py")), str(MODULE_DIR),
                           str(s["wheel"].parent), str(s["ct"]), str(_liver_box(s["ct"], root)), str(out)],
                          cwd=root, capture_output=True, text=True, env=dh.clean_env(), timeout=3600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    report = json.loads(out.read_text())
    after = _installed(python)

    # the install: asked once, put priorsam (from the wheel) and its dependencies in, changed nothing of Slicer's
    assert report["consent_asked"] == 1 and report["second_check_missing"] == []
    assert any(r.startswith("priorsam") for r in report["installed"])
    for must in ("monai", "pytorch-ignite", "opencv-python-headless", "openvino", "onnxruntime", "itk"):
        assert must in after, must
    changed = {n: (v, after.get(n)) for n, v in s["before"].items() if after.get(n) != v}
    assert changed == {}, f"the install changed packages Slicer (or the PyTorch extension) had: {changed}"
    site = str(dh.site_packages(python))
    assert report["priorsam_file"].startswith(site) and str(dh.REPO) not in report["priorsam_file"]
    assert report["bundle_config"].startswith(site)

    # "Segment organs": the MONAI bundle of the installed package, --device auto, 8 named segments
    organs = report["organs"]
    assert organs["state"] == "succeeded", organs
    cmd = organs["command"]
    assert cmd[1:4] == ["-m", "monai.bundle", "run"] and cmd[cmd.index("--config_file") + 1].startswith(site)
    assert cmd[cmd.index("--device") + 1] == "auto"
    assert len(organs["segments"]) == 8
    assert organs["voxels"]["liver"] > 0           # the shipped demo weights were trained on this scan
    # "Segment from box": segment-box with --label auto, one segment named by the model
    box = report["box"]
    assert box["state"] == "succeeded", box
    assert box["command"][1:4] == ["-m", "priorsam", "segment-box"] and "--progress" in box["command"]
    assert box["command"][box["command"].index("--label") + 1] == "auto"
    assert "--organs" in box["command"]      # answered from the organ run just before, not a second one
    assert box["voxels"] > 0 and box["segment"]
    assert report["segmentation_nodes"] == 2

    installed_names = sorted(set(after) - set(s["before"]))
    with capsys.disabled():
        print(f"\n[first-use install] {report['install_seconds']} s for {len(installed_names)} packages: "
              f"{', '.join(installed_names)}\n[organs] {organs['seconds']} s, [box] {box['seconds']} s "
              f"(box named: {box['segment']}); whole test step {time.monotonic() - t0:.0f} s")
    (root / "installed_packages.txt").write_text("\n".join(f"{n}=={after[n]}" for n in installed_names) + "\n")
