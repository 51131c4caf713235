"""The contract of every mixer in the registry. The contract's checks (mixers/checks.py,
also run by `longarch check` on any mixer) run on every variant: the fast, step and reference
paths agree (gradients included), pieces equal the whole, every part of the state matters and is
counted truthfully, no output depends on a later input, each sequence of a batch is mixed on its
own, and float32, meta and cuda builds work. Beside them, what is not a check: shape and options,
float32 paths, any width, parameter counts and the written protocols. A new mixer in the registry
is covered here without a new test; each family's own file keeps only what is specific to it."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from longarch import mixers
from longarch.mixers import checks, make_mixer, option_names, state_floats

pytestmark = pytest.mark.usefixtures("one_thread")

LETTERS = list(mixers.MIXERS)  # every mixer by its name (the built-ins: this file is imported before any plugin)
OPTIONS = checks.OPTIONS  # small heads, chunks and window: a few dozen tokens cross several of each


def _option_default(letter: str, name: str):
    fields = {f.name: f for f in dataclasses.fields(mixers.get(letter).config)}
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


def _floats_per_sequence(state) -> int:
    fields = [getattr(state, f.name) for f in dataclasses.fields(state)] if dataclasses.is_dataclass(state) else [state]
    return sum(value[0].numel() for value in fields if isinstance(value, torch.Tensor))


def _subject(letter: str, variant: dict) -> checks.Subject:
    config_cls, mixer_cls = mixers.get(letter).config, mixers.get(letter).mixer
    return checks.Subject(config_cls, mixer_cls, {**OPTIONS, **variant})


@pytest.mark.parametrize("check", list(checks.CHECKS))
@pytest.mark.parametrize("letter,variant", VARIANTS)
def test_mixer_passes_the_check(letter, variant, check):
    """mixers/checks.py, what `longarch check` runs on any mixer: paths, streaming, state,
    gradients, causal, batch, dtype-device (see its docstring for what each compares)."""
    try:
        checks.CHECKS[check](_subject(letter, variant))
    except checks.CheckFailed as failure:
        pytest.fail(str(failure), pytrace=False)


@pytest.mark.parametrize("letter,variant", VARIANTS)
def test_mixer_shape_and_options(letter, variant):
    spec = mixers.get(letter)
    config_cls, module_cls, family = spec.config, spec.mixer, spec.family
    assert dataclasses.is_dataclass(config_cls) and isinstance(family, str) and family
    assert "d_model" not in option_names(letter)
    mixer = make_mixer(letter, 16, {**OPTIONS, **variant})
    assert isinstance(mixer, module_cls)
    y, state = mixer(torch.randn(3, 10, 16))
    assert y.shape == (3, 10, 16) and y.dtype == torch.float32
    # What continues the sequence: a tensor, or a dataclass of tensors and plain values.
    assert isinstance(state, torch.Tensor) or dataclasses.is_dataclass(state)


@pytest.mark.parametrize("letter,variant", VARIANTS)
def test_float32_paths_and_pieces_agree(letter, variant):
    """In float32 too (the checks compare float64, and float32 against float64 at one chunk
    size): the reference equals the fast path at a small, a middling and a whole-sequence chunk,
    and pieces fed with their state equal the whole sequence."""
    u = torch.randn(2, 40, 16)
    for chunk_size in [3, 16, 64] if "chunk_size" in option_names(letter) else [OPTIONS["chunk_size"]]:
        mixer = _mixer(letter, dtype=torch.float32, **{**variant, "chunk_size": chunk_size})
        with torch.no_grad():
            whole, _ = mixer(u)
            y_ref, _ = mixer(u, reference=True)
            first, state = mixer(u[:, :13])
            rest, _ = mixer(u[:, 13:], state)
        torch.testing.assert_close(y_ref, whole, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(torch.cat([first, rest], 1), whole, rtol=1e-4, atol=1e-4)


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
    if mixers.get(letter).family != "attention":  # a recurrent state does not grow with the length
        assert state_floats(letter, d_model, options, 10 ** 6) == state_floats(letter, d_model, options, 9)


# Mixers whose parameter count steps by under 15% per unit of d_model (from 32 on); the others
# step by whole heads.
SMOOTHLY_SIZED = {"gla", "rwkv6", "rglru", "retnet"}


@pytest.mark.parametrize("letter", LETTERS)
def test_parameter_count_grows_with_d_model(letter):
    counts = [sum(p.numel() for p in make_mixer(letter, d, {}).parameters()) for d in range(4, 80)]
    assert all(b > a for a, b in zip(counts, counts[1:]))
    if letter in SMOOTHLY_SIZED:
        assert max(b / a for a, b in zip(counts[28:], counts[29:])) < 1.15  # from d_model 32 on


@pytest.mark.parametrize("letter", LETTERS)
def test_every_mixer_keeps_the_written_contract(letter):
    """mixers/base.py's Mixer and MixerConfig protocols: the members a new mixer must have."""
    import inspect

    from longarch.mixers.base import Mixer, MixerConfig

    config_cls, mixer_cls = mixers.get(letter).config, mixers.get(letter).mixer
    assert dataclasses.is_dataclass(config_cls) and "d_model" in {f.name for f in dataclasses.fields(config_cls)}
    mixer = _mixer(letter)
    assert isinstance(mixer, Mixer) and isinstance(mixer.config, MixerConfig)
    assert list(inspect.signature(mixer.forward).parameters)[1:] == ["state", "reference"]
    assert isinstance(inspect.getattr_static(mixer_cls, "state_floats"), staticmethod)
