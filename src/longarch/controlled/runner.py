"""The controlled study: plan its cells, train what is not trained, evaluate what is not stored.

A study expands into training cells (architecture x seed) and evaluation cells (trained model
x evaluated task x length x depth; a task without a needle depth has one cell per length).
Each has a content-addressed id: the hash of everything that determines its result. A cell
whose id is already in the store is skipped, so an interrupted run continues where it stopped
and a finished one is not recomputed.

This module says what the cells are, what job computes each (plain functions of plain data
that return rows, run on a worker) and how a finished one is stored: the model row, its curve
and its checkpoint (a temporary file renamed into place, its sha256 in the row), or the cell's
result row. A model whose training diverged is stored as such, with its step and no
checkpoint, and its cells are skipped (the driver's `Skip`), now and by every later run. A
stored model's checkpoint is used only when its bytes have the recorded hash (and name the
model); otherwise the model is trained again. The
driver of study/driver.py runs them, as it runs every kind of study: an evaluation cell needs
its model's training, so a model's cells are handed out, with its weights, as soon as it is
trained.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.progress import Progress

from safetensors import safe_open
from safetensors.torch import load as load_weights
from safetensors.torch import save as save_weights

from .. import mixers, models
from ..mixers import plugins
from ..study import faults, inputs, predictions
from ..study.checkpoints import write_atomic
from . import config, decay_fit, interventions
from ..analysis.report import run
from .config import Study, resolve_overrides, train_labels
from .evaluate import evaluate_samples
from ..analysis import diagnostics
from ..study.store import DiagnosticRow, ModelRow, ResultRow, Store
from ..study import Cell, Plan, Skip, content_id, eval_seed
from ..study.driver import Runtime, lazily
from ..mixers.base import set_decay_exponent
from .train import (LOSS_EVERY, Diverged, Mixture, TrainIntervention, TrainSpec, post_training, post_training_seed,
                    train, train_sweep)


@dataclass
class ModelPlan:
    label: str
    arch: str
    seed: int
    config: models.ModelConfig
    train_spec: TrainSpec
    model_id: str
    family: str = ""
    plugins: tuple[str, ...] = ()  # what a worker imports before it builds the model (mixers/plugins.py)
    intervention: str = ""  # its training intervention ("": the baseline); `label` is then <entry>+<intervention>
    start_from: str = ""  # a post-training's: the id of the trained model it starts from ("": from scratch)


@dataclass
class EvalCell:
    model: ModelPlan
    label: str  # the evaluated task's label
    task: object
    length: int
    depth: float | None  # None: the task has no needle depth (or draws it at random)
    cell_id: str
    intervention: str = ""  # its inference intervention on the model's checkpoint ("": none)
    knobs: dict = dataclasses.field(default_factory=dict)  # that intervention's knobs, defaults filled in

    @property
    def name(self) -> str:
        """The model's label in its results: the model's own, plus the inference intervention."""
        return interventions.labelled(self.model.label, self.intervention)

    @property
    def applied(self) -> str:
        """The intervention its results are under: the cell's, else its model's ("": the baseline)."""
        return self.intervention or self.model.intervention


@dataclass
class DiagCell:
    """One diagnostic (analysis/diagnostics.py) of a trained model on one evaluated needle format."""

    model: ModelPlan
    measure: str      # loss | retention | attention | state-norm
    label: str        # the evaluated task's label
    task: object
    cell_id: str
    tokens: int       # symbols it feeds through the model, about (for `longarch plan`'s cost)

    @property
    def applied(self) -> str:
        """The intervention its result is under: none (diagnostics are of the baseline models)."""
        return ""


# bump when a measure's computation changes, so stored ones are recomputed (2: retention's write is
# read once the shift registers no longer hold the needle)
DIAGNOSTICS_VERSION = 2


def task_id(task) -> dict:
    """A task as ids see it: a corpus file by its content, not its path (study/inputs.py)."""
    return {"name": task.name, "knobs": inputs.identity_knobs(task.knobs), "version": task.version}


def calibration_task(task):
    """The task decay-scale-fit calibrates on: the task trained on, or a mixture's first task."""
    return task.tasks[0] if isinstance(task, Mixture) else task


def record_calibration(store: Store, cell: EvalCell, calibration: dict) -> None:
    """Keep a decay-scale-fit cell's calibration in the store's study metadata, under
    DECAY_FIT_KEY, by cell id: its model (the baseline's label, id and seed), length and
    calibration (decay_fit.calibrate), for the report to read without the prediction files."""
    kept = store.meta().get(interventions.DECAY_FIT_KEY)
    kept = kept if isinstance(kept, dict) else {}
    kept[cell.cell_id] = {"model": cell.model.label, "model_id": cell.model.model_id, "seed": cell.model.seed,
                          "length": cell.length, **calibration}
    store.set_meta(interventions.DECAY_FIT_KEY, kept)


