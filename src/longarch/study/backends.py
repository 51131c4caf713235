"""Where the cells of a study run: in the driver's process, in a local process pool, or on Ray.

A backend runs plain functions on plain, picklable jobs and hands back each outcome as it
finishes; it never touches the store (the driver alone writes). Every backend runs the same job
functions with the same torch thread count per job, so a study gives the same numbers on each.

    backend.submit(fn, job) -> handle
    backend.wait(timeout=None) -> [(handle, result, error)]   # finished jobs (at least one unless
                                                   # `timeout` seconds passed); error is None or the exception
    backend.close(abort=False)                    # abort: stop running jobs now
"""

from __future__ import annotations

import concurrent.futures as futures
import multiprocessing
import os
import signal
import traceback
from typing import Callable


class BackendError(ValueError):
    """A backend that cannot start (Ray not installed, no cluster at the address)."""


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def describe_error(error: BaseException) -> str:
    """The exception with the traceback of where it was raised (a worker's, when it has one)."""
    return "".join(traceback.format_exception(error)).rstrip()


class InProcess:
    """Runs jobs one at a time in this process, each when the driver waits (`--workers 0`), so
    every finished job is stored before the next starts: for debugging and for tests that patch
    the job functions."""

    name = "in-process"

    def __init__(self):
        self._queue: list[tuple[int, Callable, object]] = []
        self._next = 0

    def submit(self, fn: Callable, job) -> int:
        self._next += 1
        self._queue.append((self._next, fn, job))
        return self._next

    def wait(self, timeout: float | None = None):
        handle, fn, job = self._queue.pop(0)
        try:
            return [(handle, fn(job), None)]
        except Exception as error:  # a failing job is an outcome, not a crash of the run
            return [(handle, None, error)]

    def close(self, abort: bool = False) -> None:
        self._queue.clear()


class LocalPool:
    """A pool of `workers` processes on this machine, started with `spawn` (a forked copy of a
    process that has run torch can hang in its thread pool). A worker that dies (killed, out of
    memory) breaks the pool: its jobs come back as errors and a fresh pool takes the next ones."""

    name = "local"

    def __init__(self, workers: int):
        self.workers = workers
        self._pool = self._start()
        self._pending: set[futures.Future] = set()

    def _start(self) -> futures.ProcessPoolExecutor:
        return futures.ProcessPoolExecutor(max_workers=self.workers, mp_context=multiprocessing.get_context("spawn"),
                                           initializer=_leave_interrupts_to_the_driver)

    def submit(self, fn: Callable, job) -> futures.Future:
        try:
            future = self._pool.submit(fn, job)
        except futures.process.BrokenProcessPool:
            self._pool = self._start()
            future = self._pool.submit(fn, job)
        self._pending.add(future)
        return future

    def wait(self, timeout: float | None = None):
        finished, self._pending = futures.wait(self._pending, timeout=timeout, return_when=futures.FIRST_COMPLETED)
        out = []
        for future in finished:
            error = future.exception()
            out.append((future, None if error else future.result(), error))
        if any(isinstance(e, futures.process.BrokenProcessPool) for _, _, e in out):
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = self._start()
        return out

    def close(self, abort: bool = False) -> None:
        """Wait for the workers to exit; on abort (Ctrl-C, an error in the driver) stop them now."""
        if abort:
            processes = list(getattr(self._pool, "_processes", {}).values())
            self._pool.shutdown(wait=False, cancel_futures=True)
            for process in processes:
                process.terminate()
            for process in processes:
                process.join(timeout=10)
        else:
            self._pool.shutdown(wait=True)


class RayBackend:
    """Ray tasks: on the cluster at `address` ("auto": the one this machine belongs to), or on a
    local Ray instance started for the run when address is None. Each job asks for `threads`
    CPUs. The cluster's nodes need longarch installed; jobs carry their weights and data, so no
    shared file system is needed."""

    name = "ray"

    def __init__(self, address: str | None, threads: int, workers: int, gpus: float = 0):
        try:
            import ray
        except ImportError:
            raise BackendError("--backend ray needs Ray: pip install 'longarch[ray]' (or pip install ray)") from None
        self.ray = ray
        self.threads = threads
        self.gpus = gpus  # per job: 1 for a pretrained model on cuda, so Ray places it on a GPU
        if not ray.is_initialized():
            try:
                if address is None:
                    ray.init(num_cpus=workers * threads, include_dashboard=False, log_to_driver=False,
                             configure_logging=False)
                else:
                    ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False)
            except (ConnectionError, RuntimeError, ValueError) as error:
                raise BackendError(f"cannot reach a Ray cluster at {address!r}: {str(error).splitlines()[0]}") from None
            self._started = True
        else:
            self._started = False
        self._remote: dict[Callable, object] = {}
        self._pending: list = []

    def submit(self, fn: Callable, job):
        if fn not in self._remote:
            self._remote[fn] = self.ray.remote(num_cpus=self.threads, num_gpus=self.gpus, max_retries=0)(fn)
        ref = self._remote[fn].remote(job)
        self._pending.append(ref)
        return ref

    def wait(self, timeout: float | None = None):
        finished, self._pending = self.ray.wait(self._pending, num_returns=1, timeout=timeout)
        out = []
        for ref in finished:
            try:
                out.append((ref, self.ray.get(ref), None))
            except self.ray.exceptions.RayTaskError as error:
                out.append((ref, None, error.cause if isinstance(error.cause, BaseException) else error))
            except self.ray.exceptions.RayError as error:  # a worker died
                out.append((ref, None, error))
        return out

    def close(self, abort: bool = False) -> None:
        for ref in self._pending:
            self.ray.cancel(ref, force=True)
        if self._started:
            self.ray.shutdown()


def _leave_interrupts_to_the_driver() -> None:
    """In a pool worker: Ctrl-C reaches the whole process group, and the driver alone decides
    what happens (it stops the workers and keeps what is stored)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def make_backend(kind: str, workers: int | None, address: str | None, threads: int, gpus: float = 0):
    """The backend a run asked for. workers None: one per core (local) or per `threads` CPUs;
    `gpus`: GPUs each Ray job asks for."""
    if kind == "local":
        count = cores() if workers is None else workers
        return InProcess() if count == 0 else LocalPool(count)
    if kind == "ray":
        return RayBackend(address, threads, max(1, cores() // threads if workers is None else workers), gpus)
    raise BackendError(f"unknown backend {kind!r}: use local or ray")
