"""Where the bundle lives and which files a run should process.

MONAI adds a bundle's root to ``sys.path`` only after ``initialize()``, and its configs
have no variable for their own location, so the configs ask this module instead: it works
from any working directory because it is part of the installed package.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from ..errors import InputError
from ..io.readers import IMAGE_FILE_SUFFIXES, label_map_made_by_priorsam

log = logging.getLogger("priorsam.bundle")

BUNDLE_NAME = "priorsam_abdominal_ct"


def _is_our_bundle(folder: Path) -> bool:
    meta = folder / "configs" / "metadata.json"
    if not meta.is_file():
        return False
    try:
        return json.loads(meta.read_text()).get("name") == BUNDLE_NAME
    except (OSError, ValueError):
        return False


def bundle_root() -> str:
    """The bundle folder: ``$PRIORSAM_BUNDLE``, else the working directory when it is this
    bundle (an exported bundle run from inside, as model-zoo bundles are), else the bundle the
    package carries (:func:`packaged_bundle`)."""
    env = os.environ.get("PRIORSAM_BUNDLE")
    if env:
        return str(Path(env).resolve())
    cwd = Path.cwd()
    if _is_our_bundle(cwd):
        return str(cwd)
    beside = packaged_bundle()
    if _is_our_bundle(beside):
        return str(beside)
    raise InputError("cannot locate the priorsam bundle: run from inside it, set PRIORSAM_BUNDLE, "
                     "or pass --bundle_root DIR")


def packaged_bundle() -> Path:
    """The bundle folder installed with the package (or the checkout's ``bundle/``), whatever the working directory."""
    from ..resources import data_dir

    return data_dir("bundle")


def _is_image_file(p: Path) -> bool:
    return p.is_file() and p.name.lower().endswith(IMAGE_FILE_SUFFIXES)


def _is_dicom_folder(p: Path) -> bool:
    """A folder with at least one file carrying the DICOM preamble (checked on a few files only)."""
    if not p.is_dir():
        return False
    from ..io.readers import is_dicom_file

    files = sorted(x for x in p.iterdir() if x.is_file())[:8]
    return any(is_dicom_file(f) for f in files)


def case_name(path: str | os.PathLike) -> str:
    """``/a/case01.nii.gz`` → ``case01``; a DICOM folder → its folder name."""
    name = Path(path).name
    for suffix in IMAGE_FILE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def image_datalist(dataset_dir: str | os.PathLike) -> list[dict]:
    """``[{"image": path}, ...]`` for every NIfTI/NRRD file and DICOM series folder in ``dataset_dir``.

    ``dataset_dir`` may also be a single image file or a single DICOM series folder. Label maps PriorSAM
    wrote are left out (logged): with ``output_dir`` equal to ``dataset_dir`` the results of an earlier run
    lie beside the CT.
    """
    root = Path(dataset_dir)
    if not root.exists():
        raise InputError(f"dataset_dir not found: {root}")
    if _is_image_file(root) or _is_dicom_folder(root):
        return [{"image": str(root)}]
    items = [p for p in sorted(root.iterdir()) if _is_image_file(p) or _is_dicom_folder(p)]
    ours = [p for p in items if p.is_file() and label_map_made_by_priorsam(p)]
    if ours:
        log.info("left out %d label map(s) PriorSAM wrote in %s (%s)", len(ours), root,
                 ", ".join(p.name for p in ours[:3]) + (", ..." if len(ours) > 3 else ""))
        items = [p for p in items if p not in ours]
    if not items:
        raise InputError(f"{root}: no NIfTI/NRRD files or DICOM series folders found"
                         + (" (only label maps PriorSAM wrote)" if ours else ""))
    names = [case_name(p) for p in items]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise InputError(f"{root}: several inputs share the case name(s) {dupes}; outputs would overwrite each other")
    return [{"image": str(p)} for p in items]


def labelled_datalist(dataset_dir: str | os.PathLike | None = None, datalist: str | os.PathLike | None = None,
                      key: str = "training") -> list[dict]:
    """``[{"image": ..., "label": ...}, ...]`` from a datalist JSON or a folder with ``imagesTr/`` + ``labelsTr/``.

    A datalist JSON is either a list of pairs or a dict with ``key`` (MONAI decathlon style);
    relative paths in it are taken relative to ``dataset_dir`` (or the JSON's folder).
    For ``imagesTr/`` the label of ``X.nii.gz`` (or nnU-Net style ``X_0000.nii.gz``) is ``labelsTr/X.nii.gz``.
    """
    if datalist:
        p = Path(datalist)
        if not p.is_file():
            raise InputError(f"datalist not found: {p}")
        data = json.loads(p.read_text())
        items = data.get(key, []) if isinstance(data, dict) else data
        base = Path(dataset_dir) if dataset_dir else p.parent
        out = []
        for it in items:
            if "image" not in it or "label" not in it:
                raise InputError(f"{p}: every entry needs 'image' and 'label'")
            out.append({k: (str(base / v) if k in ("image", "label") and not Path(v).is_absolute() else v)
                        for k, v in it.items()})
        if not out:
            raise InputError(f"{p}: no entries under {key!r}")
        return out
    if not dataset_dir:
        raise InputError("give dataset_dir (with imagesTr/ and labelsTr/) or a datalist JSON")
    root = Path(dataset_dir)
    img_dir, lab_dir = root / "imagesTr", root / "labelsTr"
    if not img_dir.is_dir() or not lab_dir.is_dir():
        raise InputError(f"{root}: expected imagesTr/ and labelsTr/ folders (or pass a datalist JSON)")
    out = []
    for img in sorted(p for p in img_dir.iterdir() if _is_image_file(p)):
        name = case_name(img)
        stem = name[:-5] if name.endswith("_0000") else name
        cands = [lab_dir / (stem + s) for s in (".nii.gz", ".nii", ".nrrd")]
        lab = next((c for c in cands if c.is_file()), None)
        if lab is None:
            raise InputError(f"{img}: no label {stem}.nii.gz in {lab_dir}")
        out.append({"image": str(img), "label": str(lab)})
    if not out:
        raise InputError(f"{img_dir}: no images found")
    return out