def training_task(study: Study):
    """The task trained on: the one task, or a `Mixture` (its tasks named by `train_labels`)."""
    pairs = study.train_tasks()
    if len(pairs) == 1:
        return pairs[0][0]
    return Mixture([t for t, _ in pairs], [w for _, w in pairs], train_labels(study))


def model_spec(study_spec: TrainSpec, rates: list[float] | None) -> TrainSpec:
    """One model's recipe: the study's, at the model's own learning rate, or with its sweep of
    rates (the first is the recipe's lr until one is kept)."""
    if rates is None:
        return study_spec
    if len(rates) == 1:
        return dataclasses.replace(study_spec, lr=rates[0])
    return dataclasses.replace(study_spec, lr=rates[0], lr_sweep=tuple(rates))


def plan(study: Study) -> tuple[list[ModelPlan], list[EvalCell]]:
    """Every model to train and every cell to evaluate, with their ids: the baseline's models,
    then each training intervention's models (on the entries it applies to); each model's cells,
    and on a baseline model each inference intervention's cells (where it applies)."""
    pairs = study.train_tasks()
    # one task keeps the id it had before mixtures existed, so stored results are found again
    trained_on = task_id(pairs[0][0]) if len(pairs) == 1 else [[task_id(t), w] for t, w in pairs]
    vocab_size = study.vocab_size()
    study_spec = TrainSpec(**study.train.model_dump(exclude={"tasks"}))
    training = [None] + [i for i in study.interventions if i.stage == interventions.TRAIN]
    model_plans: list[ModelPlan] = []
    for intervention in training:
        for entry in study.models:
            config = models.config(entry.arch, vocab_size=vocab_size, **resolve_overrides(study, entry, vocab_size))
            if intervention is not None and not interventions.get(intervention.name).applies(config):
                continue
            spec, starts = model_spec(study_spec, entry.rates), None
            if intervention is not None and intervention.options.get("steps") is not None:  # a post-training
                spec = post_training(spec, intervention.options["steps"])
                starts = {p.seed: p.model_id for p in model_plans if p.label == entry.label and not p.intervention}
            elif intervention is not None:
                spec = dataclasses.replace(spec, intervention=TrainIntervention(intervention.name,
                                                                                **intervention.options))
            model_plans += _seed_plans(study, entry, config, spec, trained_on, intervention, starts)
    return model_plans, _eval_cells(study, model_plans)


def _seed_plans(study: Study, entry, config: models.ModelConfig, spec: TrainSpec, trained_on, intervention,
                starts: dict[int, str] | None = None) -> list[ModelPlan]:
    """An entry's model of each seed, under a training intervention (None: the baseline);
    `starts`: for a post-training, the id of the trained model each seed's starts from, which
    enters its id."""
    family = models.family(entry.arch, config, entry.family)
    # a plugin mixer's source is part of the id (editing it retrains); built-in ids are as before
    sources = mixers.sources(config.pattern)
    name = "" if intervention is None else intervention.name
    out = []
    for seed in study.seeds:
        identity = {"model": config.to_dict(), "train": spec.to_dict(), "task": trained_on, "seed": seed}
        start = (starts or {}).get(seed, "")
        if start:
            identity["from"] = start
        model_id = content_id({**identity, "plugins": sources} if sources else identity)
        out.append(ModelPlan(interventions.labelled(entry.label, name), entry.arch, seed, config, spec, model_id,
                             family, tuple(study.plugins), name, start))
    return out


def _eval_cells(study: Study, model_plans: list[ModelPlan]) -> list[EvalCell]:
    """Each model's cells (task x length x depth); a baseline model's again under each inference
    intervention that applies to it. An intervention enters the cell's id; none, none of it."""
    inference = {i.name: i for i in study.interventions if i.stage == interventions.EVAL}
    task_depths = study.task_depths()
    cells = []
    for model_plan in model_plans:
        applied = [""] + ([] if model_plan.intervention else
                          [name for name in inference if interventions.get(name).applies(model_plan.config)])
        for intervention in applied:
            entry = inference.get(intervention)
            # its knobs enter the id only when set to other than their defaults: ids stay as they were
            named = {"intervention": intervention, **({"intervention_knobs": entry.changed} if entry.changed else {})} \
                if entry is not None else {}
            for label, task in study.eval_tasks():
                for length in study.eval_lengths():
                    for depth in task_depths[label]:
                        identity = {"model_id": model_plan.model_id, "task": task_id(task), "length": length,
                                    "depth": depth, "n": study.eval.samples, "seed": study.eval.seed,
                                    "samples": "per-seed"}
                        cell_id = content_id({**identity, **named})
                        cells.append(EvalCell(model_plan, label, task, length, depth, cell_id, intervention,
                                              entry.options if entry is not None else {}))
    return cells


