"""Diagnostics: why a model's needle retrieval fails past its training length T.

Each measure runs a trained model (models.LanguageModel, or anything called the same way:
`model(tokens, state, last_only=...) -> (logits, state)` with `model.blocks[i].mixer`) on
samples of a needle task (tasks/tokens/needle.py: meta `needle_positions` says where each
needle starts, `needle_length` and `tail_length` how long a needle and the final query are), fed
through the streaming state `chunk` tokens at a time as evaluation feeds it, with RoPE scaled
for the length as evaluation scales it. Each returns plain data (dicts of lists) for the store:

- `loss` (position_loss): at each length T, 2T, ... max_factor T, samples with the needle at a
  random depth, the answer appended; -log p of each symbol given those before it. Symbols of the
  haystack and of the needles are pooled over the lengths by their position t in log2 bins
  [2^b, 2^(b+1)); the answer's symbols (the answer given the needle) by the sample's length.
  The tail's QUERY KEY symbols are in neither.
- `retention` (needle_retention): how much of the needle's write is left in each recurrent
  layer's state after k filler symbols. Two runs of the same prefix up to and including the
  needle (at position T), one with the needle and one with it cut out (the haystack that follows
  moves up to fill its place): D = state(with) - state(without) is the needle's write, per layer.
  Then the run with the needle reads the k haystack symbols after the needle, and each layer's
  two states are stepped by that layer's mixer on the same inputs, the ones the layer gets in
  that run: retention(k) = <D_k, D> / <D, D>, the projection of the write that is left on the
  write, per layer and head, summed over the samples (numerator and denominator apart). Feeding
  both states the same layer inputs keeps apart what a layer's own recurrence keeps (the
  product of its decays, for a decay per head: a single head with a fixed decay a gives a^k
  exactly) from what the layers below pass up of the needle later. A short convolution (or
  RWKV's token shift) still holds the needle's last symbols in its shift register after the
  needle ends and writes them into the state over the next few steps, so the write is taken
  once it is complete: D is read after the first `settle` filler symbols, the fewest after
  which every layer's two shift registers hold the same inputs (d_conv - 1 for a convolution;
  at most SETTLE_MAX), and k counts the filler symbols after those. k = 1, 2, 4, ... up to
  max_factor T.
- `attention` (needle_attention): for each attention layer and head, the weight that the query
  of the prompt's last symbol (the one whose next-symbol prediction is the answer's first)
  puts on the needles' symbols, and the entropy (nats) of its weights, averaged over the
  samples, at each length; uniform attention over L keys has entropy ln L.
- `state-norm` (state_norms): the Frobenius norm of each layer's state (its memory, below)
  after T, 2T, ... max_factor T symbols of one long sample, averaged over the samples.

How a state is read. A layer's state is what its mixer returns (mixers/base.py): a tensor, a
dataclass, tuple or dict of tensors (and ints). Its memory is its tensors less the shift
registers (SHIFT_FIELDS: a convolution's last inputs, RWKV's previous token), which hold the
last few inputs rather than a summary of the past. A mixer may declare its memory and head
axes in a class attribute `state_head_axes = {field: axis or None}` (then only the fields it
names are memory). Otherwise a tensor of 4 or more dimensions has its heads on axis 1
(B, H, ., .), as every built-in multi-head recurrence keeps them (Mamba-2, GLA, RetNet,
DeltaNet, RWKV-6), and a smaller one has none: its whole memory is read as one head (Mamba,
S4D, RG-LRU keep per-channel states, (B, C, N) or (B, C)). Heads of several memory tensors
are listed one tensor after another. A layer is an attention layer when its mixer has
`attention_weights` (mixers/attention.py), which gives the weights of chosen queries; every
other layer is recurrent.
"""

from __future__ import annotations

import dataclasses
import math
from contextlib import contextmanager

import numpy as np
import torch
from torch import Tensor

from .. import mixers
from ..mixers.base import map_state

