"""Run a pretrained study: every (model, text task, length, depth) cell, into the same store.

Each cell is one job: load the model (kept loaded between jobs of the same process, so a model
is loaded once per worker), fit `samples` prompts to the length with its own tokenizer (cached
on disk), decode greedily, and score with RULER's metric. The driver writes the store row and
the raw predictions (`<out>/predictions/<model>/<task>-<length>[-d<depth>].jsonl`). Cells are
content-addressed as in the controlled study, so a rerun continues where the last one stopped.
Prompts are never cut: a cell past the model's training length is run and marked
beyond-training in its predictions and in the report.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from ..analysis.report import run
from ..study.store import ResultRow, Store
from ..study import Cell, Plan, content_id, eval_seed, inputs, predictions
from ..study.driver import Runtime, lazily
from ..study.grid import eval_rate
from ..tasks import text
from . import args as arguments, config
from .config import PretrainedModel, PretrainedStudy

PREDICTION_BYTES = 128  # a sample's line in predictions/: its keys and the prompt's hash alone take more
SKIP_HINT = {"qa_1": "give a SQuAD v2 dev file (dev-v2.0.json) with --squad FILE, or `squad: FILE` in the study",
             "qa_2": "give a HotpotQA dev file (hotpot_dev_distractor_v1.json) with --hotpotqa FILE, or "
                     "`hotpotqa: FILE` in the study"}


@dataclass
class TextCell:
    model: PretrainedModel
    model_id: str
    label: str
    task: object      # a text task (tasks/base.py's contract)
    length: int
    depth: float | None
    cell_id: str


def fingerprint(spec: str) -> dict:
    """What identifies a checkpoint: a local folder by its config and weight files (name and
    size), so a changed checkpoint gets new cell ids; a hub id by its name."""
    scheme, _, target = spec.partition(":")
    folder = Path(target).expanduser()
    if not folder.is_dir():
        return {"scheme": scheme, "id": target}
    config = folder / "config.json"
    digest = hashlib.sha256(config.read_bytes()).hexdigest()[:16] if config.is_file() else None
    weights = sorted((p.name, p.stat().st_size) for p in folder.iterdir()
                     if p.suffix in (".safetensors", ".bin", ".pt", ".pth"))
    return {"scheme": scheme, "config": digest, "weights": weights}


def model_id(study: PretrainedStudy, entry: PretrainedModel) -> str:
    """The checkpoint as evaluated: its model arguments (but dtype, which is `dtype`), generation
    arguments and the system prompt count only when set, so that a model without them keeps the
    id it had before they existed."""
    identity = {"model": fingerprint(entry.model), "tokenizer": entry.tokenizer, "dtype": entry.dtype(study.eval.dtype),
                "template": entry.template or study.eval.template, "trust_remote_code": study.trust_remote_code}
    given = {"model_args": {k: v for k, v in entry.model_args.items() if k != "dtype"}, "gen_args": entry.gen_args,
             "system_prompt": study.system_prompt}
    return content_id({**identity, **{k: v for k, v in given.items() if v}})


def budgeted(task, entry: PretrainedModel):
    """The task with the model's max_new_tokens generation argument as its generation budget."""
    budget = entry.gen_args.get("max_new_tokens")
    return task if budget is None else dataclasses.replace(task, max_new_tokens=budget)


def plan(study: PretrainedStudy) -> tuple[list[TextCell], list[tuple[str, str]]]:
    """Every cell, and (what, reason) for each task or model skipped: a QA task without its file,
    a model that needs remote code the study does not allow."""
    cells, skipped = [], []
    for entry in study.models:
        if entry.trust_remote_code and not study.trust_remote_code:
            skipped.append((entry.label, "its checkpoint runs the code it ships; allow that with --trust-remote-code "
                                         "(or `trust_remote_code: true` in the study)"))
            continue
        mid = model_id(study, entry)
        for label, task_entry in study.task_entries():
            for length in study.lengths_for(task_entry, entry.train_length):
                for depth in task_entry.depths or [None]:
                    try:
                        task = budgeted(study.make_task(task_entry, depth), entry)
                    except text.TaskSkipped:
                        reason = SKIP_HINT.get(task_entry.name, "its data file is missing")
                        if (label, reason) not in skipped:
                            skipped.append((label, reason))
                        break
                    cell_id = content_id({"model_id": mid, "task": task.name,
                                          "knobs": inputs.identity_knobs(task.knobs),
                                          "length": length, "depth": depth, "n": study.eval.samples,
                                          "seed": study.eval.seed, "version": task.version,
                                          **study.eval.fit_identity()})
                    cells.append(TextCell(entry, mid, label, task, length, depth, cell_id))
    return cells, skipped