def planned_interventions(study: Study, model_plans: list[ModelPlan], cells: list[EvalCell]) -> dict:
    """What the report needs of the interventions: their names in the study's order, the
    models each applies to (labels; the others are n/a), the intervention models' ids, and the
    planned cells under an intervention."""
    labels = {p.model_id: p.label for p in model_plans}
    applies: dict[str, list[str]] = {i.name: [] for i in study.interventions}
    for p in model_plans:
        if p.intervention:
            applies[p.intervention].append(interventions.base_label(p.label, p.intervention))
    for c in cells:
        if c.intervention:
            applies[c.intervention].append(labels[c.model.model_id])
    return {"names": [i.name for i in study.interventions],
            "applies": {name: list(dict.fromkeys(found)) for name, found in applies.items()},
            "models": [p.model_id for p in model_plans if p.intervention],
            "cells": sum(1 for c in cells if c.applied)}


def diagnostic_cells(study: Study, model_plans: list[ModelPlan]) -> list[DiagCell]:
    """The diagnostic cells of a study with `diagnostics:` (none without): each baseline model x
    measure x evaluated needle format, for the measures its layers have (retention needs a
    recurrent layer, attention an attention layer)."""
    settings = study.diagnostics
    if settings is None:
        return []
    formats = [(label, task) for label, task in study.eval_tasks() if diagnostics.is_needle_task(task)]
    cells = []
    for model_plan in [p for p in model_plans if not p.intervention]:  # the baseline models
        for measure in settings.measures:
            if not diagnostics.applicable(measure, model_plan.config.layers):
                continue
            for label, task in formats:
                cell_id = content_id({"model_id": model_plan.model_id, "diagnostic": measure, "task": task_id(task),
                                      "max_factor": settings.max_factor, "n": settings.samples, "seed": settings.seed,
                                      "version": DIAGNOSTICS_VERSION})
                cells.append(DiagCell(model_plan, measure, label, task, cell_id,
                                      _diagnostic_tokens(measure, study.train.length, settings)))
    return cells


def _diagnostic_tokens(measure: str, train_length: int, settings) -> int:
    """Symbols a diagnostic feeds through its model, about: its samples over every length (loss,
    attention), twice over the longest (retention: with and without the needle), or once (state-norm)."""
    longest = settings.max_factor * train_length
    per_sample = {"loss": 2 * longest, "attention": 2 * longest, "retention": 2 * (longest + train_length)}
    return settings.samples * per_sample.get(measure, longest)


# --------------------------------------------------------------------------------------------
# jobs: what a worker runs (plain data in, rows out; no store, no files)
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TrainJob:
    plan: ModelPlan
    task: object      # the task trained on, or a Mixture
    threads: int | None
    state_dir: str | None = None  # where the training state and live progress go (None: nowhere)
    label: str | None = None      # a single trained task's name in the curve
    start: bytes | None = None    # a post-training's: the weights it starts from (safetensors)


@dataclass
class Trained:
    row: ModelRow     # its checkpoint path is the driver's to fill in
    weights: bytes    # safetensors
    curve: list = dataclasses.field(default_factory=list)  # (step, kind, label, value) for the store


# Live training progress. In the driver's own process (`--workers 0`) a job reports to the hook
# the driver sets; in a worker process the hook is None and the job writes a small JSON file
# beside its training state, which the driver reads while it waits.
_LIVE_HOOK = None
LIVE_EVERY = 10  # steps between two progress reports
LOSS_SMOOTHING = 10  # steps the reported loss is an average over (an exponential one)
RATE_WINDOW = 60.0  # seconds of a model's reports its steps a second are measured over


def state_path(state_dir: str, model_id: str) -> Path:
    return Path(state_dir) / f"{model_id}.safetensors"


def attempt_path(state_dir: str, model_id: str, index: int) -> Path:
    """The training state of try `index` of a model's learning-rate sweep."""
    return Path(state_dir) / f"{model_id}.lr{index}.safetensors"


def progress_path(state_dir: str, model_id: str) -> Path:
    return Path(state_dir) / f"{model_id}.progress.json"


class _Live:
    """A training job's reporter: kill points, and progress (step, steps at most, loss, last
    check, the time of the report; with a sweep, the rate being tried). The loss is smoothed (an
    average over about the last LOSS_SMOOTHING steps): one batch's loss jumps about too much to read."""

    def __init__(self, job: TrainJob):
        spec = job.plan.train_spec
        self.job, self.smooth = job, None
        self.info = {"step": 0, "of": spec.max_steps, "upto": spec.until is not None, "loss": None, "accuracy": None}

    def rate(self, index: int, lr: float) -> None:
        """A sweep starts its try `index`, at learning rate `lr`."""
        self.smooth = None
        self.info.update(step=0, loss=None, accuracy=None,
                         lr=f"lr {lr:g} ({index + 1} of {len(self.job.plan.train_spec.lr_sweep or ())})")
        self._report()

    def step(self, step: int, loss: float) -> None:
        faults.reached("step")
        self.smooth = loss if self.smooth is None else self.smooth + (loss - self.smooth) / LOSS_SMOOTHING
        self.info.update(step=step + 1, loss=self.smooth)
        if (step + 1) % LIVE_EVERY == 0:
            self._report()

    def check(self, step: int, accuracy: dict[str, float]) -> None:
        self.info.update(step=step, accuracy=min(accuracy.values()))
        self._report()

    def _report(self) -> None:
        self.info["time"] = time.time()  # the job's own clock: the driver reads a file when it polls
        if _LIVE_HOOK is not None:
            _LIVE_HOOK(self.job.plan.model_id, dict(self.info))
        elif self.job.state_dir is not None:
            path = progress_path(self.job.state_dir, self.job.plan.model_id)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text(json.dumps(self.info))
            tmp.replace(path)  # no fsync: a lost progress line costs nothing