MEASURES = ("loss", "retention", "attention", "state-norm")
SHIFT_FIELDS = ("conv_tail", "last_x")  # state fields that are the last inputs, not memory
MIN_WRITE = 1e-6  # a head whose write <D, D> is below this share of its layer's largest is not read
SETTLE_MAX = 64  # filler symbols retention waits at most for the shift registers to forget the needle


def lengths(train_length: int, max_factor: int) -> list[int]:
    """T, 2T, 4T, ... up to max_factor * T."""
    out, length = [], train_length
    while length <= max_factor * train_length:
        out.append(length)
        length *= 2
    return out


def sample_seed(seed: int, length: int) -> int:
    """The seed of a measure's samples at one length."""
    return int(np.random.SeedSequence([seed, length]).generate_state(1)[0])


def is_needle_task(task) -> bool:
    """Whether the task's samples say where their needles are (the diagnostics need that)."""
    return hasattr(task, "needle_length") and hasattr(task, "tail_length")


def is_attention(mixer) -> bool:
    return hasattr(mixer, "attention_weights")


def applicable(measure: str, layers: tuple[str, ...] | list[str]) -> bool:
    """Whether `measure` says something about a stack of these mixers (registered names):
    retention needs a recurrent layer, attention an attention layer."""
    attention = [is_attention(mixers.get(name).mixer) for name in layers]
    if measure == "retention":
        return not all(attention)
    if measure == "attention":
        return any(attention)
    return measure in MEASURES


# --------------------------------------------------------------------------------------------
# reading states and streaming
# --------------------------------------------------------------------------------------------
def _tensors(state) -> list[tuple[str, Tensor]]:
    """The named tensors of a layer's state (ints and the like left out)."""
    if state is None:
        return []
    if isinstance(state, Tensor):
        return [("state", state)]
    if dataclasses.is_dataclass(state):
        items = [(f.name, getattr(state, f.name)) for f in dataclasses.fields(state)]
    elif isinstance(state, (tuple, list)):
        items = [(str(i), value) for i, value in enumerate(state)]
    elif isinstance(state, dict):
        items = [(str(k), v) for k, v in state.items()]
    else:
        return []
    return [(name, value) for name, value in items if isinstance(value, Tensor)]


def memory(mixer, state) -> list[tuple[str, Tensor, int | None]]:
    """The memory tensors of a layer's state, each with its head axis (None: no head axis);
    see the module docstring."""
    declared = getattr(mixer, "state_head_axes", None)
    out = []
    for name, tensor in _tensors(state):
        if declared is not None:
            if name in declared:
                out.append((name, tensor, declared[name]))
        elif name not in SHIFT_FIELDS:
            out.append((name, tensor, 1 if tensor.dim() >= 4 else None))
    return out


def shifts(mixer, state) -> list[Tensor]:
    """The shift registers of a layer's state: its tensors that are not memory (`memory`)."""
    kept = {id(tensor) for _, tensor, _ in memory(mixer, state)}
    return [tensor for _, tensor in _tensors(state) if id(tensor) not in kept]


def by_head(mixer, state) -> Tensor:
    """A layer's memory as (B, H, F) float64: heads of each memory tensor, one after another."""
    parts = []
    for _, tensor, axis in memory(mixer, state):
        tensor = tensor.double()
        if axis is None:
            parts.append(tensor.reshape(tensor.shape[0], 1, -1))  # (B, 1, F)
        else:
            parts.append(tensor.movedim(axis, 1).reshape(tensor.shape[0], tensor.shape[axis], -1))  # (B, H, F)
    if not parts:
        raise ValueError(f"the state of {type(mixer).__name__} holds no tensor")
    width = max(p.shape[-1] for p in parts)  # tensors of different widths: zero-padded, which no dot product sees
    return torch.cat([torch.nn.functional.pad(p, (0, width - p.shape[-1])) for p in parts], dim=1)


