"""Files written whole or not at all: a temporary file, flushed, synced and renamed into place,
so a crash (or `kill -9`) at any moment leaves either the old file or the new one."""

from __future__ import annotations

import os
from pathlib import Path

from . import faults


def write_atomic(path: Path, data: bytes, point: str = "checkpoint") -> None:
    """Write `data` to `path` atomically (`point`: the fault-test kill point of this write)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as file:
        faults.write(file, data, point)
        file.flush()
        os.fsync(file.fileno())
    tmp.replace(path)
