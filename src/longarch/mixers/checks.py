"""The mixer contract of base.py as runnable checks, for any mixer: a registered one or a plugin.

    outcomes = run(MyConfig, MyMixer, {"n_heads": 2})   # -> [Outcome(name, passed, detail), ...]

Each check builds small float64 mixers (fixed seed; any parameter initialised to zero moved off
zero, so that the paths it gates are exercised) and feeds them random sequences of a few dozen
tokens, long enough to cross several chunks. A check returns an "ok: ..." line or raises
CheckFailed with one line naming what differs and where. In order:

- paths: the fast path (the whole sequence at once), the step path (one token per call, the
  state carried) and the reference (`reference=True`) give the same outputs and final state,
  also continuing from a state; at chunk sizes 3, 5, 7 and the configured one.
- streaming: a sequence fed in pieces of irregular sizes, each with the state the previous one
  returned, gives what it gives whole (outputs and final state); the state passed in is not
  changed in place, the one returned is a new one, and it matters: the last piece fed without
  it gives other outputs.
- state: every tensor of the state reaches the output (moving it moves the output), and
  `state_floats(config, length)` is the floats one sequence's state holds, at two lengths.
- gradients: the gradients of the fast path equal the reference's, of a loss of the outputs and
  of the final state, with respect to the input, every parameter and the initial state (as
  flash-linear-attention compares dq, dk, dv and dh0); and every parameter gets a gradient.
- causal: changing the inputs from position t on leaves the outputs before t bit for bit as
  they were (from the start and after a prefix) and does change outputs from t on.
- batch: each sequence of a batch mixed alone gives its row of the batch: outputs and state.
- dtype-device: `.to(torch.float32)` gives float32 outputs and state close to float64's, and
  `.to(torch.float64)` brings it back; the mixer builds under `torch.device("meta")` (how the
  package counts parameters); on a GPU, where there is one, it gives what it gives on the CPU.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import Tensor, nn

TOLERANCE = 1e-9  # float64, absolute and relative
GRADIENT_TOLERANCE = 1e-8
FLOAT32_TOLERANCE = 1e-4
CHANGED = 1e-6  # a change smaller than this counts as no change
SEED = 1
# Options handed to every mixer checked (each takes only the fields it has): small heads, chunks
# and window, so that a few dozen tokens already cross several chunk boundaries and slide the
# window; `longarch check --option KEY=VALUE` changes them.
OPTIONS = {"n_heads": 2, "d_state": 8, "head_dim": 8, "chunk_size": 8, "window": 11}


class CheckFailed(Exception):
    """A check's finding: one line saying what differs and where."""


@dataclass(frozen=True)
class Outcome:
    name: str
    passed: bool
    detail: str  # one line: "ok: ..." or what failed, and where


