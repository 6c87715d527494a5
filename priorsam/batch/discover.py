"""Find the cases of a batch: image files and DICOM series under a folder, or rows of a CSV.

One case is one image file (NIfTI/NRRD/MetaImage) or one DICOM series (grouped by
SeriesInstanceUID, wherever its files lie under the folder). Cases are sorted by id so every
process of a distributed run sees the same list and :func:`partition` splits it the same way.
"""
from __future__ import annotations

import csv
import hashlib
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..assets import sha256_file
from ..errors import InputError
from ..io.readers import IMAGE_FILE_SUFFIXES, is_dicom_file, label_map_made_by_priorsam

log = logging.getLogger("priorsam.batch")

LABEL_MAP_OUTPUT, SEG_OUTPUT = "_seg.nii.gz", "_seg.dcm"   # <case><suffix>: what a batch writes per case
# Series of these modalities are derived objects (maybe our own outputs), not CT to segment.
NON_IMAGE_MODALITIES = {"SEG", "SR", "RTSTRUCT", "RTPLAN", "RTDOSE", "RTRECORD", "PR", "KO", "REG", "DOC"}
_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class Case:
    """One unit of work.

    ``path`` is an image file or a folder holding the DICOM series ``series_uid``; ``files``
    are the DICOM instances of the series when discovery already knows them (empty for image
    files and for CSV rows, which are resolved when the case runs).
    """

    case_id: str
    path: str
    series_uid: str | None = None
    kind: str = "file"              # "file" | "dicom"
    files: tuple[str, ...] = field(default=(), compare=False)


def _strip_image_suffix(name: str) -> str:
    low = name.lower()
    for suffix in IMAGE_FILE_SUFFIXES:
        if low.endswith(suffix):
            return name[: -len(suffix)]
    return name


def safe_id(text: str) -> str:
    """A file-name-safe case id (path separators become ``_``)."""
    out = _SAFE.sub("_", text.replace(os.sep, "_").replace("/", "_")).strip("._")
    return out or "case"


def scan_dicom(folder: Path, exclude: Path | None = None) -> dict[str, dict]:
    """SeriesInstanceUID → {"files": sorted paths, "number": SeriesNumber} for image series under ``folder``."""
    import pydicom

    from ..io.checks import no_uid_key, read_slice_header

    series: dict[str, dict] = {}
    for p in _walk(folder, exclude):
        if p.name.lower().endswith(IMAGE_FILE_SUFFIXES) or not is_dicom_file(p):
            continue
        try:
            ds = pydicom.dcmread(p, stop_before_pixels=True,
                                 specific_tags=["SeriesInstanceUID", "Modality", "SeriesNumber", "SOPClassUID",
                                                "ImageOrientationPatient", "PixelSpacing", "Rows", "Columns"])
        except Exception as exc:  # a damaged header: say so in the log, keep scanning
            log.warning("skipped unreadable DICOM file %s (%s)", p, exc)
            continue
        if str(getattr(ds, "Modality", "")).upper() in NON_IMAGE_MODALITIES:
            continue
        uid = str(getattr(ds, "SeriesInstanceUID", "") or "").strip()
        if not uid:
            # Anonymisers sometimes blank the UID; such files are grouped by folder and geometry, never dropped.
            uid = no_uid_key(read_slice_header(p, ds))
        entry = series.setdefault(uid, {"files": [], "number": getattr(ds, "SeriesNumber", None)})
        entry["files"].append(str(p))
    for uid, entry in series.items():
        entry["files"].sort()
        if uid.startswith("no-uid-"):
            log.warning("%d DICOM files in %s have no SeriesInstanceUID; taken as one series (folder and geometry)",
                        len(entry["files"]), os.path.dirname(entry["files"][0]))
    return series


def _series_uid_of(p: Path) -> str | None:
    import pydicom

    try:
        return str(pydicom.dcmread(p, stop_before_pixels=True, specific_tags=["SeriesInstanceUID"]).SeriesInstanceUID)
    except Exception:  # unreadable: the case fails later with the reader's message
        return None


def _walk(root: Path, exclude: Path | None):
    """Files under ``root`` in sorted order, skipping hidden entries (our temp files) and ``exclude``; where
    ``exclude`` is ``root`` itself (the output folder is the input folder), the label maps and DICOM SEGs a
    batch writes there, which are results, not new cases."""
    exclude_r = exclude.resolve() if exclude is not None else None
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".")
                             and (exclude_r is None or (here / d).resolve() != exclude_r))
        ours = exclude_r is not None and here.resolve() == exclude_r
        for name in sorted(filenames):
            if not name.startswith(".") and not (ours and name.endswith((LABEL_MAP_OUTPUT, SEG_OUTPUT))):
                yield here / name


def _unique(cases: list[Case]) -> list[Case]:
    """Sort by id; ids that collide get ``_2``, ``_3``… in path order, so the result is deterministic."""
    cases = sorted(cases, key=lambda c: (c.case_id, c.path, c.series_uid or ""))
    seen: dict[str, int] = {}
    out = []
    for c in cases:
        n = seen.get(c.case_id, 0) + 1
        seen[c.case_id] = n
        out.append(c if n == 1 else Case(f"{c.case_id}_{n}", c.path, c.series_uid, c.kind, c.files))
    return sorted(out, key=lambda c: c.case_id)


