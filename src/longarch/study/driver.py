"""The one driver: every kind of study runs its cells through this loop.

A kind plans its cells; a cell names the cells whose outputs its job needs (an evaluation
needs its model's training). The driver skips what the store already holds, hands every cell
whose needs are met to the backend as a job (plain data in, plain data out; see backends.py),
and commits each finished one in this process, one store transaction per cell, so that an
interrupted run continues where it stopped. A failing job is tried 1 + `retries` times (none
more for the errors its kind calls permanent), then recorded with its last error, together
with every cell that needed it, and the rest of the grid goes on. A job may also finish with
nothing for the cells that need it (a model whose training diverged): its kind stores that as
the cell's result and returns a `Skip`, and those cells are recorded as skipped with its
reason, not run, and not retried by later runs (their kind's `stored` returns the Skip again).
One run at a time holds a study directory (lock.py).
"""

from __future__ import annotations

import importlib
import logging
import platform
import shlex
import sqlite3
import subprocess
import sys
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Callable, ClassVar, Protocol

from rich.console import Console
from rich.markup import escape
from rich.progress import Progress

from . import faults, inputs
from .backends import InProcess, cores, describe_error, make_backend
from .directory import claim, identity
from .lock import StudyLock
from .progress import progress_display
from .limits import check_disk
from .store import Store, StoreError, read_only

# A cell's stage: its progress bar, the nouns of the run's first lines, the kill point reached
# once it is stored (faults.py), and the `kind` column of the store's running and failures tables.
STAGES = {"train": {"bar": "train", "noun": "models", "done": "trained", "todo": "models to train", "point": "model"},
          "eval": {"bar": "evaluate", "noun": "evaluation cells", "done": "stored", "todo": "cells to evaluate",
                   "point": "cell"}}


@dataclass(frozen=True)
class Cell:
    id: str                     # content-addressed: the hash of everything that determines its result
    stage: str                  # "train" or "eval" (see STAGES)
    what: str                   # one line for the progress display, the log and the failures table
    item: object = None         # the kind's own description of the cell
    needs: tuple[str, ...] = ()  # ids of the cells whose outputs its job takes


@dataclass(frozen=True)
class Skip:
    """The output of a cell that leaves nothing for the cells that need it (a model whose
    training diverged): they are recorded as skipped with `reason` instead of run. It is a result,
    not a failure: a kind's `stored` returns it again for the stored cell, so no later run retries
    them."""
    reason: str


@dataclass
class Plan:
    cells: list[Cell]           # in the order to run them
    meta: dict = field(default_factory=dict)  # written to the store's meta table on every run
    notes: list[str] = field(default_factory=list)  # said before the run (what the plan skipped)


@dataclass(frozen=True)
class Runtime:
    """What a job may depend on besides its cell: where it runs, not what it computes."""
    out: Path
    threads: int | None   # torch threads per job (None: leave torch's default)
    local: bool           # jobs run on this machine, so they may write under `out`


