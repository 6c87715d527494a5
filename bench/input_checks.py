"""Per-case time of the input and output checks of docs/reliability.md on the sample CT (target < 1 s).

Each check is timed on its own, on the same inputs a run reads: the sample CT as NIfTI and as the
DICOM series shipped beside it, and that CT resampled to 512×512×150 (bench/inputs.py) for the
checks that scale with voxels. Files are in the page cache after the warm-up, as they are for a
run that has just read them. Writes bench/results/input_checks.md (and .json).

    python bench/input_checks.py [--runs 20] [--large]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from common import machine_info, stats, time_runs  # noqa: E402


def measure(runs: int, large: bool) -> dict:
    import numpy as np

    from priorsam.batch.dicom_seg import check_seg_sources
    from priorsam.batch.lock import FolderLock
    from priorsam.batch.runner import remove_stale_temp_files
    from priorsam.data.samples import sample_ct
    from priorsam.io import check_writable, list_dicom_series, read_volume
    from priorsam.io.checks import (check_ct_values, check_dicom_files, check_nifti_header, check_spacing,
                                    raw_nifti_header)

    sample = sample_ct()
    rows = []

    def row(name: str, applies: str, fn, inputs: str) -> None:
        rows.append({"check": name, "applies": applies, "inputs": inputs, **stats(time_runs(fn, runs, warmup=2))})

    nifti = read_volume(sample.image)
    shape = "×".join(map(str, nifti.shape))
    row("NIfTI header fields (pixdim, sform, qform codes)", "NIfTI", lambda: check_nifti_header(
        raw_nifti_header(sample.image), str(sample.image)), f"sample CT NIfTI {shape}")
    row("CT values (range, negatives, air) + voxel size", "every image", lambda: (
        check_ct_values(nifti.array, "x"), check_spacing(nifti.affine, "x")), f"sample CT NIfTI {shape}")
    files = next(iter(list_dicom_series(sample.dicom_dir).values()))
    dicom = read_volume(sample.dicom_dir)
    row("DICOM geometry (orientation, spacing, positions, UIDs)", "DICOM", lambda: check_dicom_files(
        files, "x"), f"sample CT DICOM, {len(files)} files")
    row("CT values (range, negatives, air) + voxel size", "every image", lambda: (
        check_ct_values(dicom.array, "x"), check_spacing(dicom.affine, "x")),
        f"sample CT DICOM {'×'.join(map(str, dicom.shape))}")
    with tempfile.TemporaryDirectory(prefix="priorsam-bench-") as tmp:
        # The sample's DICOM is anonymised without study/series UIDs, so a SEG is refused at its first
        # file; the time of a full pass is measured on a copy with those UIDs filled in.
        import pydicom
        from pydicom.uid import generate_uid

        study, series = generate_uid(), generate_uid()
        seg_files = []
        for f in files:
            ds = pydicom.dcmread(f)
            ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
            seg_files.append(str(Path(tmp) / Path(f).name))
            ds.save_as(seg_files[-1])
        row("DICOM SEG source UIDs", "batch/segment with a DICOM SEG output", lambda: check_seg_sources(seg_files),
            f"sample CT DICOM, {len(files)} files (study/series UIDs filled in)")
        # A typical abdominal series has ~150 slices: the header checks scale with the file count.
        long_dir = Path(tmp) / "long"
        long_dir.mkdir()
        first = pydicom.dcmread(seg_files[0])
        step = np.cross(np.asarray(first.ImageOrientationPatient[:3], float),
                        np.asarray(first.ImageOrientationPatient[3:], float)) * float(dicom.spacing[2])
        long_files = []
        for k in range(150):
            ds = pydicom.dcmread(seg_files[k % len(seg_files)])
            ds.ImagePositionPatient = [float(v) for v in np.asarray(first.ImagePositionPatient, float) + k * step]
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
            long_files.append(str(long_dir / f"{k:03d}.dcm"))
            ds.save_as(long_files[-1])
        row("DICOM geometry (orientation, spacing, positions, UIDs)", "DICOM 150", lambda: check_dicom_files(
            long_files, "x"), "sample CT DICOM slices copied to 150 files")
        row("DICOM SEG source UIDs", "DICOM 150", lambda: check_seg_sources(long_files),
            "sample CT DICOM slices copied to 150 files")
        out = Path(tmp) / "out"
        row("output writable (temp file created and removed)", "every output", lambda: check_writable(
            out / "seg.nii.gz"), "local disk")
        out.mkdir()

        def lock_cycle():
            with FolderLock(out):
                remove_stale_temp_files(out)

        row("batch folder lock + stale temp sweep", "once per batch", lock_cycle, "local disk")
        if large:
            from inputs import make_large_volume

            big_path, _ = make_large_volume(Path(tmp) / "large")
            big = read_volume(big_path)
            row("CT values (range, negatives, air) + voxel size", "every image", lambda: (
                check_ct_values(big.array, "x"), check_spacing(big.affine, "x")),
                f"sample CT resampled to {'×'.join(map(str, big.shape))}")

    # The end-to-end view: reading with every check against reading a label map (no CT checks).
    full = stats(time_runs(lambda: read_volume(sample.image), runs, warmup=2))
    bare = stats(time_runs(lambda: read_volume(sample.image, check=False), runs, warmup=2))

    def total(*picks: tuple[str, str]) -> float:
        """Sum of the medians of the rows whose (check prefix, input prefix) are picked, plus the output probe."""
        return sum(r["median"] for r in rows if r["applies"] == "every output" or any(
            r["check"].startswith(c) and r["inputs"].startswith(i) for c, i in picks))

    big = ("CT values", "sample CT resampled")
    totals = {
        "sample CT NIfTI (segment or batch, label map)": total(("NIfTI", "sample CT NIfTI"),
                                                               ("CT values", "sample CT NIfTI")),
        "sample CT DICOM, 20 files (batch --format both)": total(("DICOM", "sample CT DICOM,"),
                                                                 ("CT values", "sample CT DICOM 512")),
        "512×512×150 CT as DICOM, 150 files (batch --format both)": total(("DICOM", "sample CT DICOM slices"), big),
        "512×512×150 CT as NIfTI": total(("NIfTI", "sample CT NIfTI"), big)}
    return {"rows": rows, "totals_s": totals, "read_nifti_with_checks": full, "read_nifti_without_checks": bare,
            "machine": {**machine_info(1), "loadavg": os.getloadavg(), "nice": os.nice(0)},
            "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "runs": runs}


def render(res: dict) -> str:
    m = res["machine"]
    lines = ["# Input and output checks: time per case", "",
             f"Measured {res['when']} by `python bench/input_checks.py` ({res['runs']} timed runs each after 2 "
             "warm-up runs; median, min–max). Target: under 1 s per case.", "",
             f"Machine: {m.get('cpu')}, {m.get('cores')} cores, shared; load average "
             f"{', '.join(f'{x:.2f}' for x in m['loadavg'])} at the end of the run; process niceness {m['nice']}.",
             "", "| check | runs for | input | median ms | min–max ms |", "|---|---|---|---:|---:|"]
    for r in res["rows"]:
        lines.append(f"| {r['check']} | {r['applies']} | {r['inputs']} | {1000 * r['median']:.1f} | "
                     f"{1000 * r['min']:.1f}–{1000 * r['max']:.1f} |")
    lines += ["", "| per case (sum of the medians that apply) | seconds |", "|---|---:|"]
    for k, v in res["totals_s"].items():
        lines.append(f"| {k} | {v:.3f} |")
    full, bare = res["read_nifti_with_checks"], res["read_nifti_without_checks"]
    lines += ["", f"Cross-check: `read_volume` of the sample NIfTI takes {1000 * full['median']:.1f} ms with every "
              f"check and {1000 * bare['median']:.1f} ms as a label map (no CT checks), a difference of "
              f"{1000 * (full['median'] - bare['median']):.1f} ms.", "",
              "The batch folder lock is taken once per batch, not per case; it is listed for completeness.", ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--large", action="store_true", help="also time the value checks on a 512×512×150 volume")
    ap.add_argument("--out", type=Path, default=BENCH / "results" / "input_checks.md")
    args = ap.parse_args()
    res = measure(args.runs, args.large)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(render(res))
    args.out.with_suffix(".json").write_text(json.dumps(res, indent=2) + "\n")
    print(args.out.read_text())


if __name__ == "__main__":
    main()
