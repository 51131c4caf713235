"""Generation speed of every registered task: seconds for a batch of samples, on one core.

The target (issue 4): 1,000 samples of 4,096 tokens of any task in under 2 s on one CPU core.
Each task is measured at its default knobs and, for the needle, in the paper's formats too.
The figure is the best of --repeats calls after one untimed call (which also reads and caches
the text corpus). The numeric libraries are held to one thread before they load.

    .venv/bin/python benchmarks/task_generation.py [--n 1000] [--length 4096] [--repeats 3]
"""

from __future__ import annotations

import os

for variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[variable] = "1"  # one core, as the target says; must precede numpy's import

import argparse  # noqa: E402

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from longarch import tasks  # noqa: E402
from longarch.bench import best_of  # noqa: E402

TARGET_SECONDS = 2.0

# the needle in the formats the paper compares, beside every task at its defaults
VARIANTS = [
    ("needle", {"haystack": "text", "value": "number"}),
    ("needle", {"haystack": "text", "value": "uuid"}),
    ("needle", {"haystack": "needles"}),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--length", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    table = Table(title=f"task generation: {args.n:,} samples x {args.length:,} tokens, one thread, "
                        f"best of {args.repeats}")
    for column in ("task", "knobs", "seconds", "million tokens/s", f"under {TARGET_SECONDS:g} s"):
        table.add_column(column, justify="left" if column in ("task", "knobs") else "right")
    cases = [(name, {}) for name in tasks.names()] + VARIANTS
    worst = 0.0
    for name, knobs in cases:
        try:
            task = tasks.get(name, **knobs)
        except ValueError as error:  # a variant this version's task does not offer
            table.add_row(name, str(knobs), "-", "-", f"skipped: {error}")
            continue
        seconds = best_of(args.repeats, lambda: task.generate(args.length, args.n, seed=1), warmup=True)
        worst = max(worst, seconds)
        table.add_row(name, ", ".join(f"{k}={v}" for k, v in knobs.items()) or "defaults", f"{seconds:.3f}",
                      f"{args.n * args.length / seconds / 1e6:.0f}", "yes" if seconds < TARGET_SECONDS else "NO")
    console = Console(width=160)
    console.print(table)
    console.print(f"slowest: {worst:.3f} s (target {TARGET_SECONDS:g} s)")


if __name__ == "__main__":
    main()
