"""No orphans (issue 19): no process a run starts outlives its driver, even a driver killed with
`kill -9`. Pool workers die with it (a parent-death signal on Linux, a watchdog thread
everywhere; each is tested alone), multiprocessing's resource tracker follows them, and the
processes of a local Ray instance are stopped by the reaper the driver starts; a Ray cluster
given by address is left alone, and a run that ends leaves nothing of Ray behind.

Every test kills what it finds still alive when it ends, so a failure leaves no orphans of its own."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest

pytest.importorskip("ray")  # the Ray tests need it, and every test psutil, which Ray ships
import psutil  # noqa: E402  (Ray's copy: on sys.path once ray is imported)

from longarch.study import backends  # noqa: E402
from test_runner import TINY, write_study  # noqa: E402

EXIT_SECONDS = 30  # generous: a process that is going to exit does so in well under a second


def _alive(process: psutil.Process) -> bool:
    """Running and not a zombie (an orphan's exit status waits for init, which in a container
    may never collect it; a zombie holds no memory and runs nothing)."""
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _until(condition, seconds: float, what: str):
    """Poll `condition` until it holds (then return its value), failing after `seconds`."""
    deadline = time.monotonic() + seconds
    while not (value := condition()):
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {seconds} s")
        time.sleep(0.1)
    return value


def _survivors(processes: list[psutil.Process], seconds: float = EXIT_SECONDS) -> list[str]:
    """Those of `processes` still alive after `seconds` (their command lines), or none as soon
    as all are gone."""
    deadline = time.monotonic() + seconds
    while (left := [p for p in processes if _alive(p)]) and time.monotonic() < deadline:
        time.sleep(0.1)
    out = []
    for process in left:
        try:
            out.append(f"{process.pid}: {' '.join(process.cmdline())[:150]}")
        except psutil.Error:
            pass
    return out


def _kill_all(processes: list[psutil.Process]) -> None:
    for process in processes:
        try:
            process.kill()
        except psutil.Error:
            pass


def _cmdline(process: psutil.Process) -> str:
    try:
        return " ".join(process.cmdline())
    except psutil.Error:
        return ""


def _training(out: Path, driver: psutil.Process) -> bool:
    """Both models in training (each writes its progress file)."""
    return len(list((out / "checkpoints" / "training").glob("*.progress.json"))) == 2


# The processes of Ray's that its raylet starts, by their command lines before and after they name themselves.
AGENTS = ("dashboard/agent.py", "runtime_env/agent/main.py", "ray::DashboardAgent", "ray::RuntimeEnvAgent")


def _starting_ray(out: Path, driver: psutil.Process) -> bool:
    """Inside ray.init(): the raylet has started an agent, one of the processes Ray does not tie
    to the driver (ray.init() waits for the raylet, which then still has to register)."""
    return any(agent in _cmdline(p) for p in driver.children(recursive=True) for agent in AGENTS)


def _kill_the_driver(tmp_path: Path, moment, *options: str) -> tuple[list[str], list[str]]:
    """kill -9 the driver alone at `moment` (see `signal_the_driver`): the command lines of the
    processes it had started, and of those still alive EXIT_SECONDS later."""
    commands, survivors, _, _ = signal_the_driver(tmp_path, moment, signal.SIGKILL, *options)
    return commands, survivors


def signal_the_driver(tmp_path: Path, moment, number: int, *options: str, study: Path | None = None
                      ) -> tuple[list[str], list[str], int, str]:
    """Start `longarch run` on `study` (default: one whose two models would train for hours) with
    two workers; at `moment` (a condition on the output directory and the driver), send signal
    `number` to the driver alone. Return the command lines of the processes it had started (read
    before the signal), of those still alive EXIT_SECONDS after it ended, its exit status and its
    stderr."""
    study = study or write_study(tmp_path, train={**TINY["train"], "steps": 1_000_000})
    out = tmp_path / "out"
    log = tmp_path / "driver.err"
    with open(log, "w") as err:
        # Its own session, as a job of a shell would be: the signal reaches the driver only.
        driver = subprocess.Popen([sys.executable, "-m", "longarch.cli", "run", str(study), "--out", str(out),
                                   "--workers", "2", *options], stdout=subprocess.DEVNULL, stderr=err,
                                  start_new_session=True)
    started: list[psutil.Process] = []
    try:
        def now() -> bool:
            if driver.poll() is not None:
                pytest.fail(f"the run ended ({driver.returncode}) too soon: {log.read_text()[-2000:]}")
            return moment(out, psutil.Process(driver.pid))

        _until(now, 300, moment.__name__)
        started = psutil.Process(driver.pid).children(recursive=True)
        commands = [_cmdline(p) for p in started]
        driver.send_signal(number)
        driver.wait(timeout=60)
        return commands, _survivors(started), driver.returncode, log.read_text()
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
        _kill_all(started)


@pytest.mark.slow
def test_pool_workers_and_the_resource_tracker_die_with_a_killed_driver(tmp_path):
    commands, survivors = _kill_the_driver(tmp_path, _training)
    assert sum("multiprocessing.spawn" in c for c in commands) == 2, commands
    assert any("multiprocessing.resource_tracker" in c for c in commands), commands
    assert survivors == []


@pytest.mark.slow
def test_a_local_ray_instance_dies_with_a_killed_driver(tmp_path):
    """Ray ties its head processes (GCS, raylet) to the driver but not the agents the raylet
    starts; the reaper stops those, and itself ends."""
    commands, survivors = _kill_the_driver(tmp_path, _training, "--backend", "ray")
    assert any("raylet" in c for c in commands) and sum("ray::" in c for c in commands) >= 3, commands
    assert survivors == []
    assert any("backends.py reap" in c for c in commands), commands  # and it is gone as well


@pytest.mark.slow
def test_a_local_ray_instance_dies_with_a_driver_killed_inside_ray_init(tmp_path):
    """Killed while ray.init() starts the instance: an agent the raylet started since the
    reaper's last look is found by its process group."""
    commands, survivors = _kill_the_driver(tmp_path, _starting_ray, "--backend", "ray")
    assert any("raylet" in c for c in commands) and any("backends.py reap" in c for c in commands), commands
    assert not any("ray::train_job" in c for c in commands), commands  # no job had started
    assert survivors == []


