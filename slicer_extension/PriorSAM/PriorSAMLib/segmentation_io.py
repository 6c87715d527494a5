"""Scene-side I/O: export a volume for the engine, import its label map as a named segmentation.

Every function takes the ``slicer`` module (and the MRML scene) as arguments instead of importing
them, so the same code runs in 3D Slicer and, in tests, with ``slicer-core`` from PyPI. Only
storage nodes and segmentation logic are used (no ``slicer.app``), which both provide.

Geometry: the engine writes its label map on the input's own grid; on import the label map's
dimensions are checked against the input and its IJK→RAS is set to the input's exact matrix
(the NIfTI round trip stores the affine in float32), so the segmentation's geometry is identical.
"""
from __future__ import annotations

from pathlib import Path

from .colors import Category, Organ, terminology_entry

GEOMETRY_TOLERANCE_MM = 1e-3
CONVERTER_RULES = ("vtkBinaryLabelmapToClosedSurfaceConversionRule", "vtkClosedSurfaceToBinaryLabelmapConversionRule")


class SegmentationImportError(RuntimeError):
    """The engine's output cannot be imported (missing, unreadable, or on another grid)."""


def ensure_segmentation_converters(slicer) -> None:
    """Register the labelmap/surface converter rules when nobody has (Slicer's Segmentations module
    does it at start-up; a bare ``slicer-core`` scene needs it before segments can be created)."""
    factory = slicer.vtkSegmentationConverterFactory.GetInstance()
    if len(factory.GetConverterRules()) == 0:
        for name in CONVERTER_RULES:
            factory.RegisterConverterRule(getattr(slicer, name)())


def _matrix(slicer, node):
    import vtk

    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    return m


def read_volume(slicer, scene, path: str | Path, name: str, labelmap: bool = False):
    """Read a NIfTI/NRRD file into a new scalar (or label map) volume node with a display node."""
    cls = "vtkMRMLLabelMapVolumeNode" if labelmap else "vtkMRMLScalarVolumeNode"
    node = scene.AddNewNodeByClass(cls, name)
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(str(path))
    storage.SetSingleFile(True)
    if not storage.ReadData(node):
        scene.RemoveNode(node)
        raise SegmentationImportError(f"cannot read {path}")
    node.CreateDefaultDisplayNodes()
    return node


def write_volume(slicer, volume_node, path: str | Path) -> Path:
    """Write the volume's voxels and IJK→RAS (its own frame; parent transforms are not applied)."""
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(str(path))
    storage.SetUseCompression(False if str(path).endswith(".nii") else True)
    if not storage.WriteData(volume_node):
        raise SegmentationImportError(f"cannot write the volume to {path}")
    return Path(path)


def same_geometry(slicer, a, b, tol: float = GEOMETRY_TOLERANCE_MM) -> bool:
    if a.GetImageData() is None or b.GetImageData() is None:
        return False
    if tuple(a.GetImageData().GetDimensions()) != tuple(b.GetImageData().GetDimensions()):
        return False
    ma, mb = _matrix(slicer, a), _matrix(slicer, b)
    return all(abs(ma.GetElement(r, c) - mb.GetElement(r, c)) <= tol for r in range(4) for c in range(4))


def _read_on_reference_grid(slicer, scene, path: Path, reference_volume, name: str):
    label = read_volume(slicer, scene, path, name, labelmap=True)
    if not same_geometry(slicer, label, reference_volume):
        dims = label.GetImageData().GetDimensions()
        scene.RemoveNode(label)
        raise SegmentationImportError(f"the result {path.name} (size {dims}) is not on the input volume's grid")
    label.SetIJKToRASMatrix(_matrix(slicer, reference_volume))
    return label


def new_segmentation(slicer, scene, reference_volume, name: str):
    """An empty segmentation node on the reference volume's geometry, in the volume's transform and study."""
    ensure_segmentation_converters(slicer)
    seg = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
    seg.CreateDefaultDisplayNodes()
    seg.SetReferenceImageGeometryParameterFromVolumeNode(reference_volume)
    seg.SetNodeReferenceID("PriorSAMInputVolume", reference_volume.GetID())
    if reference_volume.GetParentTransformNode() is not None:
        seg.SetAndObserveTransformNodeID(reference_volume.GetParentTransformNode().GetID())
    place_in_subject_hierarchy(scene, seg, reference_volume)
    return seg


def place_in_subject_hierarchy(scene, node, reference_volume) -> None:
    """Put ``node`` beside the input volume (same patient/study branch), as Slicer does for DICOM segmentations."""
    sh = scene.GetSubjectHierarchyNode()
    if sh is None:
        return
    # Slicer's subject hierarchy plugins create items for new nodes; a bare scene (slicer-core) does not
    vol_item = sh.GetItemByDataNode(reference_volume) or sh.CreateItem(sh.GetSceneItemID(), reference_volume)
    item = sh.GetItemByDataNode(node)
    parent = sh.GetItemParent(vol_item)
    if item:
        sh.SetItemParent(item, parent)
    else:
        sh.CreateItem(parent, node)


