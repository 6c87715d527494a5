"""``priorsam batch`` with only the model replaced (``FakeSegmenter``), run as a child process by the
fault tests, which kill it (test helper, no tests here).

Environment:
    PRIORSAM_TEST_WEIGHTS: a file standing in for the checkpoint (only its sha256 is recorded).
    PRIORSAM_TEST_DELAY: seconds each model call takes, so that kills can land inside a case.
    PRIORSAM_TEST_HOLD: a path; the model calls wait until it exists (lets a test act mid-run).
    PRIORSAM_TEST_KILL_AFTER_REPLACE: N > 0 makes the process SIGKILL itself right after its N-th
        atomic rename, i.e. between one output of a case and the next output or its JSON.
"""
from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))


def main() -> int:
    import pytest

    import reliability_helpers as rh

    mp = pytest.MonkeyPatch()
    hold = os.environ.get("PRIORSAM_TEST_HOLD")
    rh.install_fake_model(mp, Path(os.environ["PRIORSAM_TEST_WEIGHTS"]), float(os.environ.get("PRIORSAM_TEST_DELAY", "0")),
                          Path(hold) if hold else None)
    kill_after = int(os.environ.get("PRIORSAM_TEST_KILL_AFTER_REPLACE", "0"))
    if kill_after:
        real_replace, renames = os.replace, []

        def replace(src, dst, *args, **kwargs):
            real_replace(src, dst, *args, **kwargs)
            renames.append(dst)
            if len(renames) == kill_after:
                os.kill(os.getpid(), signal.SIGKILL)

        mp.setattr(os, "replace", replace)
    from priorsam.cli import main as cli

    return cli(["batch", *sys.argv[1:]])


if __name__ == "__main__":
    sys.exit(main())