def _orphan_after(code: str) -> tuple[psutil.Process, psutil.Process]:
    """A parent process that starts a child running `code` (which prints 'ready' once set up)
    and waits for it; return both once the child is ready."""
    parent = subprocess.Popen([sys.executable, "-c", "import subprocess, sys\n"
                               "child = subprocess.Popen([sys.executable, '-c', sys.argv[1]])\n"
                               "print(child.pid, flush=True)\nchild.wait()", code],
                              stdout=subprocess.PIPE, text=True, start_new_session=True)
    child = psutil.Process(int(parent.stdout.readline()))
    assert parent.stdout.readline().strip() == "ready"
    return psutil.Process(parent.pid), child


def _child_outlives_a_killed_parent(code: str, seconds: float = EXIT_SECONDS) -> list[str]:
    """Kill -9 the parent of a child running `code`: the child's command line if it is still
    alive `seconds` later."""
    parent, child = _orphan_after(code)
    try:
        parent.kill()
        parent.wait()
        return _survivors([child], seconds)
    finally:
        _kill_all([child])


IDLE = "print('ready', flush=True)\nimport time\ntime.sleep(600)"


def test_a_child_left_alone_outlives_its_killed_parent():
    """The trial the next tests build on: without help, a child of a killed process lives on
    (3 s: six times as long as the watchdog takes to notice)."""
    assert len(_child_outlives_a_killed_parent(IDLE, seconds=3)) == 1


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl is Linux's")
def test_the_parent_death_signal_alone_ends_the_child():
    code = "from longarch.study import backends\nimport signal\n" \
           "assert backends.set_parent_death_signal(signal.SIGKILL)\n" + IDLE
    assert _child_outlives_a_killed_parent(code) == []


def test_the_watchdog_thread_alone_ends_the_child():
    """The portable fallback, with the parent-death signal taken away."""
    code = "from longarch.study import backends\nimport os\n" \
           "backends.set_parent_death_signal = lambda sig: False\n" \
           "backends.die_with_parent(os.getppid())\n" + IDLE
    assert _child_outlives_a_killed_parent(code) == []


