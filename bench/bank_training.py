"""Time and peak memory of building the anatomy bank and of training the 3D localiser, on this machine.

    python bench/bank_training.py --anatomy ../shared/data/anatomy --cases 2 --steps 30 --out bench/results

* ``bank``: ``python -m priorsam.data.pseudo_patients`` registers the sample CT onto ``--cases`` anatomies
  into a fresh temporary cache (Greedy, every core); seconds per case and the child's peak RSS.
* ``localiser``: ``python -m priorsam.training.localiser`` runs ``--steps`` steps on that cache (batch 2,
  48³ crops at 4 mm, SegResNet 16 filters, the full augmentation) on ``--device`` (auto: a CUDA GPU when one
  is usable); seconds per step after the first 10 (loading and warm-up excluded) and the child's peak RSS.

Each part runs in a child process started from a small launcher, so the peak RSS is the child's own (host
memory: on a GPU the device's memory is not measured here).
The machine is shared: the load average at the start and end is recorded beside every figure.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_info, md_table, python, run_child_rss  # noqa: E402

from priorsam.errors import one_line_errors  # noqa: E402


@one_line_errors
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--anatomy", default=os.environ.get("PRIORSAM_ANATOMY_DIR", "../shared/data/anatomy"))
    ap.add_argument("--cases", type=int, default=2)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--out", default="bench/results")
    ap.add_argument("--device", default="auto", help="where the localiser trains: auto, cpu, cuda or cuda:N")
    a = ap.parse_args(argv)
    anatomy = Path(a.anatomy)
    if not anatomy.is_dir():
        print(f"error: anatomy bank not found: {anatomy}", file=sys.stderr)
        return 1
    from priorsam.data.anatomy import discover
    from priorsam.engine.device import describe_device, resolve_device

    device = resolve_device(a.device)   # before minutes of registration

    ids = [c.case_id for c in discover(anatomy) if c.source == "btcv_learn2reg"][: a.cases]
    info = machine_info(os.cpu_count() or 1)
    rows, result = [], {"machine": info, "cases": ids, "steps": a.steps, "device": describe_device(device)}
    with tempfile.TemporaryDirectory(prefix="priorsam-bench-bank-") as tmp:
        cache, run = Path(tmp) / "bank", Path(tmp) / "run"
        load0 = os.getloadavg()[0]
        r = run_child_rss([python(), "-m", "priorsam.data.pseudo_patients", "--anatomy", str(anatomy),
                           "--cache", str(cache), "--cases", *ids])
        if r["rc"] != 0:
            print(f"error: bank build failed: {r['stderr'][-500:]}", file=sys.stderr)
            return 1
        qa = [json.loads((cache / i / "qa.json").read_text()) for i in ids]
        per_case = [q["seconds"] for q in qa]
        result["bank"] = {**r, "seconds_per_case": per_case, "mean_dice": [q["mean_dice"] for q in qa],
                          "load_start": load0, "load_end": os.getloadavg()[0]}
        rows.append(["bank: register + reslice (Greedy)", f"{len(ids)} cases",
                     f"{sum(per_case) / len(per_case):.1f} s/case", f"{r['peak_rss_mb']:.0f}",
                     f"{load0:.1f} → {os.getloadavg()[0]:.1f}"])
        cfg = Path(tmp) / "cfg.json"
        cfg.write_text(json.dumps({"steps": a.steps, "log_every": 1, "ckpt_every": 10 ** 6, "include_sample": True}))
        load0 = os.getloadavg()[0]
        r = run_child_rss([python(), "-m", "priorsam.training.localiser", "--bank", str(cache), "--out_dir", str(run),
                           "--config", str(cfg), "--device", str(device)])
        if r["rc"] != 0:
            print(f"error: localiser training failed: {r['stderr'][-500:]}", file=sys.stderr)
            return 1
        steps = [float(x["sec_per_step"]) for x in csv.DictReader(open(run / "log.csv"))][10:]
        sps = sorted(steps)[len(steps) // 2] if steps else float("nan")
        result["localiser"] = {**r, "sec_per_step_median": sps, "load_start": load0, "load_end": os.getloadavg()[0]}
        rows.append([f"localiser training step (batch 2, 48³ at 4 mm; {describe_device(device)})", f"{a.steps} steps",
                     f"{sps:.2f} s/step",
                     f"{r['peak_rss_mb']:.0f}", f"{load0:.1f} → {os.getloadavg()[0]:.1f}"])
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bank_training.json").write_text(json.dumps(result, indent=1, default=str))
    md = ("# Anatomy bank and localiser training: time and memory\n\n"
          f"Machine: {info.get('cpu', '?')}, {info.get('cores', os.cpu_count())} cores, {info.get('mem_gb')} GB; "
          f"started {info['started']}.\n\n"
          + md_table(["part", "size", "time", "peak RSS MB", "load average"], rows) + "\n")
    (out / "bank_training.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