@dataclass(frozen=True)
class EvalJob:
    cell: EvalCell
    weights: bytes
    samples: int
    seed: int
    chunk: int
    train_length: int
    threads: int | None
    intervention: str = ""  # the cell's inference intervention ("": none)
    calibration_task: object = None  # decay-scale-fit's: the task trained on (a mixture's first task)


@dataclass(frozen=True)
class DiagJob:
    cell: DiagCell
    weights: bytes
    max_factor: int
    samples: int
    seed: int
    chunk: int
    train_length: int
    threads: int | None


def _worker_setup(threads: int | None, plan_: ModelPlan) -> None:
    torch.set_flush_denormal(True)  # denormals slow CPU training about tenfold
    if threads is not None:
        torch.set_num_threads(threads)
    plugins.ensure(plan_.plugins)  # a worker process (or a Ray worker) knows no plugin until it imports it


def train_job(job: TrainJob) -> Trained:
    """Train a model; a training that diverges is a result too (a row with its step, no weights)."""
    _worker_setup(job.threads, job.plan)
    plan_ = job.plan

    def build() -> models.LanguageModel:
        torch.manual_seed(plan_.seed)  # identical initialisation for a given seed (and every rate of a sweep)
        model = models.LanguageModel(plan_.config)
        if job.start is not None:  # a post-training goes on from the trained model's weights
            model.load_state_dict(load_weights(job.start))
        return model

    try:
        model, result, seconds, train_record = _fit(job, build)
    except Diverged as error:
        return _diverged(plan_, build(), error)
    weights = save_weights({k: v.contiguous() for k, v in model.state_dict().items()},
                           metadata={"model_id": plan_.model_id, "arch": plan_.arch})
    row = _model_row(plan_, model, train_accuracy=result.train_accuracy, train_seconds=seconds,
                     final_loss=result.final_loss, config={"model": plan_.config.to_dict(), "train": train_record,
                                                           "task_accuracy": result.task_accuracy},
                     steps=result.steps, steps_to_criterion=result.steps_to_criterion)
    curve = [(i * LOSS_EVERY, "loss", "", loss) for i, loss in enumerate(result.losses)]
    curve += [(check["step"], "accuracy", label, value) for check in result.checks
              for label, value in check["accuracy"].items()]
    return Trained(row, weights, curve)


def _fit(job: TrainJob, build):
    """The trained model, its TrainResult, its training seconds and its `train` record: the
    recipe, and with a sweep the rate kept and every rate tried."""
    plan_, spec = job.plan, job.plan.train_spec
    live = _Live(job)
    hooks = {"on_step": live.step, "on_check": live.check, "label": job.label}
    train_record = spec.to_dict()
    if plan_.start_from:
        train_record["from"] = plan_.start_from
    if spec.lr_sweep is None:
        model = build()
        seed = post_training_seed(plan_.seed) if plan_.start_from else plan_.seed
        result = train(model, job.task, spec, seed,
                       state_path=None if job.state_dir is None else state_path(job.state_dir, plan_.model_id),
                       state_key=plan_.model_id, **hooks)
        return model, result, result.seconds, train_record
    sweep = train_sweep(build, job.task, spec, plan_.seed, state_key=plan_.model_id, on_try=live.rate,
                        attempt_path=None if job.state_dir is None else
                        (lambda i: attempt_path(job.state_dir, plan_.model_id, i)), **hooks)
    train_record.update(lr=sweep.lr, sweep=sweep.tries)  # the kept rate, and every rate tried
    return sweep.model, sweep.result, sum(t["seconds"] for t in sweep.tries), train_record


def _model_row(plan_: ModelPlan, model: models.LanguageModel, **fields) -> ModelRow:
    """A model's row: what its plan and its (built) model say, and the training's `fields`."""
    length = plan_.train_spec.length
    return ModelRow(
        model_id=plan_.model_id, name=plan_.label, arch=plan_.arch, family=plan_.family,
        seed=plan_.seed, params=model.num_params(), state_floats=model.state_floats(length),
        state_growth="linear" if model.state_floats(2 * length) > model.state_floats(length) else "constant",
        train_length=length, checkpoint="", intervention=plan_.intervention, **fields)


