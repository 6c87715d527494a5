"""The golden test's reference (tests/test_sample_golden.py): the sample CT's label map with the shipped weights
and the engine's defaults.

    python bench/golden_reference.py --write     # fp32 map -> tests/data/sample_ct_labels_fp32.npz
    python bench/golden_reference.py             # this CPU's own precision: voxels per label, nothing written

``--write`` holds OpenVINO to fp32 (what it computes on a CPU without bf16), so the reference does not depend
on the machine that makes it. Without it the run keeps OpenVINO's default for this CPU; on a CPU with AVX-512
bf16 or AMX its counts are the test's ``BF16_VOXELS_PER_LABEL``. Run each in its own process: the engine keeps
compiled models for the life of the process.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np

REFERENCE = Path(__file__).resolve().parents[1] / "tests" / "data" / "sample_ct_labels_fp32.npz"


def hold_openvino_to_fp32() -> None:
    """Every OpenVINO model compiled from now on in this process computes in fp32 (the localiser always does)."""
    from priorsam.models import cpu_runtime

    init = cpu_runtime.OpenVinoCompiled.__init__

    def fp32_init(self, model_path, threads=None, precision=None, mode="throughput"):
        init(self, model_path, threads, precision or "f32", mode)

    cpu_runtime.OpenVinoCompiled.__init__ = fp32_init


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--write", action="store_true", help=f"fp32, and write {REFERENCE.name}")
    a = ap.parse_args(argv)
    if a.write:
        hold_openvino_to_fp32()
    import priorsam
    from priorsam.data.samples import sample_ct

    labels, _ = priorsam.segment(str(sample_ct().image))
    labels = np.ascontiguousarray(labels, dtype=np.uint8)
    print("voxels per label, background first:", np.bincount(labels.ravel(), minlength=9).tolist())
    if a.write:
        tmp = REFERENCE.with_suffix(".part.npz")
        np.savez_compressed(tmp, labels=labels)
        os.replace(tmp, REFERENCE)
        print(f"wrote {REFERENCE}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
