"""Run inside the simulated fresh 3D Slicer Python by tests/test_slicer_fresh_install.py (not a test module).

As the module would in Slicer: the first-use install routine (``SegmentationLogic.ensure_dependencies``,
the user's consent given), then both buttons' runs on a real MRML scene (slicer-core): "Segment organs"
with the device left at ``auto`` before any GPU probe answered (so the engine gets ``--device auto``),
and "Segment from box" with the label left at ``auto``. Writes what happened to a JSON file.

usage: python slicer_fresh_driver.py MODULE_DIR WHEEL_DIR CT BOX_JSON OUT_JSON
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path


def main(module_dir: str, wheel_dir: str, ct: str, box_json: str, out_json: str) -> int:
    sys.path.insert(0, module_dir)          # Slicer puts a scripted module's folder on sys.path
    import slicer                           # slicer-core: the real MRML classes, no application

    from PriorSAMLib import commands, process, segmentation_io
    from PriorSAMLib.logic import SegmentationLogic

    report: dict = {"python": sys.executable}
    scene = slicer.vtkMRMLScene()
    logic = SegmentationLogic(slicer, scene, python=sys.executable)
    asked: list[str] = []

    def consent(text: str) -> bool:
        asked.append(text)
        return True

    t0 = time.monotonic()
    installed = logic.ensure_dependencies(confirm=consent, find_links=[wheel_dir])
    report["install_seconds"] = round(time.monotonic() - t0, 1)
    report["installed"] = installed
    report["consent_asked"] = len(asked)
    report["second_check_missing"] = logic.ensure_dependencies(confirm=consent, find_links=[wheel_dir])

    import priorsam

    report["priorsam_file"] = priorsam.__file__
    report["bundle_config"] = str(commands.bundle_config(sys.executable))

    volume = logic.load_volume(ct, "CT")
    # "Segment organs": the UI's default device, before the GPU probe has answered
    t0 = time.monotonic()
    organs = logic.segment_organs(volume, device="auto", timeout=1800)
    report["organs"] = {"state": organs.state, "message": organs.message, "command": logic.run.command,
                        "seconds": round(time.monotonic() - t0, 1), "tail": logic.run.lines[-8:]}
    if organs.state == process.SUCCEEDED:
        seg = organs.segmentation
        report["organs"]["segments"] = [seg.GetSegmentation().GetNthSegment(i).GetName()
                                        for i in range(seg.GetSegmentation().GetNumberOfSegments())]
        report["organs"]["voxels"] = segmentation_io.segment_voxel_counts(slicer, scene, seg, volume)
    # "Segment from box": a markups ROI, label left at auto (the organ that answers names it), after the organ run
    lo, hi = json.loads(Path(box_json).read_text())
    roi = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "box")
    roi.SetXYZ(*[(a + b) / 2 for a, b in zip(lo, hi)])
    roi.SetRadiusXYZ(*[(b - a) / 2 for a, b in zip(lo, hi)])
    finished: list = []
    t0 = time.monotonic()
    logic.start_box(volume, roi, "auto", "auto", on_finished=finished.append).wait(timeout=1800)
    box = finished[0]
    report["box"] = {"state": box.state, "message": box.message, "command": logic.run.command,
                     "seconds": round(time.monotonic() - t0, 1), "tail": logic.run.lines[-8:]}
    if box.state == process.SUCCEEDED:
        segment = box.segmentation.GetSegmentation().GetSegment(box.segment_id)
        report["box"]["segment"] = segment.GetName()
        report["box"]["voxels"] = segmentation_io.segment_voxel_counts(slicer, scene, box.segmentation,
                                                                       volume)[box.segment_id]
    report["segmentation_nodes"] = scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode")
    Path(out_json).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:6]))
