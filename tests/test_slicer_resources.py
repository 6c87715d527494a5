"""The shipped colour table and terminology are generated from labels.json and Slicer reads them."""
from __future__ import annotations


import slicer_helpers
from PriorSAMLib import colors

RES = slicer_helpers.MODULE_DIR / "Resources"


def test_shipped_resources_are_the_generated_ones(tmp_path):
    colors.write_resources(out_dir=tmp_path)
    for name in (colors.CTBL_NAME, colors.TERMINOLOGY_NAME):
        assert (RES / name).read_bytes() == (tmp_path / name).read_bytes(), \
            f"{name} is stale: run python slicer_extension/PriorSAM/PriorSAMLib/colors.py"


def test_organ_table_matches_priorsam_labels():
    from priorsam import labels

    organs, category = colors.load_organs(RES / colors.TERMINOLOGY_NAME)
    table = labels.labels()
    assert [(o.value, o.name, o.display, o.rgb, o.code, o.meaning) for o in organs] == \
        [(lab.id, lab.name, lab.display, lab.color, lab.snomed_code, lab.snomed_meaning) for lab in table]
    assert (category.code, category.scheme, category.meaning) == (
        labels.category()["CodeValue"], labels.category()["CodingSchemeDesignator"], labels.category()["CodeMeaning"])
    assert len(organs) == 8


def test_slicer_reads_colour_table_and_terminology():
    slicer = slicer_helpers.require_slicer_core()
    organs, category = colors.load_organs(RES / colors.TERMINOLOGY_NAME)
    scene = slicer.vtkMRMLScene()
    table = scene.AddNewNodeByClass("vtkMRMLColorTableNode", "PriorSAM")
    storage = slicer.vtkMRMLColorTableStorageNode()
    storage.SetFileName(str(RES / colors.CTBL_NAME))
    assert storage.ReadData(table)
    assert table.GetNumberOfColors() == 9
    for o in organs:
        assert table.GetColorName(o.value) == o.display
        rgba = [0.0] * 4
        table.GetColor(o.value, rgba)
        assert [round(c * 255) for c in rgba[:3]] == list(o.rgb)

    logic = slicer.vtkSlicerTerminologiesModuleLogic()
    assert logic.LoadTerminologyFromFile(str(RES / colors.TERMINOLOGY_NAME)) == colors.CONTEXT_NAME
    assert logic.GetNumberOfTypesInTerminologyCategory(colors.CONTEXT_NAME, _category(slicer, category)) == 8
    # our serialized segment tags are exactly what Slicer's own serializer writes, and parse back
    for o in organs:
        ours = colors.terminology_entry(o, category)
        theirs = slicer.vtkSlicerTerminologiesModuleLogic.SerializeTerminologyEntry(
            colors.CONTEXT_NAME, category.code, category.scheme, category.meaning, o.code, o.scheme, o.meaning,
            "", "", "", colors.REGION_CONTEXT_NAME, "", "", "", "", "", "")
        assert ours == theirs
        entry = slicer.vtkSlicerTerminologyEntry()
        assert slicer.vtkSlicerTerminologiesModuleLogic.DeserializeTerminologyEntry(ours, entry)
        assert entry.GetTypeObject().GetCodeValue() == o.code


def _category(slicer, category):
    cat = slicer.vtkSlicerTerminologyCategory()
    cat.SetCodeValue(category.code)
    cat.SetCodingSchemeDesignator(category.scheme)
    cat.SetCodeMeaning(category.meaning)
    return cat
