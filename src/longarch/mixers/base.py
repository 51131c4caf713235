"""The mixer contract: what a sequence mixer is to longarch, written down so that a new one can be
implemented from this page alone (examples/ema.py is a complete one in under 80 lines).

A mixer is a `torch.nn.Module` built from a config dataclass, and it is one layer of a language
model (models/lm.py wraps it as x + mixer(norm(x)), optionally followed by an MLP block).

    config = MyConfig(d_model=64, ...)         # a dataclass; `d_model` is the only required field
    mixer = MyMixer(config)
    y, state = mixer(x)                         # x, y: (B, L, D) with D = d_model
    y2, state = mixer(x2, state)                # continues the same sequences
    y_ref, _ = mixer(x, reference=True)         # the slow, obviously correct path: same result

The rules every mixer keeps (mixers/checks.py runs each as a check on any mixer, and
tests/test_mixers.py runs those checks on every registered one):
- Causal: y[:, t] depends on x[:, :t + 1] only.
- Batch-independent: each sequence of the batch is mixed on its own.
- Streaming: feeding a sequence in pieces, each piece with the state the previous one returned,
  gives the same outputs (and final state) as feeding it whole. The state is whatever continues
  the sequence: a recurrent state, the tail of a convolution, a key/value cache; None starts a
  sequence. It may be any object (tensors, a dataclass of tensors, a tuple).
- Reference: `reference=True` computes the same function the simplest way (a loop over time,
  the direct sum), as the oracle that the fast (chunked, parallel) path is tested against,
  gradients included.
- `state_floats(config, length)` counts the floats of state one sequence holds after `length`
  tokens: constant for a recurrent mixer, growing for global attention (the report's "state
  size" and the bounded/grows column of `longarch models`).

Optional, for inference interventions (a study's `interventions:`, controlled/interventions.py):
a mixer may declare `inference_interventions(config) -> tuple[str, ...]`, the evaluation-time
interventions it implements for that config, and `set_context(train_length, length,
intervention=None)`, which sets it for sequences of `length` tokens from a model trained at
`train_length` (`set_context(T, T)` restores training behaviour). An intervention is the
identity at length <= T and leaves the chunked path equal to the reference path. Two mixins
below implement the recurrent ones: `DecayScaled` (`decay-scale`, and `decay-scale-fit`: the same
scaling by a factor s = (T / L)^p, p read from its `decay_exponent`), which every mixer with a
decay shares, and `TokenFiltered` (`token-filter`), which a mixer with a data-dependent decay adds
so that past T only its most selective tokens write to the state. A mixer inherits from the ones
it implements (class M(DecayScaled, TokenFiltered, nn.Module)); they cooperate, so its
`inference_interventions` names all of them and its `set_context` sets each.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor


@runtime_checkable
class MixerConfig(Protocol):
    """A mixer's config: a dataclass whose fields are its options (a study's `overrides` and an
    architecture's `mixer:` options fill them by name). `d_model` is set by the model."""

    d_model: int


@runtime_checkable
class Mixer(Protocol):
    """A sequence mixer (see the module docstring for the rules it keeps)."""

    config: Any  # its MixerConfig

    def __init__(self, config: Any) -> None:
        """Build the layer's parameters from `config` (PyTorch's default initialisation, or the
        family's own)."""

    def forward(self, x: Tensor, state: Any = None, reference: bool = False) -> tuple[Tensor, Any]:
        """Mix the sequences `x` (B, L, D): return y (B, L, D) and the state after the last token.

        `state`: what an earlier call returned for the same sequences (None: a sequence starts
        here). `reference`: compute it the slow, simple way; the result must be the same."""

    @staticmethod
    def state_floats(config: Any, length: int) -> int:
        """Floats of state one sequence holds after `length` tokens."""


# --------------------------------------------------------------------------------------------
# What the registry holds: a mixer by name, and an architecture (a stack of mixers) by name.
# A built-in mixer file declares both as module-level lists, MIXERS and ARCHITECTURES; the
# package finds them (mixers/__init__.py). A plugin may do the same, or leave its mixer class
# to be found (mixers/plugins.py).
# --------------------------------------------------------------------------------------------
FAMILIES = ("attention", "state-space", "linear-recurrent", "hybrid")  # the report's order; a plugin may add its own


