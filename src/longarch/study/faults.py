"""Kill points for the fault tests: a run dies, as under `kill -9`, at a moment the test chooses.

The environment variable LONGARCH_KILL_AT names the moment; unset (as in every normal run) the
functions here do nothing:

    step:K              after the K-th training step this process finishes
    model:K             after the K-th trained model is committed (checkpoint and store row)
    cell:K              after the K-th evaluation result is committed
    checkpoint:K:BYTES  while writing the K-th checkpoint, after its first BYTES bytes reached disk
    partial:K:BYTES     the same for the K-th mid-training checkpoint

K counts from 1 within one process, so a test that resumes a killed run chooses the next point
relative to what that run still has to do. The process kills its whole process group when it
leads one (a test starts the run in a session of its own, as an OOM killer or `kill -9 -PGID`
would end a job with its workers), else only itself.
"""

from __future__ import annotations

import os
import signal
from collections import Counter
from typing import BinaryIO

VARIABLE = "LONGARCH_KILL_AT"
POINTS = ("step", "model", "cell", "checkpoint", "partial")
WRITES = ("checkpoint", "partial")  # points that stop a write after BYTES bytes

_seen: Counter = Counter()


def _wanted() -> tuple[str, int, int | None] | None:
    spec = os.environ.get(VARIABLE)
    if not spec:
        return None
    point, *numbers = spec.split(":")
    if point not in POINTS or len(numbers) != (2 if point in WRITES else 1) or not all(
            n.isdigit() for n in numbers):
        raise ValueError(f"{VARIABLE}={spec!r}: expected one of step:K, model:K, cell:K, checkpoint:K:BYTES, partial:K:BYTES")
    return point, int(numbers[0]), int(numbers[1]) if len(numbers) == 2 else None


def die() -> None:
    """SIGKILL, which no handler, `finally` or atexit can intercept."""
    if os.getpgid(0) == os.getpid():
        os.killpg(os.getpid(), signal.SIGKILL)
    os.kill(os.getpid(), signal.SIGKILL)


def reached(point: str) -> None:
    """Count one `point` of this process; die if it is the chosen one."""
    wanted = _wanted()
    if wanted is None:
        return
    _seen[point] += 1
    if wanted[0] == point and wanted[1] == _seen[point] and wanted[2] is None:
        die()


def write(file: BinaryIO, data: bytes, point: str = "checkpoint") -> None:
    """file.write(data), or, at the chosen write, its first BYTES bytes flushed to disk, then death."""
    wanted = _wanted()
    if wanted is not None:
        _seen[point] += 1
        if wanted[0] == point and wanted[1] == _seen[point]:
            file.write(data[:wanted[2]])
            file.flush()
            os.fsync(file.fileno())
            die()
    file.write(data)
