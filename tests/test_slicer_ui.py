"""The module's .ui file: every widget PriorSAM.py uses exists, with the right class, and the file loads.

What is checked, honestly: (1) by parsing the XML, that each ``self.ui.<name>`` in PriorSAM.py is a
widget of the expected class, and that Slicer's node selectors ask for the right node types;
(2) that PySide6's QUiLoader builds the whole form offscreen. Slicer's own widgets
(qMRMLNodeComboBox, ctkCollapsibleButton, ctkPathLineEdit, qMRMLWidget) do not exist in plain
PySide6, so they are loaded as empty QWidget stand-ins registered under their class names: the
layout and the standard Qt widgets are real, the Slicer widgets' behaviour is not exercised here.
"""
from __future__ import annotations

import re
import xml.etree.ElementTree as ET

import pytest

import slicer_helpers

UI = slicer_helpers.MODULE_DIR / "Resources" / "UI" / "PriorSAM.ui"
SOURCE = slicer_helpers.MODULE_DIR / "PriorSAM.py"
EXPECTED = {
    "inputVolumeSelector": "qMRMLNodeComboBox", "deviceComboBox": "QComboBox", "deviceLabel": "QLabel",
    "detectDeviceButton": "QPushButton", "estimateLabel": "QLabel", "segmentButton": "QPushButton",
    "progressBar": "QProgressBar", "statusLabel": "QLabel", "roiSelector": "qMRMLNodeComboBox",
    "boxLabelComboBox": "QComboBox", "outputSegmentationSelector": "qMRMLNodeComboBox",
    "segmentBoxButton": "QPushButton", "backendComboBox": "QComboBox", "weightsPathLineEdit": "ctkPathLineEdit",
}


def _widgets() -> dict[str, ET.Element]:
    return {w.get("name"): w for w in ET.parse(UI).getroot().iter("widget")}


def test_every_widget_the_module_uses_is_in_the_ui():
    used = set(re.findall(r"self\.ui\.(\w+)", SOURCE.read_text()))
    widgets = _widgets()
    assert used == set(EXPECTED), "update EXPECTED with the widgets PriorSAM.py uses"
    for name, cls in EXPECTED.items():
        assert name in widgets, name
        assert widgets[name].get("class") == cls, name


def _node_types(widget: ET.Element) -> list[str]:
    for prop in widget.findall("property"):
        if prop.get("name") == "nodeTypes":
            return [s.text for s in prop.iter("string")]
    return []


def test_node_selectors_ask_for_the_right_nodes():
    w = _widgets()
    assert _node_types(w["inputVolumeSelector"]) == ["vtkMRMLScalarVolumeNode"]
    assert _node_types(w["roiSelector"]) == ["vtkMRMLMarkupsROINode"]
    assert _node_types(w["outputSegmentationSelector"]) == ["vtkMRMLSegmentationNode"]
    custom = {c.findtext("class") for c in ET.parse(UI).getroot().iter("customwidget")}
    assert {"qMRMLNodeComboBox", "ctkCollapsibleButton", "ctkPathLineEdit", "qMRMLWidget"} <= custom


def test_ui_loads_offscreen_with_pyside6(monkeypatch):
    pytest.importorskip("PySide6.QtUiTools", reason="PySide6-Essentials not installed (pip install -e .[slicer])")
    monkeypatch.setenv("QT_QPA_PLATFORM", "offscreen")
    from PySide6.QtCore import QFile
    from PySide6.QtUiTools import QUiLoader
    from PySide6.QtWidgets import QApplication, QComboBox, QLabel, QProgressBar, QPushButton, QWidget

    app = QApplication.instance() or QApplication([])
    loader = QUiLoader()
    stand_ins = {c.findtext("class") for c in ET.parse(UI).getroot().iter("customwidget")}
    for name in stand_ins:
        loader.registerCustomWidget(type(name, (QWidget,), {}))
    f = QFile(str(UI))
    assert f.open(QFile.ReadOnly)
    form = loader.load(f)
    f.close()
    assert form is not None, loader.errorString()
    qt_classes = {"QComboBox": QComboBox, "QLabel": QLabel, "QPushButton": QPushButton, "QProgressBar": QProgressBar}
    for name, cls in EXPECTED.items():
        child = form.findChild(QWidget, name)
        assert child is not None, name
        if cls in qt_classes:
            assert isinstance(child, qt_classes[cls]), name
        else:
            assert type(child).__name__ == cls, name       # a stand-in, registered under Slicer's class name
    assert form.findChild(QComboBox, "deviceComboBox").count() == 3
    assert form.findChild(QPushButton, "segmentButton").text() == "Segment organs"
    form.deleteLater()
    del app