@dataclass(frozen=True)
class MixerSpec:
    """A mixer as the registry knows it."""

    name: str                  # its name in layer patterns, `longarch check` and errors: "mamba2"
    config: type               # its MixerConfig dataclass
    mixer: type                # its Mixer class
    family: str | None = None  # "attention", "state-space", "linear-recurrent", ... (None: say it per model)
    letter: str | None = None  # a one-letter shorthand in patterns ("M"); built-ins only
    source: str | None = None  # a plugin's source hash (part of its models' ids); None for a built-in
    origin: str | None = None  # where a plugin came from: its file or module


@dataclass(frozen=True)
class ArchSpec:
    """An architecture: a layer pattern of mixers with its defaults and a one-line description.

    `pattern` names one mixer per layer, repeated to `n_layers`: "MMAM" (letters) or
    ["mamba2", "mamba2", "attention", "mamba2"] (names). The family is its mixers' (one family,
    or "hybrid" for several) unless `family` says otherwise; the registry fills it in."""

    name: str
    description: str
    pattern: str | tuple[str, ...]
    n_layers: int
    mlp_ratio: float = 0.0   # the SwiGLU MLP after each mixer, as a multiple of d_model; 0: none
    mixer: dict = field(default_factory=dict)  # options for the mixers that have them (n_heads, ...)
    init: str = "gpt2"       # ModelConfig.init: "gpt2" (N(0, 0.02)) or "torch" (PyTorch's defaults)
    tie_head: bool = True    # ModelConfig.tie_head: the output head is the embedding
    # Alternative values of width options that `size_to_budget` may use besides d_model, for
    # mixers whose parameter count moves in steps (Mamba-2 adds a whole head at a time).
    size_knobs: dict = field(default_factory=dict)
    family: str | None = None
    origin: str | None = None  # where a plugin's came from (its mixers' sources go into model ids)


def around(value: float) -> tuple[float, ...]:
    """Widths `size_to_budget` may try besides the default, nearest first: +-12.5%, +-25%."""
    return tuple(value * f for f in (0.875, 1.125, 0.75, 1.25))


DECAY_INTERVENTIONS = ("decay-scale", "decay-scale-fit")  # what DecayScaled implements


class DecayScaled:
    """The `decay-scale` and `decay-scale-fit` inference interventions, for a mixer whose state
    decays by a per-step factor a_t = exp(log a_t): evaluated at a length L past its training
    length T, every log-decay is multiplied by a factor s in (0, 1], i.e. a_t becomes a_t^s, so
    the state forgets over L tokens about as much as it did over T in training (LongMamba,
    DeciMamba). Under `decay-scale`, s = T / L; under `decay-scale-fit`, s = (T / L)^p with the
    exponent p the layer's `decay_exponent` (set by `set_decay_exponent`, calibrated per model
    and length by controlled/decay_fit.py; p = 1 is decay-scale, p = 0 the baseline). A mixer
    that discretises a continuous system with a step dt (Mamba, Mamba-2, S4D) scales dt itself,
    its input's dt included. The mixer multiplies its log-decay (or dt) by `decay_factor` where it
    computes it, before the chunked and reference paths part, so both see the same decays."""

    decay_factor: float = 1.0    # s under the intervention at L > T; 1 otherwise
    decay_exponent: float = 1.0  # p of decay-scale-fit: s = (T / L)^p

    @classmethod
    def inference_interventions(cls, config: Any) -> tuple[str, ...]:
        return DECAY_INTERVENTIONS + _next_interventions(super(), config)

    def set_context(self, train_length: int, length: int, intervention: str | None = None) -> None:
        """s = min(1, train_length / length) under `decay-scale`, that to the power
        `decay_exponent` under `decay-scale-fit`, else 1 (training behaviour)."""
        _check_lengths(train_length, length)
        ratio = min(1.0, train_length / length)
        if intervention == "decay-scale":
            self.decay_factor = ratio
        elif intervention == "decay-scale-fit":
            self.decay_factor = ratio ** self.decay_exponent  # 1.0 at p = 0 (and at L <= T), exactly
        else:
            self.decay_factor = 1.0
        _next_set_context(super(), train_length, length, intervention)