def _stream(model, tokens: Tensor, state, chunk: int, on_logits=None):
    """Feed tokens (B, L) `chunk` at a time through the state; `on_logits(start, logits)` sees each
    piece's logits (B, c, V) (without it only the last position's are computed). The new state."""
    for start in range(0, tokens.shape[1], chunk):
        logits, state = model(tokens[:, start:start + chunk], state, last_only=on_logits is None)
        if on_logits is not None:
            on_logits(start, logits)
    return state


@contextmanager
def _context(model, train_length: int, length: int):
    """The model in evaluation mode, set for sequences of `length` (RoPE scaling), then set back."""
    model.eval()
    if hasattr(model, "set_context"):
        model.set_context(train_length, length)
    try:
        with torch.no_grad():
            yield
    finally:
        if hasattr(model, "set_context"):
            model.set_context(train_length, train_length)


def _kind(block) -> str:
    return getattr(block, "kind", type(block.mixer).__name__)


def _finite(values) -> list:
    """Floats for JSON: NaN and infinities as None."""
    return [float(v) if v is not None and math.isfinite(v) else None for v in np.asarray(values, dtype=float).tolist()]


def needle_mask(starts: np.ndarray, needle_length: int, width: int) -> np.ndarray:
    """(n, width) True on each symbol of the needles that start at `starts` (n, S)."""
    t = np.arange(width)[None, None, :]  # (1, 1, W)
    starts = np.asarray(starts).reshape(len(starts), -1)[:, :, None]  # (n, S, 1)
    return ((t >= starts) & (t < starts + needle_length)).any(axis=1)  # (n, W)


# --------------------------------------------------------------------------------------------
# loss by position
# --------------------------------------------------------------------------------------------
@torch.no_grad()
def token_losses(model, tokens: np.ndarray, chunk: int = 1024) -> np.ndarray:
    """-log p(symbol t | symbols before t) for t = 1 .. L-1 of each row of tokens (n, L):
    (n, L - 1), column t - 1 for symbol t."""
    x = torch.from_numpy(np.ascontiguousarray(tokens))  # (n, L)
    out = torch.empty(x.shape[0], x.shape[1] - 1, dtype=torch.float64)

    def take(start: int, logits: Tensor) -> None:
        targets = x[:, start + 1:start + 1 + logits.shape[1]]  # (n, c'): the last piece predicts one fewer
        picked = logits[:, :targets.shape[1]].log_softmax(-1).gather(-1, targets[..., None])[..., 0]  # (n, c')
        out[:, start:start + targets.shape[1]] = -picked

    _stream(model, x, None, chunk, take)
    return out.numpy()


def position_loss(model, task, train_length: int, max_factor: int, samples: int, seed: int,
                  chunk: int = 1024) -> dict:
    """Loss on haystack and needle symbols by log2 position bin, and on the answer by length
    (module docstring). Bin b covers positions [2^b, 2^(b+1)); `bins` lists 2^b."""
    top = lengths(train_length, max_factor)
    n_bins = max(1, (top[-1] - 1).bit_length())  # the last haystack symbol is at top - 2 or before
    sums = {kind: np.zeros(n_bins) for kind in ("haystack", "needle")}
    counts = {kind: np.zeros(n_bins, dtype=np.int64) for kind in ("haystack", "needle")}
    answer, answer_n = [], []
    for length in top:
        drawn = task.generate(length=length, n=samples, seed=sample_seed(seed, length))
        sequence = np.concatenate([drawn.tokens, drawn.answers], axis=1)  # (n, L + k)
        with _context(model, train_length, length):
            loss = token_losses(model, sequence, chunk)  # (n, L + k - 1): symbol t at t - 1
        positions = np.arange(1, sequence.shape[1])  # (W,)
        needle = needle_mask(drawn.meta["needle_positions"], task.needle_length, sequence.shape[1])[:, 1:]
        body = positions < length - task.tail_length  # (W,): not the tail, not the answer
        bins = np.broadcast_to(np.floor(np.log2(positions)).astype(np.int64), loss.shape)
        for kind, mask in (("haystack", body & ~needle), ("needle", body & needle)):
            sums[kind] += np.bincount(bins[mask], weights=loss[mask], minlength=n_bins)
            counts[kind] += np.bincount(bins[mask], minlength=n_bins)
        answer.append(float(loss[:, length - 1:].mean()))
        answer_n.append(int(loss[:, length - 1:].size))
    with np.errstate(invalid="ignore", divide="ignore"):
        means = {kind: sums[kind] / counts[kind] for kind in sums}
    return {"bins": [1 << b for b in range(n_bins)],
            "haystack": _finite(means["haystack"]), "haystack_n": counts["haystack"].tolist(),
            "needle": _finite(means["needle"]), "needle_n": counts["needle"].tolist(),
            "lengths": top, "answer": _finite(answer), "answer_n": answer_n}


