"""The one driver (study/driver.py) with a kind made up for the test: needs, retries, permanent
errors, failures passed on to the cells that need a failed one, and a rerun that does only
what is missing. Both real kinds run through it in test_runner.py and test_pretrained.py."""

from __future__ import annotations

import io
import json
from pathlib import Path

from rich.console import Console

from longarch.study.store import ResultRow, Store
from longarch.study import Cell, Plan, Skip, drive, driver


class Permanent(RuntimeError):
    pass


def square(job: dict) -> int:
    """The job of a made-up cell: fails as told, else squares its input plus its needs' outputs."""
    if job["fail"] == "always":
        raise RuntimeError(f"cell {job['name']} is broken")
    if job["fail"] == "permanent":
        raise Permanent(f"cell {job['name']} can never run")
    if job["fail"] == "once" and job["attempt_file"] and not Path(job["attempt_file"]).exists():
        Path(job["attempt_file"]).write_text("tried")
        raise RuntimeError("a passing glitch")
    return (job["value"] + sum(job["inputs"].values())) ** 2


class Squares:
    """A kind whose "train" cells feed "eval" cells, as a controlled study's models feed its cells."""

    kind = "squares"
    permanent = (Permanent,)
    gpus = 0.0

    def __init__(self, tmp: Path, fail: dict[str, str] | None = None):
        self.name, self.tmp, self.fail, self.jobs = "squares", tmp, fail or {}, []

    def plan(self) -> Plan:
        cells = []
        for model in ("a", "b"):
            cells.append(Cell(model, "train", f"train {model}", {"value": 2 if model == "a" else 3}))
            cells += [Cell(f"{model}{i}", "eval", f"{model} cell {i}", {"value": i}, (model,)) for i in (1, 2)]
        return Plan(cells, {"name": self.name}, ["one note"])

    def stored(self, store: Store, cells: list[Cell], runtime) -> dict:
        path = self.tmp / "models.json"
        return json.loads(path.read_text()) if path.exists() else {}

    def job(self, cell: Cell, inputs: dict, runtime):
        self.jobs.append(cell.id)
        return square, {"name": cell.id, "value": cell.item["value"], "inputs": inputs,
                        "fail": self.fail.get(cell.id), "attempt_file": str(self.tmp / f"{cell.id}.tried")}

    def commit(self, store: Store, cell: Cell, result: int, runtime):
        if cell.stage == "train":
            path = self.tmp / "models.json"
            models = json.loads(path.read_text()) if path.exists() else {}
            path.write_text(json.dumps({**models, cell.id: result}))
        else:
            store.put_result(ResultRow(cell_id=cell.id, model_id=cell.needs[0], model=cell.needs[0], task="t",
                                       label="t", knobs={}, length=1, depth=None, seed=0, n=1, accuracy=float(result),
                                       scores=[float(result)], seconds=0.0))
        return result, cell.what, f"{cell.what}: {result}"

    def blocked(self, cell: Cell, failed: Cell, error: str) -> str:
        return f"needs {failed.what} ({error})"

    def watch(self, progress, cells, runtime, in_process):
        return None


def _run(kind: Squares, out: Path) -> list:
    return drive(kind, out, Console(file=io.StringIO()), command="test", workers=0)


def _accuracies(out: Path) -> dict[str, float]:
    with Store(out / "results.sqlite") as store:
        return {r.cell_id: r.accuracy for r in store.results()}


def test_cells_run_after_what_they_need_with_its_output(tmp_path):
    kind = Squares(tmp_path)
    assert _run(kind, tmp_path / "out") == []
    assert kind.jobs.index("a") < kind.jobs.index("a1") and kind.jobs.index("b") < kind.jobs.index("b1")
    # a trains to 4 and b to 9; cell a1 is (1 + 4)^2, b2 is (2 + 9)^2
    assert _accuracies(tmp_path / "out") == {"a1": 25.0, "a2": 36.0, "b1": 100.0, "b2": 121.0}


def test_a_rerun_does_only_what_is_not_stored(tmp_path):
    _run(Squares(tmp_path), tmp_path / "out")
    again = Squares(tmp_path)
    _run(again, tmp_path / "out")
    assert again.jobs == []


