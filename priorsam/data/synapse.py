"""The Synapse multi-organ data in TransUNet's preprocessed format, as our cases.

TransUNet (and SAMed, H-SAM, PG-SAM after it) ship Synapse as ``train_npz/caseXXXX_sliceYYY.npz``
(keys ``image`` 512×512 in [0, 1] = HU clipped to [−125, 275] and scaled; ``label`` 0–8) and
``test_vol_h5/caseXXXX.npy.h5`` (``image``/``label`` (Z, 512, 512)), with split lists
``lists/lists_Synapse/train.txt`` and ``test_vol.txt``. Their label ids follow TransUNet's table
order (aorta, gallbladder, left kidney, right kidney, liver, pancreas, spleen, stomach) and are
remapped here to ours (``transunet_synapse`` in labels.json).

The preprocessed files drop voxel spacing, which our fixed-scale framing needs: the converter
writes NIfTI volumes with ``pixel_mm``/``slice_mm`` you give (BTCV in-plane spacing is 0.54–0.98
mm, slices 2.5–5 mm; defaults 0.76 and 3.0). With the raw BTCV NIfTI files (true spacing) use a
datalist of those instead and ``label_map: synapse_raw``.
"""
from __future__ import annotations

import json
import re
from collections import defaultdict
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..labels import mapping, remap

HU_LOW, HU_HIGH = -125.0, 275.0


def _to_hu(image01: np.ndarray) -> np.ndarray:
    return (np.asarray(image01, dtype=np.float32) * (HU_HIGH - HU_LOW) + HU_LOW).astype(np.float32)


def _save(path: Path, zyx: np.ndarray, pixel_mm: float, slice_mm: float, dtype) -> None:
    """(Z, rows, cols) array → RAS NIfTI, taking rows/cols to be in radiological display order
    (anterior up, patient right on the left) as DICOM-derived slices are; check a montage first."""
    import nibabel as nib

    ras = np.transpose(zyx, (2, 1, 0))[::-1, ::-1, :]  # cols→x (L→R flip), rows→y (P→A flip)
    affine = np.diag([pixel_mm, pixel_mm, slice_mm, 1.0])
    nib.save(nib.Nifti1Image(np.ascontiguousarray(ras).astype(dtype), affine), str(path))


def read_split(root: Path, name: str) -> list[str]:
    for cand in (root / "lists" / "lists_Synapse" / f"{name}.txt", root / "lists_Synapse" / f"{name}.txt",
                 root / f"{name}.txt"):
        if cand.is_file():
            return [line.strip() for line in cand.read_text().splitlines() if line.strip()]
    raise InputError(f"{root}: split list {name}.txt not found (expected lists/lists_Synapse/{name}.txt)")


def prepare(root: str | Path, out_dir: str | Path, pixel_mm: float = 0.76, slice_mm: float = 3.0) -> dict:
    """Convert TransUNet-format Synapse into NIfTI cases; returns {"training": [...], "validation": [...]}."""
    root, out = Path(root), Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    table = mapping("transunet_synapse")
    by_case: dict[str, list[tuple[int, Path]]] = defaultdict(list)
    for name in read_split(root, "train"):
        m = re.match(r"(case\d+)_slice(\d+)", name)
        if not m:
            raise InputError(f"unexpected slice name {name!r} in train.txt")
        by_case[m.group(1)].append((int(m.group(2)), root / "train_npz" / f"{name}.npz"))
    datalist: dict[str, list] = {"training": [], "validation": []}
    for case, items in sorted(by_case.items()):
        items.sort()
        imgs, labs = [], []
        for _, path in items:
            with np.load(path) as npz:
                imgs.append(_to_hu(npz["image"]))
                labs.append(remap(np.asarray(npz["label"]).astype(np.int64), table))
        _save(out / f"{case}_image.nii.gz", np.stack(imgs), pixel_mm, slice_mm, np.float32)
        _save(out / f"{case}_label.nii.gz", np.stack(labs), pixel_mm, slice_mm, np.uint8)
        datalist["training"].append({"case_id": case, "image": str(out / f"{case}_image.nii.gz"),
                                     "label": str(out / f"{case}_label.nii.gz")})
    for case in read_split(root, "test_vol"):
        import h5py

        with h5py.File(root / "test_vol_h5" / f"{case}.npy.h5", "r") as h5:
            img, lab = _to_hu(h5["image"][:]), remap(np.asarray(h5["label"][:]).astype(np.int64), table)
        _save(out / f"{case}_image.nii.gz", img, pixel_mm, slice_mm, np.float32)
        _save(out / f"{case}_label.nii.gz", lab, pixel_mm, slice_mm, np.uint8)
        datalist["validation"].append({"case_id": case, "image": str(out / f"{case}_image.nii.gz"),
                                       "label": str(out / f"{case}_label.nii.gz")})
    (out / "datalist.json").write_text(json.dumps(datalist, indent=1))
    return datalist
