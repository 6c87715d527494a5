"""Benchmark inputs: real sample-CT slices in model space, and the sample CT resampled to a 512×512×~150 grid.

The large volume is the sample CT itself (3 mm) resampled to 512×512 in-plane and ~150 slices,
so it has a real body and real organs (its labels come along, resampled by nearest neighbour),
unlike a phantom that body-skip or presence gating could treat trivially.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np


def organ_centre() -> int:
    """Axial index (display order = RAS z) at the middle of the sample CT's labelled organs.

    The sample runs from the pelvis (z=0) to the upper abdomen; its organs occupy z≈61–111, so the
    volume's middle slice would be pelvis.
    """
    import nibabel as nib

    from priorsam.data.samples import sample_ct

    lab = np.asarray(nib.load(str(sample_ct().label)).dataobj)
    z = np.flatnonzero(lab.any(axis=(0, 1)))
    return int((z.min() + z.max()) // 2)


def model_images(n: int, first: int | None = None, spacing_mm: float = 1.5):
    """``n`` sample-CT slices from ``first`` (default: centred on the labelled organs), framed as the
    prompt-free engine frames them: (n, 3, 256, 256) in [0, 1]."""
    from priorsam.data.preprocess import fixed_scale_frame, stack_channels, window
    from priorsam.data.samples import sample_ct
    from priorsam.io import display_spacing, read_volume

    vol = read_volume(sample_ct().image)
    slices = vol.axial_slices()
    row_mm, col_mm = display_spacing(vol)
    frame = fixed_scale_frame(slices, row_mm, col_mm, spacing_mm)
    start = organ_centre() - n // 2 if first is None else first
    idx = np.clip(np.arange(start, start + n), 0, len(slices) - 1)
    return frame.images(stack_channels(window(slices), idx, 0))


def calibration_images():
    """8 abdominal slices below the timed ones (never timed, never compared): int8 calibration."""
    return model_images(8, first=organ_centre() - 16)


def make_large_volume(out_dir: Path, size: int = 512, slices: int = 150) -> tuple[Path, Path]:
    """Write the sample CT (and its labels) resampled to ``size``×``size``×``slices`` as NIfTI; reused if present.

    In-plane: one isotropic pixel size so the longer side of the 366×303 mm field spans ``size``
    pixels, the shorter side padded with air (−1024 HU) as a scanner's square field would be.
    Along z: the same 336 mm covered by ``slices`` slices. Image trilinear, labels nearest.
    """
    import nibabel as nib
    import torch
    import torch.nn.functional as F

    from priorsam.data.samples import sample_ct

    out_dir.mkdir(parents=True, exist_ok=True)
    img_path = out_dir / f"sample_ct_{size}x{size}x{slices}.nii.gz"
    lab_path = out_dir / f"sample_ct_{size}x{size}x{slices}_labels.nii.gz"
    if img_path.is_file() and lab_path.is_file():
        return img_path, lab_path
    s = sample_ct()
    img = nib.load(str(s.image))
    lab = nib.load(str(s.label))
    hu = np.asarray(img.dataobj, dtype=np.float32)
    labels = np.asarray(lab.dataobj).astype(np.uint8)
    zooms = np.array(img.header.get_zooms()[:3], dtype=float)
    extent = np.array(hu.shape) * zooms
    px = float(extent[:2].max() / size)
    inplane = [int(round(extent[i] / px)) for i in range(2)]
    dz = float(extent[2] / slices)
    grid = (inplane[0], inplane[1], slices)
    t = torch.from_numpy(hu)[None, None]
    hu_r = F.interpolate(t, size=grid, mode="trilinear", align_corners=False)[0, 0].numpy()
    lab_r = F.interpolate(torch.from_numpy(labels)[None, None].float(), size=grid, mode="nearest")[0, 0].numpy()
    full = np.full((size, size, slices), -1024.0, dtype=np.float32)
    full_lab = np.zeros((size, size, slices), dtype=np.uint8)
    off = [(size - inplane[i]) // 2 for i in range(2)]
    full[off[0]:off[0] + grid[0], off[1]:off[1] + grid[1]] = hu_r
    full_lab[off[0]:off[0] + grid[0], off[1]:off[1] + grid[1]] = lab_r.astype(np.uint8)
    # Keep the source orientation; scale its axes to the new voxel size and shift by the padding.
    aff = img.affine.copy()
    dirs = aff[:3, :3] / zooms
    new_zooms = np.array([px, px, dz])
    centre_old = aff[:3, :3] @ ((np.array(hu.shape) - 1) / 2) + aff[:3, 3]
    aff[:3, :3] = dirs * new_zooms
    aff[:3, 3] = centre_old - aff[:3, :3] @ ((np.array(full.shape) - 1) / 2)
    # int16 like a scanner's file, so reading it costs what a real 512² CT costs.
    nib.save(nib.Nifti1Image(np.round(full).astype(np.int16), aff), str(img_path))
    nib.save(nib.Nifti1Image(full_lab, aff), str(lab_path))
    return img_path, lab_path


def make_cropped_sample(out_dir: Path, n: int) -> tuple[Path, Path]:
    """``n`` slices of the sample CT around its organs, and its labels, as NIfTI (for ``--quick`` smoke runs)."""
    import nibabel as nib

    from priorsam.data.samples import sample_ct

    out_dir.mkdir(parents=True, exist_ok=True)
    img_path, lab_path = out_dir / f"sample_ct_organs{n}.nii.gz", out_dir / f"sample_ct_organs{n}_labels.nii.gz"
    if img_path.is_file() and lab_path.is_file():
        return img_path, lab_path
    s = sample_ct()
    for src, dst in ((s.image, img_path), (s.label, lab_path)):
        img = nib.load(str(src))
        z0 = organ_centre() - n // 2
        nib.save(img.slicer[:, :, z0:z0 + n], str(dst))
    return img_path, lab_path