# --------------------------------------------------------------------------------------------
# retention of the needle through the state
# --------------------------------------------------------------------------------------------
def filler_steps(longest: int) -> list[int]:
    """k = 1, 2, 4, ... up to `longest` (and `longest` itself)."""
    steps = [1 << i for i in range(int(math.log2(longest)) + 1)] if longest >= 1 else []
    return steps + ([longest] if steps and steps[-1] != longest else [])


@torch.no_grad()
def retention_sums(model, tokens: Tensor, start: int, needle_length: int, steps: list[int], chunk: int = 1024
                   ) -> tuple[int, dict[int, tuple[Tensor, Tensor]]]:
    """For sequences (n, L) whose needle starts at `start`: the filler symbols the write took to
    settle (`settle`, module docstring), and per recurrent layer index the sums over the
    sequences of <D_k, D> for each k of `steps` (len(steps), H) and of <D, D> (H,), D read after
    those symbols and k counted from there. The haystack after the needle must hold
    SETTLE_MAX + max(steps) + needle_length symbols.

    The run with the needle goes on through the whole model; each recurrent layer's pair of
    states (with, without) is stepped by the layer's own mixer on the inputs that layer gets in
    that run, read by a hook, so both see the same inputs and D_k is what the layer's own
    recurrence keeps of its write (for a decay a_t per head: the product of the a_t)."""
    n, m = tokens.shape[0], needle_length
    if tokens.shape[1] - start - 2 * m < max(steps) + SETTLE_MAX:
        raise ValueError(f"retention: {tokens.shape[1] - start - 2 * m} symbols after the needle at {start}, "
                         f"fewer than the {max(steps)} filler symbols asked and {SETTLE_MAX} to settle")
    without = torch.cat([tokens[:, :start], tokens[:, start + m:start + 2 * m]], dim=1)  # the needle cut out
    pairs = _stream(model, torch.cat([tokens[:, :start + m], without]), None, chunk)  # (2n, .) per layer
    recurrent = [i for i, block in enumerate(model.blocks) if not is_attention(block.mixer)]

    def written(i: int) -> Tensor:
        heads = by_head(model.blocks[i].mixer, pairs[i])  # (2n, H, F)
        return heads[:n] - heads[n:]  # (n, H, F)

    def step_pair(i: int):
        def hook(mixer, args):  # args[0]: the layer's input (n, c, D) in the run with the needle
            _, pairs[i] = mixer.forward(torch.cat([args[0], args[0]]), pairs[i])  # forward: no hook again
        return hook

    def settled() -> bool:  # every layer's two shift registers hold the same inputs
        return all(torch.equal(a[:n], a[n:]) for i in recurrent for a in shifts(model.blocks[i].mixer, pairs[i]))

    dots: dict[int, list[Tensor]] = {i: [] for i in recurrent}
    state = [_rows(layer_state, n) for layer_state in pairs]  # the run with the needle
    hooks = [model.blocks[i].mixer.register_forward_pre_hook(step_pair(i)) for i in recurrent]
    try:
        settle = 0
        while settle < SETTLE_MAX and not settled():
            state = _stream(model, tokens[:, start + m + settle:start + m + settle + 1], state, chunk)
            settle += 1
        writes, first, done = {i: written(i) for i in recurrent}, start + m + settle, 0
        for k in steps:
            state = _stream(model, tokens[:, first + done:first + k], state, chunk)
            done = k
            for i in recurrent:
                dots[i].append((written(i) * writes[i]).sum(dim=(0, 2)))  # (H,)
    finally:
        for hook in hooks:
            hook.remove()
    return settle, {i: (torch.stack(dots[i]), (writes[i] ** 2).sum(dim=(0, 2))) for i in recurrent}


