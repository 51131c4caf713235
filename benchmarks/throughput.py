"""Throughput of every registered architecture at the quick study's size, on this machine.

Prints training tokens/s (forward + backward at the training length), evaluation tokens/s
at growing lengths (prompts fed in chunks through the state, as the runner does), and, for
Mamba-2, the speed of the chunked scan against its sequential reference in the same run.
Machines here are shared and noisy: read the ratios, not the absolute figures.

    .venv/bin/python benchmarks/throughput.py [--params 100000] [--repeats 3]
"""

from __future__ import annotations

import argparse

import torch
from rich.console import Console
from rich.table import Table

from longarch import models
from longarch.bench import best_of
from longarch.mixers.mamba2 import ssd_chunked, ssd_reference
from longarch.models import forward_in_chunks
from longarch.controlled.train import answer_loss

VOCAB = 50


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--lengths", type=int, nargs="+", default=[256, 2048, 8192])
    args = parser.parse_args()
    torch.set_flush_denormal(True)
    console = Console()

    table = Table(title=f"tokens/s at {args.params:,} parameters, {torch.get_num_threads()} threads")
    table.add_column("architecture")
    table.add_column("params", justify="right")
    table.add_column("train (B=32, L=64)", justify="right")
    for length in args.lengths:
        table.add_column(f"eval L={length}", justify="right")
    for name in models.names():
        torch.manual_seed(0)
        model = models.build(name, vocab_size=VOCAB, **models.size_to_budget(name, args.params, vocab_size=VOCAB))
        tokens = torch.randint(0, VOCAB, (32, 64))
        answers = torch.randint(0, VOCAB, (32, 1))
        train_s = best_of(args.repeats, lambda: answer_loss(model, tokens, answers).backward(), warmup=True)
        row = [name, f"{model.num_params():,}", f"{32 * 64 / train_s:,.0f}"]
        model.eval()
        for length in args.lengths:
            batch = max(1, (1 << 15) // length)
            prompt = torch.randint(0, VOCAB, (batch, length))
            eval_s = best_of(args.repeats, lambda: forward_in_chunks(model, prompt, 1024), warmup=True)
            row.append(f"{batch * length / eval_s:,.0f}")
        table.add_row(*row)
    console.print(table)

    scan = Table(title="Mamba-2 scan: chunked (chunk 64) against the sequential reference, fp32, B=8, H=8, P=16, N=16")
    for column in ("L", "chunked ms", "reference ms", "speed-up"):
        scan.add_column(column, justify="right")
    for length in (256, 1024, 4096):
        x = torch.randn(8, length, 8, 16)
        log_a = -torch.rand(8, length, 8)
        B, C = torch.randn(8, length, 16), torch.randn(8, length, 16)
        with torch.no_grad():
            fast = best_of(args.repeats, lambda: ssd_chunked(x, log_a, B, C, 64), warmup=True)
            slow = best_of(1, lambda: ssd_reference(x, log_a, B, C), warmup=True)
        scan.add_row(str(length), f"{fast * 1e3:.1f}", f"{slow * 1e3:.1f}", f"{slow / fast:.1f}x")
    console.print(scan)


if __name__ == "__main__":
    main()
