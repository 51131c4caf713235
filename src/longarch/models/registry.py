"""The architecture registry: name -> family, layer pattern, defaults and a one-line description.

Adding an architecture is one mixer file plus one entry here; the registry-driven tests
cover every entry automatically.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import json
from dataclasses import dataclass, field

import torch

from .lm import LanguageModel, ModelConfig


@dataclass(frozen=True)
class ArchSpec:
    name: str
    family: str
    description: str
    pattern: str
    n_layers: int
    mlp_ratio: float = 0.0
    mixer: dict = field(default_factory=dict)
    init: str = "gpt2"     # ModelConfig.init: "gpt2" (N(0, 0.02)) or "torch" (PyTorch's defaults)
    tie_head: bool = True  # ModelConfig.tie_head: the output head is the embedding
    # Alternative values of width options that `size_to_budget` may use besides d_model, for
    # mixers whose parameter count moves in steps (Mamba-2 adds a whole head at a time).
    size_knobs: dict = field(default_factory=dict)


def around(value: float) -> tuple[float, ...]:
    """Widths `size_to_budget` may try besides the default, nearest first: +-12.5%, +-25%."""
    return tuple(value * f for f in (0.875, 1.125, 0.75, 1.25))


def _transformer(name: str, description: str, pattern: str = "A", **mixer) -> ArchSpec:
    """A Transformer++ entry: two attention blocks of 4 heads with a SwiGLU MLP; `mixer` holds
    what the entry changes (position encoding, RoPE scaling, window)."""
    return ArchSpec(name, "attention", description, pattern=pattern, n_layers=2, mlp_ratio=4.0,
                    mixer={"n_heads": 4, **mixer}, size_knobs={"mlp_ratio": around(4.0)})


_SPECS = [
    _transformer("transformer",
                 "Transformer++: causal multi-head attention with RoPE, SwiGLU MLP"),
    _transformer("transformer-nope",
                 "Transformer++ without positional encoding (NoPE): order only through the causal mask",
                 position="nope"),
    _transformer("transformer-alibi",
                 "Transformer++ with ALiBi: a per-head linear distance penalty instead of rotations",
                 position="alibi"),
    _transformer("transformer-pi",
                 "Transformer++ with RoPE position interpolation: positions past T squeezed by L / T at evaluation",
                 rope_scaling="pi"),
    _transformer("transformer-ntk",
                 "Transformer++ with NTK-aware RoPE: base raised at evaluation, slow pairs stretched by L / T, fast kept",
                 rope_scaling="ntk"),
    _transformer("transformer-yarn",
                 "Transformer++ with YaRN: RoPE interpolated by parts to L / T at evaluation, plus a logit temperature",
                 rope_scaling="yarn"),
    _transformer("sliding-window",
                 "Transformer++ with sliding-window (local) attention, window 64, RoPE: bounded state",
                 pattern="W", window=64),
    ArchSpec("s4d", "state-space",
             "S4D: diagonal time-invariant state-space model (S4D-Lin init), gated output, no MLP",
             pattern="D", n_layers=4, mixer={"d_state": 16},
             size_knobs={"expand": around(2.0)}),
    ArchSpec("mamba", "state-space",
             "Mamba: selective state-space (S6) blocks with a chunked parallel scan, no MLP",
             pattern="S", n_layers=4, mixer={"d_state": 16},
             size_knobs={"expand": around(2.0)}),
    ArchSpec("mamba2", "state-space",
             "Mamba-2: selective state-space (SSD) blocks, chunked scan, no MLP",
             pattern="M", n_layers=4, mixer={"d_state": 16, "head_dim": 16},
             size_knobs={"expand": around(2.0)}),
    ArchSpec("mamba2-attn", "hybrid",
             "Mamba-2 blocks with one attention block in four, as in the Mamba2-Attention model",
             pattern="MMAM", n_layers=4, mixer={"n_heads": 4, "d_state": 16, "head_dim": 16},
             size_knobs={"expand": around(2.0)}),
    ArchSpec("retnet", "linear-recurrent",
             "RetNet: multi-scale retention (fixed per-head decays, RoPE), swish gate, SwiGLU MLP",
             pattern="R", n_layers=2, mlp_ratio=2.0, mixer={"n_heads": 4},
             size_knobs={"mlp_ratio": around(2.0)}),
    ArchSpec("gla", "linear-recurrent",
             "Gated Linear Attention: data-dependent per-key decays from a low-rank gate, SwiGLU MLP",
             pattern="G", n_layers=2, mlp_ratio=4.0, mixer={"n_heads": 4},
             size_knobs={"mlp_ratio": around(4.0)}),
    ArchSpec("deltanet", "linear-recurrent",
             "DeltaNet: linear attention with delta-rule writes (chunkwise WY form), short conv, no MLP",
             pattern="T", n_layers=4, mixer={"head_dim": 16},
             size_knobs={"expand": around(1.0)}),
    ArchSpec("gated-deltanet", "linear-recurrent",
             "Gated DeltaNet: the delta rule plus a Mamba-2-style per-head decay gate, no MLP",
             pattern="E", n_layers=4, mixer={"head_dim": 16},
             size_knobs={"expand": around(1.0)}),
    ArchSpec("hawk", "linear-recurrent",
             "Hawk: Griffin's RG-LRU blocks (gated diagonal linear recurrence after a width-4 conv), gated MLP",
             pattern="L", n_layers=4, mlp_ratio=3.0, mixer={"expand": 4 / 3, "n_heads": 4},
             size_knobs={"mlp_ratio": around(3.0)}),
    ArchSpec("rwkv6", "linear-recurrent",
             "RWKV-6 (Finch): data-dependent token shift and per-channel decay, gated MLP as channel mix",
             pattern="K", n_layers=4, mlp_ratio=7 / 3, mixer={"n_heads": 4},
             size_knobs={"mlp_ratio": around(7 / 3)}),
    ArchSpec("jamba", "hybrid",
             "Jamba-style interleave: Mamba blocks with one attention block in four, SwiGLU MLP",
             pattern="SSAS", n_layers=4, mlp_ratio=2.0, mixer={"n_heads": 4, "d_state": 16},
             size_knobs={"mlp_ratio": around(2.0)}),
    ArchSpec("griffin", "hybrid",
             "Griffin / RecurrentGemma: two RG-LRU blocks per sliding-window attention block (window 64)",
             pattern="LLW", n_layers=3, mlp_ratio=3.0, mixer={"expand": 4 / 3, "n_heads": 4, "window": 64},
             size_knobs={"mlp_ratio": around(3.0)}),
]
REGISTRY: dict[str, ArchSpec] = {spec.name: spec for spec in _SPECS}

_CONFIG_FIELDS = {f.name for f in dataclasses.fields(ModelConfig)} - {"mixer"}


class UnknownArchitecture(ValueError):
    pass


def names() -> list[str]:
    return list(REGISTRY)


def spec(name: str) -> ArchSpec:
    if name not in REGISTRY:
        close = difflib.get_close_matches(name, REGISTRY, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise UnknownArchitecture(f"unknown architecture {name!r}{hint} (known: {', '.join(REGISTRY)})")
    return REGISTRY[name]


def config(name: str, vocab_size: int = 64, **overrides) -> ModelConfig:
    """The ModelConfig of a registered architecture. Overrides are ModelConfig fields
    (d_model, n_layers, pattern, mlp_ratio, init, tie_head) or mixer options (n_heads, d_state, ...)."""
    arch = spec(name)
    top = {"d_model": 64, "pattern": arch.pattern, "n_layers": arch.n_layers, "mlp_ratio": arch.mlp_ratio,
           "init": arch.init, "tie_head": arch.tie_head}
    mixer = dict(arch.mixer)
    for key, value in overrides.items():
        target = top if key in _CONFIG_FIELDS else mixer
        default = target.get(key)
        if isinstance(default, (int, float)) and not isinstance(default, bool) and (
                isinstance(value, bool) or not isinstance(value, (int, float))
                or (isinstance(default, int) and not isinstance(value, int))):
            kind = "an integer" if isinstance(default, int) else "a number"
            raise ValueError(f"{name}: {key} must be {kind}, not {value!r}")
        target[key] = value
    return ModelConfig(vocab_size=vocab_size, mixer=mixer, **top)


def build(name: str, **overrides) -> LanguageModel:
    """Build a registered architecture: `build("mamba2", d_model=96, vocab_size=64)`."""
    return LanguageModel(config(name, **overrides))


def count_params(model_config: ModelConfig, embeddings: bool = True) -> int:
    """Parameters of a model; with embeddings=False, without the token embedding and the output
    head (non-embedding parameters, as scaling-law papers count them)."""
    total = _count_params(json.dumps(model_config.to_dict(), sort_keys=True))
    if embeddings:
        return total
    return total - model_config.vocab_size * model_config.d_model * (1 if model_config.tie_head else 2)


@functools.lru_cache(maxsize=1 << 14)
def _count_params(config_json: str) -> int:
    with torch.device("meta"):  # shapes only, no memory
        return LanguageModel(ModelConfig(**json.loads(config_json))).num_params()


def size_to_budget(name: str, params: int, vocab_size: int = 64, tolerance: float = 0.02, embeddings: bool = True,
                   **overrides) -> dict:
    """The overrides that bring `name` closest to `params` parameters: d_model, and when that
    alone cannot get within `tolerance`, the architecture's `size_knobs` too. embeddings=False
    counts non-embedding parameters only (see count_params).

    Each model within 2% of one budget puts any two within about 4% of each other.
    Raises ValueError when nothing gets within `tolerance` (relative)."""
    overrides = {k: v for k, v in overrides.items() if k != "d_model"}
    arch = spec(name)
    alternatives = [{}] + [{knob: value} for knob, values in arch.size_knobs.items() if knob not in overrides
                           for value in values]
    best = None
    for extra in alternatives:
        candidate = _best_d_model(name, params, vocab_size, {**overrides, **extra}, embeddings)
        if best is None or abs(candidate[1] - params) < abs(best[1] - params):
            best = candidate
        if abs(best[1] - params) <= tolerance / 4 * params:  # close enough: keep the default shape
            break
    chosen, achieved = best
    if abs(achieved - params) > tolerance * params:
        raise ValueError(f"no size of {name} has {params:,} parameters within {tolerance:.0%} "
                         f"(closest: d_model={chosen['d_model']} with {achieved:,})")
    return chosen


def _best_d_model(name: str, params: int, vocab_size: int, overrides: dict, embeddings: bool = True
                  ) -> tuple[dict, int]:
    def count(d_model: int) -> int:
        return count_params(config(name, vocab_size=vocab_size, d_model=d_model, **overrides), embeddings)

    lo, hi = 4, 8192
    while hi - lo > 1:  # parameter counts grow with d_model, up to small steps
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if count(mid) <= params else (lo, mid)
    d_model = min(range(max(4, lo - 3), hi + 4), key=lambda d: abs(count(d) - params))
    return {**overrides, "d_model": d_model}, count(d_model)
