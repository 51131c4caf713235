"""The contract of every mixer letter in the registry: shape and options, feeding a sequence in
pieces equals feeding it whole, the sequential reference equals the fast path, no output depends
on a later input, every part of the state and every parameter matters, the state size is counted
truthfully, and any width builds. A new letter in MIXERS is covered here without a new test;
each family's own file keeps only what is specific to it."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from longarch.mixers import MIXERS, make_mixer, option_names, state_floats

pytestmark = pytest.mark.usefixtures("one_thread")

LETTERS = sorted(MIXERS)
# Options handed to every mixer (each takes only the fields it has): small chunks so that a few
# dozen tokens already cross several chunk boundaries.
OPTIONS = {"n_heads": 2, "d_state": 8, "head_dim": 8, "chunk_size": 8}
TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-4}
DTYPES = pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
# State fields that only keep past inputs (a convolution's tail, the previous token): every path
# must carry them bit for bit.
COPIED_INPUTS = {"conv_tail", "last_x"}


def _option_default(letter: str, name: str):
    fields = {f.name: f for f in dataclasses.fields(MIXERS[letter][0])}
    return fields[name].default if name in fields else None


def _variants():
    """Every letter as registered, and again with its optional short convolution switched on
    where it has one that is off by default (GLA, RetNet: flash-linear-attention's short conv)."""
    for letter in LETTERS:
        yield pytest.param(letter, {}, id=letter)
        if _option_default(letter, "d_conv") == 0:
            yield pytest.param(letter, {"d_conv": 3}, id=f"{letter}+conv")


VARIANTS = list(_variants())


def _mixer(letter: str, d_model: int = 16, dtype: torch.dtype = torch.float64, **options) -> torch.nn.Module:
    """A small mixer whose zero-initialised parameters (LoRA down-projections, gate and norm
    biases) are moved off zero, so that the paths they switch off at init are exercised too."""
    torch.manual_seed(1)
    mixer = make_mixer(letter, d_model, {**OPTIONS, **options})
    with torch.no_grad():
        for p in mixer.parameters():
            if not p.any():
                p.uniform_(-2.0, 2.0)
    return mixer.to(dtype)


def _fields(state) -> dict:
    """A state's parts by name: a dataclass's fields, or a lone tensor."""
    if isinstance(state, torch.Tensor):
        return {"state": state}
    return {f.name: getattr(state, f.name) for f in dataclasses.fields(state)}


def _replace(state, name: str, value):
    return value if isinstance(state, torch.Tensor) else dataclasses.replace(state, **{name: value})


def _assert_same_state(got, want, tol: float) -> None:
    assert type(got) is type(want)
    expected_fields = _fields(want)
    for name, value in _fields(got).items():
        expected = expected_fields[name]
        if not isinstance(value, torch.Tensor):
            assert value == expected, name  # e.g. the absolute position
        elif name in COPIED_INPUTS:
            torch.testing.assert_close(value, expected, rtol=0, atol=0, msg=lambda m: f"{name}: {m}")
        else:
            torch.testing.assert_close(value, expected, rtol=tol, atol=tol, msg=lambda m: f"{name}: {m}")


def _floats_per_sequence(state) -> int:
    return sum(value[0].numel() for value in _fields(state).values() if isinstance(value, torch.Tensor))


def _feed(mixer, u, sizes):
    outputs, state, start = [], None, 0
    for size in sizes:
        y, state = mixer(u[:, start:start + size], state)
        outputs.append(y)
        start += size
    return torch.cat(outputs, 1), state


@pytest.mark.parametrize("letter,variant", VARIANTS)
def test_mixer_shape_and_options(letter, variant):
    config_cls, module_cls, family = MIXERS[letter]
    assert dataclasses.is_dataclass(config_cls) and isinstance(family, str) and family
    assert "d_model" not in option_names(letter)
    mixer = make_mixer(letter, 16, {**OPTIONS, **variant})
    assert isinstance(mixer, module_cls)
    y, state = mixer(torch.randn(3, 10, 16))
    assert y.shape == (3, 10, 16) and y.dtype == torch.float32
    # What continues the sequence: a tensor, or a dataclass of tensors and plain values.
    assert isinstance(state, torch.Tensor) or dataclasses.is_dataclass(state)


@DTYPES
@pytest.mark.parametrize("pieces", [[1, 7, 30], [8, 8, 8, 14], [1] * 6 + [32], [1, 1, 1, 2, 5]],
                         ids=["1-7-30-rest", "8s-rest", "ones-rest", "small-rest"])
@pytest.mark.parametrize("letter,variant", VARIANTS)
def test_mixer_pieces_equal_whole(letter, variant, pieces, dtype):
    mixer, L, tol = _mixer(letter, dtype=dtype, **variant), 70, TOLERANCE[dtype]
    u = torch.randn(2, L, 16, dtype=dtype)
    sizes = pieces + [L - sum(pieces)]
    with torch.no_grad():
        whole, whole_state = mixer(u)
        fed, state = _feed(mixer, u, sizes)
        torch.testing.assert_close(fed, whole, rtol=tol, atol=tol)
        _assert_same_state(state, whole_state, tol)
        # The test can fail: the last piece without its state is different.
        fresh, _ = mixer(u[:, L - sizes[-1]:])
    assert (fresh - whole[:, L - sizes[-1]:]).abs().max() > 1e-3


def _letters_and_chunk_sizes(chunk_sizes):
    """Every variant with each chunk size where it has that option, once where it has not."""
    return [pytest.param(letter, variant, size, id=f"{case.id}-chunk{size}" if size else case.id)
            for case in VARIANTS for letter, variant in [case.values]
            for size in (chunk_sizes if "chunk_size" in option_names(letter) else [None])]


@DTYPES
@pytest.mark.parametrize("letter,variant,chunk_size", _letters_and_chunk_sizes([3, 4, 7, 16, 64]))
def test_mixer_reference_equals_fast_path(letter, variant, chunk_size, dtype):
    """The sequential reference agrees with the fast path: outputs and state, also from a state."""
    mixer, tol = _mixer(letter, dtype=dtype, **variant, **({"chunk_size": chunk_size} if chunk_size else {})), TOLERANCE[dtype]
    u = torch.randn(2, 29, 16, dtype=dtype)
    v = torch.randn(2, 11, 16, dtype=dtype)
    with torch.no_grad():
        y, state = mixer(u)
        y_ref, state_ref = mixer(u, reference=True)
        z, _ = mixer(v, state)
        z_ref, _ = mixer(v, state_ref, reference=True)
    torch.testing.assert_close(y, y_ref, rtol=tol, atol=tol)
    _assert_same_state(state, state_ref, tol)
    torch.testing.assert_close(z, z_ref, rtol=tol, atol=tol)


@pytest.mark.parametrize("from_state", [False, True], ids=["from-start", "after-a-prefix"])
@pytest.mark.parametrize("letter,variant", VARIANTS)
def test_mixer_is_causal(letter, variant, from_state):
    mixer = _mixer(letter, **variant)
    u = torch.randn(2, 30, 16, dtype=torch.float64)
    changed = u.clone()
    changed[:, 17:] = torch.randn(2, 13, 16, dtype=torch.float64)
    with torch.no_grad():
        state = mixer(torch.randn(2, 9, 16, dtype=torch.float64))[1] if from_state else None
        y, _ = mixer(u, state)
        y_changed, _ = mixer(changed, state)
    torch.testing.assert_close(y_changed[:, :17], y[:, :17], rtol=0, atol=0)  # masked, not merely small
    assert (y_changed[:, 17:] - y[:, 17:]).abs().max() > 1e-4


@pytest.mark.parametrize("letter,variant", VARIANTS)
def test_mixer_is_causal_when_continuing_from_state(letter, variant):
    mixer = _mixer(letter, **variant)
    prefix = torch.randn(1, 9, 16, dtype=torch.float64)
    u = torch.randn(1, 12, 16, dtype=torch.float64)
    changed = u.clone()
    changed[:, 5] += 1.0
    with torch.no_grad():
        _, state = mixer(prefix)
        y, _ = mixer(u, state)
        y_changed, _ = mixer(changed, state)
    torch.testing.assert_close(y_changed[:, :5], y[:, :5], rtol=0, atol=1e-12)
    assert (y_changed[:, 5] - y[:, 5]).abs().max() > 1e-6


@pytest.mark.parametrize("letter,variant", VARIANTS)
def test_every_part_of_the_state_reaches_the_output(letter, variant):
    # e.g. a convolution's tail or the token shift's previous token, beside the recurrent state
    mixer = _mixer(letter, **variant)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        _, state = mixer(torch.randn(1, 9, 16, dtype=torch.float64))
        u = torch.randn(1, 3, 16, dtype=torch.float64)
        y, _ = mixer(u, state)
        for name, value in _fields(state).items():
            if isinstance(value, torch.Tensor):
                moved = value + torch.randn(value.shape, generator=g, dtype=value.dtype)
                y_moved, _ = mixer(u, _replace(state, name, moved))
                assert (y_moved - y).abs().max() > 1e-6, name


@pytest.mark.parametrize("init", ["published", "moved-off-zero"])
@pytest.mark.parametrize("letter,variant", VARIANTS)
def test_every_parameter_gets_a_gradient(letter, variant, init):
    # From the published init a parameter behind a zero-initialised one (RWKV-6's LoRA
    # up-projections) gets no gradient on the very first step, so take one step first, as
    # training would; with every parameter off zero, the first backward already reaches all.
    if init == "published":
        torch.manual_seed(0)
        mixer, steps = make_mixer(letter, 16, {**OPTIONS, **variant}), 1
    else:
        mixer, steps = _mixer(letter, dtype=torch.float32, **variant), 0
    u = torch.randn(2, 21, 16)
    optimizer = torch.optim.SGD(mixer.parameters(), lr=0.1)
    for _ in range(steps + 1):
        optimizer.zero_grad()
        y, _ = mixer(u)
        (y * torch.randn_like(y)).sum().backward()
        optimizer.step()
    for name, p in mixer.named_parameters():
        assert p.grad is not None and p.grad.abs().max() > 0, name


@pytest.mark.parametrize("d_model", [4, 5, 6, 7, 9, 33, 64, 128])
@pytest.mark.parametrize("letter,variant", VARIANTS)
def test_any_width_builds_runs_and_counts_its_state(letter, variant, d_model):
    options = {**OPTIONS, "n_heads": 4, **variant}  # heads that need not divide the width
    mixer = _mixer(letter, d_model, torch.float32, **options)
    with torch.no_grad():
        y, state = mixer(torch.randn(2, 9, d_model))
        assert y.shape == (2, 9, d_model)
        assert state_floats(letter, d_model, options, 9) == _floats_per_sequence(state)
        _, state = mixer(torch.randn(2, 5, d_model), state)
        assert state_floats(letter, d_model, options, 14) == _floats_per_sequence(state)
    if MIXERS[letter][2] != "attention":  # a recurrent state does not grow with the length
        assert state_floats(letter, d_model, options, 10 ** 6) == state_floats(letter, d_model, options, 9)


# Letters whose parameter count steps by under 15% per unit of d_model (from 32 on); the others
# step by whole heads.
SMOOTHLY_SIZED = {"G", "K", "L", "R"}


@pytest.mark.parametrize("letter", LETTERS)
def test_parameter_count_grows_with_d_model(letter):
    counts = [sum(p.numel() for p in make_mixer(letter, d, {}).parameters()) for d in range(4, 80)]
    assert all(b > a for a, b in zip(counts, counts[1:]))
    if letter in SMOOTHLY_SIZED:
        assert max(b / a for a, b in zip(counts[28:], counts[29:])) < 1.15  # from d_model 32 on


@pytest.mark.parametrize("letter,variant", VARIANTS)
def test_each_sequence_of_a_batch_is_mixed_on_its_own(letter, variant):
    mixer = _mixer(letter, **variant)
    u = torch.randn(3, 21, 16, dtype=torch.float64)
    with torch.no_grad():
        together, state = mixer(u)
        alone = [mixer(u[i:i + 1]) for i in range(3)]
    for i, (y, one_state) in enumerate(alone):
        torch.testing.assert_close(together[i:i + 1], y, rtol=0, atol=1e-10)
        for name, value in _fields(one_state).items():
            if isinstance(value, torch.Tensor):
                torch.testing.assert_close(_fields(state)[name][i:i + 1], value, rtol=0, atol=1e-10)


@pytest.mark.parametrize("letter", LETTERS)
def test_every_mixer_keeps_the_written_contract(letter):
    """mixers/base.py's Mixer and MixerConfig protocols: the members a new mixer must have."""
    import inspect

    from longarch.mixers.base import Mixer, MixerConfig

    config_cls, mixer_cls, _ = MIXERS[letter]
    assert dataclasses.is_dataclass(config_cls) and "d_model" in {f.name for f in dataclasses.fields(config_cls)}
    mixer = _mixer(letter)
    assert isinstance(mixer, Mixer) and isinstance(mixer.config, MixerConfig)
    assert list(inspect.signature(mixer.forward).parameters)[1:] == ["state", "reference"]
    assert isinstance(inspect.getattr_static(mixer_cls, "state_floats"), staticmethod)