def test_a_worker_whose_driver_died_before_it_was_set_up_ends_at_once():
    """The parent-death signal is for a parent alive when it is set; a worker that finds
    another parent (its driver gone already) exits before its first job."""
    done = subprocess.run([sys.executable, "-c", "import os\nfrom longarch.study import backends\n"
                           "backends.die_with_parent(os.getppid() + 1)\nprint('ran a job')"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "ran a job" not in done.stdout


def test_the_reaper_stops_what_the_driver_started_once_it_is_killed(tmp_path):
    """Without Ray: a stand-in driver starts the reaper, then a process tree (a child that
    starts a grandchild, neither tied to it), as ray.init() would."""
    driver = subprocess.Popen([sys.executable, "-c", "import subprocess, sys, time\n"
                               f"sys.path.insert(0, {str(Path(psutil.__file__).parent.parent)!r})\n"
                               "from longarch.study import backends\n"
                               "reaper = backends._start_reaper()\n"
                               "print(reaper.pid, flush=True)\n"
                               "tree = subprocess.Popen([sys.executable, '-c', sys.argv[1]])\n"
                               "print(tree.pid, flush=True)\n"
                               "backends._tell_reaper(reaper, backends.INITIALISED)\ntime.sleep(600)",
                               "import subprocess, time\nsubprocess.Popen(['sleep', '600'])\ntime.sleep(600)"],
                              stdout=subprocess.PIPE, text=True, start_new_session=True)
    everything = [psutil.Process(int(driver.stdout.readline()))]
    try:
        everything.append(tree := psutil.Process(int(driver.stdout.readline())))
        everything += _until(lambda: tree.children(), 60, "the grandchild")
        driver.kill()
        driver.wait()
        assert _survivors(everything) == []
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
        _kill_all(everything)


def test_orphans_are_found_by_their_process_group():
    """What the reaper takes for Ray's processes orphaned by the driver's death: those of the
    driver's process group, started after the reaper, whose parent left the group. A leader
    (the driver) starts C and D, D starts E, and the leader exits: C and D are orphans, E is not."""
    leader = subprocess.Popen([sys.executable, "-c", "import subprocess, sys\n"
                               "c = subprocess.Popen(['sleep', '600'])\n"
                               "d = subprocess.Popen([sys.executable, '-c', sys.argv[1]], stdout=subprocess.PIPE, text=True)\n"
                               "print(c.pid, d.pid, d.stdout.readline().strip(), flush=True)",
                               "import subprocess, time\nprint(subprocess.Popen(['sleep', '600']).pid, flush=True)\n"
                               "time.sleep(600)"], stdout=subprocess.PIPE, text=True, start_new_session=True)
    c, d, e = (psutil.Process(int(pid)) for pid in leader.stdout.readline().split())
    try:
        leader.wait()
        me = psutil.Process()  # started before all of them, as the reaper is before Ray's processes
        found = backends._orphans(psutil, leader.pid, me, leader.pid)
        assert set(found) == {c.pid, d.pid}
        assert backends._orphans(psutil, leader.pid, psutil.Process(e.pid), leader.pid) == {}  # none newer than E
    finally:
        _kill_all([c, d, e])


class _FakeRay(types.ModuleType):
    """Just enough of `ray` for RayBackend to connect and close; init on a local instance starts
    a process (a stand-in for one of Ray's) that shutdown() leaves behind."""

    def __init__(self):
        super().__init__("ray")
        self.calls, self.started = [], []

    def is_initialized(self) -> bool:
        return False

    def init(self, address=None, **options) -> None:
        self.calls.append(("init", address))
        if address is None:
            self.started.append(subprocess.Popen(["sleep", "600"]))

    def shutdown(self) -> None:
        self.calls.append(("shutdown",))


def test_a_cluster_given_by_address_is_left_alone(monkeypatch):
    fake = _FakeRay()
    monkeypatch.setitem(sys.modules, "ray", fake)
    backend = backends.RayBackend("auto", threads=1, workers=1)
    assert backend._reaper is None
    backend.close(abort=True)
    assert fake.calls == [("init", "auto"), ("shutdown",)]  # disconnect only: a connected driver's shutdown


def test_what_a_local_instance_leaves_at_close_is_stopped(monkeypatch):
    fake = _FakeRay()
    monkeypatch.setitem(sys.modules, "ray", fake)
    backend = backends.RayBackend(None, threads=1, workers=1)
    reaper = backend._reaper
    try:
        assert reaper is not None and reaper.poll() is None
        backend.close()
        assert fake.calls == [("init", None), ("shutdown",)]
        assert reaper.returncode is not None  # close waits for the reaper
        assert fake.started[0].wait(timeout=EXIT_SECONDS) == -signal.SIGTERM
    finally:
        for process in fake.started:
            process.kill()
            process.wait()


@pytest.mark.slow
@pytest.mark.parametrize("abort", [False, True])
def test_a_ray_run_that_ends_leaves_no_process(abort):
    """ray.shutdown() on close, and on abort with a job still running: every process of the
    local instance, and the reaper, gone."""
    def nap(seconds: float) -> None:  # local, so Ray's workers get it by value, not by module
        time.sleep(seconds)

    backend = backends.RayBackend(None, threads=1, workers=1)
    try:
        started = psutil.Process().children(recursive=True)
        assert any("raylet" in _cmdline(p) for p in started) and backend._reaper is not None
        backend.submit(nap, 0.0)
        assert [error for _, _, error in backend.wait()] == [None]
        if abort:
            backend.submit(nap, 600)
    finally:
        backend.close(abort=abort)
    assert _survivors(started) == []
