"""Render docs/images/slicer_priorsam_segmentation.png: a real engine output, imported by the module's logic.

1. Crop 3 axial slices of the sample CT.
2. Run the engine's box-prompted path (pretrained LiteMedSAM, ``priorsam.engine.box_segment``) once per
   organ, with a box around each organ taken from the sample's reference labels (TotalSegmentator
   output, not manual ground truth). The prompt-free 8-organ model needs trained weights that have not
   landed yet, so the picture shows the box path's output, and says so.
3. Import the label map with the module's own logic (``PriorSAMLib.segmentation_io.import_organs``)
   into a slicer-core MRML scene, export it back on the CT grid, and render the middle slice with the
   segments' colours over the CT (VTK, offscreen), with a legend.

Run: ``.venv/bin/python slicer_extension/tools/make_screenshot.py`` (about a minute on 2 CPU cores).
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np

HERE = Path(__file__).resolve()
sys.path.insert(0, str(HERE.parents[1] / "PriorSAM"))
OUT = HERE.parents[2] / "docs" / "images" / "slicer_priorsam_segmentation.png"
ORGANS = ["spleen", "kidney_right", "kidney_left", "gallbladder", "liver", "stomach", "aorta", "pancreas"]


def engine_label_map(ct_path: Path, ref_path: Path, out_path: Path) -> None:
    from priorsam.engine.box_segment import LiteMedSAMBoxPredictor, segment_box
    from priorsam.io import read_volume, write_label_map
    from priorsam.labels import labels

    volume = read_volume(str(ct_path))
    ref = nib.load(str(ref_path))
    ref_arr = np.asarray(ref.dataobj)
    predictor = LiteMedSAMBoxPredictor(volume.axial_slices(), "cpu")      # embeddings shared by all organs
    out = np.zeros(volume.shape, np.uint8)
    for lab in labels():
        ijk = np.argwhere(ref_arr == lab.id)
        if len(ijk) < 20:
            continue
        ras = nib.affines.apply_affine(ref.affine, np.vstack([ijk.min(0), ijk.max(0)]))
        box = list(ras.min(0)) + list(ras.max(0))
        mask = segment_box(volume, box, space="ras", predictor=predictor, show_bar=False)
        out[mask & (out == 0)] = lab.id
    write_label_map(volume, out, out_path)


def render(slicer, scene, volume, seg, organs, path: Path, title: str) -> None:
    import vtk
    from vtk.util.numpy_support import numpy_to_vtk

    exported = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "exported")
    slicer.vtkSlicerSegmentationsModuleLogic.ExportAllSegmentsToLabelmapNode(
        seg, exported, slicer.vtkSegmentation.EXTENT_REFERENCE_GEOMETRY)
    ct = slicer.util.arrayFromVolume(volume)[1].astype(np.float32)          # middle slice, (J, I)
    lab = slicer.util.arrayFromVolume(exported)[1]
    segmentation = seg.GetSegmentation()
    colours = {i + 1: segmentation.GetNthSegment(i).GetColor() for i in range(segmentation.GetNumberOfSegments())}
    grey = np.clip((ct + 160) / 400, 0, 1)                                   # abdomen window W400/L40
    rgb = np.repeat(grey[..., None], 3, -1)
    for value, colour in colours.items():
        m = lab == value
        rgb[m] = 0.45 * rgb[m] + 0.55 * np.array(colour)
    # Slicer's axial view: patient right on the screen's left, anterior up (RAS volume: flip I)
    img = (np.flip(rgb, 1) * 255).astype(np.uint8)
    h, w = img.shape[:2]
    scale = 6
    img = np.kron(img, np.ones((scale, scale, 1), np.uint8))
    h, w = img.shape[:2]
    data = vtk.vtkImageData()
    data.SetDimensions(w, h, 1)
    # VTK's first image row is the bottom one: array row 0 (posterior, J=0) lands at the bottom, as in Slicer
    data.GetPointData().SetScalars(numpy_to_vtk(np.ascontiguousarray(img).reshape(-1, 3), deep=True))
    actor = vtk.vtkImageActor()
    actor.GetMapper().SetInputData(data)
    ren = vtk.vtkRenderer()
    ren.AddActor(actor)
    ren.SetBackground(0, 0, 0)
    panel = 260
    win = vtk.vtkRenderWindow()
    win.SetOffScreenRendering(1)
    win.SetSize(w + panel, h)
    ren.SetViewport(0, 0, w / (w + panel), 1)
    win.AddRenderer(ren)
    legend = vtk.vtkRenderer()
    legend.SetViewport(w / (w + panel), 0, 1, 1)
    legend.SetBackground(0.12, 0.12, 0.14)
    win.AddRenderer(legend)
    present = sorted(v for v in colours if (lab == v).any())
    lines = [(title, (1, 1, 1))] + [(organs[v - 1].display, colours[v]) for v in present]
    for k, (text, colour) in enumerate(lines):
        t = vtk.vtkTextActor()
        t.SetInput(text)
        t.GetTextProperty().SetFontSize(17 if k else 15)
        t.GetTextProperty().SetColor(*colour)
        t.GetTextProperty().SetBold(k == 0)
        t.SetDisplayPosition(w + 14, h - 34 - 26 * k)     # window coordinates, inside the legend panel
        legend.AddActor(t)
    ren.ResetCamera()
    cam = ren.GetActiveCamera()
    cam.ParallelProjectionOn()
    cam.SetParallelScale(h / 2)
    win.Render()
    grab = vtk.vtkWindowToImageFilter()
    grab.SetInput(win)
    grab.Update()
    writer = vtk.vtkPNGWriter()
    writer.SetFileName(str(path))
    writer.SetInputConnection(grab.GetOutputPort())
    writer.Write()


def main() -> None:
    import slicer

    from PriorSAMLib import colors, segmentation_io
    from priorsam.data.samples import sample_ct

    s = sample_ct()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        z0 = 87                                  # all 8 reference organs appear here
        nib.save(nib.load(str(s.image)).slicer[:, :, z0:z0 + 3], str(tmp / "ct.nii.gz"))
        nib.save(nib.load(str(s.label)).slicer[:, :, z0:z0 + 3], str(tmp / "ref.nii.gz"))
        engine_label_map(tmp / "ct.nii.gz", tmp / "ref.nii.gz", tmp / "seg.nii.gz")
        scene = slicer.vtkMRMLScene()
        volume = segmentation_io.read_volume(slicer, scene, tmp / "ct.nii.gz", "sample CT")
        organs, category = colors.load_organs()
        seg = segmentation_io.import_organs(slicer, scene, tmp / "seg.nii.gz", volume, organs, category, "organs")
        OUT.parent.mkdir(parents=True, exist_ok=True)
        render(slicer, scene, volume, seg, organs, OUT, "PriorSAM (box path)")
    print(OUT)


if __name__ == "__main__":
    main()
