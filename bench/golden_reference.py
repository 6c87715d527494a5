"""The golden test's reference (tests/test_sample_golden.py): the sample CT's label map with the shipped weights
and the engine's defaults.

    python bench/golden_reference.py --write     # fp32 map -> tests/data/sample_ct_labels_fp32.npz
    python bench/golden_reference.py             # this CPU's own precision: voxels per label, nothing written

``--write`` runs with the engine option ``cpu_precision=fp32`` (what OpenVINO computes on a CPU without bf16), so
the reference does not depend on the machine that makes it. Without it the run keeps OpenVINO's default for this
CPU; on a CPU with AVX-512 bf16 or AMX its counts are the test's ``BF16_VOXELS_PER_LABEL``.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np

REFERENCE = Path(__file__).resolve().parents[1] / "tests" / "data" / "sample_ct_labels_fp32.npz"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--write", action="store_true", help=f"fp32, and write {REFERENCE.name}")
    a = ap.parse_args(argv)
    import priorsam
    from priorsam.data.samples import sample_ct

    labels, _ = priorsam.segment(str(sample_ct().image), cpu_precision="fp32" if a.write else "auto")
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
