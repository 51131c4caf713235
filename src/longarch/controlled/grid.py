"""The controlled study's grid as `longarch plan` shows it: a row per stage and evaluated task,
and what the remaining work costs."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ..study.grid import GridState, eval_rate, seconds_per_token
from ..study.store import for_reading
from . import interventions
from .config import Study
from .train import TrainSpec


def rows(study: Study, state: GridState) -> list[tuple[str, list]]:
    """(what, its cells): training, then the cells of each evaluated task; then, for each
    intervention, its training (a training intervention) and its cells."""
    trained = [c for c in state.of("train") if not c.item.intervention]
    out = [("train (architecture x seed)", trained)]
    task_depths = study.task_depths()
    evaluated = [c for c in state.of("eval") if not c.item.applied]
    for label, _ in study.eval_tasks():
        out.append((f"evaluate {label} ({len(study.models) * len(study.seeds)} models x "
                    f"{len(study.eval_lengths())} lengths{_depths(task_depths[label])})",
                    [c for c in evaluated if not _diagnostic(c) and c.item.label == label]))
    for measure in (study.diagnostics.measures if study.diagnostics else ()):
        cells = [c for c in state.of("eval") if _diagnostic(c) and c.item.measure == measure]
        out.append((f"diagnose {measure} (models it applies to x needle formats, to {study.diagnostics.max_factor} T)",
                    cells))
    for entry in study.interventions:
        out += _intervention_rows(entry.name, entry.stage, state)
    return out


def _depths(depths: list) -> str:
    """' x N depths' of a task's cells ('' for a task without a needle depth)."""
    if depths == [None]:
        return ""
    return f" x {len(depths)} depth{'s' if len(depths) > 1 else ''}"


def _intervention_rows(name: str, stage: str, state: GridState) -> list[tuple[str, list]]:
    """An intervention's rows: its models' training (a training intervention), and its cells, with
    the models it applies to (n/a for the others)."""
    out = []
    if stage == interventions.TRAIN:
        trained = [c for c in state.of("train") if c.item.intervention == name]
        models = sorted({interventions.base_label(c.item.label, name) for c in trained})
        counted = f"{len(trained)} model{'' if len(trained) == 1 else 's'}"
        out.append((f"train +{name} ({counted}: {', '.join(models) or 'none applies'})", trained))
    cells = [c for c in state.of("eval") if c.item.applied == name]
    models = sorted({c.item.model.label if stage == interventions.EVAL else
                     interventions.base_label(c.item.model.label, name) for c in cells})
    out.append((f"evaluate +{name} ({len(cells)} cells on {', '.join(models) or 'no model: none applies'})", cells))
    return out


def _diagnostic(cell) -> bool:
    return hasattr(cell.item, "measure")  # runner.DiagCell


def _eval_tokens(study: Study, cell) -> int:
    """Symbols an evaluation cell feeds through its model: its samples x its length, and under
    decay-scale-fit past T its calibration's (each exponent of the grid over its samples)."""
    tokens = study.eval.samples * cell.length
    if cell.intervention == "decay-scale-fit" and cell.length > study.train.length:
        tokens += len(interventions.DECAY_EXPONENTS) * cell.knobs["samples"] * cell.length
    return tokens


def work_flops(study: Study, cells: list, params: Callable[[object], int]) -> float:
    """About the floating-point work of `cells` (plan cells): 6 x parameters x the tokens each
    model may train on (to its max_steps, every rate of a sweep), 2 x parameters x the tokens each
    evaluation or diagnostic feeds. Attention's term quadratic in length is left out: the estimate
    only has to tell a few seconds of work from more (driver.POOL_MIN_FLOPS). `params(config)`:
    a model's parameter count."""
    total = 0.0
    for cell in cells:
        item = cell.item
        if cell.stage == "train":
            spec = item.train_spec
            total += 6.0 * params(item.config) * spec.tokens(spec.max_steps) * len(spec.lr_sweep or (1,))
        else:
            tokens = item.tokens if _diagnostic(cell) else _eval_tokens(study, item)
            total += 2.0 * params(item.model.config) * tokens
    return total


def cost(study: Study, state: GridState, out: Path) -> dict:
    """What the remaining work costs: tokens trained (batch x each step's length, summed over the
    planned steps of each model; `train_tokens_max` when training to a criterion may go on to
    its max_steps and a learning-rate sweep may try every rate) and tokens evaluated (samples x
    length per cell, decay-scale-fit's calibration included), and seconds estimated from the
    rates of work already stored in `out` (None when nothing is stored yet)."""
    remaining = [c.item for c in state.remaining("train")]
    train_tokens = sum(m.train_spec.tokens() for m in remaining)
    train_tokens_max = sum(m.train_spec.tokens(m.train_spec.max_steps) * len(m.train_spec.lr_sweep or (1,))
                           for m in remaining)
    eval_tokens = sum(c.item.tokens if _diagnostic(c) else _eval_tokens(study, c.item) for c in state.remaining("eval"))
    seconds = None
    path = out / "results.sqlite"
    if path.exists() and state.done:
        with for_reading(path) as store:
            model_rows = store.models()
        train_rate = seconds_per_token(model_rows, _trained_tokens, lambda r: r.train_seconds)
        rate = eval_rate(out)
        if (model_rows or not train_tokens) and (rate is not None or not eval_tokens):
            seconds = train_tokens * train_rate + eval_tokens * (rate or 0.0)
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