# --------------------------------------------------------------------------------------------
# the job (runs in a worker: plain data in, rows out)
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TextJob:
    cell: TextCell
    dtype: str
    device: str
    trust_remote_code: bool
    template: str
    samples: int
    seed: int
    chunk: int | None
    batch_tokens: int
    cache_dir: str | None
    fit: str = "exact"                # eval.fit: exact | ruler
    fit_tolerance: float = text.fit.TOLERANCE
    system_prompt: str | None = None
    log_prompts: bool = False


@dataclass
class TextResult:
    row: ResultRow
    predictions: list[dict]
    model_info: dict


class ModelLoadError(RuntimeError):
    """The checkpoint could not be loaded: every cell of that model fails the same way, so it is
    not retried (and not loaded again in this process)."""


_loaded: dict = {}  # the one model this process holds: key -> loaded model
_unloadable: dict = {}  # key -> the one-line reason a checkpoint could not be loaded


def _load(job: TextJob):
    from ..models import pretrained

    model_args = {k: v for k, v in job.cell.model.model_args.items() if k != "dtype"}
    key = (job.cell.model.model, job.cell.model.tokenizer, job.dtype, job.device, job.trust_remote_code,
           json.dumps(model_args, sort_keys=True))
    if key in _unloadable:
        raise ModelLoadError(_unloadable[key])
    if key not in _loaded:
        pretrained.quiet_transformers()
        _loaded.clear()  # one model at a time: a 3B model in memory twice is the wrong trade
        try:
            _loaded[key] = pretrained.load(job.cell.model.model, dtype=job.dtype, device=job.device,
                                           trust_remote_code=job.trust_remote_code, tokenizer=job.cell.model.tokenizer,
                                           model_args=model_args)
        except Exception as error:
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            _unloadable[key] = f"{job.cell.model.model} could not be loaded: {first}"
            raise ModelLoadError(_unloadable[key]) from None
    return _loaded[key]


def model_info(loaded, entry: PretrainedModel, dtype: str) -> dict:
    from ..models import pretrained

    declared = loaded.declared_length
    train_length = entry.train_length or declared
    source = "study" if entry.train_length else ("config" if declared else None)
    return {"kind": loaded.kind, "family": pretrained.family(loaded.kind),
            "params": int(sum(p.numel() for p in loaded.model.parameters())),
            "declared_length": declared, "train_length": train_length, "train_length_source": source,
            "dtype": dtype, "model_args": entry.model_args, "gen_args": entry.gen_args}


def _samples(job: TextJob, loaded) -> tuple[list, list[str], list[list[int]]]:
    """The cell's fitted samples, the text of each prompt as tokenized and its token ids. The
    prompt as the model reads it is what is counted towards the length (its chat template's own
    tokens, the system prompt) whenever it is more than the task's text."""
    cell, system = job.cell, job.system_prompt

    def ids(body: str, prefix: str) -> list[int]:
        return loaded.prompt(body, job.template, prefix, system)

    counting = job.template  # names how prompts were counted, in the cache's key
    if system:
        counting += "+system-" + hashlib.sha256(system.encode()).hexdigest()[:16]
    counted = job.template == "chat" or bool(system)
    samples = text.generate(cell.task.name, cell.task, loaded.tokenizer, cell.length, n=job.samples, seed=job.seed,
                            cache_dir=job.cache_dir, counting=counting, fit_mode=job.fit,
                            fit_tolerance=job.fit_tolerance, prompt_tokens=(lambda body, prefix: len(ids(body, prefix))) if counted else None)
    texts = [loaded.prompt_text(s.body, job.template, s.answer_prefix, system) for s in samples]
    return samples, texts, [ids(s.body, s.answer_prefix) for s in samples]