def _rows(state, n: int):
    """A layer's state of its first n sequences (every tensor cut on its batch axis, 0)."""
    return map_state(state, lambda tensor: tensor[:n])


def needle_retention(model, task, train_length: int, max_factor: int, samples: int, seed: int,
                     chunk: int = 1024) -> dict:
    """Retention of the needle's write in each recurrent layer and head after k filler symbols,
    the needle at position T of a haystack of the task's format (module docstring)."""
    m, longest = task.needle_length, max_factor * train_length
    # room for the write to settle, and for a needle that snaps (needles format)
    length = train_length + SETTLE_MAX + longest + 2 * m + task.tail_length
    span = length - task.tail_length - m
    drawn = task.generate(length=length, n=samples, seed=sample_seed(seed, length), depth=100.0 * train_length / span)
    starts = np.asarray(drawn.meta["needle_position"])
    steps = filler_steps(longest)
    totals: dict[int, list[Tensor]] = {}
    settle = 0
    with _context(model, train_length, length):
        for start in np.unique(starts):  # one batch per needle position (one for every format but needles)
            rows = torch.from_numpy(np.ascontiguousarray(drawn.tokens[starts == start]))
            took, sums = retention_sums(model, rows, int(start), m, steps, chunk)
            settle = max(settle, took)
            for i, (dot, write) in sums.items():
                totals[i] = [dot, write] if i not in totals else [totals[i][0] + dot, totals[i][1] + write]
    layers = []
    for i, (dot, write) in sorted(totals.items()):
        read = write > MIN_WRITE * write.max()  # (H,)
        ratio = torch.where(read, dot / write.clamp_min(1e-300), torch.full_like(dot, float("nan")))  # (k, H)
        layers.append({"layer": i, "mixer": _kind(model.blocks[i]), "heads": int(write.shape[0]),
                       "retention": [_finite(ratio[:, h].tolist()) for h in range(write.shape[0])],
                       "write": _finite((write / len(starts)).tolist())})  # mean <D, D> per sample
    return {"steps": steps, "settle": settle, "needle_position": [int(s) for s in np.unique(starts)], "layers": layers}


# --------------------------------------------------------------------------------------------
# attention on the needle
# --------------------------------------------------------------------------------------------
@torch.no_grad()
def attention_on_needle(model, tokens: np.ndarray, needle: np.ndarray, chunk: int = 1024
                        ) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Per attention layer index: the weight the query of each row's last symbol puts on the
    symbols marked in `needle` (n, L), and the entropy (nats) of its weights; (n, H) each.
    tokens (n, L). The weights come from the mixer's `attention_weights`, read by a hook on
    the last symbol's pass only."""
    x = torch.from_numpy(np.ascontiguousarray(tokens))  # (n, L)
    state = _stream(model, x[:, :-1], None, chunk)
    captured: dict[int, Tensor] = {}

    def capture(index: int):
        def hook(mixer, args):
            into = args[1] if len(args) > 1 else None
            captured[index] = mixer.attention_weights(args[0], into, queries=[-1])[:, :, 0]  # (n, H, K)
        return hook

    hooks = [block.mixer.register_forward_pre_hook(capture(i))
             for i, block in enumerate(model.blocks) if is_attention(block.mixer)]
    try:
        model(x[:, -1:], state, last_only=True)
    finally:
        for hook in hooks:
            hook.remove()
    out = {}
    for i, weights in captured.items():
        weights = weights.double()  # keys at positions L - K .. L - 1 (a window keeps only its last K)
        on = torch.from_numpy(needle[:, tokens.shape[1] - weights.shape[-1]:]).to(weights.dtype)  # (n, K)
        mass = (weights * on[:, None]).sum(-1)  # (n, H)
        entropy = -torch.special.xlogy(weights, weights).sum(-1)  # (n, H); 0 log 0 = 0
        out[i] = (mass.numpy(), entropy.numpy())
    return out


