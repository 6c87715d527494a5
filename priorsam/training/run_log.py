"""The CSV loss log both trainers keep (``RUN/log.csv``): one row per logged step, continued across resumes."""
from __future__ import annotations

import csv
from pathlib import Path

from ..io.writers import atomic_path


def open_run_log(path: str | Path, header: list[str], step: int):
    """``(file, csv writer)`` appending to the log of a run that starts at ``step``.

    At step 0 (or with no log yet) the log is new, with ``header``. On resume, the rows past ``step`` are
    dropped first: the interrupted run logged them after its last checkpoint and the resumed run logs those
    steps again, so without this every step between a checkpoint and the interruption appeared twice and a
    curve drawn from the log doubled back on itself."""
    p = Path(path)
    rows = []
    if step and p.is_file():
        with open(p, newline="") as fh:
            rows = list(csv.reader(fh))
    if not rows:
        with atomic_path(p) as tmp, open(tmp, "w", newline="") as fh:
            csv.writer(fh).writerow(header)
    else:
        kept = [r for r in rows[1:] if r and r[0].isdigit() and int(r[0]) <= step]
        if len(kept) != len(rows) - 1:
            with atomic_path(p) as tmp, open(tmp, "w", newline="") as fh:
                csv.writer(fh).writerows([rows[0], *kept])
    fh = open(p, "a", newline="")
    return fh, csv.writer(fh)
