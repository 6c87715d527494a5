"""MONAI dictionary transforms over the library's I/O, so the bundle reads and writes CT exactly as
``priorsam segment`` does: the same readers (NIfTI, NRRD, DICOM series), the same input checks,
refusals and warnings, the same canonical RAS grid, and label maps written back on the input's own
grid, atomically.

:class:`LoadVolumed` turns a path into a (1, X, Y, Z) MetaTensor in canonical RAS whose meta data
carry how the file stored it (``SOURCE_KEY``: format, stored shape, affine and orientation, the NIfTI
header), in plain values that MONAI's collation and decollation keep. :func:`volume_of` rebuilds the
library's :class:`~priorsam.io.Volume` from such a tensor, and :class:`SaveLabelMapd` writes a label map
through :func:`priorsam.io.write_label_map`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Hashable, Mapping

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import MapTransform

from ..errors import InputError
from ..io import Volume, read_label_map, read_volume, write_label_map
from ..io.volume import Source
from .paths import case_name

SOURCE_KEY = "priorsam_source"
WARNINGS_KEY = "priorsam_warnings"


def to_numpy(value) -> np.ndarray:
    """A tensor (any device) or array-like as a numpy array."""
    return np.asarray(value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else value)


def source_meta(source: Source) -> dict:
    """A :class:`Source` as collatable values (numbers, arrays, strings, bytes)."""
    return {"path": source.path, "format": source.format, "shape": np.asarray(source.shape, dtype=np.int64),
            "affine": np.asarray(source.affine, dtype=np.float64),
            "to_canonical": np.asarray(source.to_canonical, dtype=np.float64),
            "header": bytes(source.header.binaryblock) if source.header is not None else b"",
            "series_uid": source.series_uid or "", "fingerprint": source.fingerprint or ""}


def source_from_meta(meta: Mapping) -> Source:
    """Inverse of :func:`source_meta` (after a collate/decollate round trip too)."""
    header = None
    block = meta.get("header") or b""
    if block:
        import nibabel as nib

        header = (nib.Nifti2Header if len(block) == nib.Nifti2Header.sizeof_hdr else nib.Nifti1Header)(
            binaryblock=bytes(block))
    return Source(path=str(meta["path"]), format=str(meta["format"]),
                  shape=tuple(int(v) for v in to_numpy(meta["shape"]).reshape(-1)),
                  affine=to_numpy(meta["affine"]).astype(np.float64).reshape(4, 4),
                  to_canonical=to_numpy(meta["to_canonical"]).astype(np.float64).reshape(3, 2),
                  header=header, series_uid=str(meta.get("series_uid") or "") or None,
                  fingerprint=str(meta.get("fingerprint") or "") or None)


def as_metatensor(volume: Volume) -> MetaTensor:
    """A library :class:`Volume` → (1, X, Y, Z) float32 MetaTensor carrying its affine and source."""
    return MetaTensor(torch.from_numpy(np.ascontiguousarray(volume.array, dtype=np.float32))[None],
                      affine=torch.as_tensor(volume.affine, dtype=torch.float64),
                      meta={"filename_or_obj": volume.source.path, SOURCE_KEY: source_meta(volume.source),
                            WARNINGS_KEY: "\n".join(volume.warnings)})


def volume_of(image: MetaTensor, array: np.ndarray | None = None) -> Volume:
    """The :class:`Volume` a :class:`LoadVolumed` tensor came from (``array``: another array on its grid)."""
    meta = getattr(image, "meta", None) or {}
    if SOURCE_KEY not in meta:
        raise InputError("the image must be read by priorsam.bundle_support.io_transforms.LoadVolumed "
                         "(it carries the file's geometry)")
    if array is None:
        if image.ndim != 4 or image.shape[0] != 1:
            raise InputError(f"expected a single-channel 3D image (1,X,Y,Z), got {tuple(image.shape)}")
        array = image[0].detach().cpu().numpy().astype(np.float32, copy=False)
    warnings = [w for w in str(meta.get(WARNINGS_KEY) or "").split("\n") if w]
    return Volume(array, to_numpy(image.affine).astype(np.float64).reshape(4, 4), source_from_meta(meta[SOURCE_KEY]),
                  warnings)


class LoadVolumed(MapTransform):
    """Read ``data[key]`` (a NIfTI/NRRD file or a DICOM series folder) with :func:`priorsam.io.read_volume`.

    Args:
        keys: image keys (CT: the input checks apply, warnings are printed as ``warning:`` lines).
        label_keys: label-map keys, read with :func:`priorsam.io.read_label_map` (no CT checks).
        force: segment an image that does not look like CT in Hounsfield units (with a warning).
    """

    def __init__(self, keys="image", label_keys=(), force: bool = False, allow_missing_keys: bool = False):
        label_keys = [label_keys] if isinstance(label_keys, str) else list(label_keys or [])
        keys = [keys] if isinstance(keys, str) else list(keys)
        super().__init__(keys + label_keys, allow_missing_keys)
        self.label_keys = set(label_keys)
        # A command-line override may arrive as text; "false" must not count as true.
        self.force = force.strip().lower() in ("1", "true", "yes") if isinstance(force, str) else bool(force)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict:
        from ..io.checks import show_warnings

        d = dict(data)
        for key in self.key_iterator(d):
            path = str(d[key])
            if key in self.label_keys:
                d[key] = as_metatensor(read_label_map(path))
                continue
            volume = read_volume(path, force=self.force)
            show_warnings(volume.warnings, prefix=f"{path}: ")
            d[key] = as_metatensor(volume)
        return d


class SaveLabelMapd(MapTransform):
    """Write ``data[key]`` (a (1, X, Y, Z) label MetaTensor on a :class:`LoadVolumed` grid) with
    :func:`priorsam.io.write_label_map`: ``output_dir/<case>_<postfix><ext>`` on the input's own grid."""

    def __init__(self, keys="pred", output_dir: str = ".", output_postfix: str = "seg",
                 output_ext: str = ".nii.gz", allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.output_dir = Path(output_dir)
        self.output_postfix, self.output_ext = output_postfix, output_ext

    def output_path(self, image_path: str) -> Path:
        return self.output_dir / f"{case_name(image_path)}_{self.output_postfix}{self.output_ext}"

    def __call__(self, data: Mapping[Hashable, Any]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            labels = to_numpy(d[key])[0].astype(np.uint8)
            volume = volume_of(d[key], labels)
            self.output_dir.mkdir(parents=True, exist_ok=True)
            write_label_map(volume, labels, self.output_path(volume.source.path))
        return d
