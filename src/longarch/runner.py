"""Run a study: plan its cells, train what is not trained, evaluate what is not stored.

A study expands into training cells (architecture x seed) and evaluation cells (trained model
x evaluated task x length x depth; a task without a needle depth has one cell per length).
Each has a content-addressed id: the hash of everything that determines its result. A cell
whose id is already in the store is skipped, so an interrupted run continues where it stopped
and a finished one is not recomputed.

Cells run as jobs on a backend (this process, a local process pool, or Ray; see backends.py):
plain functions of plain data that return rows. The driver alone writes the store, one
transaction per finished cell, and the checkpoints (a temporary file renamed into place). A
training cell's evaluation cells are handed out as soon as it finishes, with its weights. A job
that fails is retried up to `retries` times, then recorded in the store's failures table and
the rest of the grid goes on. One run at a time holds a study directory (a lock file).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
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

from safetensors.torch import load as load_weights
from safetensors.torch import save as save_weights

from . import faults, models
from .backends import InProcess, describe_error, make_backend
from .checkpoints import write_atomic
from .config import Study, resolve_overrides, train_labels
from .evaluate import evaluate_samples
from .store import ModelRow, ResultRow, Store
from .studydir import StudyLock
from .train import LOSS_EVERY, Mixture, TrainSpec, train, train_sweep


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
    """Every model to train and every cell to evaluate, with their ids."""
    pairs = study.train_tasks()
    # one task keeps the id it had before mixtures existed, so stored results are found again
    trained_on = task_id(pairs[0][0]) if len(pairs) == 1 else [[task_id(t), w] for t, w in pairs]
    vocab_size = study.vocab_size()
    study_spec = TrainSpec(**study.train.model_dump(exclude={"tasks"}))
    model_plans, cells = [], []
    for entry in study.models:
        config = models.config(entry.arch, vocab_size=vocab_size, **resolve_overrides(study, entry, vocab_size))
        spec = model_spec(study_spec, entry.rates)
        for seed in study.seeds:
            model_id = content_id({"model": config.to_dict(), "train": spec.to_dict(), "task": trained_on, "seed": seed})
            model_plans.append(ModelPlan(entry.label, entry.arch, seed, config, spec, model_id))
    task_depths = study.task_depths()
    for model_plan in model_plans:
        for label, task in study.eval_tasks():
            for length in study.eval_lengths():
                for depth in task_depths[label]:
                    cell_id = content_id({"model_id": model_plan.model_id, "task": task_id(task), "length": length,
                                          "depth": depth, "n": study.eval.samples, "seed": study.eval.seed,
                                          "samples": "per-seed"})
                    cells.append(EvalCell(model_plan, label, task, length, depth, cell_id))
    return model_plans, cells


def eval_seed(base: int, length: int, depth: float | None, model_seed: int | None = None) -> int:
    """The seed of the samples of one evaluation cell.

    Every model trained with the same seed sees the same samples at a given (length, depth), so
    comparisons between models are paired; models of different training seeds see independent
    samples, so a model's seeds add up to seeds x samples distinct samples per cell, as the
    intervals of `analysis.intervals` assume. `model_seed` None (pretrained checkpoints, which have
    no training seed) keeps one set of samples per (length, depth).
    """
    depth_part = 10**9 if depth is None else int(round(depth * 1000))
    parts = [base, length, depth_part] + ([] if model_seed is None else [1, model_seed])
    return int(np.random.SeedSequence(parts).generate_state(1)[0])


def provenance(command: str) -> dict:
    versions = {"python": platform.python_version(), "torch": torch.__version__}
    for package in ("longarch", "numpy", "transformers"):
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


def state_path(state_dir: str, model_id: str) -> Path:
    return Path(state_dir) / f"{model_id}.safetensors"


def attempt_path(state_dir: str, model_id: str, index: int) -> Path:
    """The training state of try `index` of a model's learning-rate sweep."""
    return Path(state_dir) / f"{model_id}.lr{index}.safetensors"


def progress_path(state_dir: str, model_id: str) -> Path:
    return Path(state_dir) / f"{model_id}.progress.json"


class _Live:
    """A training job's reporter: kill points, and progress (step, loss, last check)."""

    def __init__(self, job: TrainJob):
        self.job, self.info = job, {"step": 0, "of": job.plan.train_spec.max_steps, "loss": None, "accuracy": None}

    def rate(self, index: int, lr: float) -> None:
        """A sweep starts its try `index`, at learning rate `lr`."""
        self.info.update(step=0, loss=None, accuracy=None,
                         lr=f"lr {lr:g} ({index + 1} of {len(self.job.plan.train_spec.lr_sweep or ())})")
        self._report()

    def step(self, step: int, loss: float) -> None:
        faults.reached("step")
        self.info.update(step=step + 1, loss=loss)
        if (step + 1) % LIVE_EVERY == 0:
            self._report()

    def check(self, step: int, accuracy: dict[str, float]) -> None:
        self.info.update(step=step, accuracy=min(accuracy.values()))
        self._report()

    def _report(self) -> None:
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


