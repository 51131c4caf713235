"""Before/after: issue 24's benchmarks run on two revisions of longarch, side by side, in one run.

Each revision gets a temporary `git worktree add --detach` (removed at the end, also on an
error, Ctrl-C or SIGTERM); `--after` defaults to the working tree of the repository this
script is in, uncommitted changes included. Every benchmark runs as a subprocess with
PYTHONPATH=<side>/src (so that side's longarch is imported; checked before anything runs) and
OMP_NUM_THREADS=1, the rounds taking turns: before, after, before, after, ... so that a change
in a shared machine's load falls on both sides. Benchmark scripts (benchmarks/scaling.py,
benchmarks/long_stream.py) are always this checkout's, with each side's library under them, so
only the library differs; `longarch bench` is each side's own command (`python -m longarch.cli`).

What is measured (issue 24's targets; BENCHMARKS below lists the exact commands):

- mamba2-layer-vs-hf, hawk-layer-vs-hf: one layer against `transformers`' layer at L = 4K,
  batch 8, d_model 128, fwd and fwd+bwd: our tok/s, the speed-up over transformers, peak MiB of
  both and ours over theirs.
- models-4k: Mamba, Jamba, RWKV-6 and Mamba-2 models, fwd+bwd at 4K, batch 8: tok/s, peak MiB.
  One round unless --rounds is given (before the change Mamba alone needs about 15 GB).
- scaling: forward tok/s at 1K and 16K, their ratio (near 1: linear in length), peak MiB.
- mamba2-256k: one Mamba-2 model's forward over 256K tokens at batch 1: tok/s and peak MiB.
- long-stream: 256K tokens streamed through Mamba-2, GLA and RetNet in 4K pieces: start and end
  tok/s, end/start, peak RSS.

How to read it: per benchmark, a table with each measure's median [min-max] over the rounds
of each side and after/before, the ratio of the medians. For tok/s and speed-ups above 1 is
better; for MiB below 1 is better. A side that fails (a flag or architecture the old code lacks,
out of memory) shows "failed: <its last stderr line>" and is not run again for that benchmark.
Timings come from each side's own code: an older `longarch bench` kept the best of its timed
calls where a newer one takes the median of alternated pairs, which favours the older side.
Machines here are shared and noisy: read ratios from one run, not absolute figures. --json
keeps everything (revisions and their commits, the machine, every round's values and output).

    .venv/bin/python benchmarks/compare_revisions.py --before REV [--after REV] [--rounds 3]
        [--json compare.json] [--markdown compare.md] [--only scaling long-stream] [--quick]

--quick runs every benchmark at tiny sizes (lengths 256-512, batch 1-2, d_model 32, 8192
tokens), to test the tool, not to measure.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import math
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Callable, Iterator, Optional

from rich.console import Console
from rich.markup import escape
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "benchmarks"
CLI = ["-m", "longarch.cli", "bench"]
SIDES = ("before", "after")
DEFAULT_ROUNDS = 3

Values = dict[str, Optional[float]]


@dataclass
class Benchmark:
    name: str
    argv: Callable[[bool, Path], list[str]]  # (quick, JSON path) -> arguments after `python`
    extract: Callable[[dict], Values]         # the subprocess's JSON -> {measure: value}
    rounds: int | None = None                 # this entry's rounds unless --rounds is given


@dataclass
class Side:
    label: str    # before or after
    rev: str      # as given, or "working tree"
    commit: str
    root: Path    # the checkout whose src/ is imported
    dirty: bool = False


# ---------------------------------------------------------------------------------------------
# Reading each benchmark's JSON


def _mib(nbytes: float | None) -> float | None:
    return None if nbytes is None else nbytes / 2 ** 20


def _rate(m: dict) -> float | None:
    """Tokens/s of one `longarch bench` measurement as that side's bench reports it."""
    if m.get("error") or not m.get("seconds"):
        return None
    return m["batch"] * m["length"] / m["seconds"]