@dataclass
class Subject:
    """A mixer to check: its config and module classes, options (those the config has no field
    for are dropped, so one shared dict fits every mixer) and width."""

    config_cls: type
    mixer_cls: type
    options: dict = field(default_factory=dict)
    d_model: int = 16

    def fields(self) -> set[str]:
        """The config's options (d_model aside)."""
        if not dataclasses.is_dataclass(self.config_cls):
            raise CheckFailed(f"the config {self.config_cls.__name__} is not a dataclass (see mixers/base.py)")
        return {f.name for f in dataclasses.fields(self.config_cls)} - {"d_model"}

    def config(self, **changes) -> Any:
        chosen = {k: v for k, v in {**self.options, **changes}.items() if k in self.fields()}
        return self.config_cls(d_model=self.d_model, **chosen)

    def build(self, published: bool = False, **changes) -> nn.Module:
        """A float64 mixer, the same for the same changes; unless `published`, parameters
        initialised to zero (LoRA down-projections, gate biases) are moved off zero."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(SEED)
            mixer = self.mixer_cls(self.config(**changes))
            with torch.no_grad():
                for p in mixer.parameters():
                    if not published and not p.any():
                        p.uniform_(-2.0, 2.0)
        return mixer.to(torch.float64)

    def chunk_sizes(self, sizes: list[int]) -> list[int | None]:
        """`sizes` and the configured chunk size where the config has one; else [None]."""
        if "chunk_size" not in self.fields():
            return [None]
        return list(dict.fromkeys([*sizes, self.config().chunk_size]))

    def inputs(self, batch: int, length: int, seed: int) -> Tensor:
        """Random float64 sequences (batch, length, d_model), the same for the same seed."""
        g = torch.Generator().manual_seed(seed)
        return torch.randn(batch, length, self.d_model, generator=g, dtype=torch.float64)


CHECKS: dict[str, Callable[[Subject], str]] = {}


def _check(name: str):
    """Register a check under `name`; its CheckFailed lines start with the name."""
    def register(function):
        @functools.wraps(function)
        def check(subject: Subject) -> str:
            try:
                return function(subject)
            except CheckFailed as failure:
                raise CheckFailed(f"{name}: {failure}") from None
        CHECKS[name] = check
        return check
    return register


def run(config_cls: type, mixer_cls: type, options: dict | None = None, d_model: int = 16,
        only: list[str] | None = None) -> list[Outcome]:
    """Run the checks (all, or those named in `only`, in CHECKS' order) on one mixer. A check that
    raises anything but CheckFailed is failed with the exception's type and message."""
    only = [only] if isinstance(only, str) else only
    names = list(CHECKS) if only is None else [n for n in CHECKS if n in only]
    unknown = sorted(set(only or []) - set(CHECKS))
    if unknown:
        raise ValueError(f"no check named {', '.join(unknown)}; the checks are {', '.join(CHECKS)}")
    subject = Subject(config_cls, mixer_cls, dict(options or {}), d_model)
    outcomes = []
    for name in names:
        try:
            outcomes.append(Outcome(name, True, CHECKS[name](subject)))
        except CheckFailed as failure:
            outcomes.append(Outcome(name, False, _one_line(str(failure))))
        except Exception as error:  # noqa: BLE001  (a broken mixer may raise anything)
            outcomes.append(Outcome(name, False, _one_line(f"{type(error).__name__}: {error}")))
    return outcomes


def _one_line(text: str, limit: int = 300) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[:limit - 3] + "..."


# --- States: None, a tensor, a dataclass, a tuple or a dict of tensors and plain values --------

def _fields(state) -> dict[str, Any]:
    """A state's parts by name."""
    if state is None:
        return {}
    if isinstance(state, Tensor):
        return {"state": state}
    if dataclasses.is_dataclass(state):
        return {f.name: getattr(state, f.name) for f in dataclasses.fields(state)}
    if isinstance(state, (tuple, list)):
        return {f"[{i}]": value for i, value in enumerate(state)}
    if isinstance(state, dict):
        return {str(k): v for k, v in state.items()}
    return {"state": state}  # an opaque object: compared with ==


def _with_fields(state, changed: dict[str, Any]):
    """The state with the parts named in `changed` replaced."""
    if not changed:
        return state
    if isinstance(state, Tensor):
        return changed["state"]
    if dataclasses.is_dataclass(state):
        return dataclasses.replace(state, **changed)
    if isinstance(state, (tuple, list)):
        values = [changed.get(f"[{i}]", value) for i, value in enumerate(state)]
        return type(state)(values) if isinstance(state, list) else tuple(values)
    return {k: changed.get(str(k), v) for k, v in state.items()}


def _tensors(state) -> dict[str, Tensor]:
    return {name: value for name, value in _fields(state).items() if isinstance(value, Tensor)}


def _map_tensors(state, function: Callable[[Tensor], Tensor]):
    return _with_fields(state, {name: function(value) for name, value in _tensors(state).items()})


def _floats_per_sequence(state, batch: int) -> int:
    floats = sum(v.numel() * (2 if v.is_complex() else 1) for v in _tensors(state).values())
    if floats % batch:
        raise CheckFailed(f"the state of a batch of {batch} holds {floats} floats, not a whole number per sequence")
    return floats // batch


# --- Comparing ------------------------------------------------------------------------------

def _where(*parts: str) -> str:
    return ", ".join(p for p in parts if p)


def _at(*parts: str) -> str:
    words = _where(*parts)
    return f" at {words}" if words else ""


def _chunk(size: int | None) -> str:
    return "" if size is None else f"chunk_size {size}"


def _compare(what: str, got: Tensor, want: Tensor, tol: float, where: str = "",
             positions: bool = False, hint: str = "") -> float:
    """The largest |got - want|; CheckFailed where it exceeds tol (1 + |want|) somewhere, naming
    `what`, `where` and, for (B, L, ...) outputs, the position (the largest difference)."""
    if got.shape != want.shape:
        raise CheckFailed(f"{what} has shape {tuple(got.shape)}, expected {tuple(want.shape)}{_at(where)}")
    if got.numel() == 0:
        return 0.0
    if got.is_complex() or want.is_complex():
        got, want = torch.view_as_real(got.to(torch.complex128)), torch.view_as_real(want.to(torch.complex128))
    got, want = got.detach().to("cpu", torch.float64), want.detach().to("cpu", torch.float64)
    diff = (got - want).abs().nan_to_num(nan=math.inf)
    if bool((diff <= tol * (1 + want.abs())).all()):
        return diff.max().item()
    worst = diff.max().item()
    position = f"position {int(diff.argmax()) // math.prod(got.shape[2:]) % got.shape[1]}" if positions else ""
    raise CheckFailed(f"{what} differs by {worst:.2g}{_at(where, position)}{': ' + hint if hint else ''}")


def _compare_states(what: str, got, want, tol: float, where: str = "", hint: str = "") -> float:
    """`_compare` for each tensor of two states; their other parts must be equal."""
    if type(got) is not type(want):
        raise CheckFailed(f"{what} is a {type(got).__name__}, expected a {type(want).__name__}{_at(where)}")
    got_fields, want_fields = _fields(got), _fields(want)
    if list(got_fields) != list(want_fields):
        raise CheckFailed(f"{what} has parts {list(got_fields)}, expected {list(want_fields)}{_at(where)}")
    worst = 0.0
    for name, value in got_fields.items():
        expected = want_fields[name]
        if isinstance(value, Tensor) and isinstance(expected, Tensor):
            worst = max(worst, _compare(f"{what} {name}", value, expected, tol, where, hint=hint))
        elif isinstance(value, Tensor) or isinstance(expected, Tensor) or value != expected:
            raise CheckFailed(f"{what} {name} is {value!r}, expected {expected!r}{_at(where)}")
    return worst


def _feed(mixer: nn.Module, u: Tensor, sizes: list[int]):
    """`u` (B, L, D) fed in pieces of `sizes`, each with the state the previous one returned."""
    outputs, state, start = [], None, 0
    for size in sizes:
        y, state = mixer(u[:, start:start + size], state)
        outputs.append(y)
        start += size
    return torch.cat(outputs, 1), state


# --- The checks ---------------------------------------------------------------------------

@_check("paths")
def check_paths(subject: Subject) -> str:
    u, v = subject.inputs(2, 29, seed=1), subject.inputs(2, 11, seed=2)  # (B, L, D)
    sizes, worst = subject.chunk_sizes([3, 5, 7]), 0.0
    for size in sizes:
        mixer, where = subject.build(chunk_size=size), _chunk(size)
        with torch.no_grad():
            y_ref, state_ref = mixer(u, reference=True)
            z_ref, end_ref = mixer(v, state_ref, reference=True)  # continuing from the state
            fast, step = mixer(u), _feed(mixer, u, [1] * u.shape[1])
            for path, (y, state) in (("fast", fast), ("step", step)):
                worst = max(worst, _compare(f"output, {path} vs reference,", y, y_ref, TOLERANCE, where, True),
                            _compare_states(f"final state, {path} vs reference,", state, state_ref,
                                            TOLERANCE, where))
            z, end = mixer(v, fast[1])
            after = _where(where, f"continuing after {u.shape[1]} tokens")
            worst = max(worst, _compare("output, fast vs reference,", z, z_ref, TOLERANCE, after, True),
                        _compare_states("final state, fast vs reference,", end, end_ref, TOLERANCE, after))
    chunks = f"chunk sizes {', '.join(map(str, sizes))}" if sizes != [None] else "no chunk_size option"
    return f"ok: fast, step and reference agree to {worst:.1g} ({chunks}; outputs and state, also from a state)"


@_check("streaming")
def check_streaming(subject: Subject) -> str:
    L = 40
    u = subject.inputs(2, L, seed=3)  # (B, L, D)
    worst, smallest_effect = 0.0, math.inf
    for size in subject.chunk_sizes([5]):
        mixer, where = subject.build(chunk_size=size), _chunk(size)
        with torch.no_grad():
            whole, whole_state = mixer(u)
            for pieces in ([1, 7, 13], [5, 5, 5], [1, 1, 2, 3]):
                sizes = pieces + [L - sum(pieces)]
                fed, state = _feed_watching(mixer, u, sizes, where)
                what = f"{'+'.join(map(str, sizes))} pieces fed with the returned state vs the whole sequence,"
                hint = "the state does not carry the sequence"
                worst = max(worst, _compare(f"output, {what}", fed, whole, TOLERANCE, where, True, hint),
                            _compare_states(f"final state, {what}", state, whole_state, TOLERANCE, where, hint))
            last = sizes[-1]
            fresh, _ = mixer(u[:, L - last:])
            effect = (fresh - whole[:, L - last:]).abs().max().item()
            if not effect > CHANGED:
                raise CheckFailed(f"the last {last} tokens fed without the state give the outputs they give "
                                  f"after the rest (max difference {effect:.2g}{_at(where)}): "
                                  f"the state does not reach the output")
            smallest_effect = min(smallest_effect, effect)
    return (f"ok: pieces equal the whole to {worst:.1g}; the last piece without the state differs by "
            f"{smallest_effect:.2g}")


def _feed_watching(mixer: nn.Module, u: Tensor, sizes: list[int], where: str):
    """`_feed`, failing where a call changes the state it is given in place, or returns it."""
    outputs, state, start = [], None, 0
    for i, size in enumerate(sizes):
        before = _map_tensors(state, Tensor.clone)
        y, new_state = mixer(u[:, start:start + size], state)
        _compare_states(f"the state passed in with piece {i + 1}, changed in place by the call:", state, before,
                        0.0, where)
        given, returned = _tensors(state).values(), _tensors(new_state).values()
        if given and all(a is b or torch.equal(a, b) for a, b in zip(returned, given)):
            raise CheckFailed(f"the state returned after piece {i + 1} ({_where(f'{size} tokens', where)}) is the "
                              f"one passed in, not the state after its last token")
        outputs.append(y)
        state, start = new_state, start + size
    return torch.cat(outputs, 1), state


@_check("state")
def check_state(subject: Subject) -> str:
    mixer, config, g = subject.build(), subject.config(), torch.Generator().manual_seed(4)
    prefix, u, more = (subject.inputs(2, n, seed) for n, seed in ((13, 5), (4, 6), (20, 7)))  # (B, L, D)
    with torch.no_grad():
        _, state = mixer(prefix)
        y, _ = mixer(u, state)
        for name, value in _tensors(state).items():
            if value.numel() == 0:
                continue
            noise = torch.randn(value.shape, generator=g, dtype=torch.float64).to(value.device, value.dtype) \
                if value.is_floating_point() or value.is_complex() else torch.ones_like(value)
            y_moved, _ = mixer(u, _with_fields(state, {name: value + noise}))
            change = (y_moved - y).abs().max().item()
            if not change > CHANGED:
                raise CheckFailed(f"state part {name!r} does not reach the output: moving it by about 1 "
                                  f"changes the next outputs by {change:.2g}")
        _, longer = mixer(more, state)
    for length, held in ((prefix.shape[1], state), (prefix.shape[1] + more.shape[1], longer)):
        counted = subject.mixer_cls.state_floats(config, length)
        holds = _floats_per_sequence(held, prefix.shape[0])
        if counted != holds:
            parts = ", ".join(f"{n} {tuple(v.shape)}" for n, v in _tensors(held).items())
            raise CheckFailed(f"state_floats(config, {length}) = {counted}, but the state after {length} tokens "
                              f"holds {holds} floats per sequence ({parts or 'no tensors'})")
    return f"ok: {len(_tensors(state))} state parts, each reaching the output; state_floats right ({holds} at {length})"


def _weighted_sum(x: Tensor, seed: int) -> Tensor:
    """A loss: the sum of x times fixed random weights (the same for the same shape and seed)."""
    g = torch.Generator().manual_seed(seed)
    return (x * torch.randn(x.shape, generator=g, dtype=torch.float64).to(x.device, x.dtype)).sum()


def _gradients(mixer: nn.Module, u: Tensor, state, reference: bool) -> dict[str, Tensor]:
    """d loss / d (input, each float tensor of the initial state, each parameter), for a loss of
    the outputs and of the final state's float tensors."""
    u = u.detach().requires_grad_()
    leaves = {name: value.detach().requires_grad_() for name, value in _tensors(state).items()
              if value.is_floating_point()}
    y, final = mixer(u, _with_fields(state, leaves), reference=reference)
    loss = _weighted_sum(y, 0) + sum(_weighted_sum(value, i + 1) for i, value in
                                     enumerate(_tensors(final).values()) if value.is_floating_point())
    wrt = {"the input": u, **{f"the initial state's {n}": leaf for n, leaf in leaves.items()},
           **{f"parameter {n}": p for n, p in mixer.named_parameters()}}
    grads = torch.autograd.grad(loss, list(wrt.values()), allow_unused=True)
    return {name: torch.zeros_like(x) if grad is None else grad for (name, x), grad in zip(wrt.items(), grads)}


@_check("gradients")
def check_gradients(subject: Subject) -> str:
    u, prefix = subject.inputs(2, 13, seed=8), subject.inputs(2, 9, seed=9)  # (B, L, D)
    sizes, worst = subject.chunk_sizes([3, 5]), 0.0
    for size in sizes:
        mixer = subject.build(chunk_size=size)
        with torch.no_grad():
            _, prefix_state = mixer(prefix)
        for start, state in (("from the start", None), (f"from a state after {prefix.shape[1]} tokens", prefix_state)):
            fast, reference = _gradients(mixer, u, state, False), _gradients(mixer, u, state, True)
            for name, want in reference.items():
                worst = max(worst, _compare(f"gradient of {name}, fast vs reference,", fast[name], want,
                                            GRADIENT_TOLERANCE, _where(_chunk(size), start)))
    learning = _every_parameter_learns(subject)
    return f"ok: fast and reference gradients agree to {worst:.1g} ({len(reference)} tensors); {learning}"


def _every_parameter_learns(subject: Subject) -> str:
    """Every parameter gets a nonzero gradient: from the published init after one SGD step (a
    parameter behind a zero-initialised one, a LoRA up-projection, gets none on the first), and
    on the first step with every parameter moved off zero."""
    u = subject.inputs(2, 21, seed=10)  # (B, L, D)
    for published, steps in ((True, 1), (False, 0)):
        mixer = subject.build(published=published)
        for _ in range(steps + 1):
            mixer.zero_grad()
            _weighted_sum(mixer(u)[0], 0).backward()
            with torch.no_grad():
                for p in mixer.parameters():
                    if p.grad is not None:
                        p -= 0.1 * p.grad
        dead = [n for n, p in mixer.named_parameters() if p.grad is None or not p.grad.abs().max() > 0]
        if dead:
            init = "after one SGD step from the published init" if published else "with every parameter off zero"
            raise CheckFailed(f"parameter {dead[0]} gets no gradient {init}"
                              f"{f' (and {len(dead) - 1} more)' if len(dead) > 1 else ''}")
    return f"all {len(list(mixer.parameters()))} parameters get a gradient"


@_check("causal")
def check_causal(subject: Subject) -> str:
    L, t = 30, 17
    u, later, prefix = subject.inputs(2, L, 11), subject.inputs(2, L - t, 12), subject.inputs(2, 9, 13)
    changed, nudged = u.clone(), u.clone()  # (B, L, D): from t on, and at t only
    changed[:, t:], nudged[:, t] = later, u[:, t] + 1.0
    for size in subject.chunk_sizes([5]):
        mixer = subject.build(chunk_size=size)
        with torch.no_grad():
            _, prefix_state = mixer(prefix)
            for start, state in (("from the start", None), (f"after {prefix.shape[1]} tokens", prefix_state)):
                y, _ = mixer(u, state)
                if not torch.isfinite(y).all():
                    raise CheckFailed(f"the output holds NaN or inf{_at(_chunk(size), start)}")
                for change, v in ((f"from position {t} on", changed), (f"at position {t} only", nudged)):
                    where = _at(_chunk(size), start)
                    y_changed, _ = mixer(v, state)
                    before = (y_changed[:, :t] - y[:, :t]).abs().nan_to_num(nan=math.inf)
                    if not torch.equal(y_changed[:, :t], y[:, :t]):
                        position = int(before.amax(dim=(0, *range(2, before.dim()))).argmax())
                        raise CheckFailed(f"the output at position {position} changed by {before.max().item():.2g} "
                                          f"when only the input {change} changed{where}: it sees the future")
                    effect = (y_changed[:, t:] - y[:, t:]).abs().max().item()
                    if not effect > CHANGED:
                        raise CheckFailed(f"changing the input {change} leaves the outputs from position {t} on "
                                          f"unchanged (max change {effect:.2g}{where}): the output does not "
                                          f"depend on the input (a constant mixer?)")
    return f"ok: outputs before position {t} bit for bit unchanged, later ones changed (from the start and a state)"


@_check("batch")
def check_batch(subject: Subject) -> str:
    mixer, B = subject.build(), 3
    u, v = subject.inputs(B, 21, seed=14), subject.inputs(B, 8, seed=15)  # (B, L, D)
    worst = 0.0
    with torch.no_grad():
        together, state = mixer(u)
        next_together, _ = mixer(v, state)
        for i in range(B):
            row = _map_tensors(state, lambda value: value[i:i + 1])
            y, alone = mixer(u[i:i + 1])
            y_next, _ = mixer(v[i:i + 1], row)
            what = f"sequence {i} alone vs in a batch of {B},"
            worst = max(worst, _compare(f"output, {what}", y, together[i:i + 1], TOLERANCE, "", True),
                        _compare_states(f"state, {what}", alone, row, TOLERANCE),
                        _compare(f"output continuing from its state row, {what}", y_next,
                                 next_together[i:i + 1], TOLERANCE, "", True))
    return f"ok: each of {B} sequences alone equals its row of the batch to {worst:.1g} (outputs and state)"


@_check("dtype-device")
def check_dtype_device(subject: Subject) -> str:
    mixer = subject.build()
    u, v = subject.inputs(2, 21, seed=16), subject.inputs(2, 8, seed=17)  # (B, L, D)
    with torch.no_grad():
        want = _two_calls(mixer, u, v)
        single = subject.build().to(torch.float32)
        got = _two_calls(single, u.float(), v.float(), "moved to float32")
        _compare_runs("float32", got, want, torch.float32, FLOAT32_TOLERANCE)
        back = single.to(torch.float64)
        got = _two_calls(back, u, v, "moved back to float64")
        _compare_runs("moved back to float64", got, want, torch.float64, FLOAT32_TOLERANCE)
        count = _meta_build(subject, sum(p.numel() for p in mixer.parameters()))
        device, gpu = _gpu(), "cuda not checked: no GPU here"
        if device is not None:
            on_gpu = _two_calls(subject.build().to(device), u.to(device), v.to(device), f"moved to {device.type}")
            _compare_runs(f"on {device.type}", on_gpu, want, torch.float64, TOLERANCE, device)
            gpu = f"on {device.type} equals the CPU"
    return f"ok: float32 within {FLOAT32_TOLERANCE:g} of float64 and back; {count} parameters built on meta; {gpu}"


def _gpu() -> torch.device | None:
    return torch.device("cuda") if torch.cuda.is_available() else None


def _two_calls(mixer: nn.Module, u: Tensor, v: Tensor, moved: str = "") -> tuple:
    """The outputs and states of `u` (B, L, D), then of `v` continuing from `u`'s state; a mixer
    `moved` somewhere that raises fails the check, saying where it was moved."""
    try:
        y, state = mixer(u)
        z, end = mixer(v, state)
    except Exception as error:  # noqa: BLE001
        if not moved:
            raise
        raise CheckFailed(f"{moved}, the mixer fails: {type(error).__name__}: {error}") from error
    return y, state, z, end


def _compare_runs(label: str, got: tuple, want: tuple, dtype: torch.dtype, tol: float,
                  device: torch.device = torch.device("cpu")) -> None:
    """`_two_calls` of a moved mixer against the float64 CPU one: values, dtypes and devices."""
    for y, state, step in ((got[0], got[1], "first call"), (got[2], got[3], "continuing from its state")):
        for name, value in (("output", y), *_tensors(state).items()):
            if (value.is_floating_point() and value.dtype != dtype) or value.device.type != device.type:
                raise CheckFailed(f"{label}: {name} of the {step} is {value.dtype} on {value.device}, "
                                  f"expected {dtype} on {device.type}")
    _compare(f"output {label} vs float64 on the CPU,", got[0], want[0], tol, "", True)
    _compare_states(f"state {label} vs float64 on the CPU,", got[1], want[1], tol)
    _compare(f"output {label} vs float64 on the CPU,", got[2], want[2], tol, "continuing from its state", True)


def _meta_build(subject: Subject, want: int) -> int:
    """Build the mixer under torch.device("meta"); its parameters must be there, as many as on the CPU."""
    try:
        with torch.device("meta"):
            meta = subject.mixer_cls(subject.config())
    except Exception as error:  # noqa: BLE001
        raise CheckFailed(f"building under torch.device('meta') fails: {type(error).__name__}: {error}") from error
    elsewhere = [n for n, p in [*meta.named_parameters(), *meta.named_buffers()] if p.device.type != "meta"]
    if elsewhere:
        raise CheckFailed(f"built under torch.device('meta'), {elsewhere[0]} is not on meta")
    count = sum(p.numel() for p in meta.parameters())
    if count != want:
        raise CheckFailed(f"built under torch.device('meta') it has {count} parameters, on the CPU {want}")
    return count