def _diverged(plan_: ModelPlan, model: models.LanguageModel, error: Diverged) -> Trained:
    """The result of a training that diverged: a row with its step, training accuracy 0 (it
    learned nothing usable), final loss inf (the column takes no NaN, which SQLite stores as
    NULL), the curve until then, and no weights."""
    train_record = plan_.train_spec.to_dict()
    if error.tries:
        train_record["sweep"] = error.tries  # every rate tried, each diverged
    seconds = sum(t["seconds"] for t in error.tries) if error.tries else error.seconds
    row = _model_row(plan_, model, train_accuracy=0.0, train_seconds=seconds, final_loss=float("inf"),
                     config={"model": plan_.config.to_dict(), "train": train_record,
                             "diverged": {"step": error.step, "what": error.what, "value": repr(error.value)}},
                     steps=error.steps, steps_to_criterion=None, diverged=error.step)
    curve = [(step, "loss", "", loss) for step, loss in error.losses]
    curve += [(check["step"], "accuracy", label, value) for check in error.checks
              for label, value in check["accuracy"].items()]
    return Trained(row, b"", curve)


def diverged_reason(row: ModelRow) -> str:
    """Why a diverged model's cells are not run, in one line."""
    record = row.config.get("diverged") if isinstance(row.config.get("diverged"), dict) else {}
    value = f" ({record['value']})" if record.get("what", "loss") == "loss" and "value" in record else ""
    return (f"{row.name} seed {row.seed} diverged at step {row.diverged}: its {record.get('what', 'loss')} "
            f"became non-finite{value}")


def model_from_weights(plan_: ModelPlan, weights: bytes) -> models.LanguageModel:
    """The model of a plan with stored weights; safetensors only, so loading runs no code."""
    model = models.LanguageModel(plan_.config)
    model.load_state_dict(load_weights(weights))
    return model


SAMPLE_LINE_BYTES = 60  # a sample's line in predictions/: its keys and punctuation alone take more


@dataclass
class Evaluated:
    """An evaluation job's result: the store's row, and each sample's raw output (predictions/);
    under decay-scale-fit past T, its calibration (decay_fit.calibrate)."""

    row: ResultRow
    outputs: list[dict]
    calibration: dict | None = None


def eval_job(job: EvalJob) -> Evaluated:
    _worker_setup(job.threads, job.cell.model)
    start = time.perf_counter()
    cell = job.cell
    model = model_from_weights(cell.model, job.weights)
    calibration = None
    if job.intervention == decay_fit.INTERVENTION:  # the exponent p, before the cell's samples are scored
        calibration = decay_fit.calibrate(model, job.calibration_task, job.train_length, cell.length,
                                          cell.knobs["samples"], cell.model.seed, job.chunk)
        if calibration is not None:  # None at L <= T, where the intervention is the identity
            set_decay_exponent(model, calibration["exponent"])
    samples = cell.task.generate(length=cell.length, n=job.samples, seed=job.seed, depth=cell.depth)
    scores, predicted = evaluate_samples(model, cell.task, samples, chunk=job.chunk, train_length=job.train_length,
                                         with_predictions=True, intervention=job.intervention or None)
    row = ResultRow(
        cell_id=cell.cell_id, model_id=cell.model.model_id, model=cell.name, task=cell.task.name,
        label=cell.label, knobs=inputs.portable(cell.task.knobs, Controlled.input_keys)[0], length=cell.length,
        depth=cell.depth, seed=cell.model.seed,
        n=len(scores), accuracy=float(scores.mean()), scores=[float(s) for s in scores],
        seconds=time.perf_counter() - start, intervention=cell.applied)
    lines = sample_lines(predicted, samples.answers, scores)
    if calibration is not None:  # each line says the exponent chosen, and each exponent's calibration loss
        fitted = {"decay_exponent": calibration["exponent"],
                  "decay_losses": dict(zip(map(str, calibration["exponents"]), calibration["losses"]))}
        lines = [{**line, **fitted} for line in lines]
    return Evaluated(row, lines, calibration)


def diag_job(job: DiagJob) -> DiagnosticRow:
    """One diagnostic of a trained model on one format: its store row."""
    _worker_setup(job.threads, job.cell.model)
    start = time.perf_counter()
    cell = job.cell
    model = model_from_weights(cell.model, job.weights)
    data = diagnostics.measure(cell.measure, model, cell.task, job.train_length, job.max_factor, job.samples,
                               job.seed, job.chunk)
    return DiagnosticRow(cell_id=cell.cell_id, model_id=cell.model.model_id, model=cell.model.label,
                         seed=cell.model.seed, measure=cell.measure, label=cell.label,
                         data={"train_length": job.train_length, "max_factor": job.max_factor, "samples": job.samples,
                               **data},
                         seconds=time.perf_counter() - start)


def sample_lines(predicted: np.ndarray, answers: np.ndarray, scores: np.ndarray) -> list[dict]:
    """Each sample's predicted and expected symbols (their ids, space-separated) and its score."""
    return [{"index": i, "prediction": " ".join(map(str, p)), "answers": [" ".join(map(str, a))], "score": float(s)}
            for i, (p, a, s) in enumerate(zip(predicted.tolist(), answers.tolist(), scores))]


