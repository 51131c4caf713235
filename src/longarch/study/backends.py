"""Where the cells of a study run: in the driver's process, in a local process pool, or on Ray.

A backend runs plain functions on plain, picklable jobs and hands back each outcome as it
finishes; it never touches the store (the driver alone writes). Every backend runs the same job
functions with the same torch thread count per job, so a study gives the same numbers on each.

    backend.submit(fn, job) -> handle
    backend.wait(timeout=None) -> [(handle, result, error)]   # finished jobs (at least one unless
                                                   # `timeout` seconds passed); error is None or the exception
    backend.close(abort=False)                    # abort: stop running jobs now

No process a backend starts outlives the driver, even one killed with `kill -9`: pool workers
die with it (a parent-death signal on Linux, a watchdog thread everywhere), and the processes
of a local Ray instance are stopped by a reaper process that outlives the driver (`_reap`).
"""

from __future__ import annotations

import concurrent.futures as futures
import ctypes
import multiprocessing
import os
import select
import signal
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Callable

# How often a worker looks for its driver, and the reaper for the driver and Ray's processes.
POLL_SECONDS = 0.5


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
    memory) breaks the pool: its jobs come back as errors and a fresh pool takes the next ones.
    A worker ends itself when the driver dies (`_start_worker`)."""

    name = "local"

    def __init__(self, workers: int):
        self.workers = workers
        self._pool = self._start()
        self._pending: set[futures.Future] = set()

    def _start(self) -> futures.ProcessPoolExecutor:
        # The executor spawns its workers in submit(), so from the thread that runs the driver's
        # loop, which closes the pool before it ends: a parent-death signal, sent when the thread
        # that started a process ends, reaches the workers only when the driver is gone.
        return futures.ProcessPoolExecutor(max_workers=self.workers, mp_context=multiprocessing.get_context("spawn"),
                                           initializer=_start_worker, initargs=(os.getpid(),))

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
        self._started = not ray.is_initialized()  # this run connected, so it disconnects
        # A local instance: its reaper starts first, to see every process ray.init() starts.
        self._reaper = _start_reaper() if self._started and address is None else None
        if self._started:
            self._init(address, workers * threads)
            _tell_reaper(self._reaper, INITIALISED)
        self._remote: dict[Callable, object] = {}
        self._pending: list = []

    def _init(self, address: str | None, cpus: int) -> None:
        """ray.init(), keeping this process's SIGTERM handler: Ray's own exits with status 15 and
        would take the place of the command line's, which stops a run as Ctrl-C does (cli.py)."""
        ray = self.ray
        kept = signal.getsignal(signal.SIGTERM) if threading.current_thread() is threading.main_thread() else None
        try:
            if address is None:
                ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False, configure_logging=False)
            else:
                ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False)
        except (ConnectionError, RuntimeError, ValueError) as error:
            self.close(abort=True)
            raise BackendError(f"cannot reach a Ray cluster at {address!r}: {str(error).splitlines()[0]}") from None
        except SystemExit as exit:  # Ray's handler took a SIGTERM inside ray.init()
            self.close(abort=True)
            if callable(kept) and exit.code == signal.SIGTERM:
                kept(signal.SIGTERM, None)  # what this process does with one (the command line's: stop)
            raise
        finally:
            if kept is not None:
                signal.signal(signal.SIGTERM, kept)

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
        """Cancel what still runs and disconnect; a local instance this run started stops (on a
        cluster, `address` given, nothing of the cluster does)."""
        for ref in getattr(self, "_pending", ()):
            self.ray.cancel(ref, force=True)
        self._pending = []
        if self._started:
            self.ray.shutdown()
            self._started = False
        if self._reaper is not None:
            _tell_reaper(self._reaper, CLOSING)
            _stop_reaper(self._reaper)
            self._reaper = None


