"""The generalisation report: every training run measured on a patient it never saw.

    python -m priorsam.evaluation.generalisation --runs RUNS.json --out docs/generalisation.md

RUNS.json lists runs: ``{"name", "weights", "options": {SegmentOptions overrides}, "what"}`` (and
``"localiser_from"``: the heads of ``weights`` with another checkpoint's localiser, :mod:`.runs`).
Each run is measured on the validation patient in ``../shared/data/validation/patient_d``
(liver only; measure, never train or tune) and on the training scan ``example_ct`` (8 organs;
a sanity check only, since it is the training case). Encoder features are computed once and
shared by all runs with the same framing.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import shlex
import time
from pathlib import Path

import numpy as np

from ..config_files import read_json
from ..data.samples import sample_ct
from ..engine.segment import SegmentOptions, Segmenter
from ..errors import InputError, one_line_errors
from ..io import read_label_map, read_volume
from ..labels import labels as label_table
from .metrics import evaluate_case, organ_metrics, summarise
from .runs import run_file, run_weights

# The model is measured on every slice with the fp32 encoder features it was trained on; the speed
# savings of the engine's defaults (z-stride, OpenVINO bf16) are measured apart, in bench/.
MEASURE_OPTIONS = {"z_stride": 1, "encoder_backend": "onnx"}

DEFAULT_VALIDATION = Path(__file__).resolve().parents[3] / "shared" / "data" / "validation" / "patient_d"


def _validation_case(root: Path):
    vol = read_volume(root / "dicom")
    gt = read_label_map(root / "liver_seg.nrrd").array > 0
    if gt.shape != vol.shape:
        raise ValueError(f"validation label {gt.shape} and image {vol.shape} differ")
    return vol, gt


def _run_key(run: dict) -> str:
    from ..assets import sha256_file

    parts = [run["name"], sha256_file(run_file(run["weights"])), run.get("options", {})]
    if run.get("localiser_from"):
        parts.append(sha256_file(run_file(run["localiser_from"])))
    return json.dumps(parts, sort_keys=True)


def measure(runs: list[dict], validation: Path | None, device: str = "cpu", train_case: bool = True,
            log=print, previous: dict | None = None, only: list[str] | None = None) -> list[dict]:
    """Measure each run; ``previous`` maps run keys to stored rows (same weights and options) to reuse.

    A stored row stamped with another version of the library's code (``code``) is measured again; a row
    stored before rows were stamped is reused, and the log says so (``--fresh`` re-measures it).
    ``only``: the names of the runs to measure; every other run's stored row is kept as it was measured,
    whatever code it was measured with (adding one row to a long report costs one row's measurement)."""
    from ..version import source_digest

    memo: dict = {}
    previous = previous or {}
    if only is not None:
        unknown = sorted(set(only) - {r["name"] for r in runs})
        if unknown:
            raise InputError(f"--only names runs the runs file does not have: {', '.join(unknown)}")
        lacking = [r["name"] for r in runs if r["name"] not in only and _run_key(r) not in previous]
        if lacking:
            raise InputError(f"run {lacking[0]!r} has no stored result to keep (stored rows are matched by name, "
                             f"weights and options); measure it too or leave it out of the runs file")
    code = source_digest()
    val = _validation_case(validation) if validation is not None and validation.is_dir() else None
    train = None
    if train_case:
        s = sample_ct()
        train = (read_volume(s.image), read_label_map(s.label).array.astype(np.uint8))
    results = []
    for run in runs:
        key = _run_key(run)
        row = {"name": run["name"], "what": run.get("what", ""), "weights": run["weights"],
               "options": run.get("options", {}), "key": key}
        # A stored row is reused part by part: only what it lacks (e.g. a run first measured with
        # --no-train-case) is measured now.
        stored = previous.get(key, {})
        if only is not None and run["name"] not in only:
            results.append({**stored, **row})
            log(f"[generalisation] {run['name']}: kept as stored (--only)")
            continue
        if stored.get("code", code) != code:
            log(f"[generalisation] {run['name']}: stored result measured with other code; measuring again")
            stored = {}
        row.update(stored)
        need_val = val is not None and "val_liver_dice" not in row
        need_train = train is not None and "train_mean_dice" not in row
        if not (need_val or need_train):
            results.append(row)
            log(f"[generalisation] {run['name']}: reused stored result" + ("" if "code" in row else
                " (measured before results carried the code's digest; --fresh measures it again)"))
            continue
        if not stored or "code" in stored:
            row["code"] = code              # every part of this row is measured with this code
        row["device"] = device              # rows stored before this field were all measured on the CPU
        seg = Segmenter(run_weights(run), device, SegmentOptions(**{**MEASURE_OPTIONS, **run.get("options", {})}))
        seg.feature_memo = memo
        if need_val:
            t0 = time.time()
            pred = seg.segment(val[0], show_bar=False).labels == 5
            m = organ_metrics(pred, val[1], val[0].spacing)
            row.update(val_liver_dice=m["dice"], val_liver_hd95_mm=m["hd95_mm"], val_seconds=time.time() - t0)
        if need_train:
            t0 = time.time()
            res = seg.segment(train[0], show_bar=False)
            case = evaluate_case(res.labels, train[1], train[0].spacing, "example_ct")
            summ = summarise([case])
            row.update(train_mean_dice=summ["mean"]["dice"], train_mean_hd95_mm=summ["mean"]["hd95_mm"],
                       train_organs={n: v["dice"] for n, v in summ["organs"].items()},
                       train_seconds=time.time() - t0)
        log(f"[generalisation] {run['name']}: " + ", ".join(
            f"{k}={v:.3f}" for k, v in row.items() if isinstance(v, float)))
        results.append(row)
    return results


def _f(v, d=3) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{d}f}"