class StudyKind(Protocol):
    """A kind of study, as the engine sees it: how a study of it is loaded (load.py), planned
    and run (this driver), shown against its directory (grid.py) and reported
    (analysis/report.py). An instance holds one loaded study."""

    kind: ClassVar[str]          # the value of `kind:` in a study YAML
    Config: ClassVar[type]       # its schema (a pydantic model with `kind: Literal[<kind>]`)
    options: ClassVar[tuple[str, ...]]  # the command-line options it takes (corpus, scale, ...)
    presentation: ClassVar[tuple[str, ...]]  # top-level keys that change how results are shown, not a
                                             # result: left out of the study's identity (directory.py)
    name: str
    permanent: ClassVar[tuple[type[BaseException], ...]]  # errors that fail a cell at once
    gpus: float  # GPUs each job asks of Ray

    default_workers: ClassVar[int | None]  # --workers when not given (None: a process per core)

    def __init__(self, study) -> None: ...

    @staticmethod
    def prepare(data: dict, origin: str, **options) -> dict:
        """The study's YAML data before validation, with the command line's options applied."""

    @staticmethod
    def complete(study, origin: str, **options):
        """The validated study, options applied, checked for what the schema cannot see
        (ConfigError)."""

    @staticmethod
    def from_stored(config: dict) -> dict:
        """A configuration stored by an earlier version, as the schema reads it now."""

    @staticmethod
    def report(out: Path, dest: Path | None = None):
        """The report (analysis/report.py's Report) of the study stored in `out`; its figures are
        drawn under `dest` (default `out`), the directory the report is written to."""

    @staticmethod
    def table(out: Path):
        """The terminal's summary table of the study stored in `out`."""

    def disk_bytes(self, cells: list[Cell]) -> int:
        """A lower bound of the bytes `cells` will write to the study directory (checked against
        the free disk before a run starts)."""

    def grid_rows(self, state) -> list[tuple[str, list[Cell]]]:
        """`longarch plan`'s rows: what each is and its cells (grid.py's GridState)."""

    def cost(self, state, out: Path) -> dict:
        """The remaining work: train_tokens, train_tokens_max, eval_tokens, and seconds at the
        rates stored in `out` (None: unknown)."""

    def work_flops(self, cells: list[Cell]) -> float | None:
        """Optional: an estimate of the floating-point work of `cells` (None: unknown). A run
        whose remaining work is below POOL_MIN_FLOPS, with --workers not given, runs in the
        driver's process: a pool's start-up would cost more than it saves."""

    def plan(self) -> Plan:
        """The cells in the order to run them; `meta["config"]` is the validated study as plain
        data (its identity, directory.py)."""

    def stored(self, store: Store, cells: list[Cell], runtime: Runtime) -> dict[str, object]:
        """The outputs of cells stored by an earlier run that other cells need (a trained model's
        weights, or a `Skip` for one stored as diverged); refuses a store this study cannot add to
        (ValueError)."""

    def job(self, cell: Cell, inputs: dict[str, object], runtime: Runtime) -> tuple[Callable, object]:
        """The job of a cell: a module-level function and its picklable argument, run on a worker."""

    def commit(self, store: Store, cell: Cell, result, runtime: Runtime) -> tuple[object, str, str]:
        """Store a finished cell; return its output for the cells that need it (a `Skip`: they are
        not run), the progress line and the log line."""

    def blocked(self, cell: Cell, failed: Cell, error: str) -> str:
        """The failure recorded for `cell` when a cell it needs failed."""

    def watch(self, progress: Progress, cells: list[Cell], runtime: Runtime, in_process: bool) -> "Watcher | None":
        """Live progress of running jobs beyond the stage bars, or None."""


class Watcher(Protocol):
    def poll(self) -> None: ...
    def done(self, cell: Cell) -> None: ...
    def close(self) -> None: ...


def lazily(module: str, name: str) -> staticmethod:
    """A kind's function imported from `module` when first called: a kind's report module draws
    figures, which its workers never need to import."""
    def call(*args, **kwargs):
        return getattr(importlib.import_module(module), name)(*args, **kwargs)
    call.__doc__ = f"{module}.{name}"
    return staticmethod(call)


def provenance(command: str) -> dict:
    """The command, the versions that matter and the commit of a run, for the store's meta table."""
    import torch

    versions = {"python": platform.python_version(), "torch": torch.__version__}
    for package in ("longarch", "numpy", "transformers"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    try:
        done = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                              cwd=Path(__file__).parent)
        commit = done.stdout.strip() if done.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {"command": command, "versions": versions, "git_commit": commit}


def logger(out: Path) -> logging.Logger:
    """The study's log file, <out>/run.log, appended to by every run."""
    log = logging.getLogger(f"longarch.run.{out.resolve()}")
    log.setLevel(logging.INFO)
    log.propagate = False
    for handler in list(log.handlers):
        log.removeHandler(handler)
        handler.close()
    handler = logging.FileHandler(out / "run.log", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    return log


def first_line(error: BaseException) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0] if text else ''}"


