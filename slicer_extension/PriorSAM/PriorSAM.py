"""PriorSAM — 3D Slicer module: text-prior-guided SAM segmentation of 8 abdominal organs in CT.

Module / Widget / Logic / Test, as Slicer expects. The work is done by ``PriorSAMLib`` (no
``slicer`` import at module level, covered by plain pytest); this file wires it to Slicer's GUI.
Heavy work never runs in Slicer's process: the engine runs in a ``PythonSlicer`` subprocess and
the widget polls it with a QTimer, so the UI stays responsive and Cancel kills the process tree.
"""
import logging
import os
import sys

import qt
import slicer
import vtk
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                           ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget)
from slicer.util import VTKObservationMixin

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:                      # PriorSAMLib sits beside this file
    sys.path.insert(0, _HERE)

from PriorSAMLib import commands, estimate, process  # noqa: E402
from PriorSAMLib.logic import SegmentationLogic  # noqa: E402

SETTINGS_PREFIX = "PriorSAM/"


class PriorSAM(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "PriorSAM"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = []
        self.parent.contributors = ["PriorSAM developers"]
        self.parent.helpText = (
            "Segments spleen, kidneys, gallbladder, liver, stomach, aorta and pancreas in a CT volume with no "
            "clicks (text-prior-guided Segment Anything), or one organ inside a box (markups ROI). "
            "Runs in a background process: the application stays usable and the run can be cancelled. "
            "Research software: not for clinical use. See docs/slicer.md in the repository.")
        self.parent.acknowledgementText = (
            "Builds on LiteMedSAM (bowang-lab, Apache-2.0), Segment Anything (Meta, Apache-2.0), MONAI and "
            "all-MiniLM-L6-v2 (Apache-2.0).")


class PriorSAMWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self.timer = None
        self.active = None                      # 'organs' | 'box' | 'probe' | None
        self._probe_run = None

    # -- set-up --------------------------------------------------------------------------------
    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        ui_widget = slicer.util.loadUI(self.resourcePath("UI/PriorSAM.ui"))
        self.layout.addWidget(ui_widget)
        self.ui = slicer.util.childWidgetVariables(ui_widget)
        ui_widget.setMRMLScene(slicer.mrmlScene)

        self.logic = PriorSAMLogic()
        self.timer = qt.QTimer()
        self.timer.setInterval(100)
        self.timer.connect("timeout()", self.onTimer)

        self.ui.deviceComboBox.clear()
        for text, data in (("auto (GPU if available)", "auto"), ("GPU", "gpu"), ("CPU", "cpu")):
            self.ui.deviceComboBox.addItem(text, data)
        self.ui.boxLabelComboBox.clear()
        self.ui.boxLabelComboBox.addItem("auto (named by the model)", "auto")
        for organ in self.logic.organs:
            self.ui.boxLabelComboBox.addItem(organ.display, organ.name)
        self.ui.backendComboBox.clear()
        for text, data in (("auto (bundle if present)", "auto"), ("MONAI bundle", "bundle"),
                           ("priorsam command line", "cli")):
            self.ui.backendComboBox.addItem(text, data)
        self.ui.backendComboBox.setCurrentIndex(self.ui.backendComboBox.findData(commands.DEFAULT_BACKEND))
        self.ui.progressBar.setValue(0)

        self.ui.inputVolumeSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.updateEstimate)
        self.ui.deviceComboBox.connect("currentIndexChanged(int)", self.updateEstimate)
        self.ui.roiSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.updateButtons)
        self.ui.backendComboBox.connect("currentIndexChanged(int)", self.onBackendChanged)
        self.ui.weightsPathLineEdit.connect("currentPathChanged(QString)", self.onWeightsChanged)
        self.ui.segmentButton.connect("clicked(bool)", self.onSegmentButton)
        self.ui.segmentBoxButton.connect("clicked(bool)", self.onSegmentBoxButton)
        self.ui.detectDeviceButton.connect("clicked(bool)", self.startProbe)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)

        self.ui.weightsPathLineEdit.currentPath = slicer.util.settingsValue(SETTINGS_PREFIX + "weights", "")
        self.startProbe()
        self.updateButtons()

    def cleanup(self):
        self.removeObservers()
        if self.logic is not None and self.logic.run is not None:
            self.logic.cancel()
        if self.logic is not None:
            self.logic.forget_organ_maps()
        if self.timer is not None:
            self.timer.stop()

    def onSceneStartClose(self, caller, event):
        if self.active in ("organs", "box"):
            self.logic.cancel()
        self.logic.forget_organ_maps()     # the next scene's volumes may reuse these node IDs

    # -- device probe ----------------------------------------------------------------------------
    def startProbe(self):
        if self._probe_run is not None and self._probe_run.state == process.RUNNING:
            return
        self.ui.deviceLabel.text = "Checking for a CUDA GPU…"
        self._probe_run = self.logic.start_probe(self.onProbeDone)
        self.timer.start()

    def onProbeDone(self, info):
        self.ui.deviceLabel.text = commands.describe_probe(info)
        self.updateEstimate()

    # -- estimate and buttons --------------------------------------------------------------------
    def deviceChoice(self):
        return self.ui.deviceComboBox.currentData or "auto"

    def updateEstimate(self, *args):
        volume = self.ui.inputVolumeSelector.currentNode()
        if volume is None or volume.GetImageData() is None:
            self.ui.estimateLabel.text = ""
        else:
            try:
                self.ui.estimateLabel.text = self.logic.estimate_for(volume, self.deviceChoice()).text()
            except RuntimeError as exc:
                self.ui.estimateLabel.text = str(exc)
        self.updateButtons()

    def updateButtons(self, *args):
        running = self.active in ("organs", "box")
        has_volume = self.ui.inputVolumeSelector.currentNode() is not None
        self.ui.segmentButton.text = "Cancel" if self.active == "organs" else "Segment organs"
        self.ui.segmentButton.enabled = (self.active == "organs") or (has_volume and not running)
        self.ui.segmentBoxButton.text = "Cancel" if self.active == "box" else "Segment from box"
        self.ui.segmentBoxButton.enabled = (self.active == "box") or (
            has_volume and self.ui.roiSelector.currentNode() is not None and not running)
        self.ui.inputVolumeSelector.enabled = not running
        self.ui.deviceComboBox.enabled = not running

    def onBackendChanged(self, *args):
        self.logic.backend = self.ui.backendComboBox.currentData or "auto"

    def onWeightsChanged(self, path):
        self.logic.weights = path or None
        qt.QSettings().setValue(SETTINGS_PREFIX + "weights", path)

    # -- runs ------------------------------------------------------------------------------------
    def _prepare(self, kind="organs"):
        """Install dependencies (with consent) and tell the user what will run and how long."""
        try:
            self.logic.ensure_dependencies()
        except Exception as exc:
            slicer.util.errorDisplay(str(exc), windowTitle="PriorSAM")
            return None
        volume = self.ui.inputVolumeSelector.currentNode()
        try:
            device, note = self.logic.resolved_device(self.deviceChoice())
            est = self.logic.estimate_for(volume, self.deviceChoice())
        except RuntimeError as exc:
            slicer.util.errorDisplay(str(exc), windowTitle="PriorSAM")
            return None
        label = self.ui.boxLabelComboBox.currentData or "auto"
        if kind == "box" and self.logic.organ_map_for_box(volume, label) is not None:
            # no whole-volume run: the estimate (and its "this will take minutes" question) does not apply
            self.ui.statusLabel.text = f"{note} The box is answered from this volume's last 'Segment organs' run."
            return volume, device
        if device == "cpu" and est.seconds > 120:
            if not slicer.util.confirmOkCancelDisplay(f"{note}\n{est.text()}.\n\nContinue?", windowTitle="PriorSAM"):
                return None
        self.ui.statusLabel.text = f"{note} {est.text()}"
        return volume, device

    def _begin(self, kind):
        """Cancel the running ``kind`` job, or return (volume, device) to start one (None: nothing to start)."""
        if self.active == kind:
            self.logic.cancel()
            return None
        return self._prepare(kind)

    def onSegmentButton(self):
        prepared = self._begin("organs")
        if prepared is None:
            return
        volume, device = prepared
        try:
            self.logic.start_organs(volume, device, self.onFinished, self.onProgress, self.onLine)
        except Exception as exc:
            slicer.util.errorDisplay(f"Could not start: {exc}", windowTitle="PriorSAM")
            return
        self._started("organs")

    def onSegmentBoxButton(self):
        prepared = self._begin("box")
        if prepared is None:
            return
        volume, device = prepared
        roi = self.ui.roiSelector.currentNode()
        label = self.ui.boxLabelComboBox.currentData or "auto"
        try:
            self.logic.start_box(volume, roi, label, device, self.ui.outputSegmentationSelector.currentNode(),
                                 self.onFinished, self.onProgress, self.onLine)
        except Exception as exc:
            slicer.util.errorDisplay(f"Could not start: {exc}", windowTitle="PriorSAM")
            return
        self._started("box")

    def _started(self, kind):
        self.active = kind
        self.ui.progressBar.setRange(0, 0)        # busy until the engine reports its first progress line
        self.timer.start()
        self.updateButtons()

    def onProgress(self, done, total):
        if total > 0:
            self.ui.progressBar.setRange(0, total)
            self.ui.progressBar.setValue(done)

    def onLine(self, line):
        logging.debug("PriorSAM: %s", line)

    def onTimer(self):
        busy = False
        if self._probe_run is not None and self._probe_run.poll():
            busy = True
        run = self.logic.run
        if self.active in ("organs", "box") and run is not None:
            if run.poll():
                busy = True
                done, total = run.progress
                what = "Segmenting organs" if self.active == "organs" else "Segmenting from box"
                count = f" — slice {done}/{total}" if total else ""
                self.ui.statusLabel.text = f"{what}{count} — elapsed {estimate.format_duration(run.elapsed)}"
        if not busy:
            self.timer.stop()

    def onFinished(self, outcome):
        self.active = None
        self.ui.progressBar.setRange(0, 100)
        self.ui.progressBar.setValue(100 if outcome.state == process.SUCCEEDED else 0)
        self.ui.statusLabel.text = outcome.message
        if outcome.state == process.SUCCEEDED:
            seg = outcome.segmentation
            if self.ui.outputSegmentationSelector.currentNode() is None:
                self.ui.outputSegmentationSelector.setCurrentNode(seg)
            volume = self.ui.inputVolumeSelector.currentNode()
            slicer.util.setSliceViewerLayers(background=volume)
            seg.CreateClosedSurfaceRepresentation()
            if outcome.warnings:
                slicer.util.warningDisplay("\n".join(outcome.warnings), windowTitle="PriorSAM")
        elif outcome.state == process.FAILED:
            slicer.util.errorDisplay(outcome.message, windowTitle="PriorSAM")
        self.updateEstimate()


