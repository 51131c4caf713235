"""How every architecture's forward speed and memory scale with length, in one process.

For each architecture of the registry (or those chosen), a forward pass (eval mode, no
gradients) over random tokens at each length: tokens/s (best of the timed calls) and peak
memory (the rise of the process's peak resident set, as `longarch bench` measures it), on one
thread, plus the ratio of tokens/s at a long length to a short one (16K over 1K by default):
near 1 for a layer linear in length, falling with length for quadratic attention. A length
whose estimated memory exceeds the memory available now is skipped and marked so; the
estimate extrapolates the architecture's peak at its previous length, as the square of the
length unless its two previous peaks grew no faster than about linearly (then as L^1.5): at
small lengths fixed costs hide a quadratic term (ALiBi's dense bias grew 152 -> 877 -> 13,410
MiB over 1K -> 4K -> 16K, an exponent of 1.3 and then 1.9). Machines here are shared and
noisy: read the ratios from one run, not the absolute figures.

With `--chunk N` the same tokens are fed N at a time through the model's state, as the evaluation
feeds a prompt (`eval.chunk`, 1024 by default): the path a long evaluation takes. A model whose
state is bounded (recurrent mixers, sliding windows) then keeps both speed and memory flat in
length; in one call its activations grow with the length and fall out of the caches.

    .venv/bin/python benchmarks/scaling.py [--lengths 1K,4K,16K] [--archs sliding-window,griffin]
        [--batch 1] [--d-model 128] [--repeats 2] [--chunk 1K] [--json scaling.json]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from longarch import models
from longarch.bench import bench_architecture, parse_lengths

DEFAULT_LENGTHS = "1K,2K,4K,8K,16K,32K,64K"
LINEAR_GROWTH = 1.1  # a growth exponent of the peak up to this is taken for linear
EQUAL_WORK_LENGTH = 16384  # below this length a call is repeated more (timed_calls), up to MAX_CALLS
MAX_CALLS = 32
MEMORY_MARGIN = 0.8  # of the memory available now: what a length may be estimated to need at most


def available_bytes() -> int | None:
    """Memory available now (MemAvailable), which on a shared machine is less than its total."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    from longarch.study.limits import machine_memory

    return machine_memory()


def estimate_bytes(measured: list[tuple[int, int]], length: int, floor: int) -> int:
    """Peak bytes at `length`, extrapolated from earlier (length, peak bytes) of the same
    architecture, erring high: as length^2 from the last, or length^1.5 where the last two grew
    at most about linearly (an exponent up to LINEAR_GROWTH); at least `floor`."""
    known = [(n, peak) for n, peak in measured if peak > 0]
    if not known:
        return floor
    last_length, last_peak = known[-1]
    exponent = 2.0
    if len(known) >= 2:
        (n0, p0), (n1, p1) = known[-2], known[-1]
        exponent = 1.5 if math.log(p1 / p0) / math.log(n1 / n0) <= LINEAR_GROWTH else 2.0
    return max(floor, int(last_peak * (length / last_length) ** exponent))


