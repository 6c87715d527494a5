"""The sample CT: ``example_ct`` from the totalsegmentator 2.18.0 source distribution on PyPI.

The archive is fetched once with pip into the user cache, its sha256 is checked, and the
files we need are extracted next to it. Its labels are TotalSegmentator's output, not
manual ground truth; they are remapped to our label convention here.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..assets import cache_dir, sha256_file
from ..errors import AssetError

SDIST_NAME = "totalsegmentator-2.18.0.tar.gz"
SDIST_SHA256 = "5d4223ef93973bc36d710869d11e7742ead2c154c72f7f9edcaaadd5b6c4bd03"
_MEMBER_ROOT = "totalsegmentator-2.18.0/tests/reference_files/"
_FILES = ("example_ct.nii.gz", "example_seg_fast_force_split.nii.gz")
_DICOM_DIR = "example_ct_dicom"


@dataclass(frozen=True)
class SampleCT:
    image: Path          # example_ct.nii.gz (HU)
    label: Path          # labels in our convention (0..8)
    raw_label: Path      # TotalSegmentator "total" ids
    dicom_dir: Path      # a DICOM series shipped beside it (reader tests only, never for training)


def _sample_dir() -> Path:
    return cache_dir("samples", "totalsegmentator-2.18.0")


def _download(dest: Path) -> Path:
    """pip-download the sdist into ``dest``; a clear error when no registry and no cache."""
    with tempfile.TemporaryDirectory(dir=dest) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
               "--disable-pip-version-check", "-q", "-d", tmp, "totalsegmentator==2.18.0"]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        got = Path(tmp) / SDIST_NAME
        if proc.returncode != 0 or not got.is_file():
            last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise AssetError("sample CT unavailable: no cached copy and pip could not fetch "
                             f"totalsegmentator==2.18.0 from the package registry ({last})")
        if sha256_file(got) != SDIST_SHA256:
            raise AssetError("sample CT archive altered: sha256 of totalsegmentator-2.18.0.tar.gz does not match")
        final = dest / SDIST_NAME
        os.replace(got, final)
    return final


def _extract(archive: Path, dest: Path) -> None:
    with tarfile.open(archive, "r:gz") as tar:
        for name in _FILES:
            member = tar.getmember(_MEMBER_ROOT + name)
            _atomic_write(dest / name, tar.extractfile(member).read())
        dicom_members = [m for m in tar.getmembers()
                         if m.isfile() and m.name.startswith(_MEMBER_ROOT + _DICOM_DIR + "/")]
        tmp_dir = Path(tempfile.mkdtemp(dir=dest))
        for m in dicom_members:
            (tmp_dir / Path(m.name).name).write_bytes(tar.extractfile(m).read())
        shutil.rmtree(dest / _DICOM_DIR, ignore_errors=True)
        os.replace(tmp_dir, dest / _DICOM_DIR)


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".part")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def sample_ct() -> SampleCT:
    """Return the sample CT paths, fetching and extracting on first use (later calls use the cache)."""
    dest = _sample_dir()
    ours = dest / "example_seg_priorsam.nii.gz"
    if not all((dest / f).is_file() for f in _FILES) or not ours.is_file() or not (dest / _DICOM_DIR).is_dir():
        archive = dest / SDIST_NAME
        if not archive.is_file() or sha256_file(archive) != SDIST_SHA256:
            archive = _download(dest)
        _extract(archive, dest)
        _write_our_labels(dest / _FILES[1], ours)
    return SampleCT(dest / _FILES[0], ours, dest / _FILES[1], dest / _DICOM_DIR)


def _write_our_labels(raw_path: Path, out_path: Path) -> None:
    import nibabel as nib
    import numpy as np

    from ..labels import mapping, remap

    raw = nib.load(str(raw_path))
    lab = remap(np.asarray(raw.dataobj), mapping("totalsegmentator"))
    img = nib.Nifti1Image(lab.astype(np.uint8), raw.affine, raw.header)
    img.set_data_dtype(np.uint8)
    tmp = out_path.with_name(out_path.name + ".part.nii.gz")
    nib.save(img, str(tmp))
    os.replace(tmp, out_path)


def totalsegmentator_class_names(task: str = "total") -> dict[int, str]:
    """id → structure name of the sample's full label map, read from the same archive
    (``totalsegmentator/map_to_binary.py``) so the names cannot drift from the ids."""
    import ast

    sample_ct()
    archive = _sample_dir() / SDIST_NAME
    with tarfile.open(archive, "r:gz") as tar:
        source = tar.extractfile("totalsegmentator-2.18.0/totalsegmentator/map_to_binary.py").read().decode()
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "class_map" for t in node.targets):
            for k, v in zip(node.value.keys, node.value.values):
                if isinstance(k, ast.Constant) and k.value == task:
                    return {int(i): str(n) for i, n in ast.literal_eval(v).items()}
    raise AssetError(f"class map {task!r} not found in {archive.name}")
