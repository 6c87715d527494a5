"""Range and choice checks for option dataclasses (the engine's ``SegmentOptions`` and the per-slice
``RefineOptions``), run when they are built: a z-stride of 0 or a fill threshold of 8 is refused in one
line naming the option, before any model loads, instead of being clamped or misread silently."""
from __future__ import annotations

from typing import Iterable

from .errors import OptionError


def fractions(obj, names: Iterable[str]) -> None:
    """Each named value lies in [0, 1] (a probability, a Dice, an IoU)."""
    for name in names:
        v = getattr(obj, name)
        if not 0.0 <= v <= 1.0:
            raise OptionError(f"option {name}: {v!r} must lie between 0 and 1")


def at_least(obj, low: float, names: Iterable[str], none: str | None = None) -> None:
    """Each named value is ≥ ``low``; ``none``: what None means where it is allowed (e.g. "automatic")."""
    for name in names:
        v = getattr(obj, name)
        if v is None and none:
            continue
        if v is None or not v >= low:
            raise OptionError(f"option {name}: {v!r} must be ≥ {low:g}" + (f" (or none: {none})" if none else ""))


def positive(obj, names: Iterable[str], none: str | None = None) -> None:
    """Each named value is > 0; ``none``: what None means where it is allowed (e.g. "as trained")."""
    for name in names:
        v = getattr(obj, name)
        if v is None and none:
            continue
        if v is None or not v > 0:
            raise OptionError(f"option {name}: {v!r} must be above 0" + (f" (or none: {none})" if none else ""))


def one_of(obj, name: str, choices: Iterable[str], none: str | None = None) -> None:
    """The named value is one of ``choices``; ``none``: what None means where it is allowed."""
    v, choices = getattr(obj, name), tuple(choices)
    if (v is None and none) or v in choices:
        return
    raise OptionError(f"option {name}: {v!r} is not one of {', '.join(choices)}" + (f" (or none: {none})" if none else ""))