def _start_worker(driver: int) -> None:
    """In a pool worker, before its first job. Ctrl-C reaches the whole process group, and so
    does SIGHUP when the terminal closes; the driver alone decides what happens (it stops the
    workers and keeps what is stored), so the worker ignores both (not SIGTERM: the driver stops
    it with that). And the worker dies with the driver: a driver killed with `kill -9` never
    closes the pool, and a worker holds both ends of the pool's queues, so it would never see
    them close; it would train on for nobody, holding cores and memory."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if hasattr(signal, "SIGHUP"):
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
    die_with_parent(driver)


def die_with_parent(parent: int) -> None:
    """End this process as soon as `parent`, the process that started it, is gone: at once by
    the kernel's parent-death signal on Linux, else within POLL_SECONDS by a watchdog thread
    (kept on Linux as well, should prctl be unavailable)."""
    if sys.platform.startswith("linux"):
        set_parent_death_signal(signal.SIGKILL)
    # The parent may have died before the signal was set; then no signal will come.
    if os.getppid() != parent:
        os._exit(1)
    threading.Thread(target=_exit_when_orphaned, args=(parent,), name="longarch-parent-watch", daemon=True).start()


def set_parent_death_signal(sig: int) -> bool:
    """prctl(PR_SET_PDEATHSIG, sig): the kernel sends `sig` to this process when the thread
    that started it ends. False where libc has no prctl or refuses it."""
    PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return False
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    return prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0) == 0


def _exit_when_orphaned(parent: int) -> None:
    """A dead parent's children are handed to init (or a subreaper): the parent pid changes."""
    while os.getppid() == parent:
        time.sleep(POLL_SECONDS)
    os._exit(1)  # no cleanup: the job's result has nowhere to go


# What the reaper and the driver tell each other, one byte each.
READY = b"r"        # the reaper watches the driver
INITIALISED = b"i"  # ray.init() returned: the instance's head processes are all started (what the
                    # raylet starts later is found under it)
CLOSING = b"c"      # the driver stopped Ray itself; what the pipe's end means is not a death


def _start_reaper() -> subprocess.Popen | None:
    """Start the reaper of the local Ray instance that ray.init() is about to start. Ray ties
    its head processes to the driver, but not the agents its raylet starts: after a `kill -9` of
    the driver, its dashboard and runtime-env agents lived on for a minute. None without psutil
    (Ray ships it, on sys.path once ray is imported) or without an interpreter to run it."""
    try:
        import psutil
    except ImportError:
        return None
    if not sys.executable:
        return None
    # -I: the reaper imports only the standard library and psutil, whatever sys.path this run has.
    # Its own session: Ctrl-C in the terminal is for the driver, which stops Ray itself.
    reaper = subprocess.Popen([sys.executable, "-I", str(Path(__file__).resolve()), "reap",
                               str(Path(psutil.__file__).parent.parent), str(os.getpid())],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, start_new_session=True)
    # Ray starts only once the reaper watches: a driver killed before would leave its first
    # processes to nobody.
    ready = _read(reaper.stdout.fileno(), 60) == READY
    reaper.stdout.close()
    if not ready:
        _stop_reaper(reaper)
        return None
    return reaper


def _tell_reaper(reaper: subprocess.Popen | None, message: bytes) -> None:
    if reaper is not None:
        try:
            reaper.stdin.write(message)
            reaper.stdin.flush()
        except OSError:  # the reaper is gone (killed by hand): nothing to tell
            pass


def _stop_reaper(reaper: subprocess.Popen) -> None:
    """Close the reaper's pipe, so that it stops whatever of Ray is left (nothing, after
    ray.shutdown()) and exits, and wait for it."""
    try:
        reaper.stdin.close()
    except OSError:
        pass
    try:
        reaper.wait(timeout=30)
    except subprocess.TimeoutExpired:
        reaper.kill()
        reaper.wait()


def _reap(psutil_path: str, driver: int) -> None:
    """The reaper's life. While ray.init() runs, every new child of the driver is Ray's; until
    the driver goes, note them and every process under them (the raylet starts workers all the
    time). Then stop them: SIGTERM, then SIGKILL for what is still there after a grace."""
    sys.path.insert(0, psutil_path)
    import psutil

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        me, group = psutil.Process(), os.getpgid(driver)
    except OSError:
        return  # the driver is gone already, before starting anything
    os.write(sys.stdout.fileno(), READY)
    tracked: dict = {}
    adopting, adopted, said = True, False, b""
    while os.getppid() == driver:
        new = _newer_children(psutil, driver, me) if adopting else []
        tracked, adopted = _track(psutil, tracked, new), adopted or bool(new)
        message = _read(sys.stdin.fileno(), POLL_SECONDS)
        if message == b"":
            break
        said += message or b""
        if INITIALISED in said and adopting:  # one last look: all ray.init() started is there now
            new = _newer_children(psutil, driver, me)
            tracked, adopted, adopting = _track(psutil, tracked, new), adopted or bool(new), False
    # Once more: what did not die with the driver is still under its parents. Ray's head dies
    # with a killed driver; children its raylet started since the last look are handed to init
    # then, and only their process group (the driver's) still says whose they are.
    tracked = _track(psutil, tracked)
    if adopted and CLOSING not in said:
        tracked.update(_orphans(psutil, group, me, driver))
    _stop(psutil, list(tracked.values()))


