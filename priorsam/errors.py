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
    """A ``python -m`` entry point's ``main`` that reports a :class:`PriorSAMError` as one ``error: …`` line
    on stderr and returns 1, as the ``priorsam`` command does, instead of a traceback."""

    @functools.wraps(main)
    def run(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except PriorSAMError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1

    return run