def add_organ_segment(slicer, segmentation_node, organ: Organ, category: Category, segment_id: str | None = None) -> str:
    """An empty segment named, coloured and coded for ``organ``; returns its id."""
    segmentation = segmentation_node.GetSegmentation()
    sid = segmentation.AddEmptySegment(segment_id or organ.name, organ.display, list(organ.rgb_float))
    segment = segmentation.GetSegment(sid)
    tag = terminology_entry(organ, category)
    if hasattr(segment, "SetTerminology"):
        segment.SetTerminology(tag)
    else:                                              # Slicer < 5.8: the tag only
        segment.SetTag(segment.GetTerminologyEntryTagName(), tag)
    return sid


def import_organs(slicer, scene, label_path: str | Path, reference_volume, organs: list[Organ],
                  category: Category, name: str):
    """New segmentation node with one segment per organ (empty ones included) from a label map file."""
    import vtk

    label = _read_on_reference_grid(slicer, scene, Path(label_path), reference_volume, name + " labels")
    try:
        seg = new_segmentation(slicer, scene, reference_volume, name)
        by_value = {o.value: o for o in organs}
        ids = vtk.vtkStringArray()
        # ImportLabelmapToSegmentationNode with segment ids puts label value k into ids[k-1]
        for value in range(1, max(by_value) + 1):
            organ = by_value.get(value)
            if organ is None:
                raise SegmentationImportError(f"label values must be 1..N without gaps; {value} has no organ")
            ids.InsertNextValue(add_organ_segment(slicer, seg, organ, category))
        ok = slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(label, seg, ids)
        if not ok:
            scene.RemoveNode(seg)
            raise SegmentationImportError(f"Slicer could not import {Path(label_path).name} as segments")
        return seg
    finally:
        scene.RemoveNode(label)


def import_single(slicer, scene, label_path: str | Path, reference_volume, segmentation_node, organ: Organ | None,
                  category: Category, fallback_name: str = "Organ"):
    """Add the non-zero voxels of a one-organ label map as a new segment of ``segmentation_node``.

    ``organ`` None (the engine could not name it) gives a plainly named, uncoded segment.
    Returns the new segment id.
    """
    import vtk

    label = _read_on_reference_grid(slicer, scene, Path(label_path), reference_volume, "PriorSAM box labels")
    try:
        # one segment for all non-zero voxels, whatever value the engine wrote
        thresh = vtk.vtkImageThreshold()
        thresh.SetInputData(label.GetImageData())
        thresh.ThresholdByUpper(1)
        thresh.SetInValue(1)
        thresh.SetOutValue(0)
        thresh.SetOutputScalarTypeToUnsignedChar()
        thresh.Update()
        label.SetAndObserveImageData(thresh.GetOutput())
        segmentation = segmentation_node.GetSegmentation()
        if organ is not None:
            base = organ.name
            sid = add_organ_segment(slicer, segmentation_node, organ, category,
                                    segmentation.GenerateUniqueSegmentID(base))
        else:
            sid = segmentation.AddEmptySegment(segmentation.GenerateUniqueSegmentID("organ"), fallback_name,
                                               [0.9, 0.9, 0.2])
        ids = vtk.vtkStringArray()
        ids.InsertNextValue(sid)
        if not slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(label, segmentation_node, ids):
            segmentation.RemoveSegment(sid)
            raise SegmentationImportError(f"Slicer could not import {Path(label_path).name} as a segment")
        return sid
    finally:
        scene.RemoveNode(label)


def segment_voxel_counts(slicer, scene, segmentation_node, reference_volume) -> dict[str, int]:
    """Voxels per segment id on the reference grid (for tests and the status line)."""
    import numpy as np
    import vtk
    from vtk.util.numpy_support import vtk_to_numpy

    out = {}
    segmentation = segmentation_node.GetSegmentation()
    for i in range(segmentation.GetNumberOfSegments()):
        sid = segmentation.GetNthSegmentID(i)
        label = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "__count__")
        try:
            ids = vtk.vtkStringArray()
            ids.InsertNextValue(sid)
            slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(segmentation_node, ids, label,
                                                                                  reference_volume)
            img = label.GetImageData()
            out[sid] = 0 if img is None else int(np.count_nonzero(vtk_to_numpy(img.GetPointData().GetScalars())))
        finally:
            display = label.GetDisplayNode()
            color = display.GetColorNode() if display is not None else None
            scene.RemoveNode(label)
            if color is not None and color.GetName() and color.GetName().startswith("__count__"):
                scene.RemoveNode(color)
    return out


def roi_bounds_ras(slicer, roi_node, volume_node=None) -> list[float]:
    """Axis-aligned [x0, y0, z0, x1, y1, z1] (mm) of a markups ROI, in the volume's own frame.

    A rotated ROI gives the bounds of its corners; a volume under a transform gets the ROI
    mapped into its untransformed frame (the frame of the exported file).
    """
    import vtk

    b = [0.0] * 6
    roi_node.GetRASBounds(b)
    if b[0] > b[1]:
        raise SegmentationImportError("the ROI has no size; place it around the organ first")
    corners = [(x, y, z) for x in b[0:2] for y in b[2:4] for z in b[4:6]]
    parent = volume_node.GetParentTransformNode() if volume_node is not None else None
    if parent is not None:
        to_local = vtk.vtkGeneralTransform()
        parent.GetTransformFromWorld(to_local)
        corners = [to_local.TransformPoint(c) for c in corners]
    xs, ys, zs = zip(*corners)
    return [min(xs), min(ys), min(zs), max(xs), max(ys), max(zs)]
