"""The built wheel works outside the checkout: ``priorsam segment --statistics --preview`` and an exported
MONAI bundle, in a fresh venv, from a folder outside the repository, with PYTHONPATH and PRIORSAM_* unset.

What this verifies: ``python -m build`` makes a wheel and an sdist from this checkout; the wheel carries
the demo weights, ``prior_text/``, the label table and the bundle, and priorsam's own files in the fresh
venv come only from that wheel (nothing of the checkout is on any path); its declared requirements
resolve (pip --dry-run against what is visible) and are complete enough to run: the fresh venv sees
only the installed distributions the wheel's Requires-Dist names, transitively, so an import of an
undeclared package fails here.

What it does not verify: downloading and unpacking those third-party packages. They are not
reinstalled (torch alone would copy ~5.5 GB per run); the fresh venv reaches this environment's copies
through a ``.pth`` file pointing at a folder of symlinks to just those distributions. Slow.
"""
from __future__ import annotations

import json
import subprocess
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

import dist_helpers as dh

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    root = tmp_path_factory.mktemp("wheel_install")
    ct, wheel, sdist, python = dh.fresh_start(root, "venv")
    view = dh.make_view(root / "view", dh.requirement_closure(dh.wheel_requirements(wheel)))
    dh.add_view(python, view)
    # the declared requirements are met by what the venv sees (nothing fetched: --no-index)
    dh.pip(python, "install", "--dry-run", "--no-index", "--find-links", str(wheel.parent), "priorsam")
    dh.pip(python, "install", "--no-deps", "--no-index", str(wheel))
    return {"root": root, "python": python, "wheel": wheel, "sdist": sdist, "ct": ct}


def run(installed, args, cwd, timeout=1200):
    proc = subprocess.run(args, cwd=cwd, capture_output=True, text=True, env=dh.clean_env(), timeout=timeout)
    assert proc.returncode == 0, f"{args}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def test_distributions_carry_weights_priors_labels_and_bundle(installed):
    names = zipfile.ZipFile(installed["wheel"]).namelist()
    for must in ("priorsam/_data/bundle/models/model.pt", "priorsam/_data/bundle/configs/inference.json",
                 "priorsam/_data/bundle/configs/metadata.json", "priorsam/_data/prior_text/v1/manifest.json",
                 "priorsam/_data/prior_text/v1/embeddings.safetensors", "priorsam/resources/labels.json"):
        assert must in names, must
    # every file of the checkout's bundle/models travels (new checkpoints included)
    models = sorted(p.name for p in (dh.REPO / "bundle" / "models").iterdir() if p.is_file())
    assert models == sorted(Path(n).name for n in names if n.startswith("priorsam/_data/bundle/models/"))
    import tarfile

    with tarfile.open(installed["sdist"]) as tar:
        members = tar.getnames()
    assert any(m.endswith("/bundle/models/model.pt") for m in members)
    assert any(m.endswith("/bundle/models/model.box_decoder.pt") for m in members)
    assert any(m.endswith("/prior_text/v1/embeddings.safetensors") for m in members)


def test_priorsam_comes_from_the_wheel(installed):
    code = ("import priorsam, json; from priorsam.engine.weights import default_weights_path; "
            "from priorsam.priors.bank import prior_text_root; from priorsam.bundle_support.paths import bundle_root; "
            "print(json.dumps([priorsam.__file__, str(default_weights_path()), str(prior_text_root()), bundle_root()]))")
    out = run(installed, [str(installed["python"]), "-c", code], cwd=installed["root"])
    site = str(dh.site_packages(installed["python"]))
    for path in json.loads(out.stdout):
        assert path.startswith(site), path
        assert str(dh.REPO) not in path


def test_segment_with_statistics_and_preview(installed):
    work = installed["root"] / "cli"
    work.mkdir()
    priorsam = installed["python"].parent / "priorsam"
    assert run(installed, [str(priorsam), "--version"], work).stdout.startswith("priorsam ")
    run(installed, [str(priorsam), "segment", "--image", str(installed["ct"]), "--out", "seg.nii.gz",
                    "--statistics", "s.json", "--preview", "p.png", "--device", "cpu"], work)
    seg = nib.load(str(work / "seg.nii.gz"))
    src = nib.load(str(installed["ct"]))
    assert seg.shape == src.shape and np.array_equal(seg.affine, src.affine)
    stats = json.loads((work / "s.json").read_text())
    assert stats["model"]["weights"].startswith(str(dh.site_packages(installed["python"])))
    # the shipped demo weights were trained on this scan: the liver must be found
    assert stats["organs"]["liver"]["present"] and stats["organs"]["liver"]["volume_ml"] > 10
    from PIL import Image

    assert Image.open(work / "p.png").format == "PNG"


def test_exported_bundle_runs_and_verifies(installed):
    work = installed["root"] / "bundle_run"
    work.mkdir()
    python = str(installed["python"])
    run(installed, [str(installed["python"].parent / "priorsam"), "bundle", "export", str(work / "b")], work)
    bundle = work / "b"
    (work / "in").mkdir()
    (work / "in" / "ct4.nii.gz").write_bytes(installed["ct"].read_bytes())
    run(installed, [python, "-m", "monai.bundle", "verify_metadata", "--meta_file", "configs/metadata.json",
                    "--filepath", "configs/schema/meta_schema_priorsam.json"], bundle)
    run(installed, [python, "-m", "monai.bundle", "run", "--config_file", "configs/inference.json",
                    "--dataset_dir", str(work / "in"), "--output_dir", str(work / "out"), "--device", "auto",
                    "--progress", "False"], bundle)
    out = nib.load(str(work / "out" / "ct4_seg.nii.gz"))
    assert np.array_equal(out.affine, nib.load(str(installed["ct"])).affine)
    # the same engine as the command line: the same labels
    cli = installed["root"] / "cli" / "seg.nii.gz"
    if cli.is_file():
        assert np.array_equal(np.asarray(out.dataobj), np.asarray(nib.load(str(cli)).dataobj))