def timed_calls(repeats: int, length: int) -> int:
    """`repeats` at EQUAL_WORK_LENGTH and beyond, more below it (at most MAX_CALLS), so that every length times
    about as many tokens: a best of two 20 ms calls at 1K swung a ratio by 30% on a shared machine."""
    return max(repeats, min(MAX_CALLS, repeats * EQUAL_WORK_LENGTH // length))


def measure_architecture(name: str, lengths: list[int], batch: int, d_model: int, repeats: int,
                         chunk: int | None = None) -> list[dict]:
    """One row per length: tokens/s and peak MiB, or why it was skipped or failed."""
    rows, measured = [], []
    for length in sorted(lengths):
        row = {"architecture": name, "length": length, "batch": batch, "tokens_per_s": None, "peak_mib": None,
               "seconds": None, "skipped": None, "error": None}
        floor = batch * length * d_model * 4  # one float32 activation of d_model per token
        need, free = estimate_bytes(measured, length, floor), available_bytes()
        if free is not None and need > MEMORY_MARGIN * free:
            row["skipped"] = f"skipped: needs {need / 2 ** 30:.1f} GiB"
            rows.append(row)
            continue
        m = bench_architecture(name, d_model, length, batch, "fwd", timed_calls(repeats, length), chunk=chunk)
        if m.error:
            row["error"] = m.error
        else:
            row.update(tokens_per_s=m.tokens_per_s, seconds=m.seconds,
                       peak_mib=None if m.peak_bytes is None else m.peak_bytes / 2 ** 20)
            if m.peak_bytes is not None:
                measured.append((length, m.peak_bytes))
        rows.append(row)
    return rows


def ratio(rows: list[dict], long: int, short: int) -> float | None:
    """tokens/s at `long` over tokens/s at `short`; None where either was not measured."""
    rate = {row["length"]: row["tokens_per_s"] for row in rows}
    if rate.get(long) is None or rate.get(short) is None:
        return None
    return rate[long] / rate[short]


def show(results: dict, console: Console) -> None:
    settings = results["settings"]
    long, short = settings["ratio_lengths"]
    fed = "in one call" if settings.get("chunk") is None else f"fed {settings['chunk']:,} tokens at a time"
    table = Table(title=f"forward tok/s (peak MiB), {fed}, batch {settings['batch']}, d_model {settings['d_model']}, "
                        f"{settings['threads']} thread(s)")
    table.add_column("architecture")
    for length in settings["lengths"]:
        table.add_column(f"L={length:,}", justify="right")
    table.add_column(f"{long // 1024}K/{short // 1024}K" if long % 1024 == short % 1024 == 0 else f"{long}/{short}",
                     justify="right")
    for name, rows in results["architectures"].items():
        cells = []
        for row in rows:
            if row["tokens_per_s"] is None:
                cells.append(row["skipped"] or row["error"])
            else:
                mib = "n/a" if row["peak_mib"] is None else f"{row['peak_mib']:,.0f}"
                cells.append(f"{row['tokens_per_s']:,.0f} ({mib})")
        r = results["ratios"][name]
        table.add_row(name, *cells, "n/a" if r is None else f"{r:.2f}")
    console.print(table)


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", default=DEFAULT_LENGTHS, help="comma-separated, e.g. 1K,4K,16K")
    parser.add_argument("--archs", default=None, help="comma-separated registry names (default: all)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--d-model", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=2,
                        help="timed calls after the first at 16K and beyond, more below (best is kept)")
    parser.add_argument("--ratio-lengths", default="16K,1K", help="LONG,SHORT: the ratio's lengths")
    parser.add_argument("--chunk", default=None,
                        help="feed each length this many tokens at a time through the state, as the evaluation "
                             "does (default: one call)")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args(argv)
    args.lengths = sorted(set(parse_lengths(args.lengths)))
    args.ratio_lengths = parse_lengths(args.ratio_lengths)
    if args.chunk is not None:
        chunk = parse_lengths(args.chunk)
        if len(chunk) != 1:
            parser.error("--chunk takes one length, e.g. 1K")
        args.chunk = chunk[0]
    if len(args.ratio_lengths) != 2:
        parser.error("--ratio-lengths takes two lengths, LONG,SHORT")
    args.archs = models.names() if args.archs is None else [a.strip() for a in args.archs.split(",") if a.strip()]
    unknown = sorted(set(args.archs) - set(models.names()))
    if unknown:
        parser.error(f"unknown architectures {unknown}; choose from {models.names()}")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse(argv)
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    console = Console(width=None if sys.stdout.isatty() else 160)  # a log keeps the table unwrapped
    results = {"settings": {"lengths": args.lengths, "batch": args.batch, "d_model": args.d_model,
                            "threads": torch.get_num_threads(), "repeats": args.repeats, "mode": "fwd",
                            "ratio_lengths": args.ratio_lengths, "chunk": args.chunk, "torch": torch.__version__},
               "architectures": {}, "ratios": {}}
    # The process's first forward pays one-off costs (lazy initialisation, the allocator's first
    # pools: about 80 MiB more peak here); pay them before anything is measured.
    bench_architecture(args.archs[0], args.d_model, args.lengths[0], args.batch, "fwd", 1, chunk=args.chunk)
    for name in args.archs:
        rows = measure_architecture(name, args.lengths, args.batch, args.d_model, args.repeats, args.chunk)
        results["architectures"][name] = rows
        results["ratios"][name] = ratio(rows, *args.ratio_lengths)
        console.print(f"{name}: " + ", ".join(f"{row['length']}: " + (f"{row['tokens_per_s']:,.0f} tok/s"
                      if row["tokens_per_s"] else (row["skipped"] or row["error"])) for row in rows))
    show(results, console)
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2))
        console.print(f"wrote {args.json}")
    return results


if __name__ == "__main__":
    main()
