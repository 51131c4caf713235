"""Run a study: plan its cells, train what is not trained, evaluate what is not stored.

A study expands into training cells (architecture x seed) and evaluation cells (trained model
x evaluated task x length x depth; a task without a needle depth has one cell per length). Each has a content-addressed id: the hash of everything that determines its
result. A cell whose id is already in the store is skipped, so an interrupted run continues
where it stopped and a finished one is not recomputed.
"""

from __future__ import annotations

import hashlib
import json
import platform
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from . import models
from .config import Study, resolve_overrides
from .evaluate import evaluate_samples
from .store import ModelRow, ResultRow, Store
from .train import Mixture, TrainSpec, load_checkpoint, save_checkpoint, train


def content_id(payload: dict) -> str:
    """A short stable hash of a JSON-able description of a cell."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class ModelPlan:
    label: str
    arch: str
    seed: int
    config: models.ModelConfig
    train_spec: TrainSpec
    model_id: str


@dataclass
class EvalCell:
    model: ModelPlan
    label: str  # the evaluated task's label
    task: object
    length: int
    depth: float | None  # None: the task has no needle depth (or draws it at random)
    cell_id: str


def task_id(task) -> dict:
    return {"name": task.name, "knobs": task.knobs, "version": task.version}


def training_task(study: Study):
    """The task trained on: the one task, or a `Mixture`."""
    pairs = study.train_tasks()
    return pairs[0][0] if len(pairs) == 1 else Mixture([t for t, _ in pairs], [w for _, w in pairs])


def plan(study: Study) -> tuple[list[ModelPlan], list[EvalCell]]:
    """Every model to train and every cell to evaluate, with their ids."""
    pairs = study.train_tasks()
    # one task keeps the id it had before mixtures existed, so stored results are found again
    trained_on = task_id(pairs[0][0]) if len(pairs) == 1 else [[task_id(t), w] for t, w in pairs]
    vocab_size = study.vocab_size()
    spec = TrainSpec(**study.train.model_dump(exclude={"tasks"}))
    model_plans, cells = [], []
    for entry in study.models:
        config = models.config(entry.arch, vocab_size=vocab_size, **resolve_overrides(study, entry, vocab_size))
        for seed in study.seeds:
            model_id = content_id({"model": config.to_dict(), "train": spec.to_dict(), "task": trained_on, "seed": seed})
            model_plans.append(ModelPlan(entry.label, entry.arch, seed, config, spec, model_id))
    for model_plan in model_plans:
        for label, task in study.eval_tasks():
            for length in study.eval_lengths():
                for depth in study.eval.depths if task.uses_depth else [None]:
                    cell_id = content_id({"model_id": model_plan.model_id, "task": task_id(task), "length": length,
                                          "depth": depth, "n": study.eval.samples, "seed": study.eval.seed})
                    cells.append(EvalCell(model_plan, label, task, length, depth, cell_id))
    return model_plans, cells


def eval_seed(base: int, length: int, depth: float | None) -> int:
    """The same samples for every model at a given (length, depth): comparisons are paired."""
    depth_part = 10**9 if depth is None else int(round(depth * 1000))
    return int(np.random.SeedSequence([base, length, depth_part]).generate_state(1)[0])


def provenance(command: str) -> dict:
    versions = {"python": platform.python_version(), "torch": torch.__version__}
    for package in ("longarch", "numpy"):
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


def _progress(console: Console) -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                    console=console, transient=False)


def train_or_load(model_plan: ModelPlan, task, store: Store, out: Path, progress: Progress):
    """The trained model of a plan: loaded if stored and its checkpoint loads, else trained."""
    torch.manual_seed(model_plan.seed)  # identical initialisation for a given seed
    model = models.LanguageModel(model_plan.config)
    row = store.model(model_plan.model_id)
    if row is not None:
        try:
            load_checkpoint(model, Path(row.checkpoint))
            progress.console.print(f"[dim]{model_plan.label} (seed {model_plan.seed}): checkpoint loaded, "
                                   f"training accuracy {row.train_accuracy:.1%}[/dim]")
            return model
        except Exception as error:  # a damaged or missing checkpoint is retrained, not trusted
            progress.console.print(f"[yellow]{model_plan.label}: checkpoint unusable ({error}); retraining[/yellow]")
    spec = model_plan.train_spec
    bar = progress.add_task(f"train {model_plan.label} s{model_plan.seed}", total=spec.steps, info="")

    def on_step(step: int, loss: float) -> None:
        progress.update(bar, completed=step + 1, info=f"loss {loss:.3f}")

    result = train(model, task, spec, model_plan.seed, on_step)
    progress.update(bar, info=f"loss {result.final_loss:.3f}  acc@T {result.train_accuracy:.1%}")
    checkpoint = out / "checkpoints" / f"{model_plan.label}-s{model_plan.seed}-{model_plan.model_id}.safetensors"
    save_checkpoint(model, checkpoint, {"model_id": model_plan.model_id, "arch": model_plan.arch})
    store.put_model(ModelRow(
        model_id=model_plan.model_id, name=model_plan.label, arch=model_plan.arch,
        family=models.spec(model_plan.arch).family, seed=model_plan.seed, params=model.num_params(),
        state_floats=model.state_floats(spec.length),
        state_growth="linear" if model.state_floats(2 * spec.length) > model.state_floats(spec.length) else "constant",
        train_length=spec.length, train_accuracy=result.train_accuracy, train_seconds=result.seconds,
        final_loss=result.final_loss,
        config={"model": model_plan.config.to_dict(), "train": spec.to_dict()}, checkpoint=str(checkpoint)))
    return model


def run_study(study: Study, out: Path, console: Console | None = None, command: str | None = None) -> Path:
    """Run (or continue) a study into `out`; return the path of report.md."""
    from .analysis.report import build_report, summary_table  # analysis reads the store only

    console = console or Console()
    torch.set_flush_denormal(True)
    out.mkdir(parents=True, exist_ok=True)
    task = training_task(study)
    model_plans, cells = plan(study)
    with Store(out / "results.sqlite") as store:
        store.set_meta("name", study.name)
        store.set_meta("config", study.model_dump(mode="json"))
        store.set_meta("planned_cells", len(cells))
        store.set_meta("planned_lengths", study.eval_lengths())
        store.set_meta("planned_depths", study.eval.depths)
        store.set_meta("planned_tasks", [label for label, _ in study.eval_tasks()])
        for key, value in provenance(command or shlex.join(sys.argv)).items():
            store.set_meta(key, value)
        done = store.cell_ids()
        todo = [c for c in cells if c.cell_id not in done]
        console.print(f"[bold]{study.name}[/bold]: {len(model_plans)} models, {len(cells)} evaluation cells "
                      f"({len(cells) - len(todo)} already stored) -> {out}")
        with _progress(console) as progress:
            trained = {p.model_id: train_or_load(p, task, store, out, progress) for p in model_plans
                       if any(c.model.model_id == p.model_id for c in todo) or store.model(p.model_id) is None}
            bar = progress.add_task("evaluate", total=len(todo), info="")
            for cell in todo:
                start = time.perf_counter()
                samples = cell.task.generate(length=cell.length, n=study.eval.samples,
                                             seed=eval_seed(study.eval.seed, cell.length, cell.depth), depth=cell.depth)
                scores = evaluate_samples(trained[cell.model.model_id], cell.task, samples, chunk=study.eval.chunk,
                                          train_length=study.train.length)
                store.put_result(ResultRow(
                    cell_id=cell.cell_id, model_id=cell.model.model_id, model=cell.model.label, task=cell.task.name,
                    label=cell.label, knobs=cell.task.knobs, length=cell.length, depth=cell.depth,
                    seed=cell.model.seed, n=len(scores), accuracy=float(scores.mean()),
                    scores=[float(s) for s in scores], seconds=time.perf_counter() - start))
                depth = "" if cell.depth is None else f" d={cell.depth:g}"
                progress.update(bar, advance=1, info=f"{cell.model.label} {cell.label} L={cell.length}{depth}")
    paths = build_report(out)
    console.print(summary_table(out))
    console.print(f"report: {paths['md']}  and  {paths['html']}")
    return paths["md"]
