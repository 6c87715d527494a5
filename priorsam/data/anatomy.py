"""The anatomy bank: organ label maps of other patients (no images), in our label ids.

Each source (BTCV/Learn2Reg, TotalSegmentator, AMOS) names its labels differently; this
module maps every one to ours (Synapse order, ``priorsam/resources/labels.json``) and keeps the
source's full structure map for appearance simulation. Every map is read in canonical RAS and
must pass an orientation check (liver on the patient's right of the spleen, the right kidney
on the liver's side): a mirrored header would teach a model that left is right, so such a map
is refused with one line rather than used.

The bank's location is ``$PRIORSAM_ANATOMY_DIR`` or an explicit argument; nothing from it is
shipped with the project.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..labels import label_names, mapping, organ_x, remap, sides_contradicted

ANATOMY_ENV = "PRIORSAM_ANATOMY_DIR"

# Per source: folder, file pattern, how raw ids become ours, licence (README of the bank).
SOURCES: dict[str, dict] = {
    "btcv_learn2reg": {"glob": "*.nii.gz", "ids": "synapse_raw",
                       "licence": "BTCV (Multi-Atlas Labeling Beyond the Cranial Vault) terms via Learn2Reg "
                                  "AbdomenCTCT: research use only"},
    "totalsegmentator": {"glob": "*_seg.nii.gz", "ids": "names",
                         "licence": "TotalSegmentator dataset, CC BY 4.0 (Wasserthal et al., Radiology: AI 2023)"},
    "amos": {"glob": "*_label.nii.gz", "ids": "amos",
             "licence": "AMOS 2022, CC BY 4.0 (Ji et al., NeurIPS 2022)"},
}


@dataclass(frozen=True)
class AnatomyCase:
    """One label map of the bank."""

    case_id: str                     # e.g. "btcv_0001", "totalsegmentator_s0327", "amos_0013"
    source: str                      # key of SOURCES
    path: str
    names_json: str | None = None    # TotalSegmentator: structure name → id

    @property
    def licence(self) -> str:
        return SOURCES[self.source]["licence"]


@dataclass
class Anatomy:
    """A bank map in canonical RAS: ``ours`` (X,Y,Z) uint8 ids 0–8, ``raw`` the source's ids."""

    case: AnatomyCase
    ours: np.ndarray
    raw: np.ndarray
    affine: np.ndarray
    raw_names: dict[int, str] = field(default_factory=dict)

    @property
    def spacing(self) -> np.ndarray:
        return np.sqrt((self.affine[:3, :3] ** 2).sum(axis=0))


def anatomy_root(root: str | os.PathLike | None = None) -> Path:
    """The bank folder: ``root``, else ``$PRIORSAM_ANATOMY_DIR``; a clear error when neither exists."""
    r = root or os.environ.get(ANATOMY_ENV)
    if not r:
        raise InputError(f"no anatomy bank given: pass --anatomy DIR or set {ANATOMY_ENV}")
    p = Path(r)
    if not p.is_dir():
        raise InputError(f"anatomy bank not found: {p}")
    return p


def discover(root: str | os.PathLike | None = None) -> list[AnatomyCase]:
    """Every label map of the bank, sorted by case id."""
    base = anatomy_root(root)
    cases = []
    for source, info in SOURCES.items():
        folder = base / source
        if not folder.is_dir():
            continue
        for f in sorted(folder.glob(info["glob"])):
            stem = f.name.split(".")[0]
            if source == "totalsegmentator":
                stem = stem[: -len("_seg")]
                names = f.with_name(f"{stem}_labels.json")
                cases.append(AnatomyCase(f"{source}_{stem}", source, str(f), str(names)))
            elif source == "amos":
                cases.append(AnatomyCase(f"amos_{stem.split('_')[1]}", source, str(f)))
            else:
                cases.append(AnatomyCase(f"btcv_{stem}", source, str(f)))
    if not cases:
        raise InputError(f"no label maps found in the anatomy bank {base}")
    return sorted(cases, key=lambda c: c.case_id)


def source_to_ours(case: AnatomyCase) -> tuple[dict[int, int], dict[int, str]]:
    """(raw id → our id, raw id → structure name) for one case."""
    ours = label_names()
    if SOURCES[case.source]["ids"] == "names":
        if not case.names_json or not Path(case.names_json).is_file():
            raise InputError(f"{case.case_id}: structure names file missing ({case.names_json})")
        names = {int(v): k for k, v in json.loads(Path(case.names_json).read_text()).items()}
        table = {raw: ours.index(n) + 1 for raw, n in names.items() if n in ours}
        return table, names
    table = mapping(SOURCES[case.source]["ids"])
    return table, {raw: ours[o - 1] for raw, o in table.items()}


def check_orientation(ours: np.ndarray, affine: np.ndarray, what: str) -> None:
    """Refuse a map whose left and right are swapped (or that lacks the organs to tell).

    World coordinates are RAS+: a larger x lies further to the patient's right, where the liver
    and the right kidney belong.
    """
    x_of = organ_x(ours, affine)
    if "liver" not in x_of or "spleen" not in x_of:
        raise InputError(f"{what}: cannot check left/right (liver or spleen missing)")
    wrong = sides_contradicted(x_of)
    if wrong:
        raise InputError(f"{what}: mirrored {'kidneys' if 'kidney' in wrong else 'left/right'} ({wrong})")


def load_anatomy(case: AnatomyCase) -> Anatomy:
    """Read, map to our ids and check one bank map."""
    from ..io import read_label_map

    vol = read_label_map(case.path)
    raw = np.rint(vol.array).astype(np.int32)
    table, names = source_to_ours(case)
    ours = remap(raw, table)
    check_orientation(ours, vol.affine, case.case_id)
    if SOURCES[case.source]["ids"] != "names":
        names = {int(i): names.get(int(i), f"{case.source}_{int(i)}") for i in np.unique(raw) if i > 0}
    return Anatomy(case, ours, raw.astype(np.uint16), vol.affine, names)