def drive(kind: StudyKind, out: Path, console: Console, command: str | None = None, backend: str = "local",
          workers: int | None = 0, address: str | None = None, retries: int = 2, force: bool = False,
          then: Callable[[Plan], object] | None = None) -> list:
    """Run (or continue) a study of any kind into `out`; return the store's failures.

    backend "local" with workers 0 runs every job in this process; workers N > 0 (None: one per
    core) runs them in a pool of N processes with cores / N torch threads each; "ray" runs them
    as Ray tasks (address None: a local Ray instance). A directory that holds another study, or
    files longarch did not write (unless `force`), is refused before anything is written
    (directory.py). `then(plan)` runs before the directory is released (the report)."""
    plan = kind.plan()
    # stored with the inputs named inside `out`, so that the directory is the same study anywhere
    config, copies = inputs.portable(plan.meta.get("config"), getattr(kind, "input_keys", ()))
    claim(out, kind, config, force)
    left = _left(out, plan)
    _check_room(out, kind, left)
    for note in plan.notes:
        console.print(f"[yellow]{note}[/yellow]")  # the rest runs
    if workers is None and backend == "local" and _too_small_for_a_pool(kind, left):
        workers = 0  # each spawned worker imports torch (seconds) for work a single process ends sooner
    pool_size = cores() if workers is None else workers
    threads = None if backend == "local" and pool_size == 0 else max(1, cores() // max(1, pool_size))
    # jobs on this machine may keep files under `out` (a remote Ray worker's disk is its own)
    runtime = Runtime(out, threads, backend == "local" or address is None)
    out.mkdir(parents=True, exist_ok=True)
    with StudyLock(out, stamp=False) as lock:  # a refused run leaves the lock file as it was
        claim(out, kind, config, force)  # again, now that no other run can write to it
        lock.stamp()
        inputs.keep(out, copies)
        try:
            with Store(out / "results.sqlite") as store:
                meta = {"kind": kind.kind, "identity": identity(kind, config), **plan.meta, "config": config,
                        **provenance(command or shlex.join(sys.argv))}
                failed = _run(kind, store, plan, meta, runtime, console, backend, workers, address, retries)
        except sqlite3.OperationalError as error:  # a full disk, a file made read-only under the run
            raise StoreError(f"{out / 'results.sqlite'}: {error}; what was stored is kept: run the same command "
                             "again once that is resolved") from None
        if then is not None:
            then(plan)
    return failed


# Below this much estimated work (`StudyKind.work_flops`), a run without --workers stays in the
# driver's process. Measured on 2 cores: a fresh `smoke` (1.5 GFLOP) took 11.1 s with a pool
# of two spawned workers and 7.4 s in one process; a pool pays for its start-up (each worker
# imports torch and longarch, about 3-4 s here) only once the work is several seconds per core.
POOL_MIN_FLOPS = 5e9


def _left(out: Path, plan: Plan) -> list[Cell]:
    """The planned cells not yet stored in `out` (the store only read)."""
    stored: set[str] = set()
    if (out / "results.sqlite").is_file():
        with read_only(out / "results.sqlite", untouched=True) as store:
            stored = store.cell_ids() | store.model_ids()
    return [cell for cell in plan.cells if cell.id not in stored]


def _too_small_for_a_pool(kind: StudyKind, left: list[Cell]) -> bool:
    """Whether the work left is known and too little to pay for a pool (POOL_MIN_FLOPS)."""
    flops = kind.work_flops(left) if hasattr(kind, "work_flops") else None
    return flops is not None and flops < POOL_MIN_FLOPS


def _check_room(out: Path, kind: StudyKind, left: list[Cell]) -> None:
    """The disk the cells not yet stored (`left`) will certainly write (the kind's lower bound),
    against what `out`'s file system has free: refused before anything is written, with the
    estimate."""
    need = kind.disk_bytes(left) if hasattr(kind, "disk_bytes") else 0
    if need:
        check_disk(f"{out}: the {len(left):,} cells left", need, out)


def _run(kind: StudyKind, store: Store, plan: Plan, meta: dict, runtime: Runtime, console: Console, backend: str,
         workers: int | None, address: str | None, retries: int) -> list:
    """The run itself, in a locked directory with its store open."""
    log = logger(runtime.out)
    store.clear_running()
    outputs = kind.stored(store, plan.cells, runtime)
    for key, value in meta.items():
        store.set_meta(key, value)
    done = store.cell_ids() | set(outputs)
    todo = [cell for cell in plan.cells if cell.id not in done]
    stages = [s for s in STAGES if any(c.stage == s for c in plan.cells)]
    counts = {s: (sum(c.stage == s for c in plan.cells), sum(c.stage == s for c in todo)) for s in stages}
    console.print(f"[bold]{kind.name}[/bold]: " + ", ".join(
        f"{total} {STAGES[s]['noun']} ({total - left} {STAGES[s]['done']})" for s, (total, left) in counts.items())
        + f" -> {runtime.out}")
    log.info("run %s: %s, backend %s", kind.name,
             ", ".join(f"{left} {STAGES[s]['todo']}" for s, (_, left) in counts.items()), backend)
    # nothing to run (every cell stored): no pool, no Ray, no workers importing torch
    runner = make_backend(backend, workers, address, runtime.threads or 1, gpus=kind.gpus) if todo else InProcess()
    loop = _Loop(kind, store, runner, log, runtime, retries, outputs)
    try:
        with progress_display(console) as progress:
            loop.run(progress, todo, stages)
    except BaseException:
        runner.close(abort=True)
        raise
    runner.close()
    failed = store.failures()
    log.info("run %s ended: %d cells stored of %d, %d failed", kind.name, len(store.cell_ids()),
             sum(c.stage == "eval" for c in plan.cells), len(failed))
    return failed


class _Loop:
    """The loop of one run: submit what is ready, commit what finishes, retry or record what fails."""

    def __init__(self, kind: StudyKind, store: Store, runner, log: logging.Logger, runtime: Runtime, retries: int,
                 outputs: dict):
        self.kind, self.store, self.runner, self.log, self.runtime = kind, store, runner, log, runtime
        self.retries, self.outputs = retries, outputs
        self.pending: dict = {}   # handle -> (cell, attempt)
        self.waiting: dict[str, list[Cell]] = {}  # id of a cell not yet done -> cells waiting for it
        self.skipped: dict[str, int] = {}  # reason -> cells skipped for it in this run

    def run(self, progress: Progress, todo: list[Cell], stages: list[str]) -> None:
        self.progress = progress
        # a stage's clock starts with its first job: its time left is then its own pace, not the
        # wait for the cells it needs (the evaluations, for the first model's training)
        self.bars = {s: progress.add_task(STAGES[s]["bar"], total=sum(c.stage == s for c in todo), info="",
                                          start=False) for s in stages}
        self.watcher = self.kind.watch(progress, todo, self.runtime, isinstance(self.runner, InProcess))
        self.store.clear_skipped()  # this run records anew what it skips (a plan may have changed)
        try:
            for cell in todo:
                self._submit_when_ready(cell)
            while self.pending:
                finished = self.runner.wait(timeout=1.0)
                if self.watcher is not None:
                    self.watcher.poll()
                for handle, result, error in finished:
                    cell, attempt = self.pending.pop(handle)
                    self.store.clear_running(cell.id)
                    if error is None:
                        self._commit(cell, result)
                    else:
                        self._failed(cell, attempt, error)
            for reason, count in self.skipped.items():
                self.log.info("skipped %d cells: %s", count, reason)
                progress.console.print(f"[yellow]skipped {count} cells (not run, not retried): "
                                       f"{escape(reason)}[/yellow]", highlight=False)
        finally:
            if self.watcher is not None:
                self.watcher.close()

    def _submit(self, cell: Cell, attempt: int = 1) -> None:
        self.store.set_running(cell.id, cell.stage, cell.what)
        self.progress.start_task(self.bars[cell.stage])  # once: a started clock goes on
        fn, job = self.kind.job(cell, {need: self.outputs[need] for need in cell.needs}, self.runtime)
        self.pending[self.runner.submit(fn, job)] = (cell, attempt)

    def _submit_when_ready(self, cell: Cell) -> None:
        """Submit the cell if every cell it needs is done, skip it if one of them left it nothing
        (a Skip), else let it wait for the first that is not done (cells waiting for one cell keep
        their plan order)."""
        skip = next((self.outputs[need] for need in cell.needs if isinstance(self.outputs.get(need), Skip)), None)
        missing = next((need for need in cell.needs if need not in self.outputs), None)
        if skip is not None:
            self._skip(cell, skip.reason)
        elif missing is None:
            self._submit(cell)
        else:
            self.waiting.setdefault(missing, []).append(cell)

    def _skip(self, cell: Cell, reason: str) -> None:
        """Record a cell as skipped (a failure recorded for it by an earlier run is settled with it);
        the cells that need it are skipped in turn."""
        self.store.put_skipped(cell.id, cell.stage, cell.what, reason)
        self.outputs[cell.id] = Skip(reason)
        self.skipped[reason] = self.skipped.get(reason, 0) + 1
        self.progress.update(self.bars[cell.stage], advance=1, info=f"skipped: {cell.what}")
        for waiting in self.waiting.pop(cell.id, []):
            self._submit_when_ready(waiting)

    def _commit(self, cell: Cell, result) -> None:
        output, info, line = self.kind.commit(self.store, cell, result, self.runtime)
        faults.reached(STAGES[cell.stage]["point"])
        self.store.clear_failure(cell.id)
        if self.watcher is not None:
            self.watcher.done(cell)
        self.outputs[cell.id] = output
        self.log.info("%s", line)
        self.progress.update(self.bars[cell.stage], advance=1, info=info)
        if isinstance(output, Skip):
            self.progress.console.print(f"[yellow]{escape(line)}[/yellow]", highlight=False)
        for waiting in self.waiting.pop(cell.id, []):
            self._submit_when_ready(waiting)

    def _failed(self, cell: Cell, attempt: int, error: BaseException) -> None:
        self.log.warning("%s failed (attempt %d of %d):\n%s", cell.what, attempt, self.retries + 1,
                         describe_error(error))
        if attempt <= self.retries and not isinstance(error, self.kind.permanent):
            self._submit(cell, attempt + 1)
            return
        line = first_line(error)
        self.store.put_failure(cell.id, cell.stage, cell.what, attempt, line)
        self.progress.console.print(f"[red]failed after {attempt} attempts: {cell.what}: {line}[/red]")
        self._fail_dependents(cell, line)

    def _fail_dependents(self, failed: Cell, line: str) -> None:
        for cell in self.waiting.pop(failed.id, []):
            self.store.put_failure(cell.id, cell.stage, cell.what, 0, self.kind.blocked(cell, failed, line))
            self._fail_dependents(cell, line)