def outputs_file(out: Path, row: ResultRow) -> Path:
    return predictions.path_of(out, row.model, row.label or row.task, row.length, row.depth, row.seed)


def sample_outputs(out: Path, row: ResultRow) -> dict[int, tuple[str, str]] | None:
    """A stored cell's samples for `longarch export`: index -> (predicted symbols, answer)."""
    return predictions.read(outputs_file(out, row))


def _what(item: ModelPlan | EvalCell) -> str:
    if isinstance(item, ModelPlan):
        return f"{'post-train' if item.start_from else 'train'} {item.label} seed {item.seed}"
    if isinstance(item, DiagCell):
        return f"{item.model.label} s{item.model.seed}: diagnostic {item.measure} on {item.label}"
    depth = "" if item.depth is None else f" depth {item.depth:g}"
    return f"{item.name} s{item.model.seed} on {item.label} at {item.length}{depth}"


# --------------------------------------------------------------------------------------------
# the controlled kind of study, as the driver sees it
# --------------------------------------------------------------------------------------------
def checkpoint_path(out: Path, recorded: str) -> Path:
    """Where a stored model's checkpoint is: the path recorded in its row is relative to the study
    directory `out` (so the directory can be moved or copied and still resume). A store written
    before that recorded it relative to the working directory of its first run, or absolute:
    that path when it still exists, else the file of that name in `out`'s checkpoints/."""
    path = Path(recorded)
    for candidate in ([path] if path.is_absolute() else [Path(out) / path, path]):
        if candidate.is_file():
            return candidate
    return Path(out) / "checkpoints" / path.name


def _stored_weights(store: Store, row: ModelRow | None, plan_: ModelPlan, out: Path) -> bytes | None:
    """A stored model's checkpoint, if it is the one stored: its bytes have the recorded sha256
    and its metadata names the model; in a store from before hashes, if its metadata names the
    model and it loads into the model exactly (its hash is then recorded). None otherwise: the
    model is retrained, not trusted (another model's weights, another architecture's file, a
    damaged one)."""
    if row is None or not row.checkpoint:
        return None
    path = checkpoint_path(out, row.checkpoint)
    try:
        weights = path.read_bytes()
    except OSError:
        return None
    digest = hashlib.sha256(weights).hexdigest()
    if row.sha256 is not None and digest != row.sha256:
        return None
    if _metadata(path).get("model_id") != row.model_id:
        return None
    if row.sha256 is None:
        try:
            model_from_weights(plan_, weights)  # strict: every tensor, each of the model's shape
        except Exception:
            return None
        store.set_checkpoint_hash(row.model_id, digest)  # checked once, by its content from now on
    return weights


def _metadata(path: Path) -> dict:
    """The metadata of a safetensors file ({} when it is not one)."""
    try:
        with safe_open(path, framework="pt") as file:
            return file.metadata() or {}
    except Exception:  # safetensors' own error for a file that is not safetensors, or an OSError
        return {}


def _same_samples(stored: dict | None, study: Study, out: Path) -> None:
    """Refuse to add cells of a different sample count to a store (a cell's samples would then be
    counted twice in the report); everything stored stays as it is."""
    before = ((stored or {}).get("eval") or {}).get("samples")
    if isinstance(before, int) and before != study.eval.samples:
        raise ValueError(f"{out} holds results with eval.samples {before}; this study has {study.eval.samples} "
                         "(a different --scale?): give it another --out")


def _state_dir(runtime: Runtime) -> str | None:
    """Where mid-training state and live progress go: this machine's disk, when jobs run on it."""
    return str(runtime.out / "checkpoints" / "training") if runtime.local else None