def text_job(job: TextJob) -> TextResult:
    start = time.perf_counter()
    cell = job.cell
    loaded = _load(job)
    info = model_info(loaded, cell.model, job.dtype)
    samples, texts, prompts = _samples(job, loaded)
    budget = max(s.max_new_tokens for s in samples)
    outputs = loaded.generate(prompts, budget, chunk=job.chunk, batch_tokens=job.batch_tokens)
    stops = cell.model.gen_args.get("until", [])
    scores, predictions = [], []
    for index, (sample, prompt, ids, out) in enumerate(zip(samples, texts, prompts, outputs)):
        prediction = arguments.cut(loaded.tokenizer.decode(out, skip_special_tokens=True), stops)
        score = text.score(cell.task.name, [prediction], [sample.answers]) / 100
        scores.append(score)
        total = len(ids) + sample.max_new_tokens
        predictions.append({
            "index": index, "prediction": prediction, "answers": sample.answers, "score": score,
            "prompt_tokens": len(ids), "total_tokens": total, "length": cell.length,
            "beyond_training": info["train_length"] is not None and total > info["train_length"],
            "metadata": sample.metadata, "prompt_sha256": hashlib.sha256(prompt.encode()).hexdigest(),
            **({"prompt": prompt} if job.log_prompts else {})})
    row = ResultRow(cell_id=cell.cell_id, model_id=cell.model_id, model=cell.model.label, task=cell.task.name,
                    label=cell.label, knobs=inputs.portable(cell.task.knobs, Pretrained.input_keys)[0],
                    length=cell.length, depth=cell.depth, seed=0, n=len(scores),
                    accuracy=sum(scores) / len(scores), scores=scores, seconds=time.perf_counter() - start)
    return TextResult(row, predictions, info)


# --------------------------------------------------------------------------------------------
# the pretrained kind of study, as the driver sees it
# --------------------------------------------------------------------------------------------
def predictions_path(out: Path, cell: TextCell) -> Path:
    return predictions_file(out, cell.model.label, cell.label, cell.length, cell.depth)


def predictions_file(out: Path, model: str, label: str, length: int, depth: float | None) -> Path:
    """Where a cell's raw predictions are: by its model's and task entry's labels, as stored."""
    return predictions.path_of(out, model, label, length, depth)


def sample_outputs(out: Path, row: ResultRow) -> dict[int, tuple[str, str]] | None:
    """A stored cell's raw predictions for `longarch export`: sample index -> (the decoded
    prediction, its reference answers joined by " | "); None when the file is missing or
    unreadable (the scores in the store stand without it)."""
    return predictions.read(predictions_file(out, row.model, row.label or row.task, row.length, row.depth))


def _what(cell: TextCell) -> str:
    depth = "" if cell.depth is None else f" depth {cell.depth:g}"
    return f"{cell.model.label} on {cell.label} at {cell.length}{depth}"