def _worker_setup(threads: int | None) -> None:
    torch.set_flush_denormal(True)  # denormals slow CPU training about tenfold
    if threads is not None:
        torch.set_num_threads(threads)


def train_job(job: TrainJob) -> Trained:
    _worker_setup(job.threads)
    plan_ = job.plan
    spec = plan_.train_spec

    def build() -> models.LanguageModel:
        torch.manual_seed(plan_.seed)  # identical initialisation for a given seed (and every rate of a sweep)
        return models.LanguageModel(plan_.config)

    live = _Live(job)
    hooks = {"on_step": live.step, "on_check": live.check, "label": job.label}
    train_record = spec.to_dict()
    if spec.lr_sweep is None:
        model = build()
        result = train(model, job.task, spec, plan_.seed,
                       state_path=None if job.state_dir is None else state_path(job.state_dir, plan_.model_id),
                       state_key=plan_.model_id, **hooks)
        seconds = result.seconds
    else:
        sweep = train_sweep(build, job.task, spec, plan_.seed, state_key=plan_.model_id, on_try=live.rate,
                            attempt_path=None if job.state_dir is None else
                            (lambda i: attempt_path(job.state_dir, plan_.model_id, i)), **hooks)
        model, result, seconds = sweep.model, sweep.result, sum(t["seconds"] for t in sweep.tries)
        train_record.update(lr=sweep.lr, sweep=sweep.tries)  # the kept rate, and every rate tried
    weights = save_weights({k: v.contiguous() for k, v in model.state_dict().items()},
                           metadata={"model_id": plan_.model_id, "arch": plan_.arch})
    row = ModelRow(
        model_id=plan_.model_id, name=plan_.label, arch=plan_.arch, family=models.spec(plan_.arch).family,
        seed=plan_.seed, params=model.num_params(), state_floats=model.state_floats(spec.length),
        state_growth="linear" if model.state_floats(2 * spec.length) > model.state_floats(spec.length) else "constant",
        train_length=spec.length, train_accuracy=result.train_accuracy, train_seconds=seconds,
        final_loss=result.final_loss, config={"model": plan_.config.to_dict(), "train": train_record,
                                              "task_accuracy": result.task_accuracy},
        checkpoint="", steps=result.steps, steps_to_criterion=result.steps_to_criterion)
    curve = [(i * LOSS_EVERY, "loss", "", loss) for i, loss in enumerate(result.losses)]
    curve += [(check["step"], "accuracy", label, value) for check in result.checks
              for label, value in check["accuracy"].items()]
    return Trained(row, weights, curve)


def model_from_weights(plan_: ModelPlan, weights: bytes) -> models.LanguageModel:
    """The model of a plan with stored weights; safetensors only, so loading runs no code."""
    model = models.LanguageModel(plan_.config)
    model.load_state_dict(load_weights(weights))
    return model


def eval_job(job: EvalJob) -> ResultRow:
    _worker_setup(job.threads)
    start = time.perf_counter()
    cell = job.cell
    model = model_from_weights(cell.model, job.weights)
    samples = cell.task.generate(length=cell.length, n=job.samples, seed=job.seed, depth=cell.depth)
    scores = evaluate_samples(model, cell.task, samples, chunk=job.chunk, train_length=job.train_length)
    return ResultRow(
        cell_id=cell.cell_id, model_id=cell.model.model_id, model=cell.model.label, task=cell.task.name,
        label=cell.label, knobs=cell.task.knobs, length=cell.length, depth=cell.depth, seed=cell.model.seed,
        n=len(scores), accuracy=float(scores.mean()), scores=[float(s) for s in scores],
        seconds=time.perf_counter() - start)


def _what(item: ModelPlan | EvalCell) -> str:
    if isinstance(item, ModelPlan):
        return f"train {item.label} seed {item.seed}"
    depth = "" if item.depth is None else f" depth {item.depth:g}"
    return f"{item.model.label} s{item.model.seed} on {item.label} at {item.length}{depth}"


