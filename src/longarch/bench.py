"""Speed and memory of the architectures on this machine: `longarch bench`.

Two measurements, both forward only (no gradients, eval mode) and forward + backward:

- **Architectures.** Each registry entry at a given d_model, with its own layer pattern and
  depth, on random tokens of length L: tokens/s, peak memory, and achieved FLOP/s as a
  fraction of this machine's fp32 matmul peak (measured in the same run).
- **Against `transformers`** (`--against hf`). One layer of ours against the same layer in
  `transformers`' pure-PyTorch path at the same sizes, side by side: Mamba against `MambaMixer`,
  Mamba-2 against `Mamba2Mixer`, RG-LRU against RecurrentGemma's recurrent block, and RoPE
  attention against `LlamaAttention` (SDPA). On a CPU, `transformers` runs Mamba and the RG-LRU
  as Python loops over time steps; Mamba-2 is chunked there too. The two sides are timed
  alternately in one process (ours, theirs, ours, theirs, ...), so that a change in the machine's
  load falls on both; the median of the repeats is printed with their min-max, and the speed-up
  is the median of the ratios of each alternated pair.

Every timed call follows an untimed first call (which counts FLOPs and peak memory); `times` in
the JSON lists every timed call. An architecture's time is the best of its timed calls (as
benchmarks/scaling.py reads it); a layer against `transformers`, the median.

Peak memory is the rise of the process's peak resident set (Linux `VmHWM`, reset before each
call after returning freed memory to the system), so it counts everything the call allocates,
activations saved for backward included. FLOPs are counted by `torch.utils.flop_counter` over
matmuls, convolutions and attention (causal attention counted at half its square); elementwise
work such as a recurrence's decays is not counted, so a recurrent layer's fraction of the
matmul peak is a floor. Machines here are shared and noisy: compare ratios from one run.
"""

from __future__ import annotations

import ctypes
import math
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch.utils import flop_counter
from torch.utils.flop_counter import FlopCounterMode

MODES = ("fwd", "fwd+bwd")
HF_LAYERS = ("mamba", "mamba2", "rglru", "attention")


@dataclass
class Measurement:
    name: str
    mode: str
    length: int
    batch: int
    seconds: float        # best of the timed calls (median for --against hf's pairs)
    peak_bytes: int | None
    flops: int            # counted FLOPs of one call
    error: str | None = None  # why the call could not run (out of memory), else None
    times: list[float] = field(default_factory=list)  # every timed call, in seconds, in order

    def rates(self) -> list[float]:
        """Tokens/s of each timed call."""
        return [self.batch * self.length / t for t in self.times]

    @property
    def tokens_per_s(self) -> float:
        return self.batch * self.length / self.seconds

    @property
    def flops_per_s(self) -> float:
        return self.flops / self.seconds


# ---------------------------------------------------------------------------------------------
# Measuring one call


def _cpu_sdpa_flops(query_shape, key_shape, value_shape, dropout_p=0.0, is_causal=False, *args, **kwargs) -> int:
    flops = flop_counter.sdpa_flop_count(query_shape, key_shape, value_shape)
    return flops // 2 if is_causal else flops


def _cpu_sdpa_backward_flops(grad_out_shape, query_shape, key_shape, value_shape, out_shape_=None,
                             logsumexp_shape=None, dropout_p=0.0, is_causal=False, *args, **kwargs) -> int:
    flops = flop_counter.sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)
    return flops // 2 if is_causal else flops


def _register_cpu_attention_flops() -> None:
    """torch counts the GPU attention kernels but not the CPU one; count it the same way."""
    aten = torch.ops.aten
    for op, formula in ((aten._scaled_dot_product_flash_attention_for_cpu, _cpu_sdpa_flops),
                        (aten._scaled_dot_product_flash_attention_for_cpu_backward, _cpu_sdpa_backward_flops)):
        if op not in flop_counter.flop_registry:
            flop_counter.register_flop_formula(op)(formula)


