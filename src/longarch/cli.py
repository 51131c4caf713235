"""The `longarch` command: parse, validate, call. Bad input is one line on stderr and exit 2."""

from __future__ import annotations

import contextlib
import functools
import signal
import sys
import threading
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(help="How well does each sequence-model architecture use long context?",
                  no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)
console = Console()
errors = Console(stderr=True)


def _usage_error(error) -> None:
    """A usage error (unknown command or option, a missing or malformed value) as one line, like
    every other bad input: typer would draw a box of several lines."""
    errors.print(f"error: {error.format_message()} (see longarch --help)", markup=False, highlight=False,
                 soft_wrap=True)


def _install_one_line_usage_errors() -> None:
    import click
    import typer.rich_utils

    typer.rich_utils.rich_format_error = _usage_error  # used when rich is installed (it is a dependency)
    click.exceptions.ClickException.show = lambda self, file=None: _usage_error(self)


_install_one_line_usage_errors()


def print_table(table: Table) -> None:
    """Tables print at the terminal's width; piped into a file or another program, they are
    not squeezed to 80 columns."""
    (console if console.is_terminal else Console(width=200)).print(table)


def fail(message: str) -> None:
    errors.print(f"error: {message}", markup=False, highlight=False, soft_wrap=True)
    raise typer.Exit(2)


def clean_errors(command):
    """Turn the errors of bad input, and the file system's, into one line and exit status 2."""
    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        import sqlite3

        try:
            return command(*args, **kwargs)
        except (ValueError, TypeError) as error:
            fail(str(error).splitlines()[0] if str(error) else type(error).__name__)
        except OSError as error:
            fail(file_error(error))
        except sqlite3.Error as error:  # a store that cannot be read or written
            fail(f"the results database: {error}; what was stored is kept")
    return wrapper


def file_error(error: OSError) -> str:
    """A file-system failure as one line: the path and the cause (read-only, disk full, ...)."""
    where = " -> ".join(str(f) for f in (error.filename, error.filename2) if f is not None)
    cause = error.strerror or str(error) or type(error).__name__
    kept = "" if isinstance(error, FileNotFoundError) else "; what was stored is kept"
    return f"{where}: {cause.lower()}{kept}" if where else f"{cause}{kept}"


def parse_knobs(pairs: list[str], flag: str = "--knob") -> dict:
    """KEY=VALUE pairs; values are read as YAML (numbers, booleans, strings), as a study file's
    are: plain data only (an explicit tag such as !!python/object is refused), no repeated keys,
    bounded aliases (safe_yaml.py's StudyLoader). A KEY given twice is refused, not overridden."""
    import yaml

    from .safe_yaml import parse_yaml, yaml_problem

    knobs = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"{flag} expects KEY=VALUE, got {pair!r}")
        if key in knobs:
            raise ValueError(f"{flag} {key} is given twice")
        try:
            knobs[key] = parse_yaml(value)
        except yaml.YAMLError as error:
            raise ValueError(f"{flag} {key}: not a plain YAML value{yaml_problem(error, lines=False)}") from None
    return knobs


ModelArgs = Annotated[Optional[str], typer.Option(help="pretrained studies: lm-eval's --model_args for every model, KEY=VALUE,... (revision, attn_implementation, dtype, rope_scaling={...} and other config keys); see README")]
GenArgs = Annotated[Optional[str], typer.Option(help="pretrained studies: generation arguments for every model, KEY=VALUE,... (max_new_tokens or max_gen_toks, until)")]
SystemPrompt = Annotated[Optional[str], typer.Option(help="pretrained studies: a system prompt (the chat template's system message; before the prompt under the base template)")]
LogPrompts = Annotated[bool, typer.Option("--log-prompts", help="pretrained studies: keep each prompt's whole text in the prediction files (its SHA-256 and token count are always kept)")]
REPORT_FILES = {"report.md", "report.html", "summary.json", "figures"}  # what `longarch report` writes
StudyArg = Annotated[str, typer.Argument(help="a preset name (quick, smoke) or a study YAML file")]


@app.command()
@clean_errors
def run(study: StudyArg = "quick",
        out: Annotated[Optional[Path], typer.Option(help="output directory [default: runs/<study>]")] = None,
        corpus: Annotated[Optional[Path], typer.Option(help="UTF-8 text for every `haystack: text` task [default: Python's help topics]")] = None,
        backend: Annotated[str, typer.Option(help="local (a process pool) or ray")] = "local",
        workers: Annotated[Optional[int], typer.Option(help="parallel jobs [default: one per core]; 0 runs them in this process", min=0)] = None,
        address: Annotated[Optional[str], typer.Option(help="Ray cluster address ('auto': the cluster this machine is in) [default: a local Ray instance]")] = None,
        retries: Annotated[int, typer.Option(help="times a failing cell is retried before it is reported", min=0)] = 2,
        squad: Annotated[Optional[Path], typer.Option(help="pretrained studies: SQuAD v2 dev file for qa_1")] = None,
        hotpotqa: Annotated[Optional[Path], typer.Option(help="pretrained studies: HotpotQA dev file for qa_2")] = None,
        trust_remote_code: Annotated[bool, typer.Option("--trust-remote-code", help="pretrained studies: let checkpoints that ship code run it")] = False,
        scale: Annotated[Optional[int], typer.Option(help="controlled studies: k times the seeds and the evaluation samples, for bigger machines [default: the YAML's scale, else 1]", min=1)] = None,
        force: Annotated[bool, typer.Option("--force", help="write into an --out that holds files longarch did not write (they are left as they are)")] = False,
        plugin: Annotated[Optional[list[Path]], typer.Option(help="controlled studies: a Python file (or module) of mixers and architectures to import; recorded in the study; repeatable")] = None,
        model_args: ModelArgs = None, gen_args: GenArgs = None, system_prompt: SystemPrompt = None,
        log_prompts: LogPrompts = False):
    """Train and evaluate a study, or evaluate a pretrained one; rerunning it continues where it stopped."""
    from .kinds import kind_of

    if backend not in ("local", "ray"):
        raise ValueError(f"--backend must be local or ray, not {backend!r}")
    if address is not None and backend != "ray":
        raise ValueError("--address is for --backend ray")
    loaded = _load(study, corpus, squad, hotpotqa, trust_remote_code, scale, plugin,
                   _pretrained_options(model_args, gen_args, system_prompt, log_prompts))
    _run(kind_of(loaded)(loaded), out or Path("runs") / loaded.name, backend, workers, address, retries, force)