class TokenFiltered:
    """The `token-filter` inference intervention, for a mixer whose per-step decay a_t depends on
    its input (Mamba's and Mamba-2's dt, GLA's gate, RG-LRU's a_t, RWKV-6's w, Gated DeltaNet's
    alpha). Our take on DeciMamba's idea: a token that makes a head forget strongly is one that
    head selected, so at a length L past the training length T each head lets only its most
    selective tokens into its state, and about T tokens write over a whole sequence, as in
    training. Per forward call of c tokens, each (row, head) keeps the ceil(c T / L) tokens of
    highest importance -log a_t (averaged over the head's other axes; ties go to the later
    token); every other token passes through that head's state untouched: decay 1 (log a_t = 0,
    or dt = 0) and write 0. The outputs are still computed at every position (the readout of the
    state, skip terms, short convolutions as they are); only what enters the state is filtered.

    The mixer calls `token_keep(importance)` where it computes its decays, before the chunked and
    reference paths part, and applies the mask to its decay and its write. At L <= T (and while
    the intervention is off) it returns None: nothing is filtered, the training behaviour."""

    keep_fraction: Fraction = Fraction(1)  # T / L under the intervention at L > T; 1 otherwise

    @classmethod
    def inference_interventions(cls, config: Any) -> tuple[str, ...]:
        return ("token-filter",) + _next_interventions(super(), config)

    def set_context(self, train_length: int, length: int, intervention: str | None = None) -> None:
        """The fraction of tokens kept: min(1, train_length / length) under `token-filter`, else 1."""
        _check_lengths(train_length, length)
        on = intervention == "token-filter" and length > train_length
        self.keep_fraction = Fraction(train_length, length) if on else Fraction(1)
        _next_set_context(super(), train_length, length, intervention)

    def token_keep(self, importance: Tensor) -> Tensor | None:
        """importance (b, c, H) of one call's c tokens -> the keep mask (b, c, H) in importance's
        dtype (1: writes, 0: filtered), or None when every token is kept."""
        return keep_mask(importance, self.keep_fraction)


def keep_mask(importance: Tensor, fraction: Fraction) -> Tensor | None:
    """Per (row, head), 1 at the ceil(c * fraction) of the c positions with the highest
    importance (b, c, H), ties broken by position, later first; 0 elsewhere; None if that keeps
    all c. Exact in the fraction (no rounding of c * T / L); no gradient flows through the mask."""
    b, c, H = importance.shape
    n = math.ceil(c * fraction)
    if n >= c:
        return None
    later_first = importance.detach().flip(1)  # (b, c, H): position c - 1 first
    # a stable sort keeps equal importances in that order, so the later token wins a tie
    top = torch.sort(later_first, dim=1, descending=True, stable=True).indices[:, :n]  # (b, n, H)
    keep = torch.zeros_like(importance, dtype=torch.bool)  # (b, c, H)
    return keep.scatter_(1, c - 1 - top, True).to(importance.dtype)


def _check_lengths(train_length: int, length: int) -> None:
    if train_length < 1 or length < 1:
        raise ValueError(f"lengths must be >= 1, not train_length={train_length}, length={length}")


def _next_interventions(parent: Any, config: Any) -> tuple[str, ...]:
    """What the next class in the method resolution order declares (a mixin's `super()`)."""
    declared = getattr(parent, "inference_interventions", None)
    return tuple(declared(config)) if declared else ()


def _next_set_context(parent: Any, train_length: int, length: int, intervention: str | None) -> None:
    """The next class's `set_context`, if it has one (another mixin), so that each mixin sets its own."""
    following = getattr(parent, "set_context", None)
    if following is not None:
        following(train_length, length, intervention)


def set_decay_exponent(module, exponent: float) -> int:
    """Set the exponent p of `decay-scale-fit` (s = (T / L)^p) on every layer of `module` (a model,
    or one mixer) that takes it (a `decay_exponent` attribute, as every DecayScaled mixer has); it
    applies from the next `set_context(T, L, "decay-scale-fit")`. Returns how many layers took it."""
    exponent = float(exponent)
    if not exponent >= 0 or exponent == float("inf"):
        raise ValueError(f"a decay exponent must be finite and >= 0, not {exponent}")
    layers = [m for m in module.modules() if hasattr(m, "decay_exponent")]
    for layer in layers:
        layer.decay_exponent = exponent
    return len(layers)


def map_state(state, function):
    """A mixer state (a tensor, or dataclasses, tuples, lists and dicts of them) with `function`
    applied to every tensor in it; numbers, None and anything else as they are. A dataclass is
    rebuilt from its init fields."""
    if isinstance(state, Tensor):
        return function(state)
    if dataclasses.is_dataclass(state) and not isinstance(state, type):
        return dataclasses.replace(state, **{f.name: map_state(getattr(state, f.name), function)
                                             for f in dataclasses.fields(state) if f.init})
    if isinstance(state, (list, tuple)):
        return type(state)(map_state(part, function) for part in state)
    if isinstance(state, dict):
        return {key: map_state(value, function) for key, value in state.items()}
    return state
