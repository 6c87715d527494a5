"""One batch per output folder at a time.

Two runs on one folder would segment every case twice and could remove each other's temp
files. The lock is an OS advisory lock (``flock`` / ``msvcrt.locking``) on ``.priorsam.lock``
in the output folder: the OS drops it when the holder exits, even on SIGKILL or a power cut's
reboot, so there is never a stale lock to clean up by hand. Its text names the holder for the
error message; a run that ends removes it (a killed run's stays, hidden, and is reused).
"""
from __future__ import annotations

import os
import socket
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from ..errors import InputError

LOCK_NAME = ".priorsam.lock"


class FolderBusy(InputError):
    """Another process holds the output folder's lock."""


class FolderLock:
    """Exclusive lock on ``folder``; ``wait`` seconds to wait for it (0: refuse at once)."""

    def __init__(self, folder: str | os.PathLike, wait: float = 0.0, poll: float = 0.5):
        self.path = Path(folder) / LOCK_NAME
        self.wait = max(0.0, float(wait))
        self.poll = poll
        self._fh = None

    def acquire(self) -> "FolderLock":
        deadline = time.monotonic() + self.wait
        while True:
            try:
                # "a+": never truncate before holding the lock, so a waiting run cannot wipe the holder's note.
                fh = open(self.path, "a+", encoding="utf-8")
            except OSError as exc:
                raise InputError(f"cannot create the lock file {self.path}: {exc.strerror or exc}") from exc
            try:
                _lock(fh)
            except _Busy:
                fh.seek(0)
                holder = fh.read().strip() or "another process"
                fh.close()
                if time.monotonic() >= deadline:
                    raise FolderBusy(f"output folder {self.path.parent} is in use by another batch ({holder}); "
                                     f"wait for it to finish or use another output folder") from None
                time.sleep(self.poll)
                continue
            except OSError as exc:  # e.g. a network file system without locks: say so, do not call it busy
                fh.close()
                raise InputError(f"cannot lock the output folder {self.path.parent} "
                                 f"({exc.strerror or exc}); use a local output folder") from exc
            # The holder we waited for removes the file before unlocking it; a lock on that removed
            # file guards nothing, so start again on the file now at the path.
            try:
                current = os.stat(self.path).st_ino == os.fstat(fh.fileno()).st_ino
            except FileNotFoundError:
                current = False
            if current:
                break
            _unlock(fh)
            fh.close()
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()} on {socket.gethostname()} since "
                 f"{datetime.now(timezone.utc).isoformat(timespec='seconds')}\n")
        fh.flush()
        self._fh = fh
        return self

    def release(self) -> None:
        if self._fh is not None:
            try:
                # Removed while still locked, so a clean run leaves no file; a killed run's file is
                # simply locked again by the next run.
                try:
                    self.path.unlink()
                except OSError:
                    pass  # Windows cannot remove an open file; it stays, harmless and hidden
                _unlock(self._fh)
            finally:
                self._fh.close()
                self._fh = None

    def __enter__(self) -> "FolderLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


class _Busy(Exception):
    """The lock is held by another process."""


if sys.platform == "win32":
    import msvcrt

    def _lock(fh) -> None:
        fh.seek(0)
        try:
            msvcrt.locking(fh.fileno(), msvcrt.LK_NBLCK, 1)
        except OSError as exc:  # Windows reports a held lock as EACCES or EDEADLOCK
            raise _Busy() from exc

    def _unlock(fh) -> None:
        fh.seek(0)
        msvcrt.locking(fh.fileno(), msvcrt.LK_UNLCK, 1)
else:
    import fcntl

    def _lock(fh) -> None:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise _Busy() from exc

    def _unlock(fh) -> None:
        fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