TABLE_END_HEADING = "Training-scan Dice per organ:"


def notes_of(report: str) -> str:
    """The hand-written part of an earlier report: everything after the tool's last table (empty if none)."""
    lines = report.split("\n")
    if TABLE_END_HEADING not in lines:
        return ""
    j = lines.index(TABLE_END_HEADING) + 1
    while j < len(lines) and (not lines[j].strip() or lines[j].startswith("|")):
        j += 1
    return "\n".join(lines[j:]).strip()


def render(results: list[dict], command: str, notes: str = "") -> str:
    names = [lab.name for lab in label_table()]
    lines = [
        "# Generalisation report",
        "",
        f"Produced by `{command}` on {dt.date.today().isoformat()} "
        f"({platform.machine()}, {os.cpu_count()} CPU cores; rows measured on "
        f"{', '.join(sorted({str(r.get('device', 'cpu')) for r in results}))}). Do not edit by hand.",
        "",
        "* **Validation patient** (`../shared/data/validation/patient_d`): 3 axial slices of another",
        "  patient's non-contrast CT (512², 0.81 mm, 1 mm apart), manual liver label. Never used for",
        "  training or tuning; measured only.",
        "* **Training scan** (`example_ct`): the only scan the model was trained on, so its numbers are a",
        "  sanity check, not an accuracy claim. Its reference labels are TotalSegmentator output, not",
        "  manual ground truth.",
        "* Every slice goes through the model (`z_stride` 1) with the fp32 ONNX Runtime encoder, the",
        "  features the heads were trained on; the engine's faster defaults are scored in docs/benchmarks.md.",
        "",
        "| run | what is off | validation liver Dice | validation liver HD95 (mm) | training-scan mean Dice (8 organs) | training-scan mean HD95 (mm) |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(f"| {r['name']} | {r['what']} | {_f(r.get('val_liver_dice'))} | {_f(r.get('val_liver_hd95_mm'), 1)} | "
                     f"{_f(r.get('train_mean_dice'))} | {_f(r.get('train_mean_hd95_mm'), 1)} |")
    lines += ["", TABLE_END_HEADING, "",
              "| run | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for r in results:
        organs = r.get("train_organs", {})
        lines.append(f"| {r['name']} | " + " | ".join(_f(organs.get(n)) for n in names) + " |")
    if notes:
        lines += ["", notes.strip()]
    return "\n".join(lines) + "\n"


@one_line_errors
def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", required=True)
    ap.add_argument("--out", default="docs/generalisation.md")
    ap.add_argument("--validation", default=str(DEFAULT_VALIDATION))
    ap.add_argument("--no-train-case", action="store_true")
    ap.add_argument("--notes", default=None, help="markdown file appended to the report (default: the notes "
                                                  "that follow the tables in OUT, kept)")
    ap.add_argument("--only", nargs="+", default=None, metavar="NAME",
                    help="measure only these runs; keep every other run's stored result as it was measured")
    ap.add_argument("--fresh", action="store_true", help="re-measure runs already stored in OUT.json")
    from ..engine.device import MEASURE_DEVICE_HELP, resolve_device

    ap.add_argument("--device", default="cpu", help=MEASURE_DEVICE_HELP)
    args = ap.parse_args(argv)
    device = str(resolve_device(args.device))   # before the runs are read: a GPU asked for and missing fails at once
    runs = read_json(args.runs, "runs file")
    if not isinstance(runs, list):
        raise InputError(f"runs file {args.runs} must hold a JSON list of runs")
    if args.notes and not Path(args.notes).is_file():
        raise InputError(f"notes file {args.notes}: no such file")
    out = Path(args.out)
    stored = out.with_suffix(".json")
    previous = {r["key"]: r for r in json.loads(stored.read_text())} if stored.is_file() and not args.fresh else {}
    results = measure(runs, Path(args.validation), device=device, train_case=not args.no_train_case,
                      previous=previous, only=args.only)
    command = "python -m priorsam.evaluation.generalisation --runs " + args.runs
    if args.only:
        command += " --only " + " ".join(shlex.quote(n) for n in args.only)
    if args.device != "cpu":
        command += " --device " + args.device
    notes = Path(args.notes).read_text() if args.notes else (notes_of(out.read_text()) if out.is_file() else "")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".part")
    tmp.write_text(render(results, command, notes))
    os.replace(tmp, out)
    with open(out.with_suffix(".json"), "w") as fh:
        json.dump(results, fh, indent=2, default=float)
    # rows are reused by key on the next invocation, so the stored file mirrors the report
    print(out.read_text())


if __name__ == "__main__":
    raise SystemExit(main())
