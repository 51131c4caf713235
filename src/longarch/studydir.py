"""A study directory against its study's grid, for `longarch plan` and `longarch status`:
what is stored, failed, running and left, and what the rest costs. Reading never writes (the
lock a run holds is study/lock.py's)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .config import Study
from .study.lock import held_by
from .study.store import Store
from .train import TrainSpec

if TYPE_CHECKING:
    from .runner import EvalCell, ModelPlan


@dataclass
class GridState:
    models: list[ModelPlan]
    cells: list[EvalCell]
    trained: set[str]             # model ids with a stored model row
    stored: set[str]              # cell ids with a stored result
    failures: dict[str, dict]     # id -> failure row
    running: list[dict]           # cells handed out by a live run
    holder: int | None            # pid of the run holding the directory

    def remaining_cells(self) -> list[EvalCell]:
        return [c for c in self.cells if c.cell_id not in self.stored]

    def remaining_models(self) -> list[ModelPlan]:
        return [p for p in self.models if p.model_id not in self.trained]


def grid_state(study: Study, out: Path) -> GridState:
    """The study's grid against what `out` holds (nothing, when it holds no store); read only."""
    from .runner import plan

    if getattr(study, "kind", None) == "pretrained":  # nothing to train: checkpoints on text tasks
        from .pretrained.runner import plan as plan_pretrained

        model_plans, cells = [], plan_pretrained(study)[0]
    else:
        model_plans, cells = plan(study)
    path = out / "results.sqlite"
    if not path.exists():
        return GridState(model_plans, cells, set(), set(), {}, [], None)
    with Store(path) as store:
        trained, stored = store.model_ids(), store.cell_ids()
        failures = {f["cell_id"]: f for f in store.failures()}
        running = store.running()
    holder = held_by(out)
    return GridState(model_plans, cells, trained, stored, failures, running if holder else [], holder)


def cost(study: Study, state: GridState, out: Path) -> dict:
    """What the remaining work costs: tokens trained (batch x each step's length, summed over the
    planned steps of each model; `train_tokens_max` when training to a criterion may go on to
    its max_steps and a learning-rate sweep may try every rate) and tokens evaluated (samples x
    length per cell), and seconds estimated from the rates of work already stored in `out`
    (None when nothing is stored yet)."""
    remaining = state.remaining_models()
    train_tokens = sum(m.train_spec.tokens() for m in remaining)
    train_tokens_max = sum(m.train_spec.tokens(m.train_spec.max_steps) * len(m.train_spec.lr_sweep or (1,))
                           for m in remaining)
    eval_tokens = sum(study.eval.samples * c.length for c in state.remaining_cells())
    seconds = None
    path = out / "results.sqlite"
    if path.exists() and (state.trained or state.stored):
        with Store(path) as store:
            model_rows, result_rows = store.models(), store.results()
        train_rate = sum(r.train_seconds for r in model_rows) / max(1, sum(_trained_tokens(r) for r in model_rows))
        eval_rate = sum(r.seconds for r in result_rows) / max(1, sum(r.n * r.length for r in result_rows))
        if (model_rows or not train_tokens) and (result_rows or not eval_tokens):
            seconds = train_tokens * train_rate + eval_tokens * eval_rate
    return {"train_tokens": train_tokens, "train_tokens_max": train_tokens_max, "eval_tokens": eval_tokens,
            "seconds": seconds}


def _trained_tokens(row) -> int:
    """Symbols a stored model was trained on: its recipe's lengths over the steps it ran (over
    every rate its learning-rate sweep tried)."""
    train = dict(row.config.get("train", {}))
    tries = train.pop("sweep", None)
    try:
        spec = TrainSpec(**train)
    except (TypeError, ValueError):
        return int(train.get("steps", 0)) * int(train.get("batch_size", 0)) * row.train_length
    if isinstance(tries, list) and tries:
        return sum(spec.tokens(int(t.get("steps") or spec.steps)) for t in tries if isinstance(t, dict))
    return spec.tokens(row.steps or spec.steps)
