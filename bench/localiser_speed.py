"""`priorsam segment` on the 512×512×150 volume: the shipped weights (with the 3D localiser) against
earlier weights (default: the one-scan weights), end to end through the CLI in fresh processes; wall, CPU
seconds, peak RSS, mean Dice against the volume's labels, and what the localiser reported (seconds, skipped
slices).

    python bench/localiser_speed.py [--runs-new 2] [--runs-old 1] [--previous WEIGHTS] [--out bench/results]

``--previous`` names the weights to compare with (default: the one-scan demo weights; e.g. an earlier
bundle's ``model.pt`` read with ``git show REV:bundle/models/model.pt``). ``--previous-tree DIR`` runs the
previous arm with the code *and* weights of another checkout (``git worktree add DIR REV``), e.g. the engine
as it was the day an issue was filed. The two alternate, run by run, so a change in the machine's load falls
on both.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_info, python, run_child_rss  # noqa: E402
from inputs import make_large_volume  # noqa: E402
from volume import dice_per_organ  # noqa: E402

NEW = "bundle/models/model.pt"
DEMO = "docs/ablation_weights/demo_0.3.0_one_scan.pt"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs-new", type=int, default=2)
    ap.add_argument("--runs-old", type=int, default=1)
    ap.add_argument("--data", default=str(Path(tempfile.gettempdir()) / "priorsam-bench-data"))
    ap.add_argument("--previous", default=DEMO, help="weights to compare with (default: the one-scan demo weights)")
    ap.add_argument("--previous-tree", help="a checkout of an earlier commit: the previous arm runs its code and "
                                            "its bundle/models/model.pt")
    ap.add_argument("--out", default="bench/results")
    a = ap.parse_args(argv)
    previous = "previous demo weights" if a.previous == DEMO else f"previous weights ({a.previous})"
    if a.previous_tree:
        a.previous = str(Path(a.previous_tree).resolve() / "bundle" / "models" / "model.pt")
        rev = subprocess.run(["git", "-C", a.previous_tree, "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True).stdout.strip() or "not a git checkout"
        previous = f"the engine and weights of {a.previous_tree} ({rev})"
    # the two arms alternate (new, previous, new, ...), so a change in the machine's load falls on both
    schedule = []
    for i in range(max(a.runs_new, a.runs_old)):
        schedule += [("new weights (localiser)", NEW)] if i < a.runs_new else []
        schedule += [(previous, a.previous)] if i < a.runs_old else []
    img, lab = make_large_volume(Path(a.data))
    res = {"machine": machine_info(os.cpu_count() or 1), "runs": []}
    with tempfile.TemporaryDirectory(prefix="priorsam-speed-") as tmp:
        for i, (name, weights) in enumerate(schedule):
            out, stats = Path(tmp) / f"seg{i}.nii.gz", Path(tmp) / f"stats{i}.json"
            load = os.getloadavg()[0]
            cmd = [python(), "-m", "priorsam", "segment", str(img), str(out), "--weights", weights]
            if a.previous_tree and weights == a.previous:
                # `python -m` puts the working directory first on sys.path, and children start in this
                # checkout: the earlier tree's code runs only when its process starts in that tree.
                # Its statistics file may not exist yet in that code, so none is asked for.
                tree = Path(a.previous_tree).resolve()
                r = run_child_rss(["bash", "-c", f"cd {shlex.quote(str(tree))} && exec {shlex.join(cmd)}"],
                                  env={"PYTHONPATH": str(tree)})
            else:
                r = run_child_rss(cmd + ["--statistics", str(stats)])
            row = {"name": name, "wall_s": round(r["wall_s"], 1), "cpu_s": round(r["cpu_s"], 1),
                   "peak_rss_mb": round(r["peak_rss_mb"]), "rc": r["rc"], "load_start": round(load, 2),
                   "load_end": round(os.getloadavg()[0], 2)}
            if r["rc"] == 0:
                row["mean_dice"] = round(dice_per_organ(out, lab)["mean"], 3)
                if stats.exists():
                    row["localiser"] = json.loads(stats.read_text())["runtime"].get("localiser")
            print(json.dumps(row), flush=True)
            res["runs"].append(row)
    Path(a.out).mkdir(parents=True, exist_ok=True)
    (Path(a.out) / "localiser_speed.json").write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
