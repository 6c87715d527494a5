"""`make demo`: the main job on the sample CT, through the MONAI bundle.

1. fetches the sample CT (``example_ct``, totalsegmentator 2.18.0 sdist) into the user cache;
2. runs ``python -m monai.bundle run --config_file bundle/configs/inference.json`` on it;
3. writes a PNG montage of axial slices with the organ overlay and a per-organ volume table
   (mL), plus Dice against the sample's TotalSegmentator labels — the training scan, so that
   number is a sanity check only.
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from .data.samples import sample_ct
from .errors import one_line_errors
from .io import atomic_path, read_label_map, read_volume, to_display
from .labels import labels
from .preview import montage


def volume_table(lab: np.ndarray, voxel_ml: float, reference: np.ndarray | None = None) -> str:
    rows = ["| organ | volume (mL) | voxels |" + (" Dice vs sample labels* |" if reference is not None else ""),
            "|---|---|---|" + ("---|" if reference is not None else "")]
    for L in labels():
        m = lab == L.id
        row = f"| {L.display} | {m.sum() * voxel_ml:.1f} | {int(m.sum())} |"
        if reference is not None:
            r = reference == L.id
            s = m.sum() + r.sum()
            row += f" {2 * (m & r).sum() / s:.3f} |" if s else " n/a |"
        rows.append(row)
    return "\n".join(rows)


@one_line_errors
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="out/demo")
    ap.add_argument("--device", default="auto")
    args = ap.parse_args(argv)
    out = Path(args.out)
    data, pred_dir = out / "input", out / "output"
    for d in (data, pred_dir):
        d.mkdir(parents=True, exist_ok=True)
    s = sample_ct()
    ct = data / "example_ct.nii.gz"
    if not ct.exists():
        shutil.copy(s.image, ct)
    from .bundle_support.paths import packaged_bundle

    bundle = packaged_bundle() / "configs" / "inference.json"
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(bundle),
           "--dataset_dir", str(data), "--output_dir", str(pred_dir), "--progress", "False",
           "--device", args.device]
    print("running:", " ".join(cmd), flush=True)
    t0 = time.time()
    proc = subprocess.run(cmd)
    if proc.returncode != 0:
        print(f"error: the bundle run failed (exit {proc.returncode})", file=sys.stderr)
        return 1
    seconds = time.time() - t0
    seg_path = pred_dir / "example_ct_seg.nii.gz"
    vol = read_volume(ct)
    seg = read_label_map(seg_path)
    lab = seg.array.astype(np.uint8)
    ref = read_label_map(s.label).array.astype(np.uint8)
    png = montage(vol.axial_slices(), to_display(lab), out / "montage.png")
    table = volume_table(lab, float(np.prod(vol.spacing)) / 1000.0, ref)
    report = (f"# PriorSAM demo on example_ct\n\nBundle run: {seconds:.0f} s end to end (read → write).\n\n"
              f"Label map: `{seg_path}`\nMontage: `{png}`\n\n{table}\n\n"
              "\\* example_ct is the scan the demo weights were trained on and its labels are TotalSegmentator "
              "output, not manual ground truth: a sanity check, not an accuracy claim. See docs/generalisation.md "
              "for a patient the model never saw.\n")
    with atomic_path(out / "volumes.md") as tmp:
        tmp.write_text(report)
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