# The reaper's helpers take psutil as an argument: this module imports it only in the reaper,
# from Ray's copy (psutil is no dependency of longarch).


def _newer_children(psutil, driver: int, me) -> list:
    """The driver's children started after the reaper (so by ray.init()), the reaper aside."""
    try:
        children = psutil.Process(driver).children()
    except psutil.Error:
        return []
    out = []
    for child in children:
        try:
            if child.pid != me.pid and child.create_time() >= me.create_time():
                out.append(child)
        except psutil.Error:
            pass
    return out


def _track(psutil, tracked: dict, new=()) -> dict:
    """The tracked processes still alive, with `new` ones, and every process now under them."""
    tracked = {pid: process for pid, process in {**tracked, **{p.pid: p for p in new}}.items()
               if _alive(psutil, process)}
    for pid in _descendants(psutil, set(tracked)) - set(tracked):
        try:
            tracked[pid] = psutil.Process(pid)
        except psutil.Error:
            pass
    return tracked


def _orphans(psutil, group: int, me, driver: int) -> dict:
    """Processes of the driver's process group started after the reaper whose parent is no
    longer in the group (handed to init or a subreaper): Ray's, orphaned by the driver's death.
    A process of the group that the shell started (a pipe's other end) was there before."""
    out = {}
    for process in psutil.process_iter():
        try:
            if process.pid in (me.pid, driver) or process.create_time() < me.create_time():
                continue
            if os.getpgid(process.pid) == group and _group_of(process.ppid()) != group:
                out[process.pid] = process
        except (psutil.Error, OSError):
            pass
    return out


def _group_of(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except OSError:
        return None


def _read(fd: int, timeout: float) -> bytes | None:
    """What the driver wrote to the pipe at `fd` within `timeout` seconds: None if nothing,
    b"" if the pipe was closed (by the driver, or by the kernel when the driver died)."""
    readable, _, _ = select.select([fd], [], [], timeout)
    return os.read(fd, 64) if readable else None


def _descendants(psutil, roots: set[int]) -> set[int]:
    """Every process under `roots`, read from one scan of the process table."""
    children: dict[int, list[int]] = {}
    for process in psutil.process_iter(["ppid"]):
        children.setdefault(process.info["ppid"], []).append(process.pid)
    found, todo = set(), list(roots)
    while todo:
        pid = todo.pop()
        for child in children.get(pid, ()):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _stop(psutil, processes: list, grace: float = 3.0) -> None:
    """SIGTERM, as `ray stop` does; SIGKILL for what is still there after `grace` seconds."""
    for process in processes:
        try:
            process.terminate()  # psutil checks that the pid is still this process
        except psutil.Error:
            pass
    deadline = time.monotonic() + grace
    while (alive := [p for p in processes if _alive(psutil, p)]) and time.monotonic() < deadline:
        time.sleep(0.1)
    for process in alive:
        try:
            process.kill()
        except psutil.Error:
            pass


def _alive(psutil, process) -> bool:
    """Running, and not a zombie: an orphan's exit status waits for init to collect it, which
    a container's init may never do (psutil.wait_procs would wait for it in vain)."""
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def make_backend(kind: str, workers: int | None, address: str | None, threads: int, gpus: float = 0):
    """The backend a run asked for. workers None: one per core (local) or per `threads` CPUs;
    `gpus`: GPUs each Ray job asks for."""
    if kind == "local":
        count = cores() if workers is None else workers
        return InProcess() if count == 0 else LocalPool(count)
    if kind == "ray":
        return RayBackend(address, threads, max(1, cores() // threads if workers is None else workers), gpus)
    raise BackendError(f"unknown backend {kind!r}: use local or ray")


if __name__ == "__main__":
    # The reaper (`_start_reaper`): run as a script, so it imports nothing of longarch.
    if sys.argv[1:2] == ["reap"] and len(sys.argv) == 4:
        _reap(sys.argv[2], int(sys.argv[3]))