def _speedup(ours: dict, theirs: dict) -> float | None:
    """Their time over ours: the median over alternated pairs where both sides list their timed
    calls (newer bench), else the ratio of the reported times (older bench: best of each)."""
    if ours.get("error") or theirs.get("error") or not ours.get("seconds"):
        return None
    pairs = list(zip(ours.get("times") or [], theirs.get("times") or []))
    if pairs and len(ours["times"]) == len(theirs["times"]):
        return statistics.median(t / o for o, t in pairs)
    return theirs["seconds"] / ours["seconds"]


def layer_vs_hf(layer: str) -> Callable[[dict], Values]:
    """Measures of `longarch bench NAME --against hf`, for the layer it names `layer`."""
    def extract(data: dict) -> Values:
        found = {(m["name"], m["mode"]): m for m in data["measurements"]}
        values: Values = {}
        for mode in ("fwd", "fwd+bwd"):
            ours, theirs = found.get((f"{layer} (longarch)", mode)), found.get((f"{layer} (transformers)", mode))
            if ours is None or theirs is None:
                continue
            our_mib, their_mib = _mib(ours.get("peak_bytes")), _mib(theirs.get("peak_bytes"))
            values[f"longarch tok/s {mode}"] = _rate(ours)
            values[f"speed-up over transformers {mode}"] = _speedup(ours, theirs)
            values[f"longarch peak MiB {mode}"] = our_mib
            values[f"transformers peak MiB {mode}"] = their_mib
            values[f"peak / transformers' {mode}"] = our_mib / their_mib if our_mib and their_mib else None
        return values
    return extract


def architectures(data: dict) -> Values:
    """Measures of `longarch bench NAMES`: tok/s and peak MiB per architecture and mode."""
    values: Values = {}
    for m in data["measurements"]:
        values[f"{m['name']} tok/s {m['mode']}"] = _rate(m)
        values[f"{m['name']} peak MiB {m['mode']}"] = None if m.get("error") else _mib(m.get("peak_bytes"))
    return values


def _length(n: int) -> str:
    return f"{n // 1024}K" if n % 1024 == 0 else str(n)


def scaling(data: dict) -> Values:
    """Measures of benchmarks/scaling.py: tok/s and peak MiB per architecture and length, and
    the ratio of tok/s at its two ratio lengths where both were measured."""
    long, short = data["settings"]["ratio_lengths"]
    values: Values = {}
    for name, rows in data["architectures"].items():
        for row in rows:
            values[f"{name} tok/s L={_length(row['length'])}"] = row["tokens_per_s"]
        if data["ratios"].get(name) is not None:
            values[f"{name} tok/s {_length(long)}/{_length(short)}"] = data["ratios"][name]
        for row in rows:
            values[f"{name} peak MiB L={_length(row['length'])}"] = row["peak_mib"]
    return values


def long_stream(data: dict) -> Values:
    """Measures of benchmarks/long_stream.py per architecture."""
    values: Values = {}
    for r in data["results"]:
        values[f"{r['name']} start tok/s"] = r["first_tok_s"]
        values[f"{r['name']} end tok/s"] = r["last_tok_s"]
        values[f"{r['name']} end/start"] = r["last_over_first"]
        values[f"{r['name']} peak RSS MiB"] = r["peak_rss_mib"]
    return values


# ---------------------------------------------------------------------------------------------
# The benchmarks: issue 24's sizes, and tiny ones with --quick


def layer_argv(name: str) -> Callable[[bool, Path], list[str]]:
    def argv(quick: bool, out: Path) -> list[str]:
        size = (["--lengths", "256", "--batch", "2", "--d-model", "32", "--repeats", "1"] if quick else
                ["--lengths", "4K", "--batch", "8", "--d-model", "128", "--repeats", "3"])
        return [*CLI, name, "--against", "hf", "--mode", "both", *size, "--json", str(out)]
    return argv


def models_argv(quick: bool, out: Path) -> list[str]:
    size = ["--lengths", "256", "--batch", "1", "--d-model", "32"] if quick else \
        ["--lengths", "4K", "--batch", "8", "--d-model", "128"]
    return [*CLI, "mamba", "jamba", "rwkv6", "mamba2", *size, "--mode", "fwd+bwd", "--repeats", "1",
            "--json", str(out)]


