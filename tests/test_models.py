"""Models: every registered architecture builds, continues a sequence through its state exactly,
is causal, reports its state size truthfully, and sizes to a parameter budget."""

from __future__ import annotations

import dataclasses
import json
import functools
import itertools

import pytest
import torch

from longarch import models
from longarch import mixers
from longarch.mixers import option_names
from longarch.models import LanguageModel, ModelConfig, UnknownArchitecture, forward_in_chunks

pytestmark = pytest.mark.usefixtures("one_thread")

NAMES = models.names()
VOCAB = 37


def _options(name: str, **wanted) -> dict:
    """The subset of `wanted` mixer options that architecture `name` accepts."""
    layers = models.config(name).layers
    accepted = set().union(*(option_names(mixer) for mixer in set(layers)))
    return {k: v for k, v in wanted.items() if k in accepted}


def _small(name: str, dtype=torch.float32, **wanted) -> LanguageModel:
    torch.manual_seed(0)
    model = models.build(name, vocab_size=VOCAB, d_model=24, **_options(name, **wanted))
    return model.to(dtype).eval()


def _tokens(B: int, L: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, VOCAB, (B, L), generator=torch.Generator().manual_seed(seed))


def _tensors(obj) -> list[torch.Tensor]:
    """Every tensor inside a (nested) state: dataclasses, tuples, lists."""
    if isinstance(obj, torch.Tensor):
        return [obj]
    if dataclasses.is_dataclass(obj):
        return [t for f in dataclasses.fields(obj) for t in _tensors(getattr(obj, f.name))]
    if isinstance(obj, (list, tuple)):
        return [t for item in obj for t in _tensors(item)]
    return []


def _feed(model, tokens, sizes):
    """Logits of `tokens` fed in pieces of `sizes` (the last piece takes the rest)."""
    outputs, state, start = [], None, 0
    for size in sizes:
        logits, state = model(tokens[:, start:start + size], state)
        outputs.append(logits)
        start += size
    if start < tokens.shape[1]:
        logits, state = model(tokens[:, start:], state)
        outputs.append(logits)
    return torch.cat(outputs, dim=1), state


def test_registry_is_consistent():
    assert NAMES and len(set(NAMES)) == len(NAMES)
    for name in NAMES:
        spec = models.spec(name)
        assert spec.name == name and spec.description
        assert set(mixers.layers(spec.pattern)) <= set(mixers.MIXERS)
        assert models.family(name) in mixers.base.FAMILIES


# ---------------------------------------------------------------- building and running