def needle_attention(model, task, train_length: int, max_factor: int, samples: int, seed: int,
                     chunk: int = 1024) -> dict:
    """Attention mass on the queried needles and attention entropy of the answer's query, per
    attention layer and head, at each length (module docstring)."""
    top = lengths(train_length, max_factor)
    per_layer: dict[int, dict[str, list]] = {}
    for length in top:
        drawn = task.generate(length=length, n=samples, seed=sample_seed(seed, length))
        starts = np.where(drawn.meta["needle_queried"], drawn.meta["needle_positions"], -task.needle_length)
        with _context(model, train_length, length):
            found = attention_on_needle(model, drawn.tokens, needle_mask(starts, task.needle_length, length), chunk)
        for i, (mass, entropy) in found.items():
            entry = per_layer.setdefault(i, {"mass": [], "entropy": []})
            entry["mass"].append(mass.mean(axis=0))  # (H,)
            entry["entropy"].append(entropy.mean(axis=0))
    layers = []
    for i, entry in sorted(per_layer.items()):
        mass, entropy = np.stack(entry["mass"], axis=1), np.stack(entry["entropy"], axis=1)  # (H, lengths)
        layers.append({"layer": i, "mixer": _kind(model.blocks[i]), "heads": int(mass.shape[0]),
                       "mass": [_finite(row) for row in mass], "entropy": [_finite(row) for row in entropy]})
    return {"lengths": top, "uniform_entropy": _finite(np.log(top)), "layers": layers}


# --------------------------------------------------------------------------------------------
# the state's norm
# --------------------------------------------------------------------------------------------
def state_norms(model, task, train_length: int, max_factor: int, samples: int, seed: int,
                chunk: int = 1024) -> dict:
    """The norm of each layer's memory after T, 2T, ... max_factor T symbols, mean over samples."""
    marks = lengths(train_length, max_factor)
    drawn = task.generate(length=marks[-1], n=samples, seed=sample_seed(seed, marks[-1]))
    x = torch.from_numpy(np.ascontiguousarray(drawn.tokens))
    norms: dict[int, list[float]] = {i: [] for i in range(len(model.blocks))}
    state, done = None, 0
    with _context(model, train_length, marks[-1]):
        for mark in marks:
            state = _stream(model, x[:, done:mark], state, chunk)
            done = mark
            for i, block in enumerate(model.blocks):
                heads = by_head(block.mixer, state[i])  # (n, H, F)
                norms[i].append(float(heads.pow(2).sum(dim=(1, 2)).sqrt().mean()))
    return {"lengths": marks, "layers": [{"layer": i, "mixer": _kind(model.blocks[i]), "norm": _finite(values)}
                                         for i, values in norms.items()]}


MEASURE_FUNCTIONS = {"loss": position_loss, "retention": needle_retention, "attention": needle_attention,
                     "state-norm": state_norms}


def measure(name: str, model, task, train_length: int, max_factor: int, samples: int, seed: int,
            chunk: int = 1024) -> dict:
    """One diagnostic (MEASURES) of a model on a needle task, as plain data for the store."""
    if name not in MEASURE_FUNCTIONS:
        raise ValueError(f"unknown diagnostic {name!r} (known: {', '.join(MEASURES)})")
    if not is_needle_task(task):
        raise ValueError(f"diagnostic {name!r} needs a needle task, not {getattr(task, 'name', task)!r}")
    return MEASURE_FUNCTIONS[name](model, task, train_length, max_factor, samples, seed, chunk)