def _vm_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak() -> int | None:
    """Return freed memory to the system, reset the peak resident set; the resident set now."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")
    except OSError:
        return None
    return _vm_kib("VmRSS")


def measure(name: str, mode: str, length: int, batch: int, call: Callable[[], None], repeats: int,
            slow_after_s: float = 30.0) -> Measurement:
    """Time `call` (best of `repeats` after a first call that also counts FLOPs and peak memory).
    A call slower than `slow_after_s` is timed once more only."""
    m = first_call(name, mode, length, batch, call)
    if m.error is None:
        m.times = time_alternately([call], 1 if m.seconds >= slow_after_s else repeats)[0]
        m.seconds = min(m.times)
    return m


def first_call(name: str, mode: str, length: int, batch: int, call: Callable[[], None]) -> Measurement:
    """The first, untimed-for-the-record call: FLOPs, peak memory and whether it runs at all.
    Its `seconds` is that call's time (slowed by the FLOP counter), until timed calls replace it."""
    _register_cpu_attention_flops()
    base = _reset_peak()
    try:
        with FlopCounterMode(display=False) as counter:
            start = time.perf_counter()
            call()
            first = time.perf_counter() - start
    except (MemoryError, RuntimeError) as error:  # torch reports a failed allocation as RuntimeError
        if not isinstance(error, MemoryError) and "alloc" not in str(error).lower():
            raise
        return Measurement(name, mode, length, batch, math.nan, None, 0, error="out of memory")
    peak = _vm_kib("VmHWM")
    peak_bytes = None if base is None or peak is None else max(0, peak - base) * 1024
    return Measurement(name, mode, length, batch, first, peak_bytes, counter.get_total_flops())


def time_alternately(calls: list[Callable[[], object]], repeats: int,
                     clock: Callable[[], float] | None = None) -> list[list[float]]:
    """Seconds of each call, `repeats` times, the calls taking turns: a, b, a, b, ... So a slow
    spell of a shared machine slows both sides, not the one that happened to run then."""
    clock = clock or time.perf_counter
    times: list[list[float]] = [[] for _ in calls]
    for _ in range(repeats):
        for call, spent in zip(calls, times):
            start = clock()
            call()
            spent.append(clock() - start)
    return times


def best_of(repeats: int, call: Callable[[], object], warmup: bool = False) -> float:
    """The fastest of `repeats` timed calls, in seconds, after one untimed call if `warmup`."""
    if warmup:
        call()
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        best = min(best, time.perf_counter() - start)
    return best


