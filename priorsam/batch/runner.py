"""Batch orchestration: discover → partition by rank → skip finished cases → segment → write
outputs and the case JSON (last, as the commit marker) → per-rank tables → rank 0 merges.

A case is *finished* when its ``<case>.json`` parses, says ``ok``, records the sha256 of the
current input and weights and the same engine options (those that decide the answer), lists every
output the requested format needs, and each listed output exists with the recorded sha256. Anything
less is a partial case and is redone.
Every file is written through a temp file and renamed, so a killed run leaves no half file
under a final name.

Distributed runs (``torchrun``): each process handles case i of the sorted list when
``i % world_size == rank``; all write their own table parts; rank 0 merges them after a
barrier. A process group that the caller (e.g. the MONAI bundle) already initialised is used
as is; otherwise one is created from the torchrun environment (gloo on CPU, nccl on GPU).
"""
from __future__ import annotations

import logging
import os
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

from ..assets import sha256_file
from ..errors import AssetError, InputError, PriorSAMError
from ..io import make_folder
from . import report
from .discover import LABEL_MAP_OUTPUT, SEG_OUTPUT, Case, discover_cases, hash_input, partition, resolve_input_files
from .lock import FolderLock

log = logging.getLogger("priorsam.batch")

FORMATS = ("nifti", "dicom-seg", "both")
PARTS_DIR = ".parts"


class BatchIncomplete(PriorSAMError):
    """Some cases failed; the others were written. The message names failures.csv."""


@dataclass
class BatchResult:
    """What one process saw (rank 0 also reports the merged totals of all ranks)."""

    output: str
    rank: int
    world_size: int
    cases: int                      # in the whole batch
    done: list[str] = field(default_factory=list)        # segmented by this process in this run
    reused: list[str] = field(default_factory=list)      # already finished, skipped by this process
    failed: dict[str, str] = field(default_factory=dict)  # case id → error, this process
    total_failed: int = 0            # over all ranks

    @property
    def ok(self) -> bool:
        return self.total_failed == 0


def discard_outputs(paths: dict[str, Path]) -> None:
    """Remove a case's JSON and outputs (the JSON first: without it the case is never taken as finished)."""
    for key in ("json", "label_map", "dicom_seg"):
        paths[key].unlink(missing_ok=True)


def remove_stale_temp_files(output: Path) -> list[Path]:
    """Temp files of a killed run (``.NAME.XXXX.part…``, write probes); only safe under the folder lock."""
    gone = []
    for folder in (output, output / PARTS_DIR):
        if not folder.is_dir():
            continue
        for p in folder.iterdir():
            if p.name.startswith(".") and (".part" in p.name or p.name.startswith(".priorsam-probe.")) and p.is_file():
                p.unlink(missing_ok=True)
                gone.append(p)
    return gone


def case_paths(output: Path, case_id: str) -> dict[str, Path]:
    return {"label_map": output / f"{case_id}{LABEL_MAP_OUTPUT}", "dicom_seg": output / f"{case_id}{SEG_OUTPUT}",
            "json": output / f"{case_id}.json"}


def required_outputs(fmt: str, kind: str) -> list[str]:
    """Output keys a case needs: the NIfTI label map, and/or a DICOM SEG when the source is DICOM."""
    if kind != "dicom":
        return ["label_map"]  # a SEG needs DICOM source instances to reference
    return {"nifti": ["label_map"], "dicom-seg": ["dicom_seg"], "both": ["label_map", "dicom_seg"]}[fmt]


def answer_options(options) -> dict:
    """The engine options that decide a case's answer, as its record stores them: the ones the weights
    fill in when left at None only when they were set, and not the runtime or the batch size."""
    from ..engine.segment import SegmentOptions

    runtime = {"encoder_backend", "batch_size"}
    resolved = {"spacing_mm", "context", "framing"}
    return {k: v for k, v in asdict(options or SegmentOptions()).items()
            if k not in runtime and not (k in resolved and v is None)}


