"""Pick the compute device: ``auto`` prefers a working CUDA GPU and falls back to the CPU."""
from __future__ import annotations

import torch

from ..errors import InputError


# --device of the evaluation commands: the documented figures are CPU runs, so the CPU is their default.
MEASURE_DEVICE_HELP = ("cpu (default: where the documented figures were measured), auto, cuda or cuda:N; a GPU is "
                       "many times faster and agrees closely with the CPU, not to the voxel")


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``auto`` (also None), ``cpu``, ``cuda``/``gpu`` or ``cuda:N`` — or a ``torch.device`` — as the device to
    use here; a GPU asked for and not usable is an :class:`InputError`."""
    device = str(device or "auto").lower()
    if device == "auto":
        return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    if device in ("gpu", "cuda") or device.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise InputError("device 'cuda' requested but no CUDA GPU is usable here (use --device cpu or auto)")
        return torch.device("cuda" if device == "gpu" else device)
    if device == "cpu":
        return torch.device("cpu")
    raise InputError(f"unknown device {device!r}: use auto, cuda or cpu")


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return f"CUDA GPU: {torch.cuda.get_device_name(device)}"
    return f"CPU ({torch.get_num_threads()} threads)"