def matmul_peak(n: int = 1024, repeats: int = 10) -> float:
    """This machine's fp32 matmul FLOP/s with the threads torch uses: best of `repeats`."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    return 2 * n ** 3 / best_of(repeats, lambda: a @ b, warmup=True)


def _calls(module_call: Callable[[], torch.Tensor], module: torch.nn.Module, mode: str) -> Callable[[], None]:
    """A call that runs the forward (and backward) of `module_call`, which runs `module`."""
    def forward():
        # No parameter asks for a gradient, so no tensor of the call does. no_grad alone is not
        # enough: a view of a parameter taken under no_grad still says requires_grad, and torch's
        # module tracker (inside the FLOP counter) then fails on it when the view is handed to a
        # submodule, as transformers' hub-kernel layers do with a convolution's weight.
        module.eval()
        module.requires_grad_(False)
        with torch.no_grad():
            module_call()

    def forward_backward():
        module.train()
        module.requires_grad_(True)
        module.zero_grad(set_to_none=True)
        module_call().float().square().mean().backward()

    return forward if mode == "fwd" else forward_backward


# ---------------------------------------------------------------------------------------------
# Architectures


def bench_architecture(name: str, d_model: int, length: int, batch: int, mode: str, repeats: int,
                       vocab_size: int = 256, chunk: int | None = None) -> Measurement:
    """One architecture at one length. `chunk` (forward only): feed the tokens `chunk` at a time
    through the model's state, as the evaluation feeds a prompt (`models.forward_in_chunks`),
    instead of in one call."""
    from . import models

    torch.manual_seed(0)
    model = models.build(name, d_model=d_model, vocab_size=vocab_size)
    tokens = torch.randint(0, vocab_size, (batch, length))
    if chunk is not None:
        if mode != "fwd":
            raise ValueError("a chunked feed is timed forward only")
        call = _calls(lambda: models.forward_in_chunks(model, tokens, chunk)[0], model, mode)
    else:
        call = _calls(lambda: model(tokens)[0], model, mode)
    return measure(name, mode, length, batch, call, repeats)


# ---------------------------------------------------------------------------------------------
# One layer against the same layer in `transformers`


def layer_pair(layer: str, d_model: int, length: int) -> tuple[Callable, Callable]:
    """Factories (x -> output) for our layer and `transformers`' layer at the same sizes."""
    from .models.pretrained import quiet_transformers

    transformers = quiet_transformers()
    torch.manual_seed(0)
    if layer == "mamba":
        from transformers.models.mamba.modeling_mamba import MambaMixer as TheirMamba

        from .mixers.mamba import MambaConfig, MambaMixer

        ours = MambaMixer(MambaConfig(d_model=d_model, d_state=16, expand=2, d_conv=4, chunk_size=64))
        theirs = TheirMamba(transformers.MambaConfig(hidden_size=d_model, state_size=16, expand=2, conv_kernel=4,
                                                     use_mambapy=False), layer_idx=0)
        return (ours, lambda x: ours(x)[0]), (theirs, lambda x: theirs(x))
    if layer == "mamba2":
        from transformers.models.mamba2.modeling_mamba2 import Mamba2Mixer as TheirMamba2

        from .mixers.mamba2 import Mamba2Config, Mamba2Mixer

        config = Mamba2Config(d_model=d_model, d_state=16, expand=2, head_dim=16, d_conv=4, chunk_size=64)
        ours = Mamba2Mixer(config)
        theirs = TheirMamba2(transformers.Mamba2Config(
            hidden_size=d_model, state_size=16, expand=2, head_dim=16, num_heads=config.n_heads, n_groups=1,
            conv_kernel=4, chunk_size=64), layer_idx=0)
        return (ours, lambda x: ours(x)[0]), (theirs, lambda x: theirs(x))
    if layer == "rglru":
        from transformers.models.recurrent_gemma.modeling_recurrent_gemma import RecurrentGemmaRecurrentBlock

        from .mixers.rglru import RGLRUConfig, RGLRUMixer

        config = RGLRUConfig(d_model=d_model, expand=4 / 3, n_heads=4, d_conv=4)
        ours = RGLRUMixer(config)
        theirs = RecurrentGemmaRecurrentBlock(transformers.RecurrentGemmaConfig(
            hidden_size=d_model, lru_width=config.d_rnn, num_attention_heads=config.n_heads, conv1d_width=4,
            attention_window_size=length), layer_idx=0)
        positions = torch.arange(length)[None]
        return (ours, lambda x: ours(x)[0]), (theirs, lambda x: theirs(x, positions.expand(len(x), -1), None,
                                                                            use_cache=False)[0])
    if layer == "attention":
        from transformers.models.llama.modeling_llama import LlamaAttention, LlamaRotaryEmbedding

        from .mixers.attention import AttentionConfig, CausalSelfAttention

        ours = CausalSelfAttention(AttentionConfig(d_model=d_model, n_heads=4))
        llama = transformers.LlamaConfig(hidden_size=d_model, num_attention_heads=4, num_key_value_heads=4,
                                         max_position_embeddings=length, attn_implementation="sdpa")
        theirs, rotary = LlamaAttention(llama, layer_idx=0), LlamaRotaryEmbedding(llama)
        positions = torch.arange(length)[None]

        def their_call(x):
            cos_sin = rotary(x, positions)
            return theirs(x, position_embeddings=cos_sin, attention_mask=None)[0]
        return (ours, lambda x: ours(x)[0]), (theirs, their_call)
    raise ValueError(f"unknown layer {layer!r}; choose from {', '.join(HF_LAYERS)}")


def bench_layer_pair(layer: str, d_model: int, length: int, batch: int, mode: str, repeats: int,
                     slow_after_s: float = 30.0) -> tuple[Measurement, Measurement]:
    """Ours and transformers' layer: each side's first call (FLOPs, memory), then `repeats`
    timed calls of each, alternately (time_alternately); once each when a side is slow."""
    (ours, our_call), (theirs, their_call) = layer_pair(layer, d_model, length)
    x = torch.randn(batch, length, d_model)
    sides = [(f"{layer} (longarch)", _calls(lambda: our_call(x), ours, mode)),
             (f"{layer} (transformers)", _calls(lambda: their_call(x), theirs, mode))]
    results = [first_call(label, mode, length, batch, call) for label, call in sides]
    running = [i for i, m in enumerate(results) if m.error is None]
    slow = any(results[i].seconds >= slow_after_s for i in running)
    times = time_alternately([sides[i][1] for i in running], 1 if slow else repeats)
    for i, spent in zip(running, times):
        results[i].times, results[i].seconds = spent, statistics.median(spent)
    return results[0], results[1]


def speedups(ours: Measurement, theirs: Measurement) -> list[float]:
    """Their time over ours, per alternated pair of calls."""
    return [t / o for o, t in zip(ours.times, theirs.times)]


