"""Organ names, colours and SNOMED CT codes for Slicer, generated from ``priorsam/resources/labels.json``.

``labels.json`` is the single source. :func:`write_resources` turns it into the two files shipped in
``Resources/``: a Slicer colour table (``PriorSAM.ctbl``) and a Slicer terminology context
(``PriorSAM-terminology.json``, the segmentation category/type schema of dcmqi that Slicer's
Terminologies module loads). Inside Slicer the module reads the shipped terminology file
(:func:`load_organs`), which also carries each organ's label value and engine name, so it never
needs the ``priorsam`` package. ``tests/test_slicer_resources.py`` regenerates both files and
compares them byte for byte with the shipped ones.

Regenerate after editing labels.json::

    python slicer_extension/PriorSAM/PriorSAMLib/colors.py
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

CONTEXT_NAME = "PriorSAM abdominal organs"
REGION_CONTEXT_NAME = "Anatomic codes - DICOM master list"
CTBL_NAME = "PriorSAM.ctbl"
TERMINOLOGY_NAME = "PriorSAM-terminology.json"
SCHEMA = "https://raw.githubusercontent.com/qiicr/dcmqi/master/doc/schemas/segment-context-schema.json#"


@dataclass(frozen=True)
class Organ:
    value: int                       # label value in the engine's output
    name: str                        # engine name (``--label``), e.g. kidney_right
    display: str                     # segment name shown to the user, e.g. Right kidney
    rgb: tuple[int, int, int]        # 0–255
    code: str                        # SNOMED CT code value
    meaning: str                     # SNOMED CT code meaning
    scheme: str = "SCT"

    @property
    def rgb_float(self) -> tuple[float, float, float]:
        return tuple(c / 255.0 for c in self.rgb)


@dataclass(frozen=True)
class Category:
    code: str
    scheme: str
    meaning: str


def resources_dir() -> Path:
    return Path(__file__).resolve().parents[1] / "Resources"


def labels_json_path() -> Path:
    """The label table of the installed ``priorsam`` package (this generator runs where the package is
    installed, e.g. a checkout's venv); inside Slicer the module reads the shipped terminology instead."""
    from importlib import resources

    try:
        return Path(str(resources.files("priorsam.resources").joinpath("labels.json")))
    except ModuleNotFoundError as exc:
        raise RuntimeError("regenerating the colour table needs the priorsam package installed "
                           "(pip install -e . in the checkout)") from exc


def read_labels_json(path: str | Path | None = None) -> tuple[list[Organ], Category]:
    table = json.loads(Path(path or labels_json_path()).read_text(encoding="utf-8"))
    cat = table["category"]
    organs = [Organ(int(e["id"]), e["name"], e["display"], tuple(int(c) for c in e["color"]),
                    e["snomed"]["CodeValue"], e["snomed"]["CodeMeaning"]) for e in table["labels"]]
    return sorted(organs, key=lambda o: o.value), Category(cat["CodeValue"], cat["CodingSchemeDesignator"],
                                                          cat["CodeMeaning"])


def ctbl_text(organs: list[Organ]) -> str:
    """Slicer colour table: ``value name R G B A``; spaces in names become underscores (Slicer's rule)."""
    lines = ["# PriorSAM organ colour table, generated from priorsam/resources/labels.json - do not edit",
             f"# {len(organs) + 1} values", "0 Background 0 0 0 0"]
    for o in organs:
        lines.append(f"{o.value} {o.display.replace(' ', '_')} {o.rgb[0]} {o.rgb[1]} {o.rgb[2]} 255")
    return "\n".join(lines) + "\n"


def terminology_dict(organs: list[Organ], category: Category) -> dict:
    types = [{"CodeMeaning": o.meaning, "CodingSchemeDesignator": o.scheme, "CodeValue": o.code,
              "recommendedDisplayRGBValue": list(o.rgb), "3dSlicerLabel": o.display,
              "PriorSAMLabelValue": o.value, "PriorSAMName": o.name} for o in organs]
    return {"SegmentationCategoryTypeContextName": CONTEXT_NAME, "@schema": SCHEMA,
            "SegmentationCodes": {"Category": [{"CodeMeaning": category.meaning,
                                                "CodingSchemeDesignator": category.scheme,
                                                "CodeValue": category.code, "showAnatomy": False,
                                                "Type": types}]}}


def terminology_text(organs: list[Organ], category: Category) -> str:
    return json.dumps(terminology_dict(organs, category), indent=2) + "\n"


def write_resources(labels_json: str | Path | None = None, out_dir: str | Path | None = None) -> list[Path]:
    organs, category = read_labels_json(labels_json)
    out = Path(out_dir or resources_dir())
    out.mkdir(parents=True, exist_ok=True)
    ctbl, term = out / CTBL_NAME, out / TERMINOLOGY_NAME
    ctbl.write_text(ctbl_text(organs), encoding="utf-8")
    term.write_text(terminology_text(organs, category), encoding="utf-8")
    return [ctbl, term]


def load_organs(path: str | Path | None = None) -> tuple[list[Organ], Category]:
    """The organ table from the shipped terminology file (what the module uses inside Slicer)."""
    data = json.loads(Path(path or resources_dir() / TERMINOLOGY_NAME).read_text(encoding="utf-8"))
    cat = data["SegmentationCodes"]["Category"][0]
    organs = [Organ(int(t["PriorSAMLabelValue"]), t["PriorSAMName"], t["3dSlicerLabel"],
                    tuple(int(c) for c in t["recommendedDisplayRGBValue"]), t["CodeValue"], t["CodeMeaning"],
                    t["CodingSchemeDesignator"]) for t in cat["Type"]]
    return sorted(organs, key=lambda o: o.value), Category(cat["CodeValue"], cat["CodingSchemeDesignator"],
                                                          cat["CodeMeaning"])


def terminology_entry(organ: Organ, category: Category) -> str:
    """Slicer's serialized terminology entry (the segment's terminology tag) for one organ.

    Format: ``context~category~type~typeModifier~regionContext~region~regionModifier``, each coded
    entry as ``scheme^value^meaning`` — what ``vtkSlicerTerminologiesModuleLogic.SerializeTerminologyEntry``
    writes (a test checks they agree).
    """
    return "~".join([CONTEXT_NAME, f"{category.scheme}^{category.code}^{category.meaning}",
                     f"{organ.scheme}^{organ.code}^{organ.meaning}", "^^", REGION_CONTEXT_NAME, "^^", "^^"])


if __name__ == "__main__":
    for p in write_resources():
        print(p)