@pytest.mark.parametrize("name", NAMES)
def test_build_gives_logits_over_the_vocabulary(name):
    model = models.build(name, vocab_size=VOCAB)
    assert isinstance(model, LanguageModel)
    config = models.config(name, vocab_size=VOCAB)
    assert model.config == config and len(model.blocks) == config.n_layers
    for block, mixer in zip(model.blocks, config.layers):
        assert isinstance(block.mixer, mixers.get(mixer).mixer)
    tokens = _tokens(3, 11)
    with torch.no_grad():
        logits, state = model(tokens)
        last, _ = model(tokens, last_only=True)
    assert logits.shape == (3, 11, VOCAB) and logits.dtype == torch.float32
    assert torch.isfinite(logits).all()
    assert len(state) == config.n_layers
    assert last.shape == (3, 1, VOCAB)
    torch.testing.assert_close(last, logits[:, -1:], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("small_chunk", [False, True], ids=["default-chunk", "chunk-8"])
@pytest.mark.parametrize("name", NAMES)
def test_pieces_equal_whole_float32(name, small_chunk):
    model = _small(name, **({"chunk_size": 8} if small_chunk else {}))
    tokens = _tokens(2, 100)
    with torch.no_grad():
        whole, _ = model(tokens)
        pieces, _ = _feed(model, tokens, [1, 7, 30])
        assert pieces.shape == whole.shape
        assert (pieces - whole).abs().max() <= 1e-4
        # The comparison can fail: the tail fed without the state differs.
        tail, _ = model(tokens[:, 38:])
        assert (tail - whole[:, 38:]).abs().max() > 1e-3


@pytest.mark.parametrize("name", NAMES)
def test_pieces_equal_whole_float64(name):
    model = _small(name, torch.float64, chunk_size=8)
    tokens = _tokens(2, 70, seed=1)
    with torch.no_grad():
        whole, _ = model(tokens)
        pieces, _ = _feed(model, tokens, [1, 7, 30])
        one_by_one, _ = _feed(model, tokens[:, :12], [1] * 12)
    assert whole.dtype == torch.float64
    assert (pieces - whole).abs().max() <= 1e-10
    assert (one_by_one - whole[:, :12]).abs().max() <= 1e-10


@pytest.mark.parametrize("name", NAMES)
def test_model_is_causal(name):
    model = _small(name, torch.float64, chunk_size=8)
    tokens = _tokens(2, 40, seed=2)
    changed = tokens.clone()
    changed[:, 23:] = (tokens[:, 23:] + 1 + torch.arange(17)) % VOCAB  # every later token differs
    with torch.no_grad():
        logits, _ = model(tokens)
        logits_changed, _ = model(changed)
    assert (logits_changed[:, :23] - logits[:, :23]).abs().max() <= 1e-12
    assert (logits_changed[:, 23] - logits[:, 23]).abs().max() > 1e-6


@pytest.mark.parametrize("chunk", [1, 7, 16, 64, 500])
@pytest.mark.parametrize("name", NAMES)
def test_forward_in_chunks_gives_the_last_logits(name, chunk):
    model = _small(name, chunk_size=8)
    tokens = _tokens(3, 45, seed=3)
    with torch.no_grad():
        whole, _ = model(tokens)
    last, state = forward_in_chunks(model, tokens, chunk)
    assert last.shape == (3, VOCAB)
    assert (last - whole[:, -1]).abs().max() <= 1e-4
    assert len(state) == model.config.n_layers


# ---------------------------------------------------------------- state size


@pytest.mark.parametrize("name", NAMES)
def test_state_floats_measures_the_state(name):
    model = _small(name, chunk_size=8)
    sizes = {}
    for length in (5, 17, 40):
        with torch.no_grad():
            _, state = model(_tokens(1, length))
        sizes[length] = sum(t.numel() for t in _tensors(state))
        assert model.state_floats(length) == sizes[length]
    # Only global attention ("A") keeps every token; recurrent state and windows are bounded.
    global_attention = "attention" in model.config.layers
    if global_attention:
        per_token = (model.state_floats(2000) - model.state_floats(1000)) / 1000
        assert per_token > 0 and model.state_floats(3000) == model.state_floats(2000) + 1000 * per_token
    else:
        assert model.state_floats(100_000) == model.state_floats(10_000) > 0
    if set(model.config.layers) == {"attention"}:
        assert model.state_floats(0) == 0 and model.state_floats(2000) == 2 * model.state_floats(1000)


def test_pure_mamba2_state_is_constant_and_attention_state_grows():
    mamba = models.build("mamba2", vocab_size=VOCAB)
    transformer = models.build("transformer", vocab_size=VOCAB)
    assert mamba.state_floats(64) == mamba.state_floats(65536) > 0
    assert transformer.state_floats(65536) == 1024 * transformer.state_floats(64) > 0


# ---------------------------------------------------------------- overrides and errors


def test_layer_pattern_repeats_to_n_layers():
    config = ModelConfig(vocab_size=8, pattern="MMA", n_layers=5)
    assert config.layers == ("mamba2", "mamba2", "attention", "mamba2", "mamba2")
    model = LanguageModel(config)
    assert [type(block.mixer) for block in model.blocks] == [mixers.get(letter).mixer for letter in "MMAMM"]


@pytest.mark.parametrize("pattern", [["mamba2", "mamba2", "attention"], ("M", "mamba2", "A"), "MMA"])
def test_a_pattern_of_names_is_the_pattern_of_letters(pattern):
    """Names and letters are two spellings of one pattern: the same config, so the same ids."""
    config = ModelConfig(vocab_size=8, pattern=pattern, n_layers=5)
    assert config.pattern == "MMA" and config == ModelConfig(vocab_size=8, pattern="MMA", n_layers=5)
    assert config.to_dict() == ModelConfig(vocab_size=8, pattern="MMA", n_layers=5).to_dict()


@pytest.mark.parametrize("pattern,message", [
    (["mamba2", "mamba3"], "unknown mixer 'mamba3'"), ("MQ", "unknown mixer 'Q'"), ([], "pattern is empty"),
    ("mamba-2", "unknown mixer 'mamba-2'"), ([1, 2], "a list of mixer names")])
def test_an_unknown_mixer_in_a_pattern_is_named(pattern, message):
    with pytest.raises(ValueError, match=message):
        ModelConfig(vocab_size=8, pattern=pattern)


def test_a_hybrid_made_by_overriding_the_pattern_is_reported_as_hybrid():
    assert models.family("transformer") == "attention"
    assert models.family("transformer", models.config("transformer", pattern="MA")) == "hybrid"
    assert models.family("mamba2", models.config("mamba2", pattern=["mamba2", "mamba"])) == "state-space"
    assert models.family("transformer", models.config("transformer", pattern="MA"), "my-family") == "my-family"


@pytest.mark.parametrize("name", NAMES)
def test_overrides_reach_the_config(name):
    model = models.build(name, vocab_size=VOCAB, d_model=40, n_layers=3)
    assert model.config.d_model == 40 and model.config.n_layers == 3 and len(model.blocks) == 3
    assert model.embedding.weight.shape == (VOCAB, 40)


@pytest.mark.parametrize("name", NAMES)
def test_unknown_architecture_suggests_the_close_name(name):
    typo = name + "x"  # one stray key: the intended name must be the closest
    with pytest.raises(UnknownArchitecture) as info:
        models.build(typo)
    assert isinstance(info.value, ValueError)
    message = str(info.value)
    assert repr(typo) in message and f"did you mean {name!r}" in message


def test_unknown_architecture_without_a_close_name_lists_the_known():
    with pytest.raises(ValueError, match="unknown architecture") as info:
        models.build("zzzzzz")
    assert "did you mean" not in str(info.value)
    assert all(name in str(info.value) for name in NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_unknown_override_is_an_error_naming_it(name):
    with pytest.raises(ValueError, match="bogus_option"):
        models.build(name, bogus_option=3)


def test_misspelt_mixer_option_is_an_error():
    with pytest.raises(ValueError, match="d_stat"):
        models.build("mamba2", d_stat=8)
    with pytest.raises(ValueError, match="d_state"):  # attention has no state size
        models.build("transformer", d_state=8)


def test_unknown_mixer_letter_is_an_error():
    with pytest.raises(ValueError, match="Z"):
        models.build("transformer", pattern="AZ")


# ---------------------------------------------------------------- parameter budgets


@functools.lru_cache(maxsize=None)
def _sized_params(name: str, budget: int) -> int:
    overrides = models.size_to_budget(name, budget, vocab_size=64)
    return models.build(name, vocab_size=64, **overrides).num_params()


@pytest.mark.parametrize("budget", [20_000, 100_000, 400_000])
@pytest.mark.parametrize("name", NAMES)
def test_size_to_budget_lands_within_five_percent(name, budget):
    assert abs(_sized_params(name, budget) - budget) <= 0.05 * budget


@pytest.mark.parametrize("name", NAMES)
def test_size_to_budget_keeps_other_overrides(name):
    overrides = models.size_to_budget(name, 50_000, vocab_size=64, n_layers=3)
    assert overrides["n_layers"] == 3 and "d_model" in overrides
    model = models.build(name, vocab_size=64, **overrides)
    assert len(model.blocks) == 3 and abs(model.num_params() - 50_000) <= 0.05 * 50_000


@pytest.mark.parametrize("name", NAMES)
def test_impossible_budget_raises(name):
    with pytest.raises(ValueError, match=name):
        models.size_to_budget(name, 10)


def _pair_cases():
    for (a, b), budget in itertools.product(itertools.combinations(NAMES, 2), [20_000, 100_000, 400_000]):
        yield pytest.param(a, b, budget, id=f"{a}-vs-{b}-{budget}")


@pytest.mark.parametrize("a,b,budget", list(_pair_cases()))
def test_architectures_sized_to_one_budget_match_each_other(a, b, budget):
    pa, pb = _sized_params(a, budget), _sized_params(b, budget)
    assert abs(pa - pb) <= 0.05 * max(pa, pb), (pa, pb)


@pytest.mark.parametrize("name", NAMES)
def test_count_params_equals_the_built_model(name):
    for overrides in ({}, {"d_model": 33}, models.size_to_budget(name, 30_000, vocab_size=50)):
        config = models.config(name, vocab_size=50, **overrides)
        built = models.build(name, vocab_size=50, **overrides)
        assert models.count_params(config) == built.num_params() == sum(p.numel() for p in built.parameters())


# ---------------------------------------------------------------- init and head options


def test_default_init_and_tied_head_leave_config_ids_unchanged():
    config = models.config("transformer", vocab_size=VOCAB)
    assert config.init == "gpt2" and config.tie_head is True
    assert "init" not in config.to_dict() and "tie_head" not in config.to_dict()  # ids as before
    torch.manual_seed(0)
    model = LanguageModel(config)
    assert model.head is None and "head.weight" not in model.state_dict()
    assert abs(model.embedding.weight.std().item() - 0.02) < 0.003


@pytest.mark.parametrize("name", ["transformer", "mamba2", "gla"])
def test_torch_init_and_untied_head(name):
    torch.manual_seed(0)
    model = models.build(name, vocab_size=VOCAB, d_model=32, init="torch", tie_head=False)
    config = model.config
    assert config.to_dict()["init"] == "torch" and config.to_dict()["tie_head"] is False
    assert ModelConfig(**config.to_dict()) == config
    assert model.head.weight.shape == (VOCAB, 32) and model.head.weight is not model.embedding.weight
    assert abs(model.embedding.weight.std().item() - 1.0) < 0.1  # PyTorch's N(0, 1)
    tied = models.build(name, vocab_size=VOCAB, d_model=32, init="torch")
    assert model.num_params() == tied.num_params() + VOCAB * 32 == models.count_params(config)
    tokens = _tokens(2, 40)
    with torch.no_grad():
        whole, _ = model(tokens)
        pieces, _ = _feed(model, tokens, [13, 9])
    torch.testing.assert_close(pieces, whole, rtol=1e-4, atol=1e-4)
    with torch.no_grad():
        model.head.weight.zero_()  # the logits come from the head, not the embedding
        assert model(tokens)[0].abs().max() == 0


def test_init_and_tie_head_are_checked_and_size_to_budget_keeps_them():
    with pytest.raises(ValueError, match="init must be one of"):
        models.config("transformer", init="xavier")
    with pytest.raises(ValueError, match="tie_head"):
        models.config("transformer", tie_head="no")
    sized = models.size_to_budget("transformer", 100_000, vocab_size=50, init="torch", tie_head=False)
    assert sized["init"] == "torch" and sized["tie_head"] is False
    built = models.build("transformer", vocab_size=50, **sized)
    assert abs(built.num_params() - 100_000) <= 0.02 * 100_000


def test_parameter_counts_are_kept_between_processes(tmp_path, monkeypatch):
    from longarch.models import registry

    def forget():  # as a new process starts
        registry._count_params.cache_clear()
        registry._stored_counts.cache_clear()
        registry._COUNTS.clear()

    monkeypatch.setenv("LONGARCH_COUNT_CACHE", str(tmp_path))
    forget()
    try:
        config = models.config("mamba2", d_model=24, vocab_size=64)
        counted = models.count_params(config)
        registry.save_counts()
        (saved,) = tmp_path.glob("param-counts-*.json")
        assert list(json.loads(saved.read_text()).values()) == [counted]
        forget()
        with monkeypatch.context() as patched:  # read back, not built
            patched.setattr(registry, "LanguageModel", None)
            assert models.count_params(config) == counted
        saved.write_text("{not json")  # a damaged file is counted anew
        forget()
        assert models.count_params(config) == counted
    finally:
        monkeypatch.undo()
        forget()
