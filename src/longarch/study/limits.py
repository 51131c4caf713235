"""What a request asks of this machine, checked before any work starts.

One rule for every command: an estimate of the memory a request holds at once is compared with
this machine's memory (its physical memory, or its cgroup's limit where that is lower), and a
request over it is refused with the estimate in the one error line. The estimates count only
what certainly is held (the int64 symbols of one evaluation cell's samples, of a training batch,
about PLANNED_CELL_BYTES per planned cell, ...), so they are lower bounds: a refused request
could never have run here, and one that passes may still be too big for this machine. They are
made from the numbers alone, before anything of the request is built, so that a request of a
thousand billion seeds is refused as fast as one of ten.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from .schema import ConfigError

# A planned cell (a model to train or a cell to evaluate: its ids, task and plan objects) held
# while a study runs: about 800 bytes measured on the smoke preset's plan, rounded up.
PLANNED_CELL_BYTES = 1024
SYMBOL_BYTES = 8  # an int64 symbol (a controlled study's token) or a token id of a pretrained model's prompt
FLOAT_BYTES = 4   # a float32 activation
# A symbol `longarch sample` shows: its name, its markup and rich's rendering of it (one sample
# of 1,000,000 needle symbols held about 115 MB).
SHOWN_SYMBOL_BYTES = 100

CGROUP_LIMIT = Path("/sys/fs/cgroup/memory.max")  # cgroup v2; "max" when unlimited


def machine_memory() -> int | None:
    """Bytes of memory this process may use at most: physical memory, or the cgroup's limit
    where that is lower; None where neither can be read."""
    try:
        physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # no sysconf (Windows) or no such name
        physical = None
    try:
        limit = int(CGROUP_LIMIT.read_text().strip())
    except (OSError, ValueError):  # no cgroup v2, or "max"
        limit = None
    known = [size for size in (physical, limit) if size is not None and size > 0]
    return min(known) if known else None


def human(size: int) -> str:
    """Bytes as a short size: 512 B, 3.0 KiB, ... 1.4 EiB (and beyond, in EiB)."""
    value, unit = float(size), "B"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"):
        if value < 1024 or unit == "EiB":
            break
        value /= 1024
    return f"{size} B" if unit == "B" else f"{value:,.1f} {unit}"


def check_memory(what: str, need: int) -> None:
    """A ConfigError (a ValueError) when `need` bytes exceed this machine's memory; `what`
    says what needs them and starts the message ("{origin}: one evaluation cell (...)")."""
    capacity = machine_memory()
    if capacity is not None and need > capacity:
        raise ConfigError(f"{what} needs at least {human(need)} of memory; this machine has {human(capacity)}")


def check_plan(origin: str, cells: int, held: dict[str, int]) -> None:
    """A study's plan against this machine: its `cells` (planned at once), then each of `held`
    (what -> bytes one piece of work holds at once, such as one evaluation cell's samples)."""
    check_memory(f"{origin}: the plan's {cells:,} cells", cells * PLANNED_CELL_BYTES)
    for what, need in held.items():
        check_memory(f"{origin}: {what}", need)


def free_disk(path: Path) -> int:
    """Bytes free on the file system that holds `path` (or its nearest existing parent)."""
    path = Path(path).resolve()
    while not path.exists():
        path = path.parent
    return shutil.disk_usage(path).free


def check_disk(what: str, need: int, path: Path) -> None:
    """A ConfigError when `need` bytes exceed what the file system of `path` has free."""
    free = free_disk(path)
    if need > free:
        raise ConfigError(f"{what} needs at least {human(need)} of disk; {path} has {human(free)} free")
