"""A clearly labelled run-time estimate shown before a run: slices × seconds per slice + start-up.

The constants come from this project's measurements (docs/slicer.md, "Run time"):

* CPU: end to end (read → segment → write) with the engine's defaults (OpenVINO encoder, z-stride
  ≈ 10 mm), an idle 2-core AMD EPYC took 35.5 s for the 112-slice sample CT and 51.1 s for a
  512×512×150 CT (docs/benchmarks.md): 0.32–0.34 s per input slice. Thick slices are interpolated
  less, so 0.4 s/slice is used. (Before the faster defaults the figure was 3.5 s/slice.)
* GPU: one NVIDIA H200 (bench/gpu.py, docs/benchmarks.md) took 4.3 s for the sample CT and 9.8 s for
  the 512×512×150 CT with the model loaded: 0.04–0.07 s per input slice, so 0.07 s/slice is used; a
  smaller GPU will be slower.
* Start-up: importing torch/MONAI and loading the weights, measured 7–9 s on 2-core machines; on the
  H200 machine a fresh run spent 16–22 s beyond the segmentation itself (CUDA start-up included).

A run that finishes records its own seconds per slice; later estimates on that computer use it.
"""
from __future__ import annotations

from dataclasses import dataclass

SECONDS_PER_SLICE = {"cpu": 0.4, "cuda": 0.07}
STARTUP_SECONDS = {"cpu": 9.0, "cuda": 20.0}
SOURCE = {"cpu": "project benchmark (2-core CPU)", "cuda": "project benchmark (NVIDIA H200)"}


@dataclass(frozen=True)
class Estimate:
    seconds: float
    per_slice: float
    slices: int
    device: str
    source: str

    def text(self) -> str:
        return (f"Estimated time: about {format_duration(self.seconds)} for {self.slices} slices on "
                f"{'GPU' if self.device == 'cuda' else 'CPU'} ({self.per_slice:.2g} s/slice, {self.source}; "
                "an estimate, not a promise)")


def axial_slice_count(dims, ijk_to_ras) -> int:
    """Number of axial slices: the size of the voxel axis that points most along S.

    ``dims``: (I, J, K) sizes; ``ijk_to_ras``: 4×4 (or 3×3) direction×spacing matrix as nested lists.
    """
    s_row = [abs(float(ijk_to_ras[2][c])) for c in range(3)]
    return int(dims[max(range(3), key=lambda c: s_row[c])])


def estimate_seconds(slices: int, device: str, measured_per_slice: float | None = None) -> Estimate:
    """``device``: 'cpu' or 'cuda' (what the run will use); 'auto' before the device probe counts as CPU."""
    dev = "cuda" if device in ("cuda", "gpu") else "cpu"
    if measured_per_slice and measured_per_slice > 0:
        per, source = float(measured_per_slice), "measured on this computer"
    else:
        per, source = SECONDS_PER_SLICE[dev], SOURCE[dev]
    return Estimate(STARTUP_SECONDS[dev] + per * max(0, int(slices)), per, int(slices), dev, source)


def format_duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    if h:
        return f"{h} h {m:02d} min"
    if m:
        return f"{m} min {s:02d} s"
    return f"{s} s"


def per_slice_from_run(elapsed: float, slices: int, device: str) -> float | None:
    """Seconds per slice of a finished run, start-up removed; None when it cannot be told."""
    dev = "cuda" if device in ("cuda", "gpu") else "cpu"
    if slices <= 0 or elapsed <= 0:
        return None
    return max(0.01, (elapsed - STARTUP_SECONDS[dev]) / slices)
