"""The PriorSAM Slicer logic on a real MRML scene (slicer-core from PyPI) with the real engine.

A 3-slice crop of the sample CT is loaded into a volume node, exported, segmented by the
engine in a subprocess (random-head checkpoint: plumbing and geometry, not accuracy), and imported
as a segmentation. Slow: each run loads the model and encodes slices on this CPU (~30-60 s).
"""
from __future__ import annotations

import sys
import time

import nibabel as nib
import numpy as np
import pytest

import slicer_helpers

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def slicer_mod():
    return slicer_helpers.require_slicer_core()


@pytest.fixture(scope="module")
def sample_crop(tmp_path_factory):
    from priorsam.data.samples import sample_ct
    from priorsam.errors import AssetError

    try:
        s = sample_ct()
    except AssetError as exc:
        pytest.skip(f"sample CT unavailable: {exc}")
    d = tmp_path_factory.mktemp("crop")
    z0, z1 = 87, 90          # 3 axial slices where all 8 reference organs appear
    nib.save(nib.load(str(s.image)).slicer[:, :, z0:z1], str(d / "ct3.nii.gz"))
    nib.save(nib.load(str(s.label)).slicer[:, :, z0:z1], str(d / "ref3.nii.gz"))
    return d / "ct3.nii.gz", d / "ref3.nii.gz"


def _logic(slicer, scene, weights, kept):
    """The module's default engine: the MONAI bundle once bundle/configs/inference.json exists, else the CLI."""
    from PriorSAMLib.logic import SegmentationLogic

    return SegmentationLogic(slicer, scene, python=sys.executable, weights=str(weights), keep_results_in=kept)


def _matrix(node):
    import vtk

    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    return np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)])


def test_segment_organs_builds_named_coded_segmentation_on_input_geometry(slicer_mod, sample_crop, random_checkpoint,
                                                                          tmp_path):
    slicer = slicer_mod
    from PriorSAMLib import process, segmentation_io

    scene = slicer.vtkMRMLScene()
    logic = _logic(slicer, scene, random_checkpoint, tmp_path / "kept")
    volume = logic.load_volume(sample_crop[0], "sample CT")
    assert logic.slice_count(volume) == 3
    sh = scene.GetSubjectHierarchyNode()
    study = sh.CreateStudyItem(sh.CreateSubjectItem(sh.GetSceneItemID(), "patient"), "study")
    sh.CreateItem(study, volume)

    outcome = logic.segment_organs(volume, device="cpu", timeout=600)
    assert outcome.state == process.SUCCEEDED, outcome.message + "\n" + "\n".join(logic.run.lines[-10:])
    from PriorSAMLib import commands

    expected = "monai.bundle" if commands.bundle_config().is_file() else "priorsam"
    assert logic.run.command[2] == expected
    seg = outcome.segmentation
    assert seg.IsA("vtkMRMLSegmentationNode")
    assert not logic.run.work_dir.exists()                       # temp files gone after import

    segmentation = seg.GetSegmentation()
    assert segmentation.GetNumberOfSegments() == 8
    for i, organ in enumerate(logic.organs):
        segment = segmentation.GetNthSegment(i)
        assert segmentation.GetNthSegmentID(i) == organ.name
        assert segment.GetName() == organ.display
        assert np.allclose(segment.GetColor(), organ.rgb_float)
        entry = slicer.vtkSlicerTerminologyEntry()
        assert slicer.vtkSlicerTerminologiesModuleLogic.DeserializeTerminologyEntry(segment.GetTerminology(), entry)
        assert entry.GetTypeObject().GetCodeValue() == organ.code
        assert entry.GetCategoryObject().GetCodeValue() == logic.category.code

    # voxel counts and voxels: exactly the engine's label map
    engine = np.asarray(nib.load(str(tmp_path / "kept" / "input_seg.nii.gz")).dataobj).astype(np.int64)
    counts = segmentation_io.segment_voxel_counts(slicer, scene, seg, volume)
    assert counts == {o.name: int((engine == o.value).sum()) for o in logic.organs}
    assert sum(counts.values()) > 0

    exported = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "exported")
    slicer.vtkSlicerSegmentationsModuleLogic.ExportAllSegmentsToLabelmapNode(
        seg, exported, slicer.vtkSegmentation.EXTENT_REFERENCE_GEOMETRY)
    assert exported.GetImageData().GetDimensions() == volume.GetImageData().GetDimensions()
    assert np.array_equal(_matrix(exported), _matrix(volume))          # identical geometry, not just close
    assert np.array_equal(slicer.util.arrayFromVolume(exported).transpose(2, 1, 0), engine)

    # the segmentation sits with its input volume in the subject hierarchy
    assert sh.GetItemParent(sh.GetItemByDataNode(seg)) == study
    assert seg.GetNodeReference("PriorSAMInputVolume") is volume