def scaling_argv(quick: bool, out: Path) -> list[str]:
    size = ["--lengths", "256,512", "--ratio-lengths", "512,256", "--d-model", "32", "--repeats", "1"] if quick \
        else ["--lengths", "1K,16K", "--ratio-lengths", "16K,1K", "--d-model", "128"]
    return [str(SCRIPTS / "scaling.py"), "--archs", "sliding-window,griffin,transformer-alibi,transformer,mamba2",
            *size, "--json", str(out)]


def long_argv(quick: bool, out: Path) -> list[str]:
    """One Mamba-2 forward over 256K tokens at batch 1 (scaling.py warms up once at that length,
    then a first call and one timed call)."""
    size = ["--lengths", "512", "--d-model", "32"] if quick else ["--lengths", "256K", "--d-model", "128"]
    return [str(SCRIPTS / "scaling.py"), "--archs", "mamba2", "--batch", "1", "--repeats", "1", *size,
            "--json", str(out)]


def stream_argv(quick: bool, out: Path) -> list[str]:
    size = ["--tokens", "8192", "--piece", "1K", "--segment", "4K", "--d-model", "32"] if quick else \
        ["--tokens", "262144"]
    return [str(SCRIPTS / "long_stream.py"), *size, "--json", str(out)]


BENCHMARKS = [
    Benchmark("mamba2-layer-vs-hf", layer_argv("mamba2"), layer_vs_hf("mamba2")),
    Benchmark("hawk-layer-vs-hf", layer_argv("hawk"), layer_vs_hf("rglru")),
    Benchmark("models-4k", models_argv, architectures, rounds=1),
    Benchmark("scaling", scaling_argv, scaling),
    Benchmark("mamba2-256k", long_argv, scaling),
    Benchmark("long-stream", stream_argv, long_stream),
]


# ---------------------------------------------------------------------------------------------
# Revisions


def git(repo: Path, *args: str) -> str:
    proc = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"error: git {' '.join(args)}: {_last_line(proc.stderr)}")
    return proc.stdout.strip()


def _remove_worktree(repo: Path, path: Path) -> None:
    subprocess.run(["git", "-C", str(repo), "worktree", "remove", "--force", str(path)], capture_output=True)
    shutil.rmtree(path, ignore_errors=True)
    subprocess.run(["git", "-C", str(repo), "worktree", "prune"], capture_output=True)


@contextlib.contextmanager
def checkouts(repo: Path, revs: dict[str, str | None], work: Path) -> Iterator[list[Side]]:
    """A Side per label: a detached worktree of its revision under `work`, or (revision None)
    `repo`'s working tree. The worktrees are removed on leaving, however it is left."""
    made: list[Path] = []
    try:
        sides = []
        for label, rev in revs.items():
            if rev is None:
                dirty = bool(git(repo, "status", "--porcelain", "--untracked-files=no"))
                sides.append(Side(label, "working tree", git(repo, "rev-parse", "HEAD"), repo, dirty))
                continue
            commit = git(repo, "rev-parse", "--verify", f"{rev}^{{commit}}")
            path = work / label
            made.append(path)
            git(repo, "worktree", "add", "--detach", str(path), commit)
            sides.append(Side(label, rev, commit, path))
        yield sides
    finally:
        for path in made:
            _remove_worktree(repo, path)


def side_env(side: Side) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(side.root / "src"), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env.pop("PYTHONSTARTUP", None)
    return env


def check_import(side: Side, cwd: Path) -> None:
    """Refuse to measure a side whose subprocess would import longarch from elsewhere."""
    proc = subprocess.run([sys.executable, "-c", "import longarch; print(longarch.__file__)"],
                          env=side_env(side), cwd=cwd, capture_output=True, text=True)
    where = Path(proc.stdout.strip() or "/nonexistent").resolve()
    if proc.returncode or not where.is_relative_to((side.root / "src").resolve()):
        raise SystemExit(f"error: the {side.label} side ({side.rev}) imports longarch from {where}, "
                         f"not {side.root / 'src'}: {_last_line(proc.stderr)}")


# ---------------------------------------------------------------------------------------------
# Running


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "(no output)"


