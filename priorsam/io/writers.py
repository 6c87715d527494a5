"""Writers that put label maps back on exactly the input's grid, atomically."""
from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from ..errors import InputError
from .volume import Volume, to_source_grid


LABEL_MAP_SUFFIXES = (".nii", ".nii.gz", ".nrrd")  # .nhdr would detach its data under the temp name


def check_writable(path: str | Path, suffixes: tuple[str, ...] | None = LABEL_MAP_SUFFIXES) -> Path:
    """Fail early, before any model work, if ``path`` cannot be written (or, by default, is no label-map type).

    Leaves nothing: a run that then fails on its input must leave no new folders behind. A temp
    file is created and removed in the nearest existing folder, because permission bits alone
    miss read-only and pseudo file systems (/proc) and file systems with no free inodes.
    """
    p = Path(path)
    if p.is_dir():
        raise InputError(f"output path is a folder: {p}")
    if suffixes is not None and not p.name.lower().endswith(suffixes):
        raise InputError(f"{p}: unsupported output type (use .nii.gz, .nii or .nrrd)")
    ancestor = p.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise InputError(f"output folder cannot be created: {ancestor} is not a folder")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise InputError(f"output folder is not writable: {ancestor}")
    from .checks import probe_writable

    probe_writable(ancestor)
    return p


def check_not_inputs(outputs, inputs) -> None:
    """Refuse an output path that is one of the command's input files (the same file by any path, link or
    name): writing the result there would destroy the input."""
    ins = [Path(i) for i in inputs if i is not None and Path(i).is_file()]
    for out in (Path(o) for o in outputs if o is not None):
        for inp in ins:
            same = os.path.samefile(out, inp) if out.exists() else out.resolve() == inp.resolve()
            if same:
                raise InputError(f"{out}: is the input {inp.name} itself; writing the result there would destroy "
                                 "it (choose another output path)")


def make_folder(folder: str | Path) -> Path:
    """Create ``folder`` (and its parents) for outputs; a failure is one :class:`InputError` line."""
    p = Path(folder)
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"output folder cannot be created: {p} ({exc.strerror})") from exc
    return p


@contextmanager
def atomic_path(path: str | Path):
    """Yield a temp path beside ``path``; rename it over ``path`` only if the block succeeds."""
    p = check_writable(path, suffixes=None)
    make_folder(p.parent)
    suffix = "".join(p.suffixes[-2:]) if p.name.endswith(".nii.gz") else p.suffix
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=f".part{suffix}", dir=p.parent)
    except OSError as exc:
        raise InputError(f"could not write {p}: {exc.strerror or exc}") from exc
    os.close(fd)
    try:
        yield Path(tmp)
        # mkstemp makes the file private (0600); give the result the mode a plain open() would.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, p)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise InputError(f"could not write {p}: {exc.strerror or exc}") from exc
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_label_map(volume: Volume, labels_ras: np.ndarray, path: str | Path) -> Path:
    """Write a canonical-RAS label array on the input's own grid (.nii/.nii.gz or .nrrd/.seg.nrrd)."""
    check_writable(path)
    if tuple(labels_ras.shape) != volume.shape:
        raise ValueError(f"label shape {labels_ras.shape} does not match volume {volume.shape}")
    stored = to_source_grid(volume, labels_ras.astype(np.uint8))
    p = Path(path)
    name = p.name.lower()
    with atomic_path(p) as tmp:
        if name.endswith((".nii", ".nii.gz")):
            _write_nifti(volume, stored, tmp)
        elif name.endswith(".nrrd"):
            _write_itk(volume, stored, tmp)
        else:
            raise InputError(f"{p}: unsupported output type (use .nii.gz, .nii or .nrrd)")
    return p


MADE_FOR = "PriorSAM label map of "   # NIfTI descrip: this, then the image's fingerprint (80 bytes at most)
MADE_FOR_KEY = "PriorSAM_label_map_of"  # NRRD: the same as a key of its own


def made_for(volume: Volume) -> str:
    return MADE_FOR + volume.fingerprint()


def _write_nifti(volume: Volume, stored: np.ndarray, tmp: Path) -> None:
    import nibabel as nib

    header = volume.source.header.copy() if volume.source.header is not None else None
    if header is not None and int(header["qform_code"]) == 0 and int(header["sform_code"]) == 0:
        # The input states no orientation; stating one here would let viewers place the labels
        # differently from the CT. With the same header, every reader applies the same default.
        img = nib.Nifti1Image(stored, None, header)
        img.set_data_dtype(np.uint8)
        img.header["scl_slope"], img.header["scl_inter"] = 1, 0
        img.header["descrip"] = made_for(volume).encode()
        nib.save(img, str(tmp))
        return
    img = nib.Nifti1Image(stored, volume.source.affine, header)
    img.set_data_dtype(np.uint8)
    # Keep the input's qform/sform codes so viewers place the labels where they place the CT.
    if header is not None:
        img.set_qform(volume.source.affine, int(header["qform_code"]) or 1)
        img.set_sform(volume.source.affine, int(header["sform_code"]) or 1)
    else:
        img.set_qform(volume.source.affine, 1)
        img.set_sform(volume.source.affine, 1)
    img.header["scl_slope"], img.header["scl_inter"] = 1, 0
    img.header["descrip"] = made_for(volume).encode()
    nib.save(img, str(tmp))


def _write_itk(volume: Volume, stored: np.ndarray, tmp: Path) -> None:
    import itk

    ras = volume.source.affine
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ ras
    spacing = np.sqrt((lps[:3, :3] ** 2).sum(axis=0))
    image = itk.image_from_array(np.ascontiguousarray(np.transpose(stored, (2, 1, 0))))
    image.SetSpacing(spacing.tolist())
    image.SetOrigin(lps[:3, 3].tolist())
    image.SetDirection(itk.matrix_from_array(lps[:3, :3] / spacing))
    image.GetMetaDataDictionary()[MADE_FOR_KEY] = volume.fingerprint()
    # ITK picks the writer from the final suffix; the temp name ends in the real one.
    itk.imwrite(image, str(tmp), compression=True)
