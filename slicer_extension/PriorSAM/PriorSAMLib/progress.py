"""Parse the machine-readable progress lines that the inference subprocess prints.

The producer is ``priorsam.engine.progress.StdoutProgress`` (``PRIORSAM_PROGRESS <done> <total>``);
Slicer's own Python may not have ``priorsam`` importable, so the format is parsed here and a test
checks both sides agree. A second line, ``PRIORSAM_LABEL <name> <id> [<score>]``, is how a
box run in ``--label auto`` mode reports the organ the semantic decoder chose.
"""
from __future__ import annotations

from dataclasses import dataclass

PROGRESS_PREFIX = "PRIORSAM_PROGRESS"
LABEL_PREFIX = "PRIORSAM_LABEL"


def parse_progress(line: str) -> tuple[int, int] | None:
    """``(done, total)`` from a progress line, ``None`` for any other line."""
    parts = line.strip().split()
    if len(parts) != 3 or parts[0] != PROGRESS_PREFIX:
        return None
    if not (parts[1].isdigit() and parts[2].isdigit()):
        return None
    return int(parts[1]), int(parts[2])


@dataclass(frozen=True)
class ChosenLabel:
    name: str
    value: int
    score: float | None = None


def parse_label(line: str) -> ChosenLabel | None:
    """The organ named by the semantic decoder, from a ``PRIORSAM_LABEL`` line."""
    parts = line.strip().split()
    if len(parts) not in (3, 4) or parts[0] != LABEL_PREFIX or not parts[2].isdigit():
        return None
    score = None
    if len(parts) == 4:
        try:
            score = float(parts[3])
        except ValueError:
            return None
    return ChosenLabel(parts[1], int(parts[2]), score)


def fraction(done: int, total: int) -> float:
    """Progress in [0, 1]; an unknown total (0) counts as not started."""
    return 0.0 if total <= 0 else min(1.0, max(0.0, done / total))
