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

    def __init__(self, out: Path):
        self.path = out / "run.lock"

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
        self.file.seek(0)
        self.file.truncate()
        self.file.write(str(os.getpid()))
        self.file.flush()
        return self

    def __exit__(self, *exc) -> None:
        fcntl.flock(self.file, fcntl.LOCK_UN)
        self.file.close()


def held_by(out: Path) -> int | None:
    """The pid of the run holding `out`, or None when no run does."""
    path = out / "run.lock"
    if not path.exists():
        return None
    with open(path, "a+") as file:
        try:
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            file.seek(0)
            text = file.read().strip()
            return int(text) if text.isdigit() else -1
        fcntl.flock(file, fcntl.LOCK_UN)
    return None
