"""The lock of a study directory: one run at a time writes to it."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path


class StudyBusy(ValueError):
    """Another run holds the study directory."""


class StudyLock:
    """An exclusive lock on a study directory for the length of a run (released by the OS if
    the process dies, so a kill -9 never leaves it stuck)."""

    def __init__(self, out: Path, stamp: bool = True):
        self.path, self.stamped = out / "run.lock", stamp

    def __enter__(self) -> "StudyLock":
        self.file = open(self.path, "a+")
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.file.seek(0)
            holder = self.file.read().strip() or "?"
            self.file.close()
            raise StudyBusy(f"another longarch run (pid {holder}) is writing to {self.path.parent}; "
                            "wait for it to finish or choose another --out") from None
        if self.stamped:
            self.stamp()
        return self

    def stamp(self) -> None:
        """Write this run's pid into the lock (for `status` and a refused second run), once the
        run has decided to write to the directory."""
        self.file.seek(0)
        self.file.truncate()
        self.file.write(str(os.getpid()))
        self.file.flush()

    def __exit__(self, *exc) -> None:
        fcntl.flock(self.file, fcntl.LOCK_UN)
        self.file.close()


def held_by(out: Path) -> int | None:
    """The pid of the run holding `out`, or None when no run does."""
    path = out / "run.lock"
    if not path.is_file():
        return None
    with open(path) as file:  # read-only: `status` works on a study it cannot write
        try:
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            file.seek(0)
            text = file.read().strip()
            return int(text) if text.isdigit() else -1
        fcntl.flock(file, fcntl.LOCK_UN)
    return None
