"""Interventions: what a study may do to a model so that it extrapolates past its training length
T, each measured beside the baseline (the model as trained and evaluated without one).

An intervention is a study option (`interventions:` in the YAML). A training intervention trains
a new model with the baseline's recipe and changes only the state each training batch starts
from; its name enters the model's id (through `TrainSpec.intervention`). An inference
intervention evaluates the baseline's own checkpoint differently at lengths past T; its name
enters the evaluation cell's id, and its knobs (decay-scale-fit's samples) only when set to other
than their defaults, so that a knob added later changes no stored id. `state-passing` with
`steps` post-trains the baseline's checkpoint instead of training from scratch: its model needs
the baseline's training, and the baseline's id enters its own. A model is labelled
`<name>+<intervention>` in the store, so
that nothing that pools results by model name mixes it with its baseline.

The inference interventions on a recurrent state are `decay-scale` (every decay a_t becomes
a_t^(T/L)) and `token-filter` (DeciMamba's idea: past T, in each head of a layer whose decay
depends on its input, only the T/L of the tokens that make it forget most, -log a_t, write to its
state; the others pass through it with no decay and no write; `TokenFiltered` in
mixers/base.py). Those on attention scale RoPE (`rope-pi`, `rope-ntk`, `rope-yarn`) or make it a
sliding `window` of T keys.

Whether an intervention applies to a model is decided by what its mixers can do, never by a
family's name: the training interventions need a layer whose state is bounded (a recurrent
state or a window, `models.bounded_layers`); an inference intervention needs a layer whose mixer
implements it (`inference_interventions`, mixers/base.py): `token-filter` one with a
data-dependent decay (Mamba, Mamba-2, GLA, RG-LRU, RWKV-6, Gated DeltaNet), not a fixed one (S4D,
RetNet) or none (DeltaNet). A pair that does not apply is not planned, and the report says n/a.

`decay-scale-fit` is `decay-scale` with its factor calibrated rather than fixed: past T every
log-decay is multiplied by s = (T/L)^p, with the exponent p chosen per (model, length L) from
DECAY_EXPONENTS (p = 0 is the baseline, p = 1 is decay-scale) as the one whose answer loss (the
cross-entropy of the answer symbols, as training's `answer_loss`) is lowest on `samples` held-out
samples of the training task (a mixture's first task) at L, with random needle depths, ties to
the smaller p. It is therefore tuned at L, with the samples' labels, which decay-scale is not.
The calibration samples are drawn from a seed of their own (controlled/decay_fit.py,
`calibration_seed`: the model's seed and L, tagged so that no evaluation sample or training batch
draws from it); it runs in the evaluation job, before the cell's samples are scored, so every
cell of one model at one length chooses the same p, and costs 5 x samples forward passes at L a
cell. At L <= T it is the identity and nothing is calibrated. The chosen p and the loss of each p
are recorded on the cell's prediction lines and in the store's study metadata (DECAY_FIT_KEY).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from .. import models

TRAIN, EVAL = "train", "eval"
TBPTT_PIECES = 4  # tbptt's default: samples of 4T fed in 4 pieces of T
DECAY_EXPONENTS = (0.0, 0.25, 0.5, 0.75, 1.0)  # decay-scale-fit's grid of p, s = (T/L)^p
DECAY_FIT_SAMPLES = 16  # decay-scale-fit's default calibration samples per (model, length)
DECAY_FIT_KEY = "decay_fit"  # the store's study metadata where decay-scale-fit's choices are kept


@dataclass(frozen=True)
class Intervention:
    name: str
    stage: str         # TRAIN: a new model; EVAL: new cells on the baseline's checkpoint
    description: str   # one line, for `longarch plan` and the report
    applies: Callable[[models.ModelConfig], bool]
    options: dict = field(default_factory=dict)  # the knobs it takes, with their defaults


def carries_state(config: models.ModelConfig) -> bool:
    """The model has a layer whose state is bounded, which a training batch can start from."""
    return any(models.bounded_layers(config))


def implemented(name: str) -> Callable[[models.ModelConfig], bool]:
    """The test "some layer's mixer implements the inference intervention `name`"."""
    def applies(config: models.ModelConfig) -> bool:
        return any(name in layer for layer in models.layer_interventions(config))
    return applies


REGISTRY: dict[str, Intervention] = {i.name: i for i in [
    Intervention("state-passing", TRAIN, "each training batch starts from the state the last batch left, detached; "
                 "with `steps`, as a post-training of the baseline's checkpoint for that many steps at T, at a tenth "
                 "of the rate (as Buitrago Ruiz & Gu 2025), else from scratch", carries_state, {"steps": None}),
    Intervention("tbptt", TRAIN, "samples `pieces` times as long as T (default 4) fed in T-long pieces, the state "
                 "carried and detached between pieces (truncated backpropagation through time)", carries_state,
                 {"pieces": TBPTT_PIECES}),
    Intervention("noise-state", TRAIN, "each training sequence starts from the state left by a prefix of uniformly "
                 "random symbols as long as the sample", carries_state),
    Intervention("decay-scale", EVAL, "past T, every per-step decay a becomes a^(T/L) (the step dt of Mamba, "
                 "Mamba-2 and S4D times T/L), as in LongMamba and DeciMamba", implemented("decay-scale")),
    Intervention("decay-scale-fit", EVAL, "past T, every per-step decay a becomes a^((T/L)^p), the exponent p of "
                 "0, 0.25, 0.5, 0.75, 1 calibrated per model and length: the one with the lowest answer loss on "
                 "`samples` held-out samples (default 16) of the training task at L, answers included (so, unlike "
                 "decay-scale, tuned at L with labels)", implemented("decay-scale-fit"),
                 {"samples": DECAY_FIT_SAMPLES}),
    Intervention("token-filter", EVAL, "past T, each head of a layer with a data-dependent decay lets only the "
                 "T/L of a call's tokens that make it forget most write to its state; the rest pass it untouched "
                 "(DeciMamba's token selection)", implemented("token-filter")),
    Intervention("rope-pi", EVAL, "past T, RoPE position interpolation by L/T", implemented("rope-pi")),
    Intervention("rope-ntk", EVAL, "past T, NTK-aware RoPE scaling by L/T", implemented("rope-ntk")),
    Intervention("rope-yarn", EVAL, "past T, YaRN RoPE scaling by L/T with its logit temperature",
                 implemented("rope-yarn")),
    Intervention("window", EVAL, "past T, global attention sees only the last T keys (a sliding window)",
                 implemented("window")),
]}


def get(name: str) -> Intervention:
    """The intervention named `name`; ValueError naming the known ones otherwise."""
    if name not in REGISTRY:
        raise ValueError(f"unknown intervention {name!r} (known: {', '.join(REGISTRY)})")
    return REGISTRY[name]


def labelled(label: str, name: str | None) -> str:
    """A model's label under an intervention, as stored: `mamba2+decay-scale` (the baseline's as is)."""
    return f"{label}+{name}" if name else label


def base_label(label: str, name: str | None) -> str:
    """The baseline's label of a label from `labelled`."""
    return label.removesuffix(f"+{name}") if name else label