class PriorSAMLogic(ScriptedLoadableModuleLogic, SegmentationLogic):
    """Slicer's logic class: :class:`PriorSAMLib.logic.SegmentationLogic` on ``slicer.mrmlScene``.

    Works without the GUI, e.g. from the Python console::

        logic = slicer.util.getModuleLogic("PriorSAM")
        outcome = logic.segment_organs(getNode("CT"), device="auto")
    """

    def __init__(self):
        ScriptedLoadableModuleLogic.__init__(self)
        SegmentationLogic.__init__(self, slicer, slicer.mrmlScene)
        self._load_terminology()

    def _load_terminology(self):
        """Register the PriorSAM terminology context so Slicer's terminology editor lists the codes."""
        try:
            terminologies = slicer.modules.terminologies.logic()
            path = os.path.join(_HERE, "Resources", "PriorSAM-terminology.json")
            if not terminologies.IsTerminologyContextLoaded("PriorSAM abdominal organs"):
                terminologies.LoadTerminologyFromFile(path)
        except AttributeError:
            logging.info("Terminologies module not available; segments still carry their SNOMED CT tags")


class PriorSAMTest(ScriptedLoadableModuleTest):
    """Runs inside Slicer: a small synthetic CT, the real engine in a subprocess, checks of the result."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_segment_organs_small_volume()
        self.setUp()
        self.test_cancel_removes_process_and_files()

    def _small_ct(self):
        import numpy as np

        z, y, x = 3, 64, 80
        yy, xx = np.mgrid[0:y, 0:x]
        body = ((xx - x / 2) / (x * 0.42)) ** 2 + ((yy - y / 2) / (y * 0.4)) ** 2 < 1
        arr = np.where(body, 40, -1000).astype(np.int16)[None].repeat(z, 0)
        node = slicer.util.addVolumeFromArray(arr, ijkToRAS=np.diag([-2.0, -2.0, 3.0, 1.0]), name="PriorSAMTestCT")
        return node

    def test_segment_organs_small_volume(self):
        self.delayDisplay("PriorSAM: segmenting a 3-slice synthetic CT on the CPU")
        logic = PriorSAMLogic()
        logic.ensure_dependencies()
        volume = self._small_ct()
        outcome = logic.segment_organs(volume, device="cpu", timeout=600)
        self.assertEqual(outcome.state, process.SUCCEEDED, outcome.message)
        segmentation = outcome.segmentation.GetSegmentation()
        self.assertEqual(segmentation.GetNumberOfSegments(), 8)
        names = [segmentation.GetNthSegment(i).GetName() for i in range(8)]
        self.assertEqual(names, [o.display for o in logic.organs])
        self.delayDisplay("Test passed")

    def test_cancel_removes_process_and_files(self):
        import time

        logic = PriorSAMLogic()
        volume = self._small_ct()
        run = logic.start_organs(volume, device="cpu")
        time.sleep(3)
        run.poll()
        logic.cancel()
        self.assertEqual(run.state, process.CANCELLED)
        self.assertFalse(run.group_alive())
        self.assertFalse(run.work_dir.exists())
        self.delayDisplay("Test passed")