def test_cancel_mid_run_leaves_no_process_and_no_temp_files(slicer_mod, sample_crop, random_checkpoint, tmp_path):
    slicer = slicer_mod
    from PriorSAMLib import process

    scene = slicer.vtkMRMLScene()
    logic = _logic(slicer, scene, random_checkpoint, None)
    volume = logic.load_volume(sample_crop[0], "sample CT")
    finished = []
    run = logic.start_organs(volume, device="cpu", on_finished=finished.append)
    work = run.work_dir
    assert (work / "in" / "input.nii.gz").is_file()
    deadline = time.monotonic() + 180
    while not run.lines and time.monotonic() < deadline:            # the engine is up and talking
        run.poll()
        time.sleep(0.1)
    assert run.state == process.RUNNING
    logic.cancel()
    assert run.state == process.CANCELLED and finished[0].state == process.CANCELLED
    assert not run.group_alive()
    assert not work.exists()
    assert scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == 0


def test_segment_from_box_adds_one_named_organ(slicer_mod, sample_crop, random_checkpoint, tmp_path):
    slicer = slicer_mod
    from PriorSAMLib import process, segmentation_io

    scene = slicer.vtkMRMLScene()
    logic = _logic(slicer, scene, random_checkpoint, tmp_path / "kept")
    volume = logic.load_volume(sample_crop[0], "sample CT")
    # a box around the reference liver, in RAS mm
    ref = nib.load(str(sample_crop[1]))
    ijk = np.argwhere(np.asarray(ref.dataobj) == 5)
    ras = nib.affines.apply_affine(ref.affine, np.vstack([ijk.min(0), ijk.max(0)]))
    lo, hi = ras.min(0) - 3, ras.max(0) + 3
    roi = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "liver box")
    roi.SetXYZ(*((lo + hi) / 2))
    roi.SetRadiusXYZ(*((hi - lo) / 2))
    assert np.allclose(segmentation_io.roi_bounds_ras(slicer, roi, volume), list(lo) + list(hi), atol=1e-3)

    finished = []
    logic.start_box(volume, roi, "liver", "cpu", on_finished=finished.append).wait(timeout=600)
    outcome = finished[0]
    assert outcome.state == process.SUCCEEDED, outcome.message + "\n" + "\n".join(logic.run.lines[-10:])
    segment = outcome.segmentation.GetSegmentation().GetSegment(outcome.segment_id)
    assert segment.GetName() == "Liver" and "10200004" in segment.GetTerminology()
    engine = np.asarray(nib.load(str(tmp_path / "kept" / "input_box.nii.gz")).dataobj)
    counts = segmentation_io.segment_voxel_counts(slicer, scene, outcome.segmentation, volume)
    assert counts[outcome.segment_id] == int((engine > 0).sum()) > 0
    assert "--organs" not in logic.run.command and logic.organ_map_for(volume) is None

    # after "Segment organs" the box is answered from that run's organ map: the same label map as before,
    # without segmenting the volume again; changed voxels make the kept map stale
    organs = logic.segment_organs(volume, "cpu", timeout=600)
    assert organs.state == process.SUCCEEDED, organs.message
    kept = logic.organ_map_for(volume)
    assert kept is not None and kept.is_file()
    assert logic.organ_map_for_box(volume, "liver") == kept == logic.organ_map_for_box(volume, "auto")
    assert logic.organ_map_for_box(volume, "lesion") is None     # segmented slice by slice, no organ map
    finished.clear()
    logic.start_box(volume, roi, "liver", "cpu", on_finished=finished.append).wait(timeout=600)
    assert finished[0].state == process.SUCCEEDED, finished[0].message
    command = logic.run.command
    assert command[command.index("--organs") + 1] == str(kept)
    again = np.asarray(nib.load(str(tmp_path / "kept" / "input_box.nii.gz")).dataobj)
    again_bytes = (tmp_path / "kept" / "input_box.nii.gz").read_bytes()
    np.testing.assert_array_equal(again, engine)
    volume.GetImageData().Modified()
    assert logic.organ_map_for(volume) is None
    logic._keep_organ_map(volume, tmp_path / "kept" / "input_box.nii.gz")   # a new organ run replaces the map
    newer = logic.organ_map_for(volume)
    assert not kept.exists() and newer is not None and newer.read_bytes() == again_bytes
    logic.forget_organ_maps()
    assert not newer.exists() and logic.organ_map_for(volume) is None