class Controlled:
    """A controlled study: train every (architecture, seed), then evaluate each trained model on
    every (task, length, depth) cell, the cells of a model as soon as it is trained."""

    kind = "controlled"
    Config = Study
    options = ("corpus", "scale", "plugin")  # the command-line options it takes (study/load.py)
    # change how results are shown, never a result (a plugin's source is in its models' ids,
    # so where its file lies is not part of the study)
    presentation = ("description", "analysis", "plugins")
    input_keys = ("corpus",)  # where its configuration names a file (study/inputs.py)
    prepare = staticmethod(config.prepare)
    complete = staticmethod(config.complete)
    from_stored = staticmethod(config.from_stored)
    permanent: tuple = ()
    gpus = 0.0
    default_workers = None  # a process per core

    def __init__(self, study: Study):
        self.study, self.name = study, study.name
        self._task = None  # the task trained on, built when the first model is trained

    sample_outputs = staticmethod(sample_outputs)  # (out, result row) -> each sample's prediction and answer
    report = lazily("longarch.controlled.report", "report")         # (out, dest=None) -> analysis.report.Report
    table = lazily("longarch.controlled.report", "summary_table")   # (out) -> the terminal's table

    def disk_bytes(self, cells: list[Cell]) -> int:
        """Each model's checkpoint (float32 weights) and each cell's scores and raw outputs (a few
        bytes a sample in the store, and a JSON line of at least SAMPLE_LINE_BYTES)."""
        weights = sum(4 * models.count_params(c.item.config) for c in cells if c.stage == "train")
        evaluated = sum(isinstance(c.item, EvalCell) for c in cells)  # a diagnostic's row is smaller than this
        return weights + (4 + SAMPLE_LINE_BYTES) * self.study.eval.samples * evaluated

    def work_flops(self, cells: list[Cell]) -> float:
        """About the floating-point work of `cells` (grid.work_flops), with the parameter counts
        sizing already made (`models.count_params`, kept between processes)."""
        from .grid import work_flops

        return work_flops(self.study, cells, models.count_params)

    def grid_rows(self, state) -> list[tuple[str, list[Cell]]]:
        from .grid import rows

        return rows(self.study, state)

    def cost(self, state, out: Path) -> dict:
        from .grid import cost

        return cost(self.study, state, out)

    def plan(self) -> Plan:
        model_plans, cells = plan(self.study)
        study = self.study
        baseline = [c for c in cells if not c.applied]  # what the report's sections but one read
        meta = {"name": study.name, "config": study.model_dump(mode="json"), "planned_cells": len(baseline),
                "planned_models": [p.model_id for p in model_plans if not p.intervention],
                "planned_lengths": study.eval_lengths(),
                "planned_depths": study.eval.depths, "planned_task_depths": study.task_depths(),
                "planned_tasks": [label for label, _ in study.eval_tasks()]}
        diagnosed = diagnostic_cells(study, model_plans)
        if diagnosed:  # only then, so that the meta of a study without them is as it was
            meta["planned_diagnostics"] = [c.cell_id for c in diagnosed]
        if study.interventions:  # only then: a study without any records what it did before
            meta["planned_interventions"] = planned_interventions(study, model_plans, cells)
        of_model: dict[str, list[EvalCell | DiagCell]] = {}
        for cell in [*cells, *diagnosed]:  # a model's evaluation cells, then its diagnostics
            of_model.setdefault(cell.model.model_id, []).append(cell)
        ordered = []  # a model's training, then its cells: its cells start as soon as it is trained
        for model_plan in model_plans:
            ordered.append(Cell(model_plan.model_id, "train", _what(model_plan), model_plan,
                                (model_plan.start_from,) if model_plan.start_from else ()))
            ordered += [Cell(c.cell_id, "eval", _what(c), c, (model_plan.model_id,))
                        for c in of_model.get(model_plan.model_id, [])]
        return Plan(ordered, meta)

    def stored(self, store: Store, cells: list[Cell], runtime: Runtime) -> dict[str, bytes | Skip]:
        """The weights of each stored model whose checkpoint is the one stored, and a Skip for each
        stored as diverged (a result: it is not trained again)."""
        _same_samples(store.meta().get("config"), self.study, runtime.out)  # also under --force
        out: dict[str, bytes | Skip] = {}
        for cell in cells:
            row = store.model(cell.id) if cell.stage == "train" else None
            if row is not None and row.diverged is not None:
                out[cell.id] = Skip(diverged_reason(row))
            elif cell.stage == "train" and (weights := _stored_weights(store, row, cell.item, runtime.out)):
                out[cell.id] = weights
        return out

    def job(self, cell: Cell, inputs: dict, runtime: Runtime):
        study = self.study
        if cell.stage == "train":
            if self._task is None:
                self._task = training_task(study)
            label = None if study.train.tasks is not None else train_labels(study)[0]
            start = inputs.get(cell.item.start_from) if cell.item.start_from else None
            return train_job, TrainJob(cell.item, self._task, runtime.threads, _state_dir(runtime), label, start)
        item = cell.item
        if isinstance(item, DiagCell):
            settings = study.diagnostics
            return diag_job, DiagJob(item, inputs[item.model.model_id], settings.max_factor, settings.samples,
                                     eval_seed(settings.seed, 0, None, item.model.seed), study.eval.chunk,
                                     study.train.length, runtime.threads)
        calibrated = item.intervention == decay_fit.INTERVENTION and item.length > study.train.length
        if calibrated and self._task is None:
            self._task = training_task(study)
        return eval_job, EvalJob(item, inputs[item.model.model_id], study.eval.samples,
                                 eval_seed(study.eval.seed, item.length, item.depth, item.model.seed),
                                 study.eval.chunk, study.train.length, runtime.threads, item.intervention,
                                 calibration_task(self._task) if calibrated else None)

    def commit(self, store: Store, cell: Cell, result, runtime: Runtime):
        if cell.stage == "train":
            item: ModelPlan = cell.item
            row = result.row
            if row.diverged is not None:  # no checkpoint: nothing of it is evaluated
                store.put_model(row, result.curve)
                return (Skip(diverged_reason(row)), f"{item.label} s{item.seed}: diverged",
                        f"{cell.what}: diverged at step {row.diverged}; its cells are skipped")
            name = Path("checkpoints") / f"{item.label}-s{item.seed}-{item.model_id}.safetensors"
            write_atomic(runtime.out / name, result.weights)
            # relative to the study directory: it can be moved, copied, or run from anywhere
            row.checkpoint, row.sha256 = name.as_posix(), hashlib.sha256(result.weights).hexdigest()
            store.put_model(row, result.curve)
            return (result.weights, f"{item.label} s{item.seed}: acc@T {row.train_accuracy:.1%}",
                    f"{cell.what}: training accuracy {row.train_accuracy:.4f} in {row.train_seconds:.1f} s")
        if isinstance(result, DiagnosticRow):
            store.put_diagnostic(result)
            return None, cell.what, f"{cell.what}: measured in {result.seconds:.1f} s"
        if result.calibration is not None:  # before the row: a stored cell always has its record
            record_calibration(store, cell.item, result.calibration)
        predictions.write(outputs_file(runtime.out, result.row), result.outputs)
        store.put_result(result.row)
        return None, cell.what, f"{cell.what}: accuracy {result.row.accuracy:.4f}"

    def blocked(self, cell: Cell, failed: Cell, error: str) -> str:
        return f"its model failed to train ({error})"

    def watch(self, progress: Progress, cells: list[Cell], runtime: Runtime, in_process: bool) -> "_LiveBars":
        return _LiveBars(progress, {c.id: c.item for c in cells if c.stage == "train"}, _state_dir(runtime), in_process)


