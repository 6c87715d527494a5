"""Label-driven deformable registration with Greedy (``picsl-greedy``), and its quality checks.

Used to warp the sample CT and its full label map onto another patient's anatomy
(:mod:`priorsam.data.pseudo_patients`). The recipe (docs/anatomy_bank.md; checked on BTCV 0001: organ
Dice 0.42 after the affine step, 0.91 after the deformable one):

* both label maps on one isotropic grid (3 mm), the means of their organ centroids aligned (each
  organ counts once: aligning the centroids of the organ unions let one enlarged organ drag the start,
  and Greedy's affine then failed on BTCV 0009's 3.2 L spleen in some runs, docs/anatomy_bank.md);
* one Gaussian-smoothed (σ = 1 voxel) binary mask per organ present in both maps, as
  fixed/moving channel pairs, SSD metric;
* affine (12 dof, 100×50×20 iterations, a fixed random seed), then diffeomorphic greedy (100×60×30,
  σ 2 and 0.5 voxels);
* label maps resliced with Greedy's ``LABEL`` interpolation, intensities linearly.

QA per case: organ Dice of the warped moving labels against the fixed labels, and the share of
voxels where the deformation folds (Jacobian determinant ≤ 0, SimpleITK's filter).
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from dataclasses import dataclass, field

import numpy as np

from ..errors import AssetError
from ..labels import organ_ids

AFFINE_ITERS = "100x50x20"
DEFORM_ITERS = "100x60x30"
DEFORM_SMOOTHING = "2.0vox 0.5vox"


@dataclass
class RegistrationResult:
    """Moving images resliced onto the fixed grid, plus the QA figures."""

    warped: dict[str, np.ndarray]                       # name → (X, Y, Z) array on the fixed grid
    dice: dict[int, float] = field(default_factory=dict)  # organ id → Dice against the fixed labels
    dice_affine: dict[int, float] = field(default_factory=dict)
    folded_fraction: float = 0.0
    jacobian_range: tuple[float, float] = (1.0, 1.0)


def _greedy():
    try:
        from picsl_greedy import Greedy3D
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise AssetError("picsl-greedy is not installed (pip install 'priorsam[bank]')") from exc
    return Greedy3D()


@contextlib.contextmanager
def _quiet_stdout(log_path: str | None = None):
    """Greedy's C++ core prints every iteration to fd 1; send that to a log (or nowhere)."""
    import sys

    sys.stdout.flush()
    saved = os.dup(1)
    target = os.open(log_path or os.devnull, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(target, 1)
    try:
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)
        os.close(target)


def _to_sitk(array: np.ndarray, spacing: float, origin: np.ndarray, dtype=np.float32):
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(np.ascontiguousarray(np.transpose(array, (2, 1, 0)).astype(dtype)))
    img.SetSpacing((spacing,) * 3)
    img.SetOrigin(tuple(float(v) for v in origin))
    return img


def _from_sitk(img) -> np.ndarray:
    import SimpleITK as sitk

    return np.transpose(sitk.GetArrayFromImage(img), (2, 1, 0))


def _reslice(g, images: dict, key: str, interp: str, background: float, transforms: str, tmp: str) -> np.ndarray:
    """Reslice ``images[key]`` onto ``ref`` through ``transforms``.

    picsl-greedy 1.4 hands LINEAR/NN results back in memory but not LABEL ones, so label maps go
    through a NIfTI file in ``tmp``.
    """
    import SimpleITK as sitk

    if interp == "LINEAR":
        g.execute(f"-d 3 -rf ref -ri LINEAR -rb {background} -rm {key} resliced -r {transforms}", resliced=None, **images)
        return _from_sitk(g["resliced"]).astype(np.float32)
    path = os.path.join(tmp, f"{key}.nii.gz")
    g.execute(f"-d 3 -rf ref -ri {interp} -rb {background} -rm {key} {path} -r {transforms}", **images)
    return np.rint(_from_sitk(sitk.ReadImage(path))).astype(np.uint8)


def organ_centroids_mean_mm(labels: np.ndarray, organs, spacing: float) -> np.ndarray:
    """Mean of the given organs' centroids (mm from voxel 0), each organ weighted once."""
    return np.mean([np.argwhere(labels == k).mean(0) for k in organs], axis=0) * spacing


def dice_per_label(a: np.ndarray, b: np.ndarray, ids) -> dict[int, float]:
    out = {}
    for k in ids:
        x, y = a == k, b == k
        s = int(x.sum()) + int(y.sum())
        out[int(k)] = float(2 * np.logical_and(x, y).sum() / s) if s else float("nan")
    return out


