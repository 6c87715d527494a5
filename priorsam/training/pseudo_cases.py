"""Pseudo-patients as training cases for the 2D heads: NIfTI image, organ labels and structure map per
case, and a datalist for :mod:`priorsam.training.build_cache`.

The heads were first trained on the sample CT alone, so where they work without the localiser (a slab
too thin for 3D context, an organ the localiser did not find) they know one anatomy. The bank's
pseudo-patients carry the sample's texture on other patients' anatomy, with labels that move with the
pixels (``ours``), so they can teach the heads where organs lie without any new image data. The
structure map (``full``, TotalSegmentator ids) lets the cache's contrast-phase augmentation shift
every vessel and organ; ``--arms`` adds a copy of each case with arms at the sides and a table
(:func:`priorsam.data.appearance.add_arms_and_table`), listed apart in ``datalist_arms_table.json``
beside ``datalist_plain.json``.

python -m priorsam.training.pseudo_cases --bank BANK --out DIR [--exclude ID ...] [--arms]

Cases held out by the shipped localiser's spec are never written (``--holdout_from`` names the
checkpoint whose spec lists them); ``--exclude`` holds out more (e.g. the cases used to choose).
"""
from __future__ import annotations

import argparse
import json
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np

from ..data import appearance as app
from ..data.pseudo_patients import list_bank, load
from ..errors import one_line_errors
from ..io import atomic_path


def _save(array: np.ndarray, affine: np.ndarray, path: Path) -> None:
    with atomic_path(path) as tmp:
        nib.save(nib.Nifti1Image(array, affine), tmp)


def write_cases(bank: str, out: str, exclude: set[str], arms: bool = False, log=print) -> list[dict]:
    """Write every kept pseudo-patient not in ``exclude``; returns the datalist (also DIR/datalist.json)."""
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    datalist = []
    for rec in list_bank(bank):
        if rec["case_id"] in exclude:
            continue
        pp = load(rec["folder"])
        folder = root / pp.case_id
        folder.mkdir(exist_ok=True)
        paths = {n: folder / f"{n}.nii.gz" for n in ("image", "label", "groups")}
        if not all(p.is_file() for p in paths.values()):
            _save(pp.ct.astype(np.int16), pp.affine, paths["image"])
            _save(pp.ours.astype(np.uint8), pp.affine, paths["label"])
            _save(pp.full.astype(np.uint8), pp.affine, paths["groups"])
        datalist.append({"case_id": f"pseudo_{pp.case_id}", "image": str(paths["image"]), "label": str(paths["label"]),
                         "label_map": None, "group_label": str(paths["groups"])})
        if arms:
            p = folder / "image_arms_table.nii.gz"
            if not p.is_file():
                rng = np.random.default_rng(zlib.crc32(f"{pp.case_id}/arms".encode()))
                ct = app.add_arms_and_table(pp.ct.astype(np.float32), float(pp.spacing[0]), rng)
                _save(np.clip(np.rint(ct), -1024, 3071).astype(np.int16), pp.affine, p)
            datalist.append({**datalist[-1], "case_id": f"pseudo_{pp.case_id}_arms_table", "image": str(p)})
        log(f"[pseudo-cases] {pp.case_id}")
    # One list for all, and (with arms) one per kind, since each kind gets its own number of views.
    lists = {"datalist.json": datalist}
    if arms:
        lists["datalist_plain.json"] = [d for d in datalist if not d["case_id"].endswith("_arms_table")]
        lists["datalist_arms_table.json"] = [d for d in datalist if d["case_id"].endswith("_arms_table")]
    for name, rows in lists.items():
        with atomic_path(root / name) as tmp:
            tmp.write_text(json.dumps(rows, indent=1))
    return datalist


def held_out_anatomies(checkpoint: str | Path | None) -> set[str]:
    """The anatomies ``checkpoint``'s localiser never trained on (default: the bundle's weights); the heads
    must not see them either, or the held-out evaluation would flatter."""
    from ..models.spec import read_checkpoint

    if checkpoint is None:
        from ..engine.weights import default_weights_path

        checkpoint = default_weights_path()
    _, spec = read_checkpoint(str(checkpoint))
    return set(spec.localiser.holdout) if spec.localiser else set()


@one_line_errors
def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bank", required=True, help="the pseudo-patient cache (python -m priorsam.data.pseudo_patients)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--holdout_from", default=None,
                    help="checkpoint whose spec lists the held-out anatomies (default: the bundle's weights)")
    ap.add_argument("--exclude", nargs="*", default=[])
    ap.add_argument("--arms", action="store_true")
    a = ap.parse_args(argv)
    held = held_out_anatomies(a.holdout_from)
    rows = write_cases(a.bank, a.out, held | set(a.exclude), a.arms)
    print(f"{len(rows)} cases; held out: {sorted(held)}; excluded: {sorted(a.exclude)}")


if __name__ == "__main__":
    raise SystemExit(main())