def run_study(study: Study, out: Path, console: Console | None = None, command: str | None = None,
              backend: str = "local", workers: int | None = 0, address: str | None = None,
              retries: int = 2, force: bool = False) -> Path:
    """Run (or continue) a study into `out`; return the path of report.md. The backends and
    the retry policy are the driver's (study/driver.py)."""
    return run(Controlled(study), out, console, command, backend, workers, address, retries, force).report


class _LiveBars:
    """One progress bar per model in training: its step out of its steps (at most, with `until`),
    its loss, its held-out accuracy, the rate a sweep is trying, and its time left at its own
    steps a second. Fed by the hook (in-process jobs) or read from the workers' progress files
    (`poll`)."""

    def __init__(self, progress: Progress, plans: dict[str, ModelPlan], state_dir: str | None,
                 in_process: bool = False):
        global _LIVE_HOOK
        self.progress, self.plans, self.state_dir, self.bars = progress, plans, state_dir, {}
        self.reports: dict[str, list[tuple[float, int]]] = {}  # model id -> its (time, step) reports
        _LIVE_HOOK = self.update if in_process else None

    def update(self, model_id: str, info: dict) -> None:
        plan_ = self.plans.get(model_id)
        if plan_ is None:
            return
        if model_id not in self.bars:
            self.bars[model_id] = self.progress.add_task(f"  {plan_.label} s{plan_.seed}", total=info["of"], info="")
        text = [] if info.get("loss") is None else [f"loss {info['loss']:.3f}"]
        if info.get("accuracy") is not None:
            text.append(f"held-out acc@T {info['accuracy']:.0%} (lowest task)")
        if info.get("lr"):
            text.append(info["lr"])
        rate = self._rate(model_id, info.get("time", time.time()), info["step"])
        self.progress.update(self.bars[model_id], completed=info["step"], info="  ".join(text), rate=rate,
                             upto=bool(info.get("upto")))

    def _rate(self, model_id: str, now: float, step: int) -> float | None:
        """A model's steps a second over its reports of the last RATE_WINDOW seconds (one older
        report kept as the start), by the job's own clock; None until two reports tell one. A step
        lower than the last starts over (a sweep's next rate, or a training resumed)."""
        reports = self.reports.setdefault(model_id, [])
        if reports and step < reports[-1][1]:
            reports.clear()
        if not reports or now > reports[-1][0]:  # a file polled again says nothing new
            reports.append((now, step))
        while len(reports) > 2 and reports[1][0] <= now - RATE_WINDOW:
            reports.pop(0)
        (first, start), (last, end) = reports[0], reports[-1]
        return (end - start) / (last - first) if last > first and end > start else None

    def poll(self) -> None:
        if self.state_dir is None:
            return
        for model_id in self.plans:
            path = progress_path(self.state_dir, model_id)
            try:
                info = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            self.update(model_id, info)

    def close(self) -> None:
        global _LIVE_HOOK
        _LIVE_HOOK = None

    def done(self, cell) -> None:
        """A model is stored: its bar goes, and so do its training state and progress files."""
        model_id = getattr(cell, "id", cell)
        if model_id not in self.plans and model_id not in self.bars:
            return  # an evaluation cell
        if model_id in self.bars:
            self.progress.remove_task(self.bars.pop(model_id))
        self.plans.pop(model_id, None)
        self.reports.pop(model_id, None)
        if self.state_dir is not None:
            for path in (state_path(self.state_dir, model_id), progress_path(self.state_dir, model_id),
                         *Path(self.state_dir).glob(f"{model_id}.lr*.safetensors")):
                path.unlink(missing_ok=True)
