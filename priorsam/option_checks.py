"""Range and choice checks for option dataclasses (the engine's ``SegmentOptions`` and the per-slice
``RefineOptions``), run when they are built: a z-stride of 0 or a fill threshold of 8 is refused in one
line naming the option, before any model loads, instead of being clamped or misread silently."""
from __future__ import annotations

from typing import Iterable

from .errors import OptionError


def _value(obj, name: str):
    return getattr(obj, name)


def fractions(obj, names: Iterable[str]) -> None:
    """Each named value lies in [0, 1] (a probability, a Dice, an IoU)."""
    for name in names:
        v = _value(obj, name)
        if not 0.0 <= v <= 1.0:
            raise OptionError(f"option {name}: {v!r} must lie between 0 and 1")


def at_least(obj, low: float, names: Iterable[str], optional: bool = False) -> None:
    """Each named value is ≥ ``low`` (None allowed where ``optional``: the automatic choice)."""
    for name in names:
        v = _value(obj, name)
        if v is None and optional:
            continue
        if v is None or not v >= low:
            raise OptionError(f"option {name}: {v!r} must be ≥ {low:g}" + (" (or none: automatic)" if optional else ""))


def positive(obj, names: Iterable[str], optional: bool = False) -> None:
    """Each named value is > 0 (None allowed where ``optional``: as the weights were trained)."""
    for name in names:
        v = _value(obj, name)
        if v is None and optional:
            continue
        if v is None or not v > 0:
            raise OptionError(f"option {name}: {v!r} must be above 0" + (" (or none: as trained)" if optional else ""))


def one_of(obj, name: str, choices: Iterable[str], optional: bool = False) -> None:
    """The named value is one of ``choices`` (None allowed where ``optional``)."""
    v, choices = _value(obj, name), tuple(choices)
    if (v is None and optional) or v in choices:
        return
    raise OptionError(f"option {name}: {v!r} is not one of {', '.join(choices)}")
