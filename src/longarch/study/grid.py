"""A study directory against its study's grid, for `longarch plan` and `longarch status`: what
is stored, failed, running and left. Reading never writes (the lock a run holds is lock.py's).
The grid is the kind's plan (driver.py's cells), so this is the same for every kind."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .driver import Cell, Plan
from .lock import held_by
from .store import for_reading


@dataclass
class GridState:
    cells: list[Cell]             # the plan's cells, every stage
    done: set[str]                # ids stored: trained models, evaluated cells
    failures: dict[str, dict]     # id -> failure row
    running: list[dict]           # cells handed out by a live run
    holder: int | None            # pid of the run holding the directory
    notes: list[str] = field(default_factory=list)  # what the plan skipped
    skipped: dict[str, dict] = field(default_factory=dict)  # id -> skipped row: not run, as a cell it needs has nothing
    diverged: set[str] = field(default_factory=set)  # ids of models stored as diverged (among `done`)

    def of(self, stage: str) -> list[Cell]:
        return [c for c in self.cells if c.stage == stage]

    def remaining(self, stage: str | None = None) -> list[Cell]:
        """Cells still to run: neither stored nor skipped."""
        return [c for c in self.cells
                if c.id not in self.done and c.id not in self.skipped and stage in (None, c.stage)]

    def skipped_of(self, cells: list[Cell]) -> list[Cell]:
        """The cells of `cells` the last run skipped (and that are not stored since)."""
        return [c for c in cells if c.id in self.skipped and c.id not in self.done]

    def failed(self, cells: list[Cell]) -> list[Cell]:
        """The cells of `cells` whose last try failed (and that are not stored since)."""
        return [c for c in cells if c.id in self.failures and c.id not in self.done]

    def counts(self, cells: list[Cell]) -> tuple[int, int, int, int]:
        """Planned, stored, failed and remaining cells among `cells` (skipped ones are not remaining)."""
        stored = sum(c.id in self.done for c in cells)
        return len(cells), stored, len(self.failed(cells)), len(cells) - stored - len(self.skipped_of(cells))

    def tally(self) -> dict[str, int]:
        """What became of the planned evaluation cells, for summary.json and a run's exit status:
        stored, failed (a cell whose model failed to train among them), skipped (settled: a cell it
        needs left it nothing), and not attempted (a run was interrupted before it). They add up
        to planned."""
        planned, stored, failed, remaining = self.counts(self.of("eval"))
        skipped = planned - stored - remaining
        return {"planned": planned, "stored": stored, "failed": failed, "skipped": skipped,
                "not_attempted": remaining - failed}

    def first_failure(self) -> dict | None:
        """The failure row to name first: the earliest recorded of any stage whose cell failed
        itself (a model's training, say), before one recorded for the cells that needed it."""
        unsettled = {c.id for c in self.failed(self.cells)}
        rows = [row for cell_id, row in self.failures.items() if cell_id in unsettled]
        return next((row for row in rows if row["attempts"] > 0), rows[0] if rows else None)


def grid_state(plan: Plan, out: Path) -> GridState:
    """The plan against what `out` holds (nothing, when it holds no store); read only."""
    path = out / "results.sqlite"
    if not path.exists():
        return GridState(plan.cells, set(), {}, [], None, plan.notes)
    with for_reading(path) as store:
        done = store.model_ids() | store.cell_ids()
        failures = {f["cell_id"]: f for f in store.failures()}
        running = store.running()
        skipped = {s["cell_id"]: s for s in store.skipped()}
        diverged = store.diverged_ids()
    holder = held_by(out)
    return GridState(plan.cells, done, failures, running if holder else [], holder, plan.notes, skipped, diverged)


def seconds_per_token(rows: list, tokens, seconds) -> float:
    """Seconds per token of stored work: `tokens(row)` and `seconds(row)` of each stored row."""
    return sum(seconds(r) for r in rows) / max(1, sum(tokens(r) for r in rows))


def eval_rate(out: Path) -> float | None:
    """Seconds per evaluated token of the cells stored in `out` (None: none is)."""
    path = out / "results.sqlite"
    if not path.exists():
        return None
    with for_reading(path) as store:
        rows = store.results()
    return seconds_per_token(rows, lambda r: r.n * r.length, lambda r: r.seconds) if rows else None
