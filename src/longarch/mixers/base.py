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
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

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