# ---------------------------------------------------------------------------------------------
# The command


ARCH_LAYERS = {"mamba": "mamba", "mamba2": "mamba2", "hawk": "rglru", "transformer": "attention"}
BATCH_TOKENS = 32768  # tokens of a batch when --batch is not given: batch = max(1, BATCH_TOKENS // length)


def parse_lengths(text: str) -> list[int]:
    """'1024,4096' or '1K,4K' -> [1024, 4096]."""
    lengths = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        scale = 1024 if part[-1] in "kK" else 1
        try:
            lengths.append(int(part[:-1] if scale > 1 else part) * scale)
        except ValueError:
            raise ValueError(f"--lengths expects comma-separated integers such as 1024,4096 or 1K,4K, got {text!r}")
    if not lengths or min(lengths) < 1:
        raise ValueError(f"--lengths expects positive lengths, got {text!r}")
    return lengths


def check_memory(lengths: list[int], batch: int | None, d_model: int, tokens: int = BATCH_TOKENS) -> None:
    """Refuse, before anything is measured, a length whose batch cannot fit this machine
    (study/limits.py): one float32 activation of d_model per token, a lower bound of what any
    call holds (an architecture's embedding output, the input of a layer against transformers')."""
    from .study import limits

    for length in lengths:
        b = batch or max(1, tokens // length)
        limits.check_memory(f"--lengths: a batch of {b:,} x {length:,} tokens at d_model {d_model:,}",
                            b * length * d_model * limits.FLOAT_BYTES)


def _mib(measurement: Measurement) -> str:
    if measurement.error:
        return measurement.error
    return "n/a" if measurement.peak_bytes is None else f"{measurement.peak_bytes / 2 ** 20:,.0f}"


def _rate(measurement: Measurement) -> str:
    return "n/a" if measurement.error else f"{measurement.tokens_per_s:,.0f}"


def _spread(values: list[float], form: str, unit: str = "") -> str:
    """The median of `values` with their min-max: '12,345 (11,900-12,800)'."""
    if not values:
        return "n/a"
    middle = format(statistics.median(values), form) + unit
    return middle if len(values) == 1 else f"{middle} ({min(values):{form}}-{max(values):{form}})"


def pair_row(layer: str, mode: str, length: int, batch: int, ours: Measurement, theirs: Measurement) -> list[str]:
    """One --against hf row: tok/s and speed-up as median (min-max) over the repeats."""
    return [layer, mode, str(length), str(batch), _spread(ours.rates(), ",.0f"), _spread(theirs.rates(), ",.0f"),
            _spread(speedups(ours, theirs), ".2f", "x"), _mib(ours), _mib(theirs)]


def run_bench(names: list[str], lengths: list[int], batch: int | None, d_model: int, modes: list[str],
              repeats: int, against: str | None, on_row: Callable[[list[str]], None], tokens: int = BATCH_TOKENS
              ) -> tuple[list[Measurement], float]:
    """Measure, calling on_row with each finished table row; returns the measurements and the peak."""
    peak = matmul_peak()
    results = []
    for length in lengths:
        b = batch or max(1, tokens // length)
        for mode in modes:
            if against == "hf":
                for name in names:
                    ours, theirs = bench_layer_pair(ARCH_LAYERS[name], d_model, length, b, mode, repeats)
                    results += [ours, theirs]
                    on_row(pair_row(ARCH_LAYERS[name], mode, length, b, ours, theirs))
            else:
                for name in names:
                    m = bench_architecture(name, d_model, length, b, mode, repeats)
                    results.append(m)
                    on_row([name, mode, str(length), str(b), _rate(m), _mib(m),
                            "n/a" if m.error else f"{m.flops_per_s / 1e9:,.1f}",
                            "n/a" if m.error else f"{100 * m.flops_per_s / peak:.1f}%"])
    return results, peak


def timing(repeats: int, against: str | None) -> str:
    """How the table's times were taken, for its title."""
    if against == "hf":
        return f"median (min-max) of {repeats} timed calls, the two sides alternately"
    return f"best of {repeats} timed calls"


def columns(against: str | None) -> list[str]:
    if against == "hf":
        return ["layer", "mode", "L", "B", "longarch tok/s", "transformers tok/s", "speed-up",
                "longarch MiB", "transformers MiB"]  # tok/s and speed-up: median (min-max)
    return ["architecture", "mode", "L", "B", "tok/s", "peak MiB", "GFLOP/s", "of matmul peak"]
