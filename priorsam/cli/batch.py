"""``priorsam batch``: the adapter over :func:`priorsam.batch.runner.run_batch`."""
from __future__ import annotations

from .flags import typed_flags


@typed_flags
def batch_cli(input: str, output: str, format: str = "nifti", device: str = "auto", weights: str | None = None,
              quiet: bool = False, force: bool = False, wait: float = 0.0, option=None):
    """Segment every CT in a folder or CSV case list; resumable; runs under torchrun for several GPUs.

    Args:
        input: folder searched recursively for NIfTI/NRRD images and DICOM series (one series = one
            case), or a CSV with columns case_id,path[,series_uid].
        output: output folder: <case>_seg.nii.gz, <case>_seg.dcm (DICOM SEG), <case>.json,
            summary.csv, failures.csv, batch.log.
        format: nifti, dicom-seg or both.
        device: auto, cuda or cpu.
        weights: PriorSAM checkpoint (default: the bundle's models/model.pt).
        quiet: no progress bars.
        force: segment images that do not look like CT in Hounsfield units (a warning in each case's report).
        wait: seconds to wait while another batch holds the output folder (default: refuse at once).
        option: engine options as name=value, comma-separated (as ``priorsam segment --option``).

    Exits non-zero when any case failed (listed in failures.csv); finished cases are skipped on a rerun.
    """
    from ..batch.runner import run_batch
    from ..engine.option_values import parse_options

    result = run_batch(input, output, format=str(format), device=str(device), weights=weights,
                       options=parse_options(option) or None,
                       show_progress=not quiet, raise_on_failure=True, force=bool(force), lock_wait=float(wait))
    return {"output": result.output, "cases": result.cases, "segmented": len(result.done),
            "reused": len(result.reused), "failed": result.total_failed,
            **({"rank": result.rank, "world_size": result.world_size} if result.world_size > 1 else {})}