# --------------------------------------------------------------------------------------------
# the driver
# --------------------------------------------------------------------------------------------
def _logger(out: Path) -> logging.Logger:
    """The study's log file, <out>/run.log, appended to by every run."""
    log = logging.getLogger(f"longarch.run.{out.resolve()}")
    log.setLevel(logging.INFO)
    log.propagate = False
    for handler in list(log.handlers):
        log.removeHandler(handler)
        handler.close()
    handler = logging.FileHandler(out / "run.log", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    return log


def _stored_weights(row: ModelRow | None) -> bytes | None:
    """A stored model's checkpoint if it is there and loads as safetensors, else None (the
    model is retrained, not trusted)."""
    if row is None:
        return None
    try:
        weights = Path(row.checkpoint).read_bytes()
        load_weights(weights)
        return weights
    except Exception:
        return None


def _same_samples(stored: dict | None, study: Study, out: Path) -> None:
    """Refuse to add cells of a different sample count to a store (a cell's samples would then be
    counted twice in the report); everything stored stays as it is."""
    before = ((stored or {}).get("eval") or {}).get("samples")
    if isinstance(before, int) and before != study.eval.samples:
        raise ValueError(f"{out} holds results with eval.samples {before}; this study has {study.eval.samples} "
                         "(a different --scale?): give it another --out")


def run_study(study: Study, out: Path, console: Console | None = None, command: str | None = None,
              backend: str = "local", workers: int | None = 0, address: str | None = None,
              retries: int = 2) -> Path:
    """Run (or continue) a study into `out`; return the path of report.md.

    backend "local" with workers 0 runs every job in this process; workers N > 0 (None: one per
    core) runs them in a pool of N processes with cores / N torch threads each; "ray" runs them
    as Ray tasks (address None: a local Ray instance). A failing job is tried 1 + retries times.
    """
    from .backends import cores

    console = console or Console()
    torch.set_flush_denormal(True)
    out.mkdir(parents=True, exist_ok=True)
    model_plans, cells = plan(study)
    pool_size = cores() if workers is None else workers
    threads = None if backend == "local" and pool_size == 0 else max(1, cores() // max(1, pool_size))
    with StudyLock(out), Store(out / "results.sqlite") as store:
        log = _logger(out)
        store.clear_running()
        _same_samples(store.meta().get("config"), study, out)
        store.set_meta("name", study.name)
        store.set_meta("config", study.model_dump(mode="json"))
        store.set_meta("planned_cells", len(cells))
        store.set_meta("planned_models", [p.model_id for p in model_plans])
        store.set_meta("planned_lengths", study.eval_lengths())
        store.set_meta("planned_depths", study.eval.depths)
        store.set_meta("planned_task_depths", study.task_depths())
        store.set_meta("planned_tasks", [label for label, _ in study.eval_tasks()])
        for key, value in provenance(command or shlex.join(sys.argv)).items():
            store.set_meta(key, value)
        done = store.cell_ids()
        todo = [c for c in cells if c.cell_id not in done]
        cells_of = {p.model_id: [c for c in todo if c.model.model_id == p.model_id] for p in model_plans}
        weights = {p.model_id: w for p in model_plans if (w := _stored_weights(store.model(p.model_id)))}
        to_train = [p for p in model_plans if p.model_id not in weights]
        console.print(f"[bold]{study.name}[/bold]: {len(model_plans)} models ({len(model_plans) - len(to_train)} "
                      f"trained), {len(cells)} evaluation cells ({len(cells) - len(todo)} stored) -> {out}")
        log.info("run %s: %d models to train, %d cells to evaluate, backend %s", study.name, len(to_train),
                 len(todo), backend)
        runner = make_backend(backend, workers, address, threads or 1)
        task = training_task(study)
        label = None if study.train.tasks is not None else train_labels(study)[0]
        # mid-training state on this machine's disk (a remote Ray worker's disk is its own)
        state_dir = str(out / "checkpoints" / "training") if backend == "local" or address is None else None
        pending: dict = {}  # handle -> (item, job function, job, attempt)

        def submit(item, fn, job, attempt=1):
            store.set_running(item.model_id if isinstance(item, ModelPlan) else item.cell_id,
                              "train" if isinstance(item, ModelPlan) else "eval", _what(item))
            pending[runner.submit(fn, job)] = (item, fn, job, attempt)

        def submit_cells(model_plan: ModelPlan):
            for cell in cells_of[model_plan.model_id]:
                submit(cell, eval_job, EvalJob(cell, weights[model_plan.model_id], study.eval.samples,
                                               eval_seed(study.eval.seed, cell.length, cell.depth, cell.model.seed),
                                               study.eval.chunk, study.train.length, threads))

        global _LIVE_HOOK
        try:
            with _progress(console) as progress:
                train_bar = progress.add_task("train", total=len(to_train), info="")
                eval_bar = progress.add_task("evaluate", total=len(todo), info="")
                live = _LiveBars(progress, {p.model_id: p for p in to_train}, state_dir)
                _LIVE_HOOK = live.update if isinstance(runner, InProcess) else None
                for model_plan in model_plans:
                    if model_plan.model_id in weights:
                        submit_cells(model_plan)
                    else:
                        submit(model_plan, train_job, TrainJob(model_plan, task, threads, state_dir, label))
                while pending:
                    finished = runner.wait(timeout=1.0)
                    live.poll()
                    for handle, result, error in finished:
                        item, fn, job, attempt = pending.pop(handle)
                        item_id = item.model_id if isinstance(item, ModelPlan) else item.cell_id
                        store.clear_running(item_id)
                        if error is not None:
                            log.warning("%s failed (attempt %d of %d):\n%s", _what(item), attempt, retries + 1,
                                        describe_error(error))
                            if attempt <= retries:
                                submit(item, fn, job, attempt + 1)
                                continue
                            line = f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}"
                            store.put_failure(item_id, "train" if fn is train_job else "eval", _what(item), attempt, line)
                            progress.console.print(f"[red]failed after {attempt} attempts: {_what(item)}: {line}[/red]")
                            if fn is train_job:
                                for cell in cells_of[item.model_id]:
                                    store.put_failure(cell.cell_id, "eval", _what(cell), 0, f"its model failed to train ({line})")
                            continue
                        if fn is train_job:
                            path = out / "checkpoints" / f"{item.label}-s{item.seed}-{item.model_id}.safetensors"
                            write_atomic(path, result.weights)
                            result.row.checkpoint = str(path)
                            store.put_model(result.row, result.curve)
                            faults.reached("model")
                            store.clear_failure(item_id)
                            live.done(item.model_id)
                            weights[item.model_id] = result.weights
                            log.info("%s: training accuracy %.4f in %.1f s", _what(item), result.row.train_accuracy,
                                     result.row.train_seconds)
                            progress.update(train_bar, advance=1,
                                            info=f"{item.label} s{item.seed}: acc@T {result.row.train_accuracy:.1%}")
                            submit_cells(item)
                        else:
                            store.put_result(result)
                            faults.reached("cell")
                            store.clear_failure(item_id)
                            log.info("%s: accuracy %.4f", _what(item), result.accuracy)
                            progress.update(eval_bar, advance=1, info=_what(item))
        except BaseException:
            runner.close(abort=True)
            raise
        finally:
            _LIVE_HOOK = None
        runner.close()
        failed = store.failures()
        log.info("run %s ended: %d cells stored of %d, %d failed", study.name, len(store.cell_ids()), len(cells),
                 len(failed))
    return finish(out, console, failed)


class _LiveBars:
    """One progress bar per model in training, with its step, loss and held-out accuracy: fed
    by the hook (in-process jobs) or read from the workers' progress files (`poll`)."""

    def __init__(self, progress: Progress, plans: dict[str, ModelPlan], state_dir: str | None):
        self.progress, self.plans, self.state_dir, self.bars = progress, plans, state_dir, {}

    def update(self, model_id: str, info: dict) -> None:
        plan_ = self.plans.get(model_id)
        if plan_ is None:
            return
        if model_id not in self.bars:
            self.bars[model_id] = self.progress.add_task(f"  {plan_.label} s{plan_.seed}", total=info["of"], info="")
        text = "" if info.get("loss") is None else f"loss {info['loss']:.3f}"
        if info.get("accuracy") is not None:
            text += f"  held-out acc@T {info['accuracy']:.0%} (lowest task)"
        if info.get("lr"):
            text += f"  {info['lr']}"
        self.progress.update(self.bars[model_id], completed=info["step"], info=text)

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

    def done(self, model_id: str) -> None:
        """A model is stored: its bar goes, and so do its training state and progress files."""
        if model_id in self.bars:
            self.progress.remove_task(self.bars.pop(model_id))
        self.plans.pop(model_id, None)
        if self.state_dir is not None:
            for path in (state_path(self.state_dir, model_id), progress_path(self.state_dir, model_id),
                         *Path(self.state_dir).glob(f"{model_id}.lr*.safetensors")):
                path.unlink(missing_ok=True)


def finish(out: Path, console: Console, failed: list) -> Path:
    """After a run: the report, its summary table, what failed; returns the path of report.md."""
    from .analysis.report import build_report, summary_table  # analysis reads the store only

    paths = build_report(out)
    console.print(summary_table(out))
    if failed:
        console.print(f"[red]{len(failed)} cells failed; `longarch status {out}` lists them with their last error, "
                      "and running the same command again retries them.[/red]")
    console.print(f"report: {paths['md']}  and  {paths['html']}")
    return paths["md"]
