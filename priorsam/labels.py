"""The organ label table (ids, names, colours, SNOMED CT codes), read from one JSON file.

Everything that names or colours an organ (reports, DICOM SEG, the Slicer module) reads it
from here so the convention lives in one place.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

import numpy as np


@dataclass(frozen=True)
class Label:
    id: int
    name: str
    display: str
    color: tuple[int, int, int]
    snomed_code: str
    snomed_meaning: str
    single_component: bool


@lru_cache(maxsize=1)
def _table() -> dict:
    return json.loads(resources.files("priorsam.resources").joinpath("labels.json").read_text())


def labels() -> list[Label]:
    """Foreground labels in id order (background, id 0, is implicit)."""
    out = []
    for e in _table()["labels"]:
        out.append(Label(e["id"], e["name"], e["display"], tuple(e["color"]), e["snomed"]["CodeValue"],
                         e["snomed"]["CodeMeaning"], bool(e.get("single_component", True))))
    return out


def label_names() -> list[str]:
    return [lab.name for lab in labels()]


def organ_ids() -> list[int]:
    """The foreground label ids (1 … 8 today): loops over organs use this, never a literal range."""
    return [lab.id for lab in labels()]


def organ_id(name: str) -> int:
    """The label id of the organ called ``name`` (e.g. "liver")."""
    ids = {lab.name: lab.id for lab in labels()}
    if name not in ids:
        raise KeyError(f"no organ called {name!r}; the organs are {', '.join(ids)}")
    return ids[name]


def category() -> dict:
    return dict(_table()["category"])


def typical_volume_ml() -> dict[str, tuple[float, float]]:
    return {k: tuple(v) for k, v in _table()["typical_volume_ml"].items()}


def organ_x(ours: np.ndarray, affine: np.ndarray | None = None) -> dict[str, float]:
    """Organ name → the world x (RAS+) of its centroid, for the organs present in a label map of our ids;
    without ``affine``, the x index (on a canonical RAS grid it orders left and right the same way)."""
    out = {}
    for lab in labels():
        idx = np.argwhere(ours == lab.id)
        if len(idx):
            centre = idx.mean(0)
            out[lab.name] = float(centre[0] if affine is None else (affine[:3, :3] @ centre + affine[:3, 3])[0])
    return out


def sides_contradicted(x_of: dict[str, float]) -> str:
    """What in organs' left–right positions contradicts normal anatomy, or "" when nothing does.

    ``x_of``: organ name → its centroid's x in a frame where a larger x lies further to the patient's right
    (RAS+). Checked: the liver against the spleen, the right kidney against the left; an organ missing from
    ``x_of`` checks nothing. Situs inversus fails it too: callers say what they do then.
    """
    if "liver" in x_of and "spleen" in x_of and x_of["liver"] <= x_of["spleen"]:
        return "the liver lies on the patient's left of the spleen"
    if "kidney_right" in x_of and "kidney_left" in x_of and x_of["kidney_right"] <= x_of["kidney_left"]:
        return "the right kidney lies on the patient's left"
    return ""


def mapping(name: str) -> dict[int, int]:
    """A raw-id → our-id mapping stored in the table, e.g. ``totalsegmentator`` or ``synapse_raw``."""
    return {int(k): int(v) for k, v in _table()[f"{name}_to_ours"].items()}


def remap(label_array: np.ndarray, table: dict[int, int]) -> np.ndarray:
    """Map raw label ids to ours; ids not in ``table`` become background."""
    lut = np.zeros(max(int(label_array.max(initial=0)), max(table, default=0)) + 1, dtype=np.uint8)
    for raw, ours in table.items():
        lut[raw] = ours
    return lut[np.clip(label_array, 0, None).astype(np.int64)]