def discover_folder(root: Path, exclude: Path | None = None, left_out: list[Path] | None = None) -> list[Case]:
    """Image files and DICOM series anywhere under ``root`` (``exclude``: the output folder). Label maps
    PriorSAM wrote (results of earlier runs, wherever they were put) are results, not cases: logged, left out
    and added to ``left_out`` when given."""
    cases = []
    for p in _walk(root, exclude):
        if p.name.lower().endswith(IMAGE_FILE_SUFFIXES):
            if label_map_made_by_priorsam(p):
                log.info("left out %s: a label map PriorSAM wrote", p)
                if left_out is not None:
                    left_out.append(p)
                continue
            cases.append(Case(safe_id(_strip_image_suffix(str(p.relative_to(root)))), str(p)))
    series = scan_dicom(root, exclude)
    by_folder: dict[str, list[str]] = {}
    for uid, entry in series.items():
        folder = os.path.commonpath([os.path.dirname(f) for f in entry["files"]])
        by_folder.setdefault(folder, []).append(uid)
    for folder, uids in by_folder.items():
        rel = os.path.relpath(folder, root)
        base = safe_id(Path(root).name if rel == "." else rel)
        for uid in uids:
            entry = series[uid]
            case_id = base
            if len(uids) > 1:  # several series in one folder: tell them apart by number or UID tail
                number = entry["number"]
                case_id = f"{base}_s{number}" if number not in (None, "") else f"{base}_{uid.split('.')[-1][-8:]}"
            cases.append(Case(case_id, folder, uid, "dicom", tuple(entry["files"])))
    return _unique(cases)


def read_case_list(csv_path: Path) -> list[Case]:
    """Cases from a CSV with columns ``case_id,path[,series_uid]`` (relative paths: from the CSV's folder)."""
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            rows = list(reader)
            fields = [f.strip() for f in (reader.fieldnames or [])]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"{csv_path}: not a readable CSV case list ({exc})") from exc
    if "path" not in fields:
        raise InputError(f"{csv_path}: the case list needs a 'path' column (columns: case_id,path[,series_uid]); "
                         f"found {fields}")
    cases, ids = [], set()
    for i, row in enumerate(rows, start=2):
        row = {(k or "").strip(): (v or "").strip() for k, v in row.items()}
        if not row.get("path"):
            raise InputError(f"{csv_path}:{i}: empty path")
        path = Path(row["path"]).expanduser()
        if not path.is_absolute():
            path = csv_path.parent / path
        case_id = safe_id(row.get("case_id") or _strip_image_suffix(path.name))
        if case_id in ids:
            raise InputError(f"{csv_path}:{i}: duplicate case_id {case_id!r}")
        ids.add(case_id)
        uid = row.get("series_uid") or None
        if path.is_file() and is_dicom_file(path):
            # One instance named: the case is its series, in the instance's folder.
            uid = uid or _series_uid_of(path)
            path = path.parent
        kind = "dicom" if path.is_dir() or uid else "file"
        cases.append(Case(case_id, str(path), uid, kind))
    if not cases:
        raise InputError(f"{csv_path}: the case list is empty")
    return sorted(cases, key=lambda c: c.case_id)


def discover_cases(input: str | os.PathLike, output: str | os.PathLike | None = None) -> list[Case]:
    """All cases of ``input`` (a folder searched recursively, or a ``.csv`` case list), sorted by id."""
    p = Path(input).expanduser()
    if not p.exists():
        raise InputError(f"input not found: {p}")
    if p.is_file():
        if p.suffix.lower() != ".csv":
            raise InputError(f"{p}: batch input must be a folder or a .csv case list")
        return read_case_list(p)
    ours: list[Path] = []
    cases = discover_folder(p, Path(output) if output is not None else None, ours)
    if not cases:
        raise InputError(f"{p}: no NIfTI/NRRD images or DICOM series found"
                         + (f" (only {len(ours)} label map(s) PriorSAM wrote)" if ours else ""))
    return cases


def partition(cases: list[Case], rank: int, world_size: int) -> list[Case]:
    """The cases of process ``rank``: case i of the id-sorted list goes to rank ``i % world_size``."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside world size {world_size}")
    ordered = sorted(cases, key=lambda c: c.case_id)
    return ordered[rank::world_size]


def resolve_input_files(case: Case) -> list[str]:
    """The files whose bytes make up the case's input (sorted), for hashing and provenance."""
    p = Path(case.path)
    if case.kind != "dicom":
        if not p.is_file():
            raise InputError(f"input not found: {p}")
        return [str(p)]
    if case.files:
        return sorted(case.files)
    folder = p if p.is_dir() else p.parent
    if not folder.is_dir():
        raise InputError(f"input not found: {p}")
    series = scan_dicom(folder)
    if case.series_uid:
        if case.series_uid not in series:
            raise InputError(f"{folder}: series {case.series_uid} not found; available: {', '.join(series) or 'none'}")
        return series[case.series_uid]["files"]
    if len(series) != 1:
        listing = ", ".join(f"{u} ({len(e['files'])} files)" for u, e in series.items()) or "none"
        raise InputError(f"{folder}: {len(series)} DICOM series found; give series_uid in the case list: {listing}")
    return next(iter(series.values()))["files"]


def hash_input(files: list[str], root: str | None = None) -> str:
    """One file: its sha256 (what ``sha256sum`` prints). Several (a DICOM series): sha256 of the
    ``sha256sum``-style listing of the files, named relative to ``root``, in sorted order."""
    if len(files) == 1:
        return sha256_file(files[0])
    listing = "".join(f"{sha256_file(f)}  {os.path.relpath(f, root) if root else os.path.basename(f)}\n"
                      for f in sorted(files))
    return hashlib.sha256(listing.encode()).hexdigest()
