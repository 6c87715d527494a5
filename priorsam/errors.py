"""Errors that reach users as one clear line and a non-zero exit."""
from __future__ import annotations

import functools
import sys


class PriorSAMError(Exception):
    """A problem with the user's input or environment, reported as one line without a traceback."""


class InputError(PriorSAMError):
    """The image, label map, box or path given is unusable."""


class OptionError(InputError, ValueError):
    """An engine option with a value it cannot take (a z-stride of 0, an unknown encoder runtime). Also a
    ValueError, which is what Python callers passing a bad argument expect."""


class AssetError(PriorSAMError):
    """A pretrained asset (weights, text encoder, priors) is missing or altered."""


class Cancelled(PriorSAMError):
    """The caller's progress callback asked to stop."""


def one_line_errors(main):
    """An entry point's ``main`` (the ``priorsam`` command's, each ``python -m`` tool's) that reports a
    :class:`PriorSAMError` as one ``error: …`` line on stderr and returns 1, and an interrupt as
    ``error: interrupted`` and 130, instead of a traceback."""

    @functools.wraps(main)
    def run(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except PriorSAMError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        except Exception as exc:
            if not gpu_out_of_memory(exc):
                raise
            print(f"error: {out_of_memory_line(exc)}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print("error: interrupted", file=sys.stderr)
            return 130

    return run


def gpu_out_of_memory(exc: BaseException) -> bool:
    """PyTorch's out-of-memory error (``torch.OutOfMemoryError``, raised for CUDA), told by its class so that
    this module needs no torch import."""
    return any(c.__name__ == "OutOfMemoryError" and c.__module__.split(".")[0] == "torch" for c in type(exc).__mro__)


def out_of_memory_line(exc: BaseException) -> str:
    """What a user can act on when the volume or batch does not fit the GPU (not their input's fault)."""
    said = str(exc).strip().splitlines()[0] if str(exc).strip() else "no details"
    return (f"the GPU ran out of memory ({said}); run on the CPU (--device cpu), close what else uses the GPU, "
            "or train with a smaller batch_size")
