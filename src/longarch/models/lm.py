"""LanguageModel: token embedding -> a stack of blocks from a layer pattern -> output head
(tied to the embedding unless `tie_head=False`).

The pattern names one mixer per layer, by name (["mamba2", "attention"]) or by letter ("MA"),
repeated to `n_layers`: pattern "MA" with 4 layers is M, A, M, A. Hybrids need nothing more.

`model(tokens, state) -> (logits, state)`; the state is one mixer state per layer, so a
sequence fed in pieces gives the same logits as the same sequence fed whole.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import mixers
from ..mixers import make_mixer, mixer_config, option_names, state_floats
from ..mixers.base import map_state


@dataclass
class ModelConfig:
    vocab_size: int
    d_model: int = 64
    pattern: str | list[str] = "A"  # letters ("MMAM") or mixer names; kept canonical (mixers.canonical)
    n_layers: int = 2
    mlp_ratio: float = 0.0  # hidden width of the SwiGLU MLP after each mixer, as a multiple of d_model; 0 = none
    mixer: dict = field(default_factory=dict)  # options passed to the mixers that have them (n_heads, d_state, ...)
    # How weights start, and whether the head is the embedding. "gpt2": every nn.Linear and the
    # embedding N(0, 0.02) (GPT-2, nanoGPT, Zoology). "torch": PyTorch's own init (embedding
    # N(0, 1), nn.Linear uniform +-1/sqrt(fan_in)). With "gpt2", Adam's steps (~lr per weight, so
    # ~15% of a 0.02 weight at lr 3e-3) soon swamp the random embeddings with the gradient all key
    # symbols share; keys become near-parallel (cosine ~0.9) and MQAR stalls at the value prior.
    # init="torch" with tie_head=False learns it in a few hundred steps; either alone does not.
    init: str = "gpt2"
    tie_head: bool = True

    def __post_init__(self):
        if self.init not in INITS:
            raise ValueError(f"init must be one of {INITS}, not {self.init!r}")
        if not isinstance(self.tie_head, bool):
            raise ValueError(f"tie_head must be true or false, not {self.tie_head!r}")
        self.pattern = mixers.canonical(self.pattern)  # raises UnknownMixer (a ValueError) on an unknown name
        known = set().union(*(option_names(name) for name in set(mixers.layers(self.pattern))))
        unknown = set(self.mixer) - known
        if unknown:
            raise ValueError(f"mixer options {sorted(unknown)} are not used by pattern {self.pattern!r}; "
                             f"its options are {sorted(known)}")
        if self.n_layers < 1 or self.d_model < 1 or self.vocab_size < 2:
            raise ValueError("n_layers, d_model must be >= 1 and vocab_size >= 2")
        self._check_sizes()

    def _check_sizes(self) -> None:
        """Every numeric size is finite and positive (a convolution's width may be 0: none; the
        MLP's ratio too), so that no mixer divides by zero (n_heads: 0) or makes a negative
        dimension when it is built; then each mixer's own checks."""
        check_sizes({**self.mixer, "mlp_ratio": self.mlp_ratio})
        for name in dict.fromkeys(mixers.layers(self.pattern)):  # in the pattern's order: the same error every run
            mixer_config(name, self.d_model, self.mixer)  # raises on a value the mixer refuses

    @property
    def layers(self) -> tuple[str, ...]:
        """The mixer names of the pattern repeated (and cut) to n_layers."""
        names = mixers.layers(self.pattern)
        reps = -(-self.n_layers // len(names))
        return (names * reps)[: self.n_layers]

    def to_dict(self) -> dict:
        """The fields; init and tie_head only when not at their defaults, so that the ids of
        models configured before they existed stay the same."""
        data = asdict(self)
        for name in ("init", "tie_head"):
            if data[name] == _DEFAULTS[name]:
                del data[name]
        return data


def check_sizes(options: dict) -> None:
    """Raise ValueError on a numeric option that is not finite and positive (zero allowed for
    the sizes in ZERO_ALLOWED); names (position, a_init ...) are the mixers' to check."""
    for name, value in options.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        may_be_zero = name in ZERO_ALLOWED
        if not math.isfinite(value) or value < 0 or (value == 0 and not may_be_zero):
            raise ValueError(f"{name} must be {'>= 0' if may_be_zero else 'positive'} and finite, not {value}")


INITS = ("gpt2", "torch")
ZERO_ALLOWED = {"d_conv", "mlp_ratio"}  # sizes whose 0 means "none" (no short convolution, no MLP)
_DEFAULTS = {"init": "gpt2", "tie_head": True}


class SwiGLU(nn.Module):
    def __init__(self, d_model: int, hidden: int):
        super().__init__()
        self.up = nn.Linear(d_model, 2 * hidden, bias=False)
        self.down = nn.Linear(hidden, d_model, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        gate, value = self.up(x).chunk(2, dim=-1)  # (B, L, hidden) each
        return self.down(F.silu(gate) * value)


class Block(nn.Module):
    """Pre-norm residual block: x + mixer(norm(x)), then x + mlp(norm(x)) when it has an MLP."""

    def __init__(self, name: str, config: ModelConfig):
        super().__init__()
        self.kind = name  # the mixer's registered name
        self.mixer_norm = nn.RMSNorm(config.d_model)
        self.mixer = make_mixer(name, config.d_model, config.mixer)
        hidden = round(config.mlp_ratio * config.d_model)
        self.mlp_norm = nn.RMSNorm(config.d_model) if hidden else None
        self.mlp = SwiGLU(config.d_model, hidden) if hidden else None

    def forward(self, x: Tensor, state=None):
        h, state = self.mixer(self.mixer_norm(x), state)  # (B, L, D)
        x = x + h
        if self.mlp is not None:
            x = x + self.mlp(self.mlp_norm(x))
        return x, state


class LanguageModel(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.embedding = nn.Embedding(config.vocab_size, config.d_model)
        self.blocks = nn.ModuleList(Block(name, config) for name in config.layers)
        self.final_norm = nn.RMSNorm(config.d_model)
        # an untied head: its own (V, D) weight; tied: the embedding's
        self.head = None if config.tie_head else nn.Linear(config.d_model, config.vocab_size, bias=False)
        if config.init == "gpt2":
            self.apply(_init_weights)

    def forward(self, tokens: Tensor, state: list | None = None, last_only: bool = False
                ) -> tuple[Tensor, list]:
        """tokens (B, L) -> logits (B, L, V), or (B, 1, V) with last_only; and the new state."""
        x = self.embedding(tokens)  # (B, L, D)
        states = state if state is not None else [None] * len(self.blocks)
        new_states = []
        for block, layer_state in zip(self.blocks, states):
            x, layer_state = block(x, layer_state)
            new_states.append(layer_state)
        if last_only:
            x = x[:, -1:]
        head = self.embedding.weight if self.head is None else self.head.weight  # (V, D)
        logits = self.final_norm(x) @ head.T  # (B, L, V)
        return logits, new_states

    def set_context(self, train_length: int, length: int, intervention: str | None = None) -> None:
        """Prepare for sequences of `length` tokens from a model trained at `train_length`: mixers
        that scale positions with the length (RoPE PI/NTK/YaRN) take s = max(1, length /
        train_length); the others ignore it. `intervention`: an inference intervention (decay-scale,
        rope-pi, window, ...), set on the mixers that implement it (`inference_interventions`) and
        on no other. `set_context(T, T)` restores the training setting."""
        for block, supported in zip(self.blocks, layer_interventions(self.config)):
            if intervention is not None and intervention in supported:
                block.mixer.set_context(train_length, length, intervention)
            elif hasattr(block.mixer, "set_context"):
                block.mixer.set_context(train_length, length)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def state_floats(self, length: int) -> int:
        """Floats of state per sequence after `length` tokens, summed over layers."""
        return sum(state_floats(name, self.config.d_model, self.config.mixer, length)
                   for name in self.config.layers)


def layer_interventions(config: ModelConfig) -> list[tuple[str, ...]]:
    """Per layer, the inference interventions its mixer implements for its config (a mixer's
    optional `inference_interventions`, mixers/base.py): () for a mixer without any."""
    out = []
    for name in config.layers:
        declared = getattr(mixers.get(name).mixer, "inference_interventions", None)
        out.append(tuple(declared(mixer_config(name, config.d_model, config.mixer))) if declared else ())
    return out


def bounded_layers(config: ModelConfig) -> list[bool]:
    """Per layer, whether its mixer's state is bounded (as many floats after 2T tokens as after T,
    a recurrent state or a window): the state a training intervention may carry from one
    sequence to the next. Global attention's key/value cache grows, so it is never carried."""
    far = 1 << 20  # past any window
    return [state_floats(name, config.d_model, config.mixer, 2 * far) == state_floats(name, config.d_model, config.mixer, far)
            for name in config.layers]


def detached(state):
    """A copy of a state (a model's list of layer states, or one layer's) cut from the autograd
    graph; numbers and None as they are."""
    return map_state(state, Tensor.detach)


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, std=0.02)


@torch.no_grad()
def forward_in_chunks(model: LanguageModel, tokens: Tensor, chunk: int, state: list | None = None
                      ) -> tuple[Tensor, list]:
    """Feed tokens (B, L) through the model `chunk` tokens at a time; logits of the last position."""
    logits = None
    for start in range(0, tokens.shape[1], chunk):
        logits, state = model(tokens[:, start:start + chunk], state, last_only=True)
    return logits[:, -1], state  # (B, V)