def finished(case: Case, output: Path, fmt: str, weights_sha256: str, options: dict | None = None) -> dict | None:
    """The case's JSON record if the case is finished (see module docstring), else None. With
    ``options`` (:func:`answer_options`), a case segmented with other engine options is not finished."""
    record = report.read_json(case_paths(output, case.case_id)["json"])
    if not record or record.get("schema") != report.CASE_SCHEMA or record.get("status") != "ok":
        return None
    if record.get("model", {}).get("weights_sha256") != weights_sha256:
        return None
    if options is not None:
        stored = record.get("model", {}).get("options") or {}
        if any(k not in stored or stored[k] != v for k, v in options.items()):
            return None
    outputs = record.get("outputs", {})
    if any(key not in outputs for key in required_outputs(fmt, case.kind)):
        return None
    for entry in outputs.values():
        p = output / entry["path"]
        if not p.is_file() or sha256_file(p) != entry["sha256"]:
            return None
    try:
        files = resolve_input_files(case)
        current = hash_input(files, case.path if case.kind == "dicom" else None)
    except (OSError, PriorSAMError):
        return None
    return record if record.get("input", {}).get("sha256") == current else None


def _software() -> dict:
    import platform

    import torch

    from ..version import __version__

    info = {"priorsam": __version__, "python": platform.python_version(), "torch": torch.__version__}
    try:
        import highdicom

        info["highdicom"] = highdicom.__version__
    except ImportError:
        pass
    info["git_commit"] = _git_commit()
    return info


def _git_commit() -> str | None:
    """The source tree's commit when running from a git checkout (provenance), else None."""
    import subprocess

    root = Path(__file__).resolve().parents[2]
    if not (root / ".git").exists():
        return None
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def _remove_logs_only_folder(folder: Path) -> None:
    """Remove an output folder this run created if it holds nothing but the run's logs: a batch refused
    before its first case (bad input list, missing weights) then leaves nothing behind."""
    try:
        entries = list(folder.iterdir())
        if all(e.is_file() and e.name.startswith("batch") and e.suffix == ".log" for e in entries):
            for e in entries:
                e.unlink()
            folder.rmdir()
    except OSError:
        pass  # best effort: what stays is a log that names the refusal


class _TqdmHandler(logging.Handler):
    """Console log lines that do not break the progress bars."""

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm.auto import tqdm

        tqdm.write(self.format(record), file=sys.stderr)


@contextmanager
def _logging(output: Path, rank: int, world_size: int, console: bool):
    name = "batch.log" if world_size == 1 else f"batch.rank{rank}.log"
    fmt = logging.Formatter(f"%(asctime)s rank{rank} %(levelname)s %(message)s")
    handlers: list[logging.Handler] = [logging.FileHandler(output / name, encoding="utf-8")]
    handlers[0].setLevel(logging.INFO)
    if console:
        handlers.append(_TqdmHandler())
        handlers[-1].setLevel(logging.WARNING)
    for h in handlers:
        h.setFormatter(fmt)
        log.addHandler(h)
    old_level, old_propagate = log.level, log.propagate
    log.setLevel(logging.INFO)
    log.propagate = False
    try:
        yield output / name
    finally:
        for h in handlers:
            log.removeHandler(h)
            h.close()
        log.setLevel(old_level)
        log.propagate = old_propagate