def run_once(bench: Benchmark, side: Side, quick: bool, work: Path, number: int,
             timeout: float | None) -> dict:
    """One subprocess of `bench` on `side`: its values, or why it failed."""
    out = work / f"{bench.name}-{side.label}-{number}.json"
    record = {"side": side.label, "round": number, "seconds": None, "returncode": None,
              "values": None, "error": None, "output": None}
    start = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, *bench.argv(quick, out)], cwd=work, env=side_env(side),
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        record.update(seconds=time.perf_counter() - start, error=f"failed: timed out after {timeout:g} s")
        return record
    record.update(seconds=time.perf_counter() - start, returncode=proc.returncode)
    if proc.returncode != 0 or not out.exists():
        record["error"] = "failed: " + _last_line(proc.stderr or proc.stdout)
        record["stderr_tail"] = proc.stderr.splitlines()[-20:]
        return record
    try:
        record["output"] = json.loads(out.read_text())
        record["values"] = bench.extract(record["output"])
    except (KeyError, TypeError, ValueError, ZeroDivisionError) as error:
        record["error"] = f"failed: reading its JSON: {type(error).__name__}: {error}"
    return record


def run_benchmark(bench: Benchmark, sides: list[Side], rounds: int, quick: bool, work: Path,
                  timeout: float | None, console: Console) -> dict:
    """`rounds` subprocesses per side, alternately; a side that failed is not run again."""
    records, failed = [], set()
    for number in range(rounds):
        for side in sides:
            if side.label in failed:
                continue
            console.print(f"{bench.name}: round {number + 1}/{rounds}, {side.label} ({side.commit[:10]}) ...",
                          highlight=False)
            record = run_once(bench, side, quick, work, number, timeout)
            records.append(record)
            console.print(f"  {record['seconds']:.1f} s" + (f", {escape(record['error'])}" if record["error"] else ""),
                          highlight=False)
            if record["error"]:
                failed.add(side.label)
    return {"argv": bench.argv(quick, Path("OUT.json")), "rounds": rounds, "runs": records,
            "measures": summarize(records)}


def _finite(value: object) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def summarize(records: list[dict]) -> list[dict]:
    """Per measure and side: the values over the rounds, their median, min and max (or why the
    side failed); and after/before, the ratio of the medians."""
    labels = list(dict.fromkeys(label for r in records if r["values"] for label in r["values"]))
    rows = []
    for label in labels or ["(run)"]:
        row: dict = {"measure": label}
        for side in SIDES:
            mine = [r for r in records if r["side"] == side]
            values = [r["values"].get(label) for r in mine if r["values"]]
            values = [v for v in values if _finite(v)]
            errors = [r["error"] for r in mine if r["error"]]
            row[side] = {"values": values, "median": statistics.median(values) if values else None,
                         "min": min(values, default=None), "max": max(values, default=None),
                         "failed": errors[-1] if errors and not values else None}
        before, after = row["before"]["median"], row["after"]["median"]
        row["ratio"] = after / before if before and after is not None else None
        rows.append(row)
    return rows


# ---------------------------------------------------------------------------------------------
# Showing


def _number(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.2f}"


def cell(summary: dict) -> str:
    """'12,345 [11,900-12,800]', 'failed: ...' or 'n/a'."""
    if summary["failed"]:
        return summary["failed"]
    if summary["median"] is None:
        return "n/a"
    middle = _number(summary["median"])
    if len(summary["values"]) == 1:
        return middle
    return f"{middle} [{_number(summary['min'])}-{_number(summary['max'])}]"


def _side_title(side: dict) -> str:
    return f"{side['rev']} ({side['commit'][:10]}{', uncommitted changes' if side['dirty'] else ''})"


def show(name: str, result: dict, revisions: dict, console: Console) -> None:
    table = Table(title=escape(f"{name}: median [min-max] of {result['rounds']} round(s); before "
                               f"{_side_title(revisions['before'])}, after {_side_title(revisions['after'])}"))
    table.add_column("measure")
    for column in ("before", "after", "after/before"):
        table.add_column(column, justify="right")
    for row in result["measures"]:
        ratio = "n/a" if row["ratio"] is None else f"{row['ratio']:.2f}"
        table.add_row(escape(row["measure"]), escape(cell(row["before"])), escape(cell(row["after"])), ratio)
    console.print(table)


