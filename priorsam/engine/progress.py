"""Progress reporting and cancellation shared by the CLI, the bundle and the Slicer module.

A progress callback is ``fn(done: int, total: int) -> bool | None``; returning ``False``
cancels the run (raises :class:`~priorsam.errors.Cancelled`). :class:`StdoutProgress`
prints machine-readable lines that the Slicer module parses from its subprocess.
"""
from __future__ import annotations

import sys
from typing import Callable, Optional

from ..errors import Cancelled

ProgressFn = Callable[[int, int], Optional[bool]]
PROGRESS_PREFIX = "PRIORSAM_PROGRESS"


class StdoutProgress:
    """Prints ``PRIORSAM_PROGRESS <done> <total>`` lines (flushed) for a parent process to read."""

    def __init__(self, stream=None):
        self.stream = stream or sys.stdout

    def __call__(self, done: int, total: int) -> None:
        print(f"{PROGRESS_PREFIX} {done} {total}", file=self.stream, flush=True)


def parse_progress_line(line: str) -> tuple[int, int] | None:
    """Inverse of :class:`StdoutProgress`: ``(done, total)`` or ``None`` for other lines."""
    parts = line.strip().split()
    if len(parts) == 3 and parts[0] == PROGRESS_PREFIX and parts[1].isdigit() and parts[2].isdigit():
        return int(parts[1]), int(parts[2])
    return None


class ProgressReporter:
    """Drives a tqdm bar and an optional callback; raises Cancelled when the callback says stop."""

    def __init__(self, total: int, desc: str, callback: ProgressFn | None = None, show_bar: bool = True):
        from tqdm.auto import tqdm

        self.total = total
        self.done = 0
        self.callback = callback
        self.bar = tqdm(total=total, desc=desc, unit="slice", disable=not show_bar, file=sys.stderr,
                        dynamic_ncols=True, leave=False)
        self._notify()

    def _notify(self) -> None:
        if self.callback is not None and self.callback(self.done, self.total) is False:
            self.bar.close()
            raise Cancelled("cancelled by the caller")

    def advance(self, n: int) -> None:
        self.done += n
        self.bar.update(n)
        self._notify()

    def close(self) -> None:
        self.bar.close()