class Pretrained:
    """A pretrained study: one evaluation cell per (checkpoint, text task, length, depth), in plan
    order, so that one model's cells run together and it is loaded once per worker."""

    kind = "pretrained"
    Config = PretrainedStudy
    options = ("corpus", "squad", "hotpotqa", "trust_remote_code", "model_args", "gen_args", "system_prompt",
               "log_prompts")  # the command-line options it takes
    input_keys = ("corpus", "squad", "hotpotqa", "path")  # where its configuration names a file (study/inputs.py)
    presentation = ("description", "analysis", "reference", "log_prompts")  # change how results are shown or kept
    prepare = staticmethod(config.prepare)
    complete = staticmethod(config.complete)
    from_stored = staticmethod(config.from_stored)
    permanent = (ModelLoadError, text.FitError)  # every try would fail the same way
    default_workers = 0  # in this process: one accelerator, each model loaded once
    gpus = 0.0           # one per job when the study runs on CUDA (set per study)
    name: str

    def __init__(self, study: PretrainedStudy, cache_dir: str | None = None):
        self.study, self.cache_dir, self.name = study, cache_dir, study.name
        self.gpus = 1.0 if study.eval.device.startswith("cuda") else 0.0  # each Ray job then asks for one GPU

    def plan(self) -> Plan:
        study = self.study
        cells, skipped = plan(study)
        meta = {"name": study.name, "config": study.model_dump(mode="json"),
                "planned_cells": len(cells), "planned_lengths": list(study.eval.lengths),
                "planned_tasks": [label for label, _ in study.task_entries()], "skipped": [list(s) for s in skipped]}
        return Plan([Cell(c.cell_id, "eval", _what(c), c) for c in cells], meta,
                    [f"skipped {label}: {reason}" for label, reason in skipped])

    def stored(self, store: Store, cells: list[Cell], runtime: Runtime) -> dict:
        return {}  # no cell needs another's output

    def job(self, cell: Cell, inputs: dict, runtime: Runtime):
        study, item = self.study, cell.item
        return text_job, TextJob(item, item.model.dtype(study.eval.dtype), study.eval.device, study.trust_remote_code,
                                 item.model.template or study.eval.template, study.eval.samples,
                                 eval_seed(study.eval.seed, item.length, item.depth), study.eval.chunk,
                                 study.eval.batch_tokens, self.cache_dir, fit=study.eval.fit,
                                 fit_tolerance=study.eval.fit_tolerance, system_prompt=study.system_prompt,
                                 log_prompts=study.log_prompts)

    def commit(self, store: Store, cell: Cell, result: TextResult, runtime: Runtime):
        item = cell.item
        predictions.write(predictions_path(runtime.out, item), result.predictions)
        store.put_pretrained(item.model_id, item.model.label, item.model.model,
                             {**result.model_info, "template": item.model.template or self.study.eval.template,
                              "tokenizer": item.model.tokenizer, "system_prompt": self.study.system_prompt})
        store.put_result(result.row)
        score = 100 * result.row.accuracy
        return None, f"{cell.what}: {score:.1f}", f"{cell.what}: score {score:.2f}"

    def blocked(self, cell: Cell, failed: Cell, error: str) -> str:
        return f"{failed.what} failed ({error})"

    def watch(self, progress, cells, runtime, in_process):
        return None

    sample_outputs = staticmethod(sample_outputs)  # (out, result row) -> each sample's prediction and answer
    named_models = staticmethod(arguments.named_models)  # `longarch eval`'s --model and --model-args pretrained=
    onto_models = staticmethod(arguments.onto_models)    # the command line's --model-args, --gen-args on each model
    lm_eval = lazily("longarch.pretrained.lm_eval", "write")  # (out, dest) -> lm-eval results JSON files
    report = lazily("longarch.pretrained.report", "report")         # (out, dest=None) -> analysis.report.Report
    table = lazily("longarch.pretrained.report", "summary_table")   # (out) -> the terminal's table

    def disk_bytes(self, cells: list[Cell]) -> int:
        """Each cell's raw predictions: a JSON line of at least PREDICTION_BYTES a sample, and
        with log_prompts its prompt (a token is at least one byte of text)."""
        prompts = sum(c.item.length for c in cells) if self.study.log_prompts else 0
        return self.study.eval.samples * (PREDICTION_BYTES * len(cells) + prompts)

    def work_flops(self, cells: list[Cell]) -> None:
        """Not estimated: a checkpoint's size is known only once it is loaded, so a pretrained run
        without --workers keeps its default (driver.POOL_MIN_FLOPS)."""
        return None

    def grid_rows(self, state) -> list[tuple[str, list[Cell]]]:
        """(what, its cells) for each task entry: its models, lengths and depths."""
        rows = []
        for label, entry in self.study.task_entries():
            mine = [c for c in state.of("eval") if c.item.label == label]
            lengths = "T x " + ", ".join(f"{f:g}" for f in entry.length_factors) if entry.length_factors else \
                f"{len(self.study.eval.lengths)} lengths"
            depths = f" x {len(entry.depths)} depths" if entry.depths else ""
            what = f"{len({c.item.model.label for c in mine})} models x {lengths}{depths}" if mine else "skipped"
            rows.append((f"evaluate {label} ({what})", mine))
        return rows

    def cost(self, state, out: Path) -> dict:
        """Prompt tokens left to evaluate, and seconds at the rate of the cells stored so far."""
        eval_tokens = sum(self.study.eval.samples * c.item.length for c in state.remaining("eval"))
        rate = eval_rate(out)
        return {"train_tokens": 0, "train_tokens_max": 0, "eval_tokens": eval_tokens,
                "seconds": None if rate is None and eval_tokens else eval_tokens * (rate or 0.0)}


def run_pretrained(study: PretrainedStudy, out: Path, console: Console | None = None, command: str | None = None,
                   backend: str = "local", workers: int | None = 0, address: str | None = None, retries: int = 2,
                   cache_dir: str | None = None, force: bool = False) -> Path:
    """Run (or continue) a pretrained study into `out`; return the path of report.md.
    workers 0 (the default here: one accelerator, models loaded once) runs in this process."""
    return run(Pretrained(study, cache_dir), out, console, command, backend, workers, address, retries, force).report
