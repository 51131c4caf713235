"""The report's training section: the recipe every model followed, each model's learning rate,
steps and steps to the criterion, and its curves (training loss, held-out accuracy at T per
trained task), all read from the store (the `models` and `curves` tables)."""

from __future__ import annotations

from pathlib import Path

from ..study.store import ModelRow
from . import plots
from .render import MISSING, Block


def recipe(train: dict, own_lr: bool = False) -> str:
    """The training schedule of a stored `train:` block, in one sentence; `own_lr`: some model
    trained at a learning rate of its own (the table gives each model's)."""
    if not isinstance(train, dict):
        return ""
    phases = train.get("phases")
    if isinstance(phases, list) and phases:
        text = "a length curriculum of " + ", then ".join(f"{p.get('steps')} steps at length {p.get('length')}"
                                                          for p in phases if isinstance(p, dict))
    else:
        text = f"{train.get('steps')} steps at length {train.get('length')}"
    lr = (f"each model's learning rate in the table below (the study's default {train.get('lr')})" if own_lr
          else f"learning rate {train.get('lr')}")
    text += (f", batch {train.get('batch_size')}, AdamW with {lr}, warmup {train.get('warmup')} steps and "
             f"one cosine to a tenth over the planned steps")
    until = train.get("until")
    if isinstance(until, dict):
        judged = until.get("labels")
        text += (f"; trained until held-out accuracy at T reached {100 * float(until.get('accuracy', 0)):g}% on "
                 f"{'every trained task' if not judged else ', '.join(judged)} (checked in the last phase), "
                 f"at most {until.get('max_steps')} steps")
        if until.get("anneal"):
            text += (f", then {until['anneal']} more steps with the learning rate falling linearly to zero "
                     f"(an anneal)")
    tasks = train.get("tasks")
    if train.get("focus") is not None and isinstance(tasks, list):
        text += (f"; each step's task drawn by its weight times its error at the last held-out check plus "
                 f"{train['focus']:g} (focus), so that steps go where the model is still wrong")
    check = train.get("check") if isinstance(train.get("check"), dict) else {}
    every = check.get("every")
    if not every and isinstance(train.get("steps"), int):
        every = max(1, train["steps"] // 10)  # the default: a tenth of the planned steps
    text += (f". Held-out checks every {every if every else 'tenth of the planned'} steps on "
             f"{check.get('samples', 64)} samples per task")
    depths = check.get("depths")
    text += (f", a needle task's split evenly among depths {', '.join(f'{d:g}' for d in depths)}."
             if isinstance(depths, list) and depths else ".")
    return text


def _per_seed(rows: list[ModelRow], value) -> str:
    parts = [f"{value(r)}" for r in sorted(rows, key=lambda r: r.seed)]
    return ", ".join(parts) if len(set(parts)) > 1 else (parts[0] if parts else MISSING)


def training_section(model_rows: list[ModelRow], curves: dict[str, list], config: dict, order: list[str],
                     figure_dir: Path) -> tuple[list[Block], dict[str, list[Path]], dict]:
    """Blocks, written figures ({key: paths}) and a summary for summary.json."""
    if not model_rows:
        return [], {}, {}
    by_name: dict[str, list[ModelRow]] = {}
    for row in model_rows:
        by_name.setdefault(row.name, []).append(row)
    names = sorted(by_name, key=lambda n: order.index(n) if n in order else len(order))
    train = config.get("train") if isinstance(config.get("train"), dict) else {}
    has_until = isinstance(train.get("until"), dict)
    own_lr = any(r.config.get("train", {}).get("lr") != train.get("lr") or _tries(r) for r in model_rows)
    blocks: list[Block] = [("h2", "Training"), ("p", "Every model followed the same recipe: " + recipe(train, own_lr))]
    header = ["model", "learning rate", "steps run (per seed)"] + (["steps to the criterion (per seed)"] if has_until else [])
    table = []
    summary: dict = {}
    for name in names:
        rows = by_name[name]
        lrs = {r.config.get("train", {}).get("lr") for r in rows}
        line = [name, _per_seed(rows, lambda r: _rate(r.config.get("train", {}).get("lr"))), _per_seed(rows, _steps)]
        if has_until:
            line.append(_per_seed(rows, lambda r: "not met" if r.steps_to_criterion is None else r.steps_to_criterion))
        table.append(line)
        seeds = {}
        for r in rows:
            seeds[str(r.seed)] = {"steps": r.steps, "steps_to_criterion": r.steps_to_criterion,
                                  "task_accuracy": r.config.get("task_accuracy")}
            if r.diverged is not None:
                seeds[str(r.seed)]["diverged"] = r.diverged
            if tries := _tries(r):
                seeds[str(r.seed)]["sweep"] = tries
        summary[name] = {"lr": sorted(x for x in lrs if isinstance(x, (int, float))), "seeds": seeds}
    blocks.append(("table", header, table))
    swept = [(name, r) for name in names for r in sorted(by_name[name], key=lambda r: r.seed) if _tries(r)]
    if swept:
        blocks.append(("p", "Learning-rate sweeps (each rate from the same initialisation, in order; kept: the first "
                       "to meet the criterion, else the best lowest-task held-out accuracy at T): "
                       + "; ".join(sweep_line(name, r) for name, r in swept) + "."))
    series = {name: {r.seed: _series(curves.get(r.model_id, [])) for r in by_name[name]} for name in names}
    figures: dict[str, list[Path]] = {}
    if any(points for seeds in series.values() for by in seeds.values() for points in by.values()):
        figures["training_curves"] = plots.plot_training_curves(
            series, figure_dir / "training_curves",
            title="training loss and held-out accuracy at T, per trained task (one line per seed)")
        blocks.append(("figure", figures["training_curves"][0].relative_to(figure_dir.parent).as_posix(), "Training curves: the loss of each training batch (every 10 "
                       "steps) and held-out accuracy at the training length at each check"))
    else:
        blocks.append(("p", "No training curves are stored (models trained before curves were recorded)."))
    return blocks, figures, summary


def _steps(row: ModelRow) -> str:
    """Steps run, or where the training diverged."""
    if row.diverged is not None:
        return f"diverged at step {row.diverged}"
    return MISSING if row.steps is None else str(row.steps)


def _rate(value) -> str:
    return f"{value:g}" if isinstance(value, (int, float)) else MISSING


def _tries(row: ModelRow) -> list[dict]:
    """The rates a model's learning-rate sweep tried ([] without a sweep)."""
    tries = row.config.get("train", {}).get("sweep")
    return [t for t in tries if isinstance(t, dict)] if isinstance(tries, list) else []


def sweep_line(name: str, row: ModelRow) -> str:
    """One model's sweep in words: each rate with its steps, whether it met the criterion and
    its lowest task accuracy, then the rate kept."""
    parts = []
    for t in _tries(row):
        met = "" if t.get("steps_to_criterion") is None else f", criterion met at step {t['steps_to_criterion']}"
        worst = t.get("worst_accuracy")
        worst_text = f", lowest task {100 * worst:.1f}%" if isinstance(worst, (int, float)) else ""
        if t.get("diverged") is not None:
            worst_text = f", diverged at step {t['diverged']}"
        parts.append(f"{_rate(t.get('lr'))} ({t.get('steps')} steps{met}{worst_text})")
    kept = "kept none" if row.diverged is not None else f"kept {_rate(row.config.get('train', {}).get('lr'))}"
    return f"{name} seed {row.seed} tried {', '.join(parts)} and {kept}"


def _series(points: list) -> dict[str, list[tuple[int, float]]]:
    out: dict[str, list[tuple[int, float]]] = {}
    for step, kind, label, value in points:
        out.setdefault("loss" if kind == "loss" else label, []).append((step, value))
    return out