def test_a_run_with_nothing_to_do_starts_no_backend(tmp_path, monkeypatch):
    _run(Squares(tmp_path), tmp_path / "out")

    def no_backend(*args, **kwargs):
        raise AssertionError("a backend was started with every cell stored")

    monkeypatch.setattr(driver, "make_backend", no_backend)
    # a pool of workers (or Ray) asked for: still none, as there is nothing to hand it
    assert drive(Squares(tmp_path), tmp_path / "out", Console(file=io.StringIO()), command="test", workers=2,
                 backend="ray") == []


class Estimated(Squares):
    """Squares whose kind estimates its work: `flops` per cell."""

    def __init__(self, tmp: Path, flops: float):
        super().__init__(tmp)
        self.flops, self.estimated = flops, []

    def work_flops(self, cells: list[Cell]) -> float:
        self.estimated.append(len(cells))
        return self.flops * len(cells)


def test_too_little_work_runs_in_the_drivers_process_unless_workers_are_asked_for(tmp_path, monkeypatch):
    """--workers not given (None) and the work left below POOL_MIN_FLOPS: no pool is started (its
    workers' start-up would cost more than the work); given, or above the bar, the pool is asked for."""
    started = []

    def backend(kind, workers, address, threads, gpus=0):
        started.append((kind, workers, threads))
        return driver.InProcess()  # runs the jobs all the same

    monkeypatch.setattr(driver, "make_backend", backend)
    quiet = Console(file=io.StringIO())
    small = Estimated(tmp_path, flops=driver.POOL_MIN_FLOPS / 100)
    assert drive(small, tmp_path / "small", quiet, command="test", workers=None) == []
    assert started == [("local", 0, 1)] and small.estimated == [6]  # in this process: workers 0
    assert _accuracies(tmp_path / "small") == {"a1": 25.0, "a2": 36.0, "b1": 100.0, "b2": 121.0}

    started.clear()
    drive(Estimated(tmp_path, flops=driver.POOL_MIN_FLOPS / 100), tmp_path / "asked", quiet, command="test", workers=2)
    assert started == [("local", 2, max(1, driver.cores() // 2))]  # asked for: a pool, however small the work
    started.clear()
    (tmp_path / "models.json").unlink()
    drive(Estimated(tmp_path, flops=driver.POOL_MIN_FLOPS), tmp_path / "big", quiet, command="test", workers=None)
    assert started == [("local", None, 1)]  # enough work: a worker per core, a thread each
    started.clear()
    (tmp_path / "models.json").unlink()
    drive(Squares(tmp_path), tmp_path / "unknown", quiet, command="test", workers=None)  # no estimate: as before
    assert started == [("local", None, 1)]


def test_the_controlled_kind_estimates_its_work():
    """smoke is a few GFLOP (run in one process), quick thousands (a pool)."""
    from longarch.controlled.runner import Controlled
    from longarch.kinds import load_study

    smoke, quick = (Controlled(load_study(name)) for name in ("smoke", "quick"))
    tiny, real = smoke.work_flops(smoke.plan().cells), quick.work_flops(quick.plan().cells)
    assert 0 < tiny < driver.POOL_MIN_FLOPS < 1000 * driver.POOL_MIN_FLOPS < real
    train = [c for c in smoke.plan().cells if c.stage == "train"]
    assert smoke.work_flops(train) < tiny and smoke.work_flops([]) == 0


def test_a_passing_glitch_is_retried_and_a_broken_cell_recorded_with_what_needs_it(tmp_path):
    kind = Squares(tmp_path, fail={"a1": "once", "b": "always"})
    failures = _run(kind, tmp_path / "out")
    assert kind.jobs.count("a1") == 2 and kind.jobs.count("b") == 3  # 1 + 2 retries
    assert {f["cell_id"]: f["attempts"] for f in failures} == {"b": 3, "b1": 0, "b2": 0}
    blocked = {f["cell_id"]: f["error"] for f in failures if f["cell_id"] != "b"}
    assert blocked == {"b1": "needs train b (RuntimeError: cell b is broken)",
                       "b2": "needs train b (RuntimeError: cell b is broken)"}
    assert set(_accuracies(tmp_path / "out")) == {"a1", "a2"}
    log = (tmp_path / "out" / "run.log").read_text()
    assert "train b failed (attempt 3 of 3)" in log and "cell b is broken" in log


def test_a_permanent_error_is_not_retried(tmp_path):
    kind = Squares(tmp_path, fail={"a2": "permanent"})
    failures = _run(kind, tmp_path / "out")
    assert kind.jobs.count("a2") == 1
    assert [(f["cell_id"], f["attempts"]) for f in failures] == [("a2", 1)]


def test_the_run_says_what_it_plans_and_holds_the_lock(tmp_path):
    from longarch.study import lock

    console = Console(file=io.StringIO(), width=200)
    drive(Squares(tmp_path), tmp_path / "out", console, command="test", workers=0)
    said = console.file.getvalue()
    assert "one note" in said and "squares: 2 models (0 trained), 4 evaluation cells (0 stored)" in said
    log = (tmp_path / "out" / "run.log").read_text()
    assert "run squares: 2 models to train, 4 cells to evaluate, backend local" in log
    assert lock.held_by(tmp_path / "out") is None
    with Store(tmp_path / "out" / "results.sqlite") as store:
        assert store.meta()["name"] == "squares" and store.meta()["command"] == "test"


def test_a_kill_point_after_each_commit(tmp_path, monkeypatch):
    """The driver reaches the kill point of a stage right after a cell of it is stored (the
    kill-and-resume tests of test_runner_faults.py stop a real study there)."""
    from longarch.study import faults

    reached = []
    monkeypatch.setattr(faults, "reached", reached.append)
    _run(Squares(tmp_path), tmp_path / "out")
    assert reached.count("model") == 2 and reached.count("cell") == 4


class Diverging(Squares):
    """Squares whose model b trains to a result that leaves its cells nothing (a diverged model):
    its commit returns a Skip, and `stored` returns the Skip again once it is stored."""

    def commit(self, store: Store, cell: Cell, result: int, runtime):
        if cell.id != "b":
            return super().commit(store, cell, result, runtime)
        (self.tmp / "b.diverged").write_text("stored")
        return Skip("b diverged at step 3"), cell.what, "train b: diverged at step 3"

    def stored(self, store: Store, cells: list[Cell], runtime) -> dict:
        out = super().stored(store, cells, runtime)
        return {**out, "b": Skip("b diverged at step 3")} if (self.tmp / "b.diverged").exists() else out


def _skipped(out: Path) -> dict[str, str]:
    with Store(out / "results.sqlite") as store:
        return {row["cell_id"]: row["reason"] for row in store.skipped()}


def test_a_skip_leaves_the_cells_that_need_it_skipped_with_its_reason_and_a_rerun_runs_nothing(tmp_path):
    out = tmp_path / "out"
    kind = Diverging(tmp_path)
    console = Console(file=io.StringIO(), width=200)
    assert drive(kind, out, console, command="test", workers=0) == []  # not a failure
    assert "b" in kind.jobs and "b1" not in kind.jobs and "b2" not in kind.jobs
    assert set(_accuracies(out)) == {"a1", "a2"}  # the rest of the grid went on
    assert _skipped(out) == {"b1": "b diverged at step 3", "b2": "b diverged at step 3"}
    assert "skipped 2 cells (not run, not retried): b diverged at step 3" in console.file.getvalue()
    assert "skipped 2 cells: b diverged at step 3" in (out / "run.log").read_text()

    with Store(out / "results.sqlite") as store:  # a failure an earlier run left for b1 is settled by the skip
        store.put_failure("b1", "eval", "b cell 1", 0, "needs train b (RuntimeError: an old error)")
    again = Diverging(tmp_path)
    assert _run(again, out) == []
    assert again.jobs == []  # b is not trained again, and its cells are not tried
    assert _skipped(out) == {"b1": "b diverged at step 3", "b2": "b diverged at step 3"}


def test_a_cell_that_needs_a_skipped_cell_is_skipped_in_turn(tmp_path):
    class Chain(Diverging):
        def plan(self) -> Plan:
            plan = super().plan()
            return Plan(plan.cells + [Cell("b1x", "eval", "after b cell 1", {"value": 1}, ("b1",))], plan.meta)

    kind = Chain(tmp_path)
    assert _run(kind, tmp_path / "out") == []
    assert _skipped(tmp_path / "out") == {c: "b diverged at step 3" for c in ("b1", "b2", "b1x")}
    assert "b1x" not in kind.jobs