def _pretrained_options(model_args: str | None, gen_args: str | None, system_prompt: str | None,
                        log_prompts: bool) -> dict:
    """run's and plan's options for pretrained studies (None: not given)."""
    return {"model_args": model_args, "gen_args": gen_args, "system_prompt": system_prompt,
            "log_prompts": log_prompts or None}


def _run(kind, target: Path, backend: str, workers: int | None, address: str | None, retries: int,
         force: bool = False) -> None:
    """Run a study of any kind into `target`, then exit with a status a script can trust: 0 when
    every planned cell is stored (or skipped), 1 when some failed or were not run (one line names
    the first error; the report is written first), 128 + the signal's number when Ctrl-C (130),
    SIGTERM (143) or SIGHUP (129) stopped it, what is stored kept. workers None: the kind's default."""
    from .analysis.report import run

    _check_out(target)
    command = "longarch " + " ".join(sys.argv[1:])
    try:
        with stopped_by_signals() as received:
            # the plan against the store as the report read it: the same counts, not read twice
            unsettled = _unsettled(run(kind, target, console, command, backend, workers, address, retries,
                                       force).state, target)
    except KeyboardInterrupt:
        number = received[0] if received else signal.SIGINT  # Ray's waits raise Stopped as a plain one
        how = "interrupted" if number == signal.SIGINT else f"stopped by {signal.Signals(number).name}"
        errors.print(f"{how}; stored cells are kept. Run the same command again to continue ({target}).",
                     markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(128 + number)
    if unsettled:
        errors.print(f"error: {unsettled}", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(1)


def _unsettled(state, target: Path) -> str | None:
    """The line a run that left cells unsettled ends with (None: every planned cell is stored or
    skipped): how many failed, the first error, and what to do."""
    tally = state.tally()
    failed, left, planned = tally["failed"], tally["not_attempted"], tally["planned"]
    if not failed and not left:
        return None
    also = f" ({left} more not run)" if left else ""
    if not failed:
        return f"{left} of {planned} cells were not run; running the same command again runs them"
    first = state.first_failure()
    return (f"{failed} of {planned} cells failed{also}; the first: {first['what']}: {first['error']}; "
            f"longarch status {target} lists them, and running the same command again retries them")


class Stopped(KeyboardInterrupt):
    """SIGTERM or SIGHUP, taken as Ctrl-C is: the driver stops its workers, keeps what is stored
    and releases the directory (a KeyboardInterrupt, so every clean-up for Ctrl-C runs)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextlib.contextmanager
def stopped_by_signals():
    """While the block runs, SIGTERM (a `kill`, a scheduler's stop) and SIGHUP (the terminal
    closed) raise Stopped in this thread; a second signal while the run cleans up is ignored,
    so it is not cut short (SIGKILL still ends it). Yields the list of the signal taken (what
    catches a KeyboardInterrupt may raise a plain one in its place). A signal this process
    ignores (`nohup`) stays ignored; the previous handlers come back afterwards."""
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():  # only the main thread takes signals
        yield received
        return
    taken = [number for number in (signal.SIGTERM, getattr(signal, "SIGHUP", None))
             if number is not None and signal.getsignal(number) is not signal.SIG_IGN]

    def stop(number, frame):
        for each in taken:
            signal.signal(each, signal.SIG_IGN)
        received.append(number)
        raise Stopped(number)

    previous = {number: signal.signal(number, stop) for number in taken}
    try:
        yield received
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler if handler is not None else signal.SIG_DFL)


def _load(study: str, corpus: Path | None, squad: Path | None, hotpotqa: Path | None, trust_remote_code: bool,
          scale: int | None = None, plugin: list[Path] | None = None, pretrained: dict | None = None):
    """The study of `run` and `plan`, of any kind; an option its kind does not take is refused."""
    from .kinds import load_study

    return load_study(study, corpus=None if corpus is None else str(corpus), scale=scale,
                      squad=None if squad is None else str(squad), hotpotqa=None if hotpotqa is None else str(hotpotqa),
                      trust_remote_code=trust_remote_code or None, plugin=[str(p) for p in plugin] if plugin else None,
                      **(pretrained or {}))


def _report_out(out: Path, what: str) -> None:
    """A report's --out: a directory (or none yet) that holds nothing but a report's files."""
    _check_out(out)
    others = sorted(p.name for p in out.iterdir() if p.name not in REPORT_FILES) if out.is_dir() else []
    if others:
        fail(f"--out {out} holds other files ({', '.join(others[:3])}); give {what} a directory of its own")


def _check_out(target: Path) -> None:
    if target.exists() and not target.is_dir():
        raise ValueError(f"--out {target} is a file, not a directory")


def _csv(text: str, what: str) -> list[str]:
    items = [part.strip() for part in text.split(",") if part.strip()]
    if not items:
        raise ValueError(f"{what} is empty")
    return items


@app.command("eval")
@clean_errors
def eval_command(
        model: Annotated[Optional[list[str]], typer.Option(help="hf:<path or hub id> or mamba_ssm:<path or hub id>; repeatable (or lm-eval's --model-args pretrained=...)")] = None,
        tasks: Annotated[str, typer.Option(help="comma-separated text tasks; 'ruler' is RULER's 13 (see `longarch tasks --text`)")] = "ruler",
        lengths: Annotated[str, typer.Option(help="comma-separated lengths in tokens, e.g. 1K,2K,4K or 1024,2048")] = "1K,2K,4K,8K,16K",
        samples: Annotated[int, typer.Option(help="samples per task and length", min=1)] = 250,
        out: Annotated[Optional[Path], typer.Option(help="output directory [default: runs/eval]")] = None,
        name: Annotated[str, typer.Option(help="the study's name in the report")] = "eval",
        template: Annotated[str, typer.Option(help="base, or chat (the tokenizer's own chat template)")] = "base",
        dtype: Annotated[str, typer.Option(help="float32, bfloat16 or float16")] = "float32",
        device: Annotated[str, typer.Option(help="cpu, cuda, cuda:1, mps ...")] = "cpu",
        train_length: Annotated[Optional[int], typer.Option(help="the models' training length [default: what each config declares]", min=1)] = None,
        tokenizer: Annotated[Optional[str], typer.Option(help="tokenizer for mamba_ssm: checkpoints [default: the checkpoint's own, else gpt-neox-20b]")] = None,
        chunk: Annotated[Optional[int], typer.Option(help="prefill chunk in tokens, where exact [default: whole prompts]", min=1)] = None,
        batch_tokens: Annotated[int, typer.Option(help="prompt tokens per generation batch", min=1)] = 16384,
        corpus: Annotated[Optional[Path], typer.Option(help="essay haystack text [default: Python's help topics]")] = None,
        squad: Annotated[Optional[Path], typer.Option(help="SQuAD v2 dev file for qa_1 (without it qa_1 is skipped)")] = None,
        hotpotqa: Annotated[Optional[Path], typer.Option(help="HotpotQA dev file for qa_2 (without it qa_2 is skipped)")] = None,
        seed: Annotated[int, typer.Option(min=0)] = 0,
        effective_length_bar: Annotated[float, typer.Option(help="effective length: the longest length up to which every length's lower bound is above this accuracy, a fraction (RULER's 85.6% is 0.856)")] = 0.856,
        threshold: Annotated[Optional[str], typer.Option(hidden=True, help="renamed --effective-length-bar")] = None,
        trust_remote_code: Annotated[bool, typer.Option("--trust-remote-code", help="let transformers run code shipped with a checkpoint")] = False,
        retries: Annotated[int, typer.Option(help="times a failing cell is retried", min=0)] = 2,
        force: Annotated[bool, typer.Option("--force", help="write into an --out that holds files longarch did not write (they are left as they are)")] = False,
        model_args: ModelArgs = None, gen_args: GenArgs = None, system_prompt: SystemPrompt = None,
        log_prompts: LogPrompts = False):
    """Evaluate pretrained checkpoints on RULER-style text tasks; rerunning continues where it stopped."""
    from .bench import parse_lengths
    from .kinds import checkpoints_kind, kinds
    from .study.load import validate
    from .study.schema import plain_name

    kind = checkpoints_kind()
    model, model_args = kind.named_models(list(model or []), model_args)

    try:
        plain_name(name)
    except ValueError as error:
        raise ValueError(f"--name: {error}") from None
    if tokenizer is not None and not any(m.startswith("mamba_ssm:") for m in model):
        raise ValueError(f"--tokenizer {tokenizer} is for mamba_ssm: checkpoints, and every --model here is hf: "
                         "(an hf: model uses its own tokenizer)")
    _check_bar(effective_length_bar, threshold)
    data = {"kind": kind.kind, "name": name,
            "models": [{"model": m, "train_length": train_length,
                        "tokenizer": tokenizer if m.startswith("mamba_ssm:") else None} for m in model],
            "tasks": _csv(tasks, "--tasks"),
            "eval": {"lengths": parse_lengths(lengths), "samples": samples, "seed": seed, "template": template,
                     "dtype": dtype, "device": device, "chunk": chunk, "batch_tokens": batch_tokens},
            "analysis": {"effective_length_bar_fraction": effective_length_bar}, "system_prompt": system_prompt,
            "corpus": None if corpus is None else str(corpus), "squad": None if squad is None else str(squad),
            "hotpotqa": None if hotpotqa is None else str(hotpotqa), "trust_remote_code": trust_remote_code,
            "log_prompts": log_prompts}
    study = kind.complete(validate(kind.onto_models(data, model_args, gen_args), kinds(), "longarch eval"),
                          "longarch eval")
    _run(kind(study), out or Path("runs") / name, "local", None, None, retries, force)


def _check_bar(effective_length_bar: float, threshold: str | None) -> None:
    """eval's --effective-length-bar: a fraction; the renamed --threshold refused with its new name."""
    if threshold is not None:
        raise ValueError(f"--threshold was renamed: use --effective-length-bar, a fraction "
                         f"(85.6 -> 0.856), not {threshold}")
    if not 0 <= effective_length_bar <= 1:
        hint = f" (a percent? {effective_length_bar:g}% is {effective_length_bar / 100:g})" \
            if 1 < effective_length_bar <= 100 else ""
        raise ValueError(f"--effective-length-bar is an accuracy as a fraction in [0, 1], not "
                         f"{effective_length_bar:g}{hint}")


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "unknown until some of it has run"
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"


JsonFlag = Annotated[bool, typer.Option("--json", help="print one JSON document to standard output instead of the tables")]


def print_json(document) -> None:
    """What --json prints: one JSON document on standard output and nothing else there (notes
    and warnings go to standard error)."""
    import json

    typer.echo(json.dumps(document, indent=2, default=str))


def _note(message: str, as_json: bool) -> None:
    """A note beside the tables (yellow, on standard output); under --json, a line on standard error."""
    if as_json:
        errors.print(message, markup=False, highlight=False, soft_wrap=True)
    else:
        console.print(f"[yellow]{message}[/yellow]")


def _counts(state, cells) -> dict:
    """The counts of `cells` in a grid state, as plan's table, status and --json show them."""
    planned, stored, failed, remaining = state.counts(cells)
    return {"planned": planned, "stored": stored, "failed": failed, "remaining": remaining,
            "skipped": len(state.skipped_of(cells))}


def _grid_rows(kind, state) -> list[dict]:
    """The grid's rows: what each holds ("cells") and its counts."""
    return [{"cells": what, **_counts(state, cells)} for what, cells in kind.grid_rows(state)]


@app.command("plan")
@clean_errors
def plan_command(study: StudyArg = "quick",
                 out: Annotated[Optional[Path], typer.Option(help="output directory [default: runs/<study>]")] = None,
                 corpus: Annotated[Optional[Path], typer.Option(help="as for run")] = None,
                 squad: Annotated[Optional[Path], typer.Option(help="as for run")] = None,
                 hotpotqa: Annotated[Optional[Path], typer.Option(help="as for run")] = None,
                 trust_remote_code: Annotated[bool, typer.Option("--trust-remote-code", help="as for run")] = False,
                 scale: Annotated[Optional[int], typer.Option(help="as for run", min=1)] = None,
                 plugin: Annotated[Optional[list[Path]], typer.Option(help="as for run")] = None,
                 model_args: ModelArgs = None, gen_args: GenArgs = None, system_prompt: SystemPrompt = None,
                 as_json: JsonFlag = False):
    """Print a study's grid: what is stored, what remains, and what the rest will cost."""
    from .kinds import kind_of
    from .study.directory import DirectoryRefused, claim
    from .study.grid import grid_state

    loaded = _load(study, corpus, squad, hotpotqa, trust_remote_code, scale, plugin,
                   _pretrained_options(model_args, gen_args, system_prompt, False))
    target = out or Path("runs") / loaded.name
    _check_out(target)  # before the store in it is read
    kind = kind_of(loaded)(loaded)
    plan = kind.plan()
    for note in plan.notes:
        _note(note, as_json)
    refused = None
    try:
        claim(target, kind, plan.meta.get("config"))
    except DirectoryRefused as error:  # plan only reads; say what `run` would do
        refused = str(error)
        _note(f"`longarch run` would refuse this directory: {refused}", as_json)
    state = grid_state(plan, target)
    document = {"study": loaded.name, "out": str(target), "rows": _grid_rows(kind, state),
                "remaining_cost": kind.cost(state, target), "trains": bool(state.of("train")),
                "notes": list(plan.notes), "run_refused": refused}
    if as_json:
        print_json(document)
    else:
        _print_plan(document)


def _print_plan(plan: dict) -> None:
    """plan's document as its table and a line on the cost of what remains."""
    table = Table(title=f"{plan['study']}: the grid against {plan['out']}")
    for column in ("cells", "planned", "stored", "failed", "remaining"):
        table.add_column(column, justify="left" if column == "cells" else "right")
    for row in plan["rows"]:
        table.add_row(row["cells"], *(str(row[c]) for c in ("planned", "stored", "failed", "remaining")))
    print_table(table)
    estimate = plan["remaining_cost"]
    training = f"{estimate['train_tokens']:,} training tokens, " if plan["trains"] else ""
    if estimate["train_tokens_max"] > estimate["train_tokens"]:  # `until` or a sweep may add
        training = (f"{estimate['train_tokens']:,} training tokens as planned (up to "
                    f"{estimate['train_tokens_max']:,} if training runs to until.max_steps plus its anneal and "
                    "sweeps try every rate), ")
    console.print(f"remaining: {training}{estimate['eval_tokens']:,} evaluation "
                  f"tokens; estimated time at the rates of the work stored so far: {_duration(estimate['seconds'])}")


@app.command()
@clean_errors
def status(directory: Annotated[Path, typer.Argument(help="a study's output directory")],
           as_json: JsonFlag = False):
    """Done, running, failed and skipped cells of a study directory, with each failure's last error."""
    from pydantic import ValidationError

    from .kinds import kind_of, stored_study
    from .study.grid import grid_state
    from .study.schema import ConfigError, one_line
    from .study.store import for_reading

    if not (directory / "results.sqlite").is_file():
        fail(f"{directory} has no results.sqlite; run a study into it first (longarch run STUDY --out {directory})")
    with for_reading(directory / "results.sqlite") as store:
        config = store.meta().get("config")
    try:
        study = stored_study(config, directory)
    except ValidationError as error:  # e.g. a plugin it records that is no longer there
        raise ConfigError(one_line(error, f"{directory}: the stored study")) from None
    except Exception:
        raise ConfigError(f"{directory}: the stored study configuration is missing or unreadable") from None
    kind = kind_of(study)(study)
    document = _status_document(study.name, directory, kind, grid_state(kind.plan(), directory))
    if as_json:
        print_json(document)
    else:
        _print_status(document)


def _status_document(name: str, directory: Path, kind, state) -> dict:
    """What status shows: the counts of models (none for a study that trains nothing) and cells,
    the grid's rows, why cells were skipped, the cells in flight and the failures."""
    trained, cells = state.of("train"), state.of("eval")
    models = {**_counts(state, trained), "diverged": sum(c.id in state.diverged for c in trained)} if trained else None
    reasons: dict[str, int] = {}
    for cell in state.skipped_of(cells):  # a line per reason: a diverged model skips all its cells
        reasons[state.skipped[cell.id]["reason"]] = reasons.get(state.skipped[cell.id]["reason"], 0) + 1
    counts = _counts(state, cells)
    return {"study": name, "directory": str(directory), "run_pid": state.holder, "models": models,
            "cells": {**counts, "not_yet_run": counts["remaining"] - counts["failed"]},
            "rows": _grid_rows(kind, state),
            "skipped": [{"reason": reason, "cells": count} for reason, count in reasons.items()],
            "running": list(state.running),
            "failures": [state.failures[c.id] for c in state.failed(trained) + state.failed(cells)],
            "log": str(directory / "run.log")}


def _print_status(status: dict) -> None:
    """status's document as lines and a table of the failures."""
    running = f"running now (pid {status['run_pid']})" if status["run_pid"] else "no run in progress"
    console.print(f"[bold]{status['study']}[/bold] in {status['directory']}: {running}")
    models, cells = status["models"], status["cells"]
    if models:  # a pretrained study trains nothing
        console.print(f"  models: {models['stored']} of {models['planned']} trained"
                      + (f" ({models['diverged']} diverged)" if models["diverged"] else "")
                      + f", {models['failed']} failed")
    console.print(f"  cells:  {cells['stored']} of {cells['planned']} stored, {cells['failed']} failed, "
                  + (f"{cells['skipped']} skipped, " if cells["skipped"] else "") + f"{cells['not_yet_run']} not yet run")
    for skipped in status["skipped"]:
        console.print(f"    skipped {skipped['cells']} (not run, not retried): {skipped['reason']}", markup=False)
    if status["running"]:
        console.print(f"  in flight (handed to the workers, running or queued): {len(status['running'])}")
    for row in status["running"]:
        console.print(f"    {row['what']}", markup=False)
    if status["failures"]:
        table = Table(title="failed cells (the last error of each; `longarch run` again retries them)")
        for column in ("cell", "attempts", "last error"):
            table.add_column(column)
        for row in status["failures"]:
            table.add_row(row["what"], str(row["attempts"]), row["error"])
        print_table(table)
    console.print(f"  log: {status['log']}")


@app.command()
@clean_errors
def report(directory: Annotated[Path, typer.Argument(help="a study's output directory")],
           out: Annotated[Optional[Path], typer.Option(help="write the report here instead (for a study you cannot write to)")] = None):
    """Rebuild report.md, report.html and summary.json from a study's results database."""
    import os

    if not (directory / "results.sqlite").is_file():
        fail(f"{directory} has no results.sqlite; run a study into it first (longarch run STUDY --out {directory})")
    from .kinds import build_report, summary_table

    if out is None and not os.access(directory, os.W_OK):
        fail(f"{directory} is read-only: the report cannot be written there; write it elsewhere with --out DIR")
    if out is not None:
        _report_out(out, "the report")
    paths = build_report(directory, out)
    console.print(summary_table(directory))
    console.print(f"report: {paths['md']}  and  {paths['html']}")


@app.command("export")
@clean_errors
def export_command(directory: Annotated[Path, typer.Argument(help="a study's output directory")],
                   format: Annotated[Optional[str], typer.Option("--format", help="csv, jsonl or parquet (parquet needs pyarrow) [default: csv]")] = None,
                   out: Annotated[Optional[str], typer.Option(help="the file to write, '-' for standard output (csv, jsonl) [default: DIR/export.<format>]; with --lm-eval a folder [default: DIR/lm-eval]")] = None,
                   lm_eval: Annotated[bool, typer.Option("--lm-eval", help="pretrained studies: write lm-evaluation-harness's results JSON instead, one <out>/<model>/results.json per model")] = False):
    """Write a study's results as one table, one row per evaluated sample (columns: see README)."""
    from .export import check_format, destination, export

    if lm_eval:
        return _export_lm_eval(directory, format, out)
    format = format or "csv"
    check_format(format, out)
    if not (directory / "results.sqlite").is_file():
        fail(f"{directory} has no results.sqlite; run a study into it first (longarch run STUDY --out {directory})")
    dest = destination(directory, format, out)
    try:
        count, notes = export(directory, format, dest)
    except BrokenPipeError:  # `longarch export DIR --out - | head`: the reader took what it wanted
        _silence_stdout()
        raise typer.Exit(0) from None
    for note in notes:
        errors.print(f"warning: {note}", markup=False, highlight=False, soft_wrap=True)
    if dest is not None:  # on standard output the table is all there is
        console.print(f"exported {count:,} rows (one per sample) to {dest}", markup=False, highlight=False,
                      soft_wrap=True)


def _export_lm_eval(directory: Path, format: str | None, out: str | None) -> None:
    """`export --lm-eval`: lm-eval's results JSON, one file per model (pretrained/lm_eval.py)."""
    from .kinds import stored_kind

    if format is not None:
        raise ValueError("--format is for the per-sample table; --lm-eval writes lm-eval's results JSON")
    if out == "-":
        raise ValueError("--lm-eval writes a folder (one results.json per model); give --out DIR")
    if not (directory / "results.sqlite").is_file():
        fail(f"{directory} has no results.sqlite; run a study into it first (longarch run STUDY --out {directory})")
    kind = stored_kind(directory)
    if getattr(kind, "lm_eval", None) is None:
        raise ValueError(f"{directory} holds a {kind.kind} study; --lm-eval is for pretrained studies")
    paths = kind.lm_eval(directory, None if out is None else Path(out))
    if not paths:
        raise ValueError(f"{directory} holds no stored cells yet; nothing to export")
    for path in paths:
        console.print(f"wrote {path}", markup=False, highlight=False, soft_wrap=True)


def _silence_stdout() -> None:
    """Point standard output at the null device, so that Python's flush at exit does not raise
    again on a pipe whose reader has gone."""
    import os

    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, ValueError):  # not a real file (a test's captured output)
        pass


@app.command()
@clean_errors
def compare(directories: Annotated[list[Path], typer.Argument(help="study output directories (two or more, of any kind)")],
            out: Annotated[Path, typer.Option(help="where the comparison's report.md, report.html, summary.json and figures go")] = Path("runs") / "compare"):
    """Put several studies in one report: each task's accuracy by length side by side, every model
    labelled with its study (compare your architecture with a stored baseline without retraining it)."""
    from .analysis.compare import compare as build
    from .analysis.report import write

    for directory in directories:
        if not (directory / "results.sqlite").is_file():
            fail(f"{directory} has no results.sqlite; compare takes study directories (longarch run STUDY --out DIR)")
    if len({d.resolve() for d in directories}) < 2:
        fail("compare takes two or more different study directories")
    if (out / "results.sqlite").exists():
        fail(f"--out {out} is a study directory: its own report would be overwritten; give the comparison its own")
    _report_out(out, "the comparison")
    out.mkdir(parents=True, exist_ok=True)
    report = build(directories, out)
    paths = write(out, report)
    print_table(report.table)
    console.print(f"report: {paths['md']}  and  {paths['html']}")


@app.command("models")
@clean_errors
def list_models(length: Annotated[int, typer.Option(help="sequence length for the state size column")] = 4096,
                plugin: Annotated[Optional[list[str]], typer.Option(help="a Python file or module of mixers and architectures to list too; repeatable")] = None,
                as_json: JsonFlag = False):
    """List the registered architectures (and a plugin's)."""
    from . import mixers, models
    from .mixers import plugins

    for ref in plugin or ():
        plugins.load(plugins.absolute(ref))
    rows = []
    for name in models.names():
        with __import__("torch").device("meta"):
            model = models.build(name, vocab_size=64)
        rows.append({"name": name, "family": models.family(name), "layers": mixers.shown(model.config.layers),
                     "params": model.num_params(), "state_floats": model.state_floats(length),
                     "state_growth": "grows" if model.state_floats(2 * length) > model.state_floats(length) else "bounded",
                     "description": models.spec(name).description})
    if as_json:
        print_json({"d_model": 64, "vocab_size": 64, "length": length, "models": rows})
        return
    table = Table(title="architectures (parameters at d_model 64, vocabulary 64)")
    for column in ("name", "family", "layers", "params", f"state floats at {length}"):
        table.add_column(column, overflow="fold")
    table.add_column("description", ratio=1)
    for row in rows:
        table.add_row(row["name"], row["family"] or "(per model)", row["layers"], f"{row['params']:,}",
                      f"{row['state_floats']:,} ({row['state_growth']})", row["description"])
    print_table(table)


@app.command("check")
def check_command(target: Annotated[str, typer.Argument(help="a mixer (mamba2, or its letter M), an architecture (its mixers), or a plugin: file.py, file.py:Class, package.module[:Object]")],
                  option: Annotated[Optional[list[str]], typer.Option(help="KEY=VALUE: a mixer option for the checks (n_heads=2, chunk_size=5, ...); repeatable")] = None,
                  d_model: Annotated[int, typer.Option(help="the width the mixers are checked at", min=2)] = 16,
                  only: Annotated[Optional[list[str]], typer.Option(help="run only this check (paths, streaming, state, gradients, causal, batch, dtype-device); repeatable")] = None):
    """Check mixers against the contract (mixers/base.py): fast, step-by-step and reference paths
    at odd chunk sizes in float64, streaming, gradients against the reference (the initial state's
    too), causality, batch independence, dtype and device. Exit 1 when a check fails."""
    from rich.markup import escape

    from .mixers import checks, plugins
    from .models.lm import check_sizes

    try:
        targets = plugins.mixers_named(target)
        options = parse_knobs(option or [], "--option")
        unknown = sorted(set(only or []) - set(checks.CHECKS))
        if unknown:
            raise ValueError(f"--only {unknown[0]}: no such check; the checks are {', '.join(checks.CHECKS)}")
        check_sizes(options)  # as in a study: a size that is not positive is bad input, not a failed check
        for spec in targets:  # so is a value the mixer's config refuses
            checks.Subject(spec.config, spec.mixer, {**checks.OPTIONS, **options}, d_model).config()
        taken = set().union(*(checks.Subject(spec.config, spec.mixer).fields() for spec in targets))
        if set(options) - taken:
            raise ValueError(f"--option {sorted(set(options) - taken)[0]}: no mixer checked has it "
                             f"(their options: {', '.join(sorted(taken))})")
    except (ValueError, TypeError) as error:
        fail(str(error).splitlines()[0])
    table = Table(title=f"the mixer contract: {target}")
    for column in ("mixer", "check", "result", "detail"):
        table.add_column(column, overflow="fold")
    failures = []
    for spec in targets:
        for outcome in checks.run(spec.config, spec.mixer, {**checks.OPTIONS, **options}, d_model=d_model, only=only):
            table.add_row(spec.name, outcome.name, "pass" if outcome.passed else "[red]FAIL[/red]", escape(outcome.detail))
            if not outcome.passed:
                detail = outcome.detail if outcome.detail.startswith(f"{outcome.name}:") else f"{outcome.name}: {outcome.detail}"
                failures.append(f"FAIL {spec.name} {detail}")
    print_table(table)
    for line in failures:
        errors.print(line, markup=False, highlight=False, soft_wrap=True)
    if failures:
        raise typer.Exit(1)
    ran = f"{len(only)} of {len(checks.CHECKS)} checks" if only else "every check"
    console.print(f"{ran} passed ({len(targets)} mixer{'s' if len(targets) > 1 else ''})")


@app.command("tasks")
def list_tasks(text_tasks: Annotated[bool, typer.Option("--text", help="only the RULER-style text tasks of pretrained studies")] = False,
               as_json: JsonFlag = False):
    """List the registered tasks and their knobs: the token tasks of controlled studies, then the
    text tasks of pretrained ones."""
    rows = _task_rows(text_tasks)
    if as_json:
        print_json({"tasks": rows})
        return
    if not text_tasks:
        table = Table(title="token tasks (controlled studies)")
        table.add_column("name", no_wrap=True)
        for column in ("minimum length", "knobs (defaults)", "description"):
            table.add_column(column)
        for row in (r for r in rows if r["family"] == "tokens"):
            table.add_row(row["name"], str(row["min_length"]), _knobs(row["knobs"]), row["description"])
        print_table(table)
    table = Table(title="text tasks (pretrained studies; 'ruler' in --tasks stands for all 13)")
    for column in ("name", "knobs (defaults)", "description"):
        table.add_column(column, no_wrap=column == "name")
    for row in (r for r in rows if r["family"] == "text"):
        table.add_row(row["name"], _knobs(row["knobs"]), row["description"])
    print_table(table)


def _task_rows(text_only: bool) -> list[dict]:
    """Each registered task: name, family (tokens or text), minimum length (token tasks), knobs
    with their defaults, description; the token tasks first, unless only the text ones."""
    import dataclasses

    from . import tasks

    rows = []
    for name in [] if text_only else tasks.names("tokens"):
        task = tasks.get(name)
        rows.append({"name": name, "family": "tokens", "min_length": task.min_length,
                     "knobs": {f.name: getattr(task, f.name) for f in dataclasses.fields(task)},
                     "description": tasks.describe(name)})
    for name in tasks.names("text"):
        knobs = {f.name: f.default for f in dataclasses.fields(tasks.task_class(name))
                 if f.default is not dataclasses.MISSING}
        rows.append({"name": name, "family": "text", "min_length": None, "knobs": knobs,
                     "description": tasks.describe(name)})
    return rows


def _knobs(knobs: dict) -> str:
    return ", ".join(f"{key}={value}" for key, value in knobs.items())


@app.command()
@clean_errors
def sample(task: Annotated[str, typer.Argument(help="task name (see `longarch tasks`): a token task, or a text task "
                                                    "(niah_single_1, vt, cwe, qa_1, ...), which needs --tokenizer")],
           length: Annotated[int, typer.Option(help="total length: symbols for a token task; for a text task, prompt "
                                                    "tokens + the task's generation budget at most")],
           depth: Annotated[Optional[float], typer.Option(help="needle depth in percent [default: random]")] = None,
           seed: Annotated[int, typer.Option()] = 0,
           knob: Annotated[Optional[list[str]], typer.Option(help="task knob KEY=VALUE, repeatable")] = None,
           corpus: Annotated[Optional[Path], typer.Option(help="UTF-8 text for a text haystack (sets the corpus knob)")] = None,
           tokenizer: Annotated[Optional[str], typer.Option(help="text tasks: the tokenizer that fits the prompt (a "
                                                                 "local folder, e.g. a checkpoint's)")] = None,
           fit: Annotated[str, typer.Option(help="text tasks: exact (as close to the length as whole units allow, "
                                                 "at least --fit-tolerance of it) or ruler (RULER's own procedure: "
                                                 "binary search, then fixed steps down; fills can be far under)")] = "exact",
           fit_tolerance: Annotated[float, typer.Option(help="text tasks, --fit exact: refuse a fit under this share "
                                                             "of the length")] = 0.95):
    """Print one generated sample readably. A token task: its symbols, those where an answer is due
    highlighted. A text task (with --tokenizer): the prompt fitted to --length with that
    tokenizer, its token count and fill (prompt + generation budget over the length), and the
    answers; the same sample a pretrained study's cell at that length and seed starts with
    (a study's own seed also depends on the length and depth)."""
    from . import tasks

    knobs = parse_knobs(knob or [])
    if corpus is not None:
        knobs["corpus"] = str(corpus)
    if task in tasks.names("text"):
        return _sample_text(task, length, depth, seed, knobs, tokenizer, fit, fit_tolerance)
    if tokenizer is not None or fit != "exact" or fit_tolerance != 0.95:
        tasks.get(task)  # an unknown name says so first
        raise ValueError(f"--tokenizer, --fit and --fit-tolerance are for text tasks; {task!r} is a token task")
    _sample_tokens(task, length, depth, seed, knobs)


def _sample_tokens(task: str, length: int, depth: float | None, seed: int, knobs: dict) -> None:
    from . import tasks
    from .study import limits

    chosen = tasks.get(task, family=None, **knobs)
    limits.check_memory(f"--length {length:,}: one sample shown ({limits.SHOWN_SYMBOL_BYTES} bytes a symbol)",
                        length * limits.SHOWN_SYMBOL_BYTES)
    samples = chosen.generate(length=length, n=1, seed=seed, depth=depth)
    symbols = [chosen.symbol(int(t)) for t in samples.tokens[0]]
    marked = set() if samples.answer_positions is None else {int(i) for i in samples.answer_positions[0]}
    shown = [f"[bold reverse]{s}[/]" if i in marked else s for i, s in enumerate(symbols)]
    console.print(f"[bold]{task}[/bold] length={samples.length} seed={seed} knobs={chosen.knobs}")
    for key, values in samples.meta.items():
        value = values[0]
        console.print(f"  {key}: {value:g}" if isinstance(value, float) else f"  {key}: {value}", markup=False)
    console.print(" ".join(shown))
    console.print("answer: " + " ".join(chosen.symbol(int(t)) for t in samples.answers[0]))
    unknown = getattr(chosen, "unknown_share", lambda _: None)(samples)
    if unknown is not None:  # a text haystack: how much of it is the one unknown-word symbol
        console.print(f"unknown words: {100 * unknown:.1f}% of the haystack")


def load_tokenizer(target: str):
    """A tokenizer from a local folder (or a hub id, where the hub is reachable); a path that does
    not exist or holds no tokenizer is a ValueError of one line."""
    from transformers import AutoTokenizer

    local = Path(target).expanduser()
    if target.startswith(("/", ".", "~")) or local.exists():
        if not local.is_dir():
            raise ValueError(f"--tokenizer {target}: " + ("not a folder" if local.exists() else "does not exist"))
    try:
        return AutoTokenizer.from_pretrained(str(local) if local.is_dir() else target)
    except (OSError, ValueError, TypeError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(f"--tokenizer {target}: no tokenizer could be loaded from it ({first})") from None


def _sample_text(task: str, length: int, depth: float | None, seed: int, knobs: dict, tokenizer: str | None,
                 fit: str, fit_tolerance: float) -> None:
    """One text task's sample, fitted as a pretrained study fits it (eval.fit, eval.fit_tolerance)."""
    from . import tasks
    from .study import limits
    from .tasks import text

    if tokenizer is None:
        raise ValueError(f"{task} is a text task: give the tokenizer that fits its prompt with --tokenizer PATH")
    if fit not in text.FITS:
        raise ValueError(f"--fit must be exact or ruler, not {fit!r}")
    if not 0 < fit_tolerance <= 1:
        raise ValueError(f"--fit-tolerance must be in (0, 1], not {fit_tolerance:g}")
    if fit == "ruler" and fit_tolerance != 0.95:
        raise ValueError("--fit-tolerance applies to --fit exact only (ruler keeps whatever fill RULER's procedure gives)")
    if depth is not None:
        knobs["depth"] = depth
    chosen = tasks.get(task, family="text", **knobs)
    if length < 1:
        raise ValueError(f"--length must be positive, not {length}")
    limits.check_memory(f"--length {length:,}: one prompt shown ({limits.SHOWN_SYMBOL_BYTES} bytes a token)",
                        length * limits.SHOWN_SYMBOL_BYTES)
    loaded = load_tokenizer(tokenizer)
    s = text.fit_samples(chosen, loaded, length, 1, seed, fit, fit_tolerance)[0]
    meta = s.metadata
    total = meta["total_tokens"]
    console.print(f"[bold]{task}[/bold] length={length} seed={seed} fit={fit} tokenizer={tokenizer}", highlight=False)
    console.print(f"  tokens: {meta['prompt_tokens']:,} prompt + {s.max_new_tokens} generation budget = {total:,} "
                  f"of {length:,} (fill {total / length:.1%})", markup=False, highlight=False)
    if fit == "ruler":
        console.print(f"  RULER's haystack: {meta['ruler_units']} units (the cell's size {meta['ruler_start']}, "
                      f"step {meta['ruler_step']})", markup=False, highlight=False)
    for key in ("haystack_units", "depths", "keys", "partial_words", "golden_documents", "documents"):
        if key in meta:
            console.print(f"  {key}: {meta[key]}", markup=False, highlight=False)
    console.print(s.prompt, markup=False, highlight=False, soft_wrap=True)
    console.print("answers: " + " | ".join(s.answers), markup=False, highlight=False, soft_wrap=True)


@app.command()
@clean_errors
def bench(names: Annotated[Optional[list[str]], typer.Argument(help="architectures [default: all; with --against hf: mamba mamba2 hawk transformer]")] = None,
          lengths: Annotated[str, typer.Option(help="comma-separated sequence lengths, e.g. 1K,4K,16K,64K")] = "1K,4K",
          batch: Annotated[Optional[int], typer.Option(help="batch size [default: 32768 tokens / length]", min=1)] = None,
          d_model: Annotated[int, typer.Option(help="model width", min=1)] = 128,
          mode: Annotated[str, typer.Option(help="fwd, fwd+bwd or both")] = "both",
          repeats: Annotated[Optional[int], typer.Option(help="timed calls per cell after the first: the best is kept; with --against hf the two sides take turns and the median is printed with min-max [default: 5 with --against hf, else 2]", min=1)] = None,
          against: Annotated[Optional[str], typer.Option(help="'hf': one layer of ours against the same layer in transformers")] = None,
          json_out: Annotated[Optional[Path], typer.Option("--json", help="also write the measurements to this JSON file")] = None):
    """Tokens/s, peak memory and FLOP/s per architecture on this machine (CPU)."""
    import dataclasses
    import json

    import torch

    from . import bench as benchmark
    from . import models

    if against not in (None, "hf"):
        raise ValueError(f"--against accepts only 'hf', got {against!r}")
    modes = list(benchmark.MODES) if mode == "both" else [mode]
    if any(m not in benchmark.MODES for m in modes):
        raise ValueError(f"--mode must be fwd, fwd+bwd or both, got {mode!r}")
    if against == "hf":
        names = names or list(benchmark.ARCH_LAYERS)
        unmatched = [n for n in names if n not in benchmark.ARCH_LAYERS]
        if unmatched:
            raise ValueError(f"transformers has no matching layer for {', '.join(unmatched)}; "
                             f"--against hf compares {', '.join(benchmark.ARCH_LAYERS)}")
    else:
        names = names or models.names()
        for name in names:
            models.spec(name)  # unknown names fail here, before any measuring
    parsed = benchmark.parse_lengths(lengths)
    benchmark.check_memory(parsed, batch, d_model)
    torch.set_flush_denormal(True)
    repeats = repeats or (5 if against == "hf" else 2)

    table = Table(title=f"longarch bench: d_model {d_model}, {torch.get_num_threads()} threads, "
                        f"{benchmark.timing(repeats, against)}")
    for column in benchmark.columns(against):
        table.add_column(column, justify="left" if column in ("architecture", "layer", "mode") else "right")
    if console.is_terminal:  # the table grows in place as cells finish
        from rich.live import Live

        with Live(table, console=console, auto_refresh=False) as live:
            results, peak = benchmark.run_bench(names, parsed, batch, d_model, modes, repeats, against,
                                                on_row=lambda row: (table.add_row(*row), live.refresh()))
    else:  # piped: one line per finished cell on stderr, the table at the end
        def on_row(row):
            table.add_row(*row)
            errors.print("measured " + " ".join(row[:4]), markup=False, highlight=False)
        results, peak = benchmark.run_bench(names, parsed, batch, d_model, modes, repeats, against, on_row=on_row)
        print_table(table)
    console.print()
    console.print(f"fp32 matmul peak of this machine: {peak / 1e9:,.1f} GFLOP/s (1024 x 1024, best of 10)")
    if json_out:
        json_out.write_text(json.dumps({"d_model": d_model, "threads": torch.get_num_threads(),
                                        "matmul_peak_flops": peak,
                                        "measurements": [dataclasses.asdict(m) for m in results]}, indent=1))
        console.print(f"measurements: {json_out}")


if __name__ == "__main__":
    app()