def markdown(results: dict) -> str:
    """Every benchmark's table as one Markdown table, for the README."""
    rev = results["revisions"]
    lines = [f"Before: {_side_title(rev['before'])}; after: {_side_title(rev['after'])}; "
             f"{results['machine']['cpus']} CPUs, torch {results['machine']['torch']}, one thread; "
             "median [min-max] over rounds, alternated.", "",
             "| benchmark | measure | before | after | after/before |", "|---|---|--:|--:|--:|"]
    for name, result in results["benchmarks"].items():
        for row in result["measures"]:
            ratio = "n/a" if row["ratio"] is None else f"{row['ratio']:.2f}"
            cells = [cell(row[side]).replace("|", "/") for side in SIDES]
            lines.append(f"| {name} | {row['measure']} | {cells[0]} | {cells[1]} | {ratio} |")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# The command


def parse(argv: list[str] | None) -> argparse.Namespace:
    names = [b.name for b in BENCHMARKS]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", required=True, help="the older revision (any git revision)")
    parser.add_argument("--after", default=None, help="the newer revision [default: this working tree]")
    parser.add_argument("--rounds", type=int, default=None,
                        help=f"subprocesses per side and benchmark [default: {DEFAULT_ROUNDS}; models-4k: 1]")
    parser.add_argument("--json", type=Path, default=None, help="write everything here (after each benchmark)")
    parser.add_argument("--markdown", type=Path, default=None, help="write the tables as Markdown here")
    parser.add_argument("--only", nargs="+", choices=names, default=None, metavar="NAME",
                        help=f"run only these: {', '.join(names)}")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, to test the tool")
    parser.add_argument("--timeout", type=float, default=None, help="seconds one subprocess may take")
    args = parser.parse_args(argv)
    if args.rounds is not None and args.rounds < 1:
        parser.error("--rounds must be at least 1")
    return args


def _terminate(signum, frame):
    raise SystemExit(128 + signum)  # unwinds, so the worktrees are removed


def header(args: argparse.Namespace, sides: list[Side]) -> dict:
    return {"tool": "benchmarks/compare_revisions.py",
            "started": datetime.datetime.now().isoformat(timespec="seconds"), "quick": args.quick,
            "revisions": {s.label: {"rev": s.rev, "commit": s.commit, "dirty": s.dirty} for s in sides},
            "machine": {"cpus": os.cpu_count(), "usable_cpus": len(os.sched_getaffinity(0)),
                        "torch": metadata.version("torch"), "python": platform.python_version(),
                        "platform": platform.platform()},
            "environment": {"OMP_NUM_THREADS": "1", "PYTHONPATH": "<side>/src"},
            "benchmarks": {}}


def main(argv: list[str] | None = None) -> dict:
    args = parse(argv)
    signal.signal(signal.SIGTERM, _terminate)
    console = Console(width=None if sys.stdout.isatty() else 160)
    chosen = [b for b in BENCHMARKS if args.only is None or b.name in args.only]
    with tempfile.TemporaryDirectory(prefix="compare-revisions-") as tmp:
        work = Path(tmp)
        with checkouts(REPO, {"before": args.before, "after": args.after}, work) as sides:
            for side in sides:
                check_import(side, work)
            results = header(args, sides)
            for bench in chosen:
                rounds = args.rounds or bench.rounds or DEFAULT_ROUNDS
                result = run_benchmark(bench, sides, rounds, args.quick, work, args.timeout, console)
                results["benchmarks"][bench.name] = result
                show(bench.name, result, results["revisions"], console)
                if args.json is not None:
                    args.json.write_text(json.dumps(results, indent=1))
    if args.json is not None:
        console.print(f"wrote {args.json}")
    if args.markdown is not None:
        args.markdown.write_text(markdown(results))
        console.print(f"wrote {args.markdown}")
    return results


if __name__ == "__main__":
    main()
