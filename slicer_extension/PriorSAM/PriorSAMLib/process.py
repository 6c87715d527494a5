"""A non-blocking subprocess runner with progress parsing, cancel and temporary-file cleanup.

No Qt here: a reader thread queues the child's output lines and :meth:`Run.poll` dispatches them
(progress, log, completion) on the caller's thread — in Slicer a ``qt.QTimer`` calls ``poll``; in
tests a loop does. The child starts in its own session (POSIX) / process group (Windows), so
Cancel kills the whole tree: the Python launcher, the interpreter and any data-loader workers.
"""
from __future__ import annotations

import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable, Optional

from .progress import parse_progress

ProgressCallback = Callable[[int, int], None]
LineCallback = Callable[[str], None]
DoneCallback = Callable[["Run"], None]

RUNNING, SUCCEEDED, FAILED, CANCELLED = "running", "succeeded", "failed", "cancelled"


def make_work_dir(prefix: str = "PriorSAM-") -> Path:
    """A fresh temporary folder with ``in/`` and ``out/`` for one run."""
    d = Path(tempfile.mkdtemp(prefix=prefix))
    (d / "in").mkdir()
    (d / "out").mkdir()
    return d


def _process_group_alive(pgid: int) -> bool:
    if sys.platform == "win32":
        return False
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Run:
    """One subprocess run. ``work_dir`` (if given) is deleted on cancel and on :meth:`cleanup`."""

    def __init__(self, command: list[str], env: dict[str, str] | None = None, work_dir: Path | None = None,
                 on_progress: Optional[ProgressCallback] = None, on_line: Optional[LineCallback] = None,
                 on_done: Optional[DoneCallback] = None, base_env: dict[str, str] | None = None,
                 keep_lines: int = 200):
        self.command = [str(c) for c in command]
        self.env = dict(os.environ if base_env is None else base_env)
        self.env.update(env or {})
        self.work_dir = Path(work_dir) if work_dir else None
        self.on_progress, self.on_line, self.on_done = on_progress, on_line, on_done
        self.state = "new"
        self.returncode: int | None = None
        self.progress: tuple[int, int] = (0, 0)
        self.lines: list[str] = []
        self._keep = keep_lines
        self._queue: "queue.Queue[str | None]" = queue.Queue()
        self._proc: subprocess.Popen | None = None
        self._reader: threading.Thread | None = None
        self._eof = False
        self.started_at: float | None = None
        self.finished_at: float | None = None

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> "Run":
        kwargs = {}
        if sys.platform == "win32":
            kwargs["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP | getattr(subprocess, "CREATE_NO_WINDOW", 0)
        else:
            kwargs["start_new_session"] = True
        self.started_at = time.monotonic()
        self._proc = subprocess.Popen(self.command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      stdin=subprocess.DEVNULL, env=self.env, text=True, encoding="utf-8",
                                      errors="replace", bufsize=1, **kwargs)
        self.state = RUNNING
        self._reader = threading.Thread(target=self._read, name="PriorSAM-output", daemon=True)
        self._reader.start()
        return self

    def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        try:
            for line in self._proc.stdout:      # text mode turns tqdm's \r updates into lines too
                self._queue.put(line.rstrip("\n"))
        except (OSError, ValueError):
            pass
        finally:
            self._queue.put(None)

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def elapsed(self) -> float:
        if self.started_at is None:
            return 0.0
        return (self.finished_at or time.monotonic()) - self.started_at

    def poll(self) -> bool:
        """Dispatch queued output; finish the run when the child has exited. True while running."""
        if self.state != RUNNING:
            return False
        while True:
            try:
                line = self._queue.get_nowait()
            except queue.Empty:
                break
            if line is None:
                self._eof = True
                break
            self._handle(line)
        if self._eof and self._proc is not None and self._proc.poll() is not None:
            self._finish(SUCCEEDED if self._proc.returncode == 0 else FAILED)
            return False
        return True

    def _handle(self, line: str) -> None:
        self.lines.append(line)
        del self.lines[:-self._keep]
        parsed = parse_progress(line)
        if parsed is not None:
            self.progress = parsed
            if self.on_progress:
                self.on_progress(*parsed)
        if self.on_line:
            self.on_line(line)

    def _finish(self, state: str) -> None:
        self.state = state
        self.returncode = self._proc.returncode if self._proc else None
        self.finished_at = time.monotonic()
        if self.on_done:
            self.on_done(self)

    def wait(self, timeout: float | None = None, interval: float = 0.1) -> str:
        """Block (polling) until the run ends; on timeout cancel it and raise TimeoutError."""
        end = None if timeout is None else time.monotonic() + timeout
        while self.poll():
            if end is not None and time.monotonic() > end:
                self.cancel()
                raise TimeoutError(f"subprocess did not finish within {timeout} s")
            time.sleep(interval)
        return self.state

    def cancel(self, grace: float = 3.0) -> None:
        """Kill the process tree, wait for it, delete the temporary folder. Idempotent."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            self._kill_tree(proc, grace)
        if proc is not None:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
            if proc.stdout:
                try:
                    proc.stdout.close()
                except OSError:
                    pass
        if self.state == RUNNING:
            self._finish(CANCELLED)
        self.cleanup()

    @staticmethod
    def _kill_tree(proc: subprocess.Popen, grace: float) -> None:
        if sys.platform == "win32":
            subprocess.run(["taskkill", "/F", "/T", "/PID", str(proc.pid)], capture_output=True)
            return
        pgid = proc.pid                      # start_new_session: the child leads its own group
        try:
            os.killpg(pgid, signal.SIGTERM)
        except ProcessLookupError:
            return
        end = time.monotonic() + grace
        while time.monotonic() < end:
            if proc.poll() is not None and not _process_group_alive(pgid):
                return
            time.sleep(0.05)
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def group_alive(self) -> bool:
        """Whether any process of this run's group still exists (POSIX)."""
        return self._proc is not None and _process_group_alive(self._proc.pid)

    def cleanup(self) -> None:
        if self.work_dir is not None:
            shutil.rmtree(self.work_dir, ignore_errors=True)

    def warning_messages(self) -> list[str]:
        """The child's ``warning: ...`` lines (input checks, a volume too thin for 3D context), in order."""
        return [ln[len("warning:"):].strip() for ln in self.lines if ln.startswith("warning:")]

    def error_message(self) -> str:
        """The child's one-line ``error: ...`` if it printed one, else its last output line."""
        for line in reversed(self.lines):
            if line.startswith("error:"):
                return line[len("error:"):].strip()
        tail = [ln for ln in self.lines if ln.strip()]
        return tail[-1].strip() if tail else f"exit status {self.returncode}"