def register_labels(fixed: np.ndarray, moving: np.ndarray, spacing: float,
                    moving_images: dict[str, tuple[np.ndarray, str, float]] | None = None,
                    organs=None, sigma_vox: float = 1.0, log_path: str | None = None,
                    affine_iters: str = AFFINE_ITERS, deform_iters: str = DEFORM_ITERS,
                    seed: int = 1) -> RegistrationResult:
    """Register ``moving`` labels onto ``fixed`` labels (both (X,Y,Z), same isotropic ``spacing``).

    ``moving_images``: name → (array on the moving grid, ``"LINEAR"`` or ``"LABEL"``, background
    value) to reslice with the same transform; the moving labels are always resliced as
    ``"labels"``. ``seed``: Greedy's affine jitters its sample points at random, so a fixed seed makes
    the result repeatable (the same on one machine; the bank's 33 cases also gave the same QA on an Intel Xeon
    and an AMD EPYC; 0: a new random draw each run, Greedy's default). Returns the
    resliced arrays and the QA figures.
    """
    import SimpleITK as sitk
    from scipy.ndimage import gaussian_filter

    organs = [int(k) for k in (organs if organs is not None else organ_ids())
              if (fixed == k).any() and (moving == k).any()]
    if not organs:
        raise ValueError("the two label maps share no organ")
    # Origins put the mean of the shared organs' centroids at 0 mm: the affine starts from there.
    o_f = -organ_centroids_mean_mm(fixed, organs, spacing)
    o_m = -organ_centroids_mean_mm(moving, organs, spacing)
    g = _greedy()
    images, pairs = {}, []
    for k in organs:
        images[f"f{k}"] = _to_sitk(gaussian_filter((fixed == k).astype(np.float32), sigma_vox), spacing, o_f)
        images[f"m{k}"] = _to_sitk(gaussian_filter((moving == k).astype(np.float32), sigma_vox), spacing, o_m)
        pairs.append(f"-i f{k} m{k}")
    chans = " ".join(pairs)
    images["ref"] = _to_sitk(fixed, spacing, o_f, np.uint8)
    images["movlab"] = _to_sitk(moving, spacing, o_m, np.uint8)
    todo = {"labels": ("movlab", "LABEL 0.2vox", 0.0)}
    for name, (arr, mode, bg) in (moving_images or {}).items():
        images[f"in_{name}"] = _to_sitk(arr, spacing, o_m, np.float32 if mode == "LINEAR" else np.uint8)
        todo[name] = (f"in_{name}", "LINEAR" if mode == "LINEAR" else "LABEL 0.2vox", bg)
    with _quiet_stdout(log_path), tempfile.TemporaryDirectory(prefix="priorsam-reg-") as tmp:
        seed_opt = f"-seed {seed} " if seed else ""
        g.execute(f"-d 3 -threads {os.cpu_count() or 1} -a -dof 12 -m SSD -n {affine_iters} -ia-identity {seed_opt}"
                  f"{chans} -o aff", aff=None, **images)
        lab_aff = _reslice(g, images, "movlab", "LABEL 0.2vox", 0.0, "aff", tmp)
        g.execute(f"-d 3 -threads {os.cpu_count() or 1} -m SSD -n {deform_iters} -s {DEFORM_SMOOTHING} "
                  f"-it aff {chans} -o warp", warp=None, **images)
        warped = {}
        for name, (key, interp, bg) in todo.items():
            warped[name] = _reslice(g, images, key, interp, bg, "warp aff", tmp)
        jac = _from_sitk(sitk.DisplacementFieldJacobianDeterminant(sitk.Cast(g["warp"], sitk.sitkVectorFloat64)))
    result = RegistrationResult(warped)
    result.dice = dice_per_label(warped["labels"], fixed, organs)
    result.dice_affine = dice_per_label(lab_aff, fixed, organs)
    result.folded_fraction = float((jac <= 0).mean())
    result.jacobian_range = (float(jac.min()), float(jac.max()))
    return result


def resample_isotropic(array: np.ndarray, affine: np.ndarray, spacing: float, order: int) -> tuple[np.ndarray, np.ndarray]:
    """(X,Y,Z) array on ``affine`` → the same field of view at ``spacing`` mm (order 0: labels)."""
    from scipy.ndimage import zoom

    cur = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    shape = np.maximum(1, np.round(np.array(array.shape) * cur / spacing)).astype(int)
    factors = shape / np.array(array.shape)
    out = zoom(array, factors, order=order, mode="nearest", grid_mode=True,
               prefilter=False, output=array.dtype if order == 0 else np.float32)
    f = 1 / factors  # old voxels per new voxel
    new = affine.copy()
    new[:3, :3] = affine[:3, :3] * f
    new[:3, 3] = affine[:3, :3] @ (0.5 * f - 0.5) + affine[:3, 3]
    return out, new


