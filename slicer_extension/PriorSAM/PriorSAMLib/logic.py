"""The module's logic without GUI: export → subprocess inference → import, non-blocking.

:class:`SegmentationLogic` receives the ``slicer`` module and a MRML scene, so it runs in 3D
Slicer (``PriorSAMLogic`` in PriorSAM.py adds the ScriptedLoadableModuleLogic base) and, in
tests, on a ``slicer-core`` scene. ``start_*`` return at once with a :class:`~.process.Run`;
whoever owns the event loop calls ``run.poll()`` (a QTimer in the widget, a loop in tests) and
``on_finished`` receives an :class:`Outcome` on that same thread.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from . import commands, estimate, process, segmentation_io
from .colors import Organ, load_organs
from .progress import parse_label


@dataclass
class Outcome:
    state: str                           # succeeded, failed, cancelled
    message: str
    seconds: float
    segmentation: object = None          # vtkMRMLSegmentationNode on success
    segment_id: str | None = None        # box runs: the new segment
    warnings: list = field(default_factory=list)   # the engine's "warning: …" lines (input checks, no 3D context)


Finished = Callable[[Outcome], None]


class SegmentationLogic:
    def __init__(self, slicer, scene, python: str | None = None, backend: str = commands.DEFAULT_BACKEND,
                 weights: str | None = None, terminology_file: str | Path | None = None,
                 keep_results_in: str | Path | None = None):
        self.slicer, self.scene = slicer, scene
        self.python = python
        self.backend = backend
        self.weights = weights              # None: the engine's default (the installed demo weights or $PRIORSAM_WEIGHTS)
        self.organs, self.category = load_organs(terminology_file)
        self.measured_per_slice: dict[str, float] = {}
        self.device_info: dict | None = None
        self.run: process.Run | None = None
        # a copy of each engine output label map is kept here before the temp folder goes (debugging, tests)
        self.keep_results_in = Path(keep_results_in) if keep_results_in else None
        # volume node ID -> (what the map depends on, the organ label map of its last "Segment organs" run)
        self._organ_maps: dict[str, tuple[tuple, Path]] = {}
        self._organ_map_dir: Path | None = None

    # -- facts shown before a run ------------------------------------------------------------
    def organ_by_name(self, name: str) -> Organ | None:
        return next((o for o in self.organs if o.name == name), None)

    def organ_by_value(self, value: int) -> Organ | None:
        return next((o for o in self.organs if o.value == value), None)

    def slice_count(self, volume) -> int:
        import vtk

        m = vtk.vtkMatrix4x4()
        volume.GetIJKToRASMatrix(m)
        rows = [[m.GetElement(r, c) for c in range(4)] for r in range(4)]
        return estimate.axial_slice_count(volume.GetImageData().GetDimensions(), rows)

    def resolved_device(self, choice: str) -> tuple[str, str]:
        """(engine device, note for the user) for a UI choice, from the last device probe."""
        dev = commands.engine_device(choice)
        info = self.device_info or {}
        has_cuda = bool(info.get("cuda"))
        if dev == "cuda" and self.device_info is not None and not has_cuda:
            raise RuntimeError("GPU requested but no usable CUDA GPU was found: " + commands.describe_probe(info) +
                               ". Choose 'auto' or 'CPU'.")
        if dev == "auto":
            if self.device_info is None:
                return "auto", "Device not checked yet: the engine uses a CUDA GPU if it finds one, else the CPU."
            if has_cuda:
                return "cuda", f"Using the GPU ({info.get('name')})."
            return "cpu", "No CUDA GPU found: falling back to the CPU (slower)."
        return dev, "Using the GPU." if dev == "cuda" else "Using the CPU."

    def estimate_for(self, volume, choice: str) -> estimate.Estimate:
        dev, _ = self.resolved_device(choice)
        return estimate.estimate_seconds(self.slice_count(volume), dev, self.measured_per_slice.get(dev))

    # -- device probe and dependencies -------------------------------------------------------
    def start_probe(self, on_done: Callable[[dict | None], None]) -> process.Run:
        job = commands.probe_job(self.python)

        def done(run: process.Run) -> None:
            info = next((i for i in map(commands.parse_probe, run.lines) if i is not None), None)
            self.device_info = info
            on_done(info)

        return process.Run(job.command, job.env, on_done=done).start()

    def ensure_dependencies(self, confirm=None, find_links=None) -> list[str]:
        """First use: install priorsam and its dependencies into the jobs' Python (with consent)."""
        from . import install

        req = Path(__file__).resolve().parents[1] / "Resources" / "requirements.txt"
        return install.ensure(self.slicer, req, confirm, find_links=find_links, python=self.python)

    # -- runs --------------------------------------------------------------------------------
    def _export(self, volume) -> Path:
        work = process.make_work_dir()
        try:
            segmentation_io.write_volume(self.slicer, volume, work / "in" / f"{commands.CASE_NAME}.nii.gz")
        except Exception:
            import shutil

            shutil.rmtree(work, ignore_errors=True)
            raise
        return work

    def _check_idle(self) -> None:
        if self.run is not None and self.run.state == process.RUNNING:
            raise RuntimeError("a PriorSAM run is already in progress; cancel it first")

    def start_organs(self, volume, device: str = "auto", on_finished: Optional[Finished] = None,
                     on_progress=None, on_line=None) -> process.Run:
        """Segment the 8 organs of ``volume`` in a subprocess; the result arrives in ``on_finished``."""
        self._check_idle()
        dev, _ = self.resolved_device(device) if self.device_info is not None else (commands.engine_device(device), "")
        work = self._export(volume)
        job = commands.organ_job(work, dev, self.backend, self.python, weights=self.weights)
        slices = self.slice_count(volume)
        name = f"{volume.GetName()} organs (PriorSAM)"

        def add(path: Path):
            seg = segmentation_io.import_organs(self.slicer, self.scene, path, volume, self.organs, self.category,
                                                name)
            self._keep_organ_map(volume, path)
            return seg

        def done(run: process.Run) -> None:
            outcome = self._finish(run, job, add)
            if outcome.state == process.SUCCEEDED and dev in ("cpu", "cuda"):
                per = estimate.per_slice_from_run(run.elapsed, slices, dev)
                if per:
                    self.measured_per_slice[dev] = per
            if on_finished:
                on_finished(outcome)

        self.run = process.Run(job.command, job.env, work, on_progress, on_line, done).start()
        return self.run

    def start_box(self, volume, roi, label: str = "auto", device: str = "auto", segmentation=None,
                  on_finished: Optional[Finished] = None, on_progress=None, on_line=None) -> process.Run:
        """Segment the one organ inside a markups ROI; ``label`` 'auto' lets the model name it.

        For ``auto`` or one of the eight organs, the organ label map of the last "Segment organs" run on this
        volume (same voxels, geometry and weights) answers the box, instead of segmenting the volume again."""
        self._check_idle()
        dev, _ = self.resolved_device(device) if self.device_info is not None else (commands.engine_device(device), "")
        bounds = segmentation_io.roi_bounds_ras(self.slicer, roi, volume)
        organs = self.organ_map_for_box(volume, label)
        work = self._export(volume)
        job = commands.box_job(work, bounds, label, dev, self.python, organs=organs, weights=self.weights)

        def add(path: Path):
            seg = segmentation or segmentation_io.new_segmentation(
                self.slicer, self.scene, volume, f"{volume.GetName()} box organs (PriorSAM)")
            organ = self.organ_by_name(label) if label != "auto" else self._chosen_organ(self.run)
            sid = segmentation_io.import_single(self.slicer, self.scene, path, volume, seg, organ, self.category,
                                                fallback_name="Unnamed organ")
            return seg, sid

        def done(run: process.Run) -> None:
            outcome = self._finish(run, job, add)
            if on_finished:
                on_finished(outcome)

        self.run = process.Run(job.command, job.env, work, on_progress, on_line, done).start()
        return self.run

    # -- organ maps kept for box prompts ------------------------------------------------------
    def _organ_map_state(self, volume) -> tuple:
        """What an organ map of ``volume`` depends on: its voxels (the image data's modification time), where
        they lie and the weights. Any change makes the kept map stale."""
        import vtk

        m = vtk.vtkMatrix4x4()
        volume.GetIJKToRASMatrix(m)
        image = volume.GetImageData()
        return (image.GetMTime() if image is not None else None, tuple(image.GetDimensions()) if image else None,
                tuple(round(m.GetElement(r, c), 6) for r in range(3) for c in range(4)), self.weights)

    def _keep_organ_map(self, volume, path: Path) -> None:
        import os
        import shutil
        import tempfile

        old = self._organ_maps.pop(volume.GetID(), None)
        if old is not None:
            old[1].unlink(missing_ok=True)
        try:
            if self._organ_map_dir is None:
                self._organ_map_dir = Path(tempfile.mkdtemp(prefix="PriorSAM-organs-"))
            suffix = ".nii.gz" if str(path).endswith(".nii.gz") else Path(path).suffix  # the reader goes by it
            handle, name = tempfile.mkstemp(suffix=suffix, dir=self._organ_map_dir)
            os.close(handle)
            shutil.copy2(path, name)
        except OSError:
            return      # not kept (no disk space): a later box segments the volume itself, as before
        self._organ_maps[volume.GetID()] = (self._organ_map_state(volume), Path(name))

    def organ_map_for(self, volume) -> Path | None:
        """The organ label map of the last "Segment organs" run on ``volume``, or None when there was none or
        the volume (or the weights) changed since."""
        state, path = self._organ_maps.get(volume.GetID(), (None, None))
        if path is None or not path.is_file() or state != self._organ_map_state(volume):
            return None
        return path

    def organ_map_for_box(self, volume, label: str) -> Path | None:
        """The kept organ map that will answer a box with ``label`` on ``volume`` (``auto`` or one of the eight
        organs; any other label is segmented slice by slice), or None when the box segments the volume."""
        return self.organ_map_for(volume) if label == "auto" or self.organ_by_name(label) else None

    def forget_organ_maps(self) -> None:
        """Delete the kept organ maps (the scene closes, the module goes)."""
        import shutil

        self._organ_maps.clear()
        if self._organ_map_dir is not None:
            shutil.rmtree(self._organ_map_dir, ignore_errors=True)
            self._organ_map_dir = None

    def _chosen_organ(self, run: process.Run | None) -> Organ | None:
        """The organ a ``--label auto`` run reported on a PRIORSAM_LABEL line (None if it did not)."""
        for line in reversed(run.lines if run else []):
            chosen = parse_label(line)
            if chosen is not None:
                return self.organ_by_value(chosen.value) or self.organ_by_name(chosen.name)
        return None

    def _finish(self, run: process.Run, job: commands.Job, importer) -> Outcome:
        try:
            if run.state == process.CANCELLED:
                return Outcome(run.state, "Cancelled.", run.elapsed)
            if run.state != process.SUCCEEDED:
                return Outcome(process.FAILED, "Segmentation failed: " + run.error_message(), run.elapsed)
            out = job.find_output()
            if out is None:
                return Outcome(process.FAILED, "The engine finished but wrote no label map.", run.elapsed)
            if self.keep_results_in is not None:
                import shutil

                self.keep_results_in.mkdir(parents=True, exist_ok=True)
                shutil.copy2(out, self.keep_results_in / out.name)
            try:
                result = importer(out)
            except Exception as exc:
                return Outcome(process.FAILED, f"Import failed: {exc}", run.elapsed)
            seg, sid = result if isinstance(result, tuple) else (result, None)
            warnings = run.warning_messages()
            done = f"Done in {estimate.format_duration(run.elapsed)}."
            return Outcome(process.SUCCEEDED, done + (f" {len(warnings)} warning(s)." if warnings else ""),
                           run.elapsed, seg, sid, warnings)
        finally:
            run.cleanup()

    def cancel(self) -> None:
        if self.run is not None:
            self.run.cancel()

    # -- blocking helpers (scripts, tests, the Slicer self-test) ------------------------------
    def segment_organs(self, volume, device: str = "auto", timeout: float | None = None) -> Outcome:
        box: list[Outcome] = []
        self.start_organs(volume, device, box.append).wait(timeout)
        return box[0]

    def load_volume(self, path: str | Path, name: str = "CT"):
        return segmentation_io.read_volume(self.slicer, self.scene, path, name)