class _Distributed:
    """Rank/world size from an existing process group or the torchrun environment."""

    def __init__(self, device: str, timeout_hours: float):
        import torch.distributed as dist

        self.dist = dist
        self.created = False
        world_env = int(os.environ.get("WORLD_SIZE", "1"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if dist.is_available() and dist.is_initialized():
            self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        elif world_env > 1:
            import torch

            if not dist.is_available():
                raise InputError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
            use_cuda = device != "cpu" and torch.cuda.is_available()
            if use_cuda:
                torch.cuda.set_device(self.local_rank)
            # Ranks finish their shares at different times; the merge barrier must wait for the slowest.
            dist.init_process_group("nccl" if use_cuda else "gloo", timeout=timedelta(hours=timeout_hours))
            self.created = True
            self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        else:
            self.rank, self.world_size = int(os.environ.get("RANK", "0")), 1

    @property
    def active(self) -> bool:
        return self.world_size > 1

    def device_for(self, device: str) -> str:
        """One GPU per local rank when running distributed on CUDA."""
        import torch

        if self.active and device in ("auto", "cuda", "gpu") and torch.cuda.is_available():
            return f"cuda:{self.local_rank % torch.cuda.device_count()}"
        return device

    def barrier(self) -> None:
        if self.active:
            self.dist.barrier()

    def broadcast(self, obj):
        """Rank 0's ``obj`` on every rank (picklable objects)."""
        if not self.active:
            return obj
        box = [obj]
        self.dist.broadcast_object_list(box, src=0)
        return box[0]

    def sum(self, value: int) -> int:
        if not self.active:
            return value
        import torch

        on = torch.device("cuda", torch.cuda.current_device()) if self.dist.get_backend() == "nccl" else "cpu"
        t = torch.tensor([value], dtype=torch.int64, device=on)
        self.dist.all_reduce(t)
        return int(t.item())

    def close(self) -> None:
        if self.created:
            self.dist.destroy_process_group()


class BatchJob:
    """A batch over a folder or CSV of CTs.

    Args:
        input: folder (searched recursively for NIfTI/NRRD files and DICOM series) or a CSV
            case list with columns ``case_id,path[,series_uid]``.
        output: output folder (created); may lie inside ``input`` (it is not searched).
        format: ``nifti`` (label maps), ``dicom-seg`` (DICOM SEG for DICOM cases, label maps for
            the others) or ``both``.
        device: auto, cuda, cuda:N or cpu. Under torchrun on GPUs, auto/cuda mean cuda:LOCAL_RANK.
        weights: PriorSAM checkpoint (default: the bundle's ``models/model.pt``).
        options: :class:`~priorsam.engine.segment.SegmentOptions` or a dict of its fields
            (default: as trained).
        show_progress: progress bars over cases and slices on stderr (rank 0 only).
        raise_on_failure: raise :class:`BatchIncomplete` after the batch if any case failed.
        timeout_hours: process-group timeout when this job creates the group.
        force: segment images that do not look like CT in Hounsfield units (recorded as a warning).
        lock_wait: seconds to wait for another batch on the same output folder (0: refuse at once).
    """

    def __init__(self, input: str | os.PathLike, output: str | os.PathLike, format: str = "nifti",
                 device: str = "auto", weights: str | os.PathLike | None = None, options=None,
                 show_progress: bool = True, raise_on_failure: bool = False, timeout_hours: float = 72.0,
                 force: bool = False, lock_wait: float = 0.0):
        if format not in FORMATS:
            raise InputError(f"unknown format {format!r}: use one of {', '.join(FORMATS)}")
        self.input = Path(input).expanduser()
        self.output = Path(output).expanduser()
        self.format = format
        self.device = str(device)
        self.weights = weights
        if isinstance(options, dict):
            from ..engine.segment import SegmentOptions

            options = SegmentOptions(**options) if options else None
        self.options = options
        self.show_progress = show_progress
        self.raise_on_failure = raise_on_failure
        self.timeout_hours = timeout_hours
        self.force = bool(force)
        self.lock_wait = float(lock_wait)
        self._segmenter = None

    # -- setup ---------------------------------------------------------------------------------
    def _weights_path(self) -> Path:
        from ..engine.weights import default_weights_path
        from ..models.spec import read_checkpoint

        p = Path(self.weights) if self.weights else default_weights_path()
        read_checkpoint(p)  # fail the whole batch early, with one line, if the weights are unusable
        return p

    def _get_segmenter(self, device: str):
        # Built on first need, so a rerun whose cases are all finished never loads the model.
        if self._segmenter is None:
            from ..engine.segment import Segmenter

            log.info("loading model %s on %s", self._weights, device)
            self._segmenter = Segmenter(weights=str(self._weights), device=device, options=self.options)
        return self._segmenter

    # -- one case ------------------------------------------------------------------------------
    def _process(self, case: Case, device: str, rank: int, world_size: int, software: dict) -> dict:
        import numpy as np

        from ..api import segment
        from ..io import read_volume, write_label_map
        from .dicom_seg import check_seg_sources, write_dicom_seg

        t0 = time.time()
        started = datetime.now(timezone.utc).isoformat(timespec="seconds")
        paths = case_paths(self.output, case.case_id)
        # Drop the old commit marker first: a redo that dies half-way must not look finished. Its
        # outputs go too: without their JSON a folder glob could not tell them from a finished case's.
        discard_outputs(paths)
        files = resolve_input_files(case)
        input_sha = hash_input(files, case.path if case.kind == "dicom" else None)
        volume = read_volume(case.path, series_uid=case.series_uid, force=self.force,
                             files=files if case.kind == "dicom" else None)
        for w in volume.warnings:
            log.warning("case %s: warning: %s", case.case_id, w)
        if "dicom_seg" in required_outputs(self.format, volume.source.format):
            check_seg_sources(volume.source.dicom_files)  # before the model: a SEG it cannot write wastes the run
        segmenter = self._get_segmenter(device)
        seg = segment(volume, segmenter=segmenter, show_bar=self.show_progress and rank == 0)
        result = seg.result
        kind = "dicom" if volume.source.format == "dicom" else "file"
        outputs = {}
        model = segmenter.model_info()
        for key in required_outputs(self.format, kind):
            if key == "label_map":
                write_label_map(volume, result.labels, paths[key])
            else:
                write_dicom_seg(volume, result.labels, paths[key], software_version=software["priorsam"],
                                algorithm_version=f"{software['priorsam']} weights {self._weights_sha[:12]} "
                                                  f"priors {model['prior_version']}")
            outputs[key] = {"path": paths[key].name, "sha256": sha256_file(paths[key])}
        organs, warnings = seg.statistics["organs"], list(seg.statistics["warnings"])
        warnings[:0] = [w for w in volume.warnings if w not in warnings]  # input warnings first
        if self.format != "nifti" and kind != "dicom":
            warnings.append("no DICOM SEG: the input is not a DICOM series (wrote the NIfTI label map)")
        record = {
            "schema": report.CASE_SCHEMA, "case_id": case.case_id, "status": "ok",
            "input": {"path": case.path, "format": volume.source.format, "series_uid": volume.source.series_uid,
                      "n_files": len(files), "sha256": input_sha},
            "outputs": outputs,
            "geometry": {"shape": list(volume.shape), "spacing_mm": [round(float(s), 4) for s in volume.spacing],
                         "voxel_ml": float(abs(np.linalg.det(volume.affine[:3, :3]))) / 1000.0,
                         "orientation": "canonical RAS; slices index 0 = most inferior"},
            "organs": organs,
            "warnings": warnings,
            "runtime": {"segment_seconds": round(result.seconds, 3), "total_seconds": round(time.time() - t0, 3),
                        "device": result.device, "started": started,
                        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds")},
            "model": {"weights": model["weights"], "weights_sha256": self._weights_sha,
                      "prior_version": model["prior_version"],
                      "prior_embedding_sha256": model["prior_embedding_sha256"], "options": result.options},
            "software": software,
            "job": {"rank": rank, "world_size": world_size, "format": self.format},
        }
        # The JSON goes last: its presence with matching hashes is what marks the case finished.
        report.write_json(paths["json"], record)
        return record

    # -- the batch -----------------------------------------------------------------------------
    def run(self) -> BatchResult:
        from tqdm.auto import tqdm

        created = not self.output.exists()
        make_folder(self.output)
        dist = _Distributed(self.device, self.timeout_hours)
        lock, started = None, False
        try:
            rank, world = dist.rank, dist.world_size
            device = dist.device_for(self.device)
            lock = self._take_folder(rank, dist)
            with _logging(self.output, rank, world, console=True) as log_path:
                try:
                    cases = self._discover(rank, dist)
                    self._weights = self._weights_path()
                    self._weights_sha = sha256_file(self._weights)
                except PriorSAMError as exc:
                    log.error("batch refused before any case: %s", exc)
                    raise
                started = True
                mine = partition(cases, rank, world)
                log.info("batch %s -> %s: %d cases, this rank (%d of %d) has %d; format %s; device %s",
                         self.input, self.output, len(cases), rank, world, len(mine), self.format, device)
                result = BatchResult(str(self.output), rank, world, len(cases))
                software = _software()
                options = answer_options(self.options)   # what a finished case must have been segmented with
                rows, failures = [], []
                bar = tqdm(mine, desc=f"cases (rank {rank})" if world > 1 else "cases", unit="case",
                           disable=not (self.show_progress and rank == 0), file=sys.stderr, dynamic_ncols=True)
                for case in bar:
                    bar.set_postfix_str(case.case_id)
                    record = finished(case, self.output, self.format, self._weights_sha, options)
                    if record is not None:
                        log.info("case %s: finished earlier, skipped", case.case_id)
                        result.reused.append(case.case_id)
                        rows.append(report.summary_row(record, reused=True))
                        continue
                    log.info("case %s: processing %s", case.case_id, case.path)
                    try:
                        record = self._process(case, device, rank, world, software)
                    except AssetError:
                        raise  # the model itself is unusable: no case can succeed
                    except Exception as exc:
                        discard_outputs(case_paths(self.output, case.case_id))  # a failed case leaves no output
                        # One bad case must not stop a night's batch: record it and go on.
                        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                        if not isinstance(exc, PriorSAMError):
                            msg = f"{type(exc).__name__}: {msg}"
                            log.exception("case %s failed", case.case_id)
                        log.warning("case %s failed: %s", case.case_id, msg)
                        result.failed[case.case_id] = msg
                        failures.append(report.failure_row(case.case_id, case.path, rank, msg))
                        rows.append({"case_id": case.case_id, "status": "failed", "reused": "false",
                                     "input": case.path, "rank": rank, "error": msg})
                        continue
                    log.info("case %s: done in %.1f s (%d warnings)", case.case_id,
                             record["runtime"]["total_seconds"], len(record["warnings"]))
                    for w in record["warnings"]:
                        log.info("case %s: warning: %s", case.case_id, w)
                    result.done.append(case.case_id)
                    rows.append(report.summary_row(record, reused=False))
                bar.close()
                self._write_tables(rows, failures, rank, world, dist)
                result.total_failed = dist.sum(len(result.failed))
                log.info("rank %d: %d segmented, %d reused, %d failed; batch failures %d; log %s", rank,
                         len(result.done), len(result.reused), len(result.failed), result.total_failed, log_path)
        finally:
            if lock is not None:
                lock.release()
            dist.close()
            if created and not started and dist.rank == 0:
                _remove_logs_only_folder(self.output)
        if self.raise_on_failure and not result.ok:
            raise BatchIncomplete(f"{result.total_failed} of {result.cases} cases failed; "
                                  f"see {self.output / 'failures.csv'}")
        return result

    def _take_folder(self, rank: int, dist: _Distributed) -> FolderLock | None:
        """Rank 0 locks the output folder for the whole job (the job's other ranks share it) and clears
        the temp files of a killed run; every rank learns the outcome, so a second job stops on all ranks."""
        from ..io.checks import probe_writable

        lock, status = None, ("ok", "")
        if rank == 0:
            try:
                probe_writable(self.output)
                lock = FolderLock(self.output, self.lock_wait).acquire()
                remove_stale_temp_files(self.output)
            except Exception as exc:
                if lock is not None:
                    lock.release()
                    lock = None
                status = ("error", str(exc) if isinstance(exc, PriorSAMError) else f"{type(exc).__name__}: {exc}")
        status = dist.broadcast(status)
        if status[0] == "error":
            raise InputError(status[1])
        return lock

    def _discover(self, rank: int, dist: _Distributed) -> list[Case]:
        """Rank 0 lists the cases and sends the list to all ranks, so every rank partitions the
        very same list even if files appear while the job starts (and all fail alike on bad input)."""
        found: tuple[str, object] = ("ok", [])
        if rank == 0:
            try:
                found = ("ok", discover_cases(self.input, self.output))
            except PriorSAMError as exc:
                found = ("error", str(exc))
        status, payload = dist.broadcast(found)
        if status == "error":
            raise InputError(str(payload))
        return list(payload)

    def _write_tables(self, rows: list[dict], failures: list[dict], rank: int, world: int, dist: _Distributed):
        fields = report.summary_fields()
        if world == 1:
            report.write_csv(self.output / "summary.csv", sorted(rows, key=lambda r: r["case_id"]), fields)
            report.write_csv(self.output / "failures.csv", failures, report.FAILURE_FIELDS)
            return
        parts = self.output / PARTS_DIR
        parts.mkdir(exist_ok=True)
        report.write_csv(parts / f"summary.rank{rank}.csv", rows, fields)
        report.write_csv(parts / f"failures.rank{rank}.csv", failures, report.FAILURE_FIELDS)
        dist.barrier()
        if rank == 0:
            merged, failed = [], []
            for r in range(world):
                merged += report.read_csv(parts / f"summary.rank{r}.csv")
                failed += report.read_csv(parts / f"failures.rank{r}.csv")
            report.write_csv(self.output / "summary.csv", sorted(merged, key=lambda r: r["case_id"]), fields)
            report.write_csv(self.output / "failures.csv", sorted(failed, key=lambda r: r["case_id"]),
                             report.FAILURE_FIELDS)
            log.info("merged %d summary rows and %d failures from %d ranks", len(merged), len(failed), world)
        dist.barrier()


def run_batch(input: str | os.PathLike, output: str | os.PathLike, format: str = "nifti", device: str = "auto",
              weights: str | os.PathLike | None = None, options=None, show_progress: bool = True,
              raise_on_failure: bool = False, force: bool = False, lock_wait: float = 0.0) -> BatchResult:
    """Run a batch in this process, or this process's share under torchrun (see :class:`BatchJob`)."""
    return BatchJob(input, output, format, device, weights, options, show_progress, raise_on_failure,
                    force=force, lock_wait=lock_wait).run()
