"""Long-stream evaluation stays flat: a million tokens through a recurrent model at batch 1.

Feeds a stream of random tokens through each architecture in pieces (4K tokens by default),
carrying the model's state from piece to piece, as the runner feeds a long prompt. A bounded
state (Mamba-2, GLA, RetNet) should keep both the speed and the memory flat however long the
stream: this prints tokens/s and the resident set every segment (64K tokens by default), then,
per architecture, tokens/s of the first and the last segment and the peak resident set.
One thread, flush-denormal on. Machines here are shared: read the trend, not the figures.

    .venv/bin/python benchmarks/long_stream.py [--tokens 1M] [--piece 4K] [--segment 64K]
        [--d-model 64] [--archs mamba2 gla retnet] [--json long_stream.json]
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import torch

from longarch import models
from longarch.bench import parse_lengths

VOCAB = 256


def rss_mib() -> float | None:
    """The resident set now, in MiB (Linux's /proc; None elsewhere)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def peak_mib() -> float:
    """The process's peak resident set so far, in MiB (ru_maxrss is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@torch.no_grad()
def stream(name: str, tokens: int, piece: int, segment: int, d_model: int, seed: int = 0) -> dict:
    """Feed `tokens` random tokens through `name` in pieces of `piece`, the state carried;
    tokens/s and the resident set after every `segment` tokens."""
    torch.manual_seed(seed)
    model = models.build(name, d_model=d_model, vocab_size=VOCAB).eval()
    generator = torch.Generator().manual_seed(seed)
    state, fed, segments = None, 0, []
    started, segment_fed = time.perf_counter(), 0
    while fed < tokens:
        n = min(piece, tokens - fed)
        ids = torch.randint(0, VOCAB, (1, n), generator=generator)  # (1, n)
        _, state = model(ids, state, last_only=True)
        fed, segment_fed = fed + n, segment_fed + n
        if segment_fed >= segment or fed == tokens:
            now = time.perf_counter()
            segments.append({"tokens": fed, "tok_s": segment_fed / (now - started), "rss_mib": rss_mib()})
            started, segment_fed = time.perf_counter(), 0
    first, last = segments[0]["tok_s"], segments[-1]["tok_s"]
    return {"name": name, "tokens": tokens, "piece": piece, "segment": segment, "d_model": d_model,
            "segments": segments, "first_tok_s": first, "last_tok_s": last, "last_over_first": last / first,
            "peak_rss_mib": peak_mib()}


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", default="1M", help="stream length: 1048576, 1024K or 1M")
    parser.add_argument("--piece", default="4K", help="tokens fed per call (the state carries between calls)")
    parser.add_argument("--segment", default="64K", help="tokens per printed measurement")
    parser.add_argument("--d-model", type=int, default=64)
    parser.add_argument("--archs", nargs="+", default=["mamba2", "gla", "retnet"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    tokens, piece, segment = (_count(text, flag) for text, flag in
                              ((args.tokens, "--tokens"), (args.piece, "--piece"), (args.segment, "--segment")))
    for name in args.archs:
        models.spec(name)  # an unknown name fails before anything runs
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    results = []
    for name in args.archs:
        print(f"{name}: {tokens:,} tokens at batch 1 in pieces of {piece:,}, d_model {args.d_model}, "
              f"{torch.get_num_threads()} thread(s)", flush=True)
        result = stream(name, tokens, piece, segment, args.d_model)
        for s in result["segments"]:
            rss = "n/a" if s["rss_mib"] is None else f"{s['rss_mib']:,.0f}"
            print(f"  {s['tokens']:>10,} tokens  {s['tok_s']:>10,.0f} tok/s  RSS {rss} MiB", flush=True)
        print(f"  start {result['first_tok_s']:,.0f} tok/s, end {result['last_tok_s']:,.0f} tok/s "
              f"(end/start {result['last_over_first']:.2f}); process peak RSS so far {result['peak_rss_mib']:,.0f} MiB", flush=True)
        results.append(result)
    if args.json:
        args.json.write_text(json.dumps({"threads": torch.get_num_threads(), "results": results}, indent=1))
        print(f"results: {args.json}")
    return results


def _count(text: str, flag: str) -> int:
    """'8K' -> 8192, '1M' -> 1048576, '5000' -> 5000."""
    text = text.strip()
    if text[-1:] in ("m", "M"):
        text = f"{int(text[:-1]) * 1024}K" if text[:-1].isdigit() else text
    try:
        (value,) = parse_lengths(text)
    except ValueError:
        sys.exit(f"error: {flag} expects a count such as 8192, 64K or 1M, got {text!r}")
    return value


if __name__ == "__main__":
    main()
