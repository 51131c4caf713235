"""Diagnostics (analysis/diagnostics.py), each checked on a hand-built model whose answer is
known, and as part of a study: planned as cells, stored, and in the report."""

from __future__ import annotations

import json
import math
import sqlite3

import numpy as np
import pytest
import torch
from torch import nn

from longarch import models, tasks
from longarch.analysis import diagnostics as dg
from longarch.analysis.diagnostics_report import best_head, grouped, retention_sentences
from longarch.controlled import runner
from longarch.kinds import load_study
from longarch.mixers.attention import AttentionConfig, CausalSelfAttention
from longarch.study.store import DiagnosticRow, Store

from test_runner import TINY, quiet, write_study

pytestmark = pytest.mark.usefixtures("one_thread")


def needle_task(haystack: str = "noise"):
    return tasks.get("needle", family="tokens", haystack=haystack)


def with_mixer(mixer: nn.Module, vocab_size: int, d_model: int = 8) -> models.LanguageModel:
    """A one-layer LanguageModel whose mixer is `mixer` (a hand-built one)."""
    model = models.LanguageModel(models.ModelConfig(vocab_size=vocab_size, d_model=d_model, pattern="M",
                                                    n_layers=1))
    model.blocks[0].mixer = mixer
    return model.eval()


class FixedDecay(nn.Module):
    """S_t = a_h S_{t-1} + W x_t per head h, the decays fixed: its state is (B, H, P), heads on
    axis 1 as it declares (`state_head_axes`); a 3-dimensional state would otherwise be read
    as one head."""

    state_head_axes = {"S": 1}

    def __init__(self, d_model: int, decays: list[float], width: int = 4):
        super().__init__()
        self.decays = torch.tensor(decays)  # (H,)
        self.write = nn.Linear(d_model, len(decays) * width, bias=False)
        self.read = nn.Linear(len(decays) * width, d_model, bias=False)

    def forward(self, x, state=None, reference=False):
        B, L, _ = x.shape
        H = len(self.decays)
        u = self.write(x).view(B, L, H, -1)  # (B, L, H, P)
        S = x.new_zeros(B, H, u.shape[-1]) if state is None else state["S"]
        outputs = []
        for t in range(L):
            S = self.decays[:, None] * S + u[:, t]  # (B, H, P)
            outputs.append(S)
        y = self.read(torch.stack(outputs, 1).reshape(B, L, -1)) if L else x
        return y, {"S": S, "conv_tail": x[:, -1:]}  # a shift register beside it: not memory


class ConvFixedDecay(FixedDecay):
    """FixedDecay fed through a causal convolution of `width` taps (each input plus the last
    width - 1 ones, kept in a shift register `conv_tail`), as Mamba's, GLA's and Hawk's states
    are: the needle's last symbols still write into S for width - 1 steps after the needle."""

    def __init__(self, d_model: int, decays: list[float], width: int):
        super().__init__(d_model, decays)
        self.width = width

    def forward(self, x, state=None, reference=False):
        B, L, D = x.shape
        tail = x.new_zeros(B, self.width - 1, D) if state is None else state["conv_tail"]
        padded = torch.cat([tail, x], dim=1)  # (B, width - 1 + L, D)
        mixed = sum(padded[:, i:i + L] for i in range(self.width))  # (B, L, D)
        y, inner = super().forward(mixed, None if state is None else {"S": state["S"]})
        return y, {"S": inner["S"], "conv_tail": padded[:, L:]}


class Accumulator(nn.Module):
    """S_t = S_{t-1} + x_t: a state that only grows (no head axis: (B, D))."""

    def forward(self, x, state=None, reference=False):
        S = (x.new_zeros(x.shape[0], x.shape[2]) if state is None else state) + x.sum(dim=1)
        return torch.zeros_like(x), S


class BinOracle(nn.Module):
    """Logits whose loss is known whatever the symbol: every real symbol gets logit 0 and one extra
    column (never a symbol) gets b, the log2 bin of the predicted position, so the loss of any
    symbol at position t is ln(V + e^b(t)). The state is the count of symbols read."""

    def __init__(self, vocab_size: int):
        super().__init__()
        self.vocab_size, self.blocks = vocab_size, nn.ModuleList()

    def forward(self, tokens, state=None, last_only=False):
        seen = 0 if state is None else state
        B, L = tokens.shape
        predicted = torch.arange(seen + 1, seen + L + 1, dtype=torch.float64)  # (L,)
        logits = torch.zeros(B, L, self.vocab_size + 1, dtype=torch.float64)
        logits[..., -1] = torch.floor(torch.log2(predicted))
        return (logits[:, -1:] if last_only else logits), seen + L


def test_a_single_head_of_fixed_decay_keeps_a_to_the_k():
    task = needle_task()
    torch.manual_seed(0)
    model = with_mixer(FixedDecay(8, [0.99, 0.9]), task.vocab_size)
    data = dg.needle_retention(model, task, train_length=16, max_factor=2, samples=3, seed=1, chunk=8)
    assert data["steps"] == [1, 2, 4, 8, 16, 32]
    [layer] = data["layers"]
    assert layer["heads"] == 2
    for head, a in enumerate([0.99, 0.9]):
        assert layer["retention"][head] == pytest.approx([a ** k for k in data["steps"]], abs=2e-4)
    assert best_head(data)[:2] == (0, 0)


def test_each_layer_is_read_on_its_own_inputs_so_a_deeper_fixed_decay_keeps_a_to_the_k_too():
    """Two layers of fixed decays: the second layer's input changes with the needle long after it
    (the first layer's state carries it), yet its own recurrence keeps a^k of its write; fed the
    inputs of two different runs, it would not."""
    task = needle_task()
    torch.manual_seed(0)
    model = with_mixer(FixedDecay(8, [0.95]), task.vocab_size)
    model.blocks.append(type(model.blocks[0])("mamba2", model.config))
    model.blocks[1].mixer = FixedDecay(8, [0.8, 0.97])
    data = dg.needle_retention(model, task, train_length=16, max_factor=2, samples=3, seed=1, chunk=8)
    [first, second] = data["layers"]
    assert first["retention"][0] == pytest.approx([0.95 ** k for k in data["steps"]], abs=2e-4)
    for head, a in enumerate([0.8, 0.97]):
        assert second["retention"][head] == pytest.approx([a ** k for k in data["steps"]], abs=2e-4)


def test_a_convolution_before_the_state_delays_the_write_but_not_the_decay():
    """Through a 4-tap convolution the needle's last symbols reach the state for 3 more steps:
    the write is read once they have (settle 3), and a head with a fixed decay a still keeps
    a^k of it, never more than all of it."""
    task = needle_task()
    torch.manual_seed(0)
    model = with_mixer(ConvFixedDecay(8, [0.99, 0.9], width=4), task.vocab_size)
    data = dg.needle_retention(model, task, train_length=16, max_factor=2, samples=3, seed=1, chunk=8)
    assert data["settle"] == 3
    [layer] = data["layers"]
    for head, a in enumerate([0.99, 0.9]):
        assert layer["retention"][head] == pytest.approx([a ** k for k in data["steps"]], abs=2e-4)


def test_retention_reads_heads_on_axis_1_of_a_4_dimensional_state_and_skips_shift_registers():
    state = {"S": torch.zeros(2, 3, 4, 5), "conv_tail": torch.ones(2, 3, 7), "h": torch.zeros(2, 6)}
    memory = dg.memory(object(), state)
    assert [(name, axis) for name, _, axis in memory] == [("S", 1), ("h", None)]
    assert dg.by_head(object(), state).shape == (2, 4, 20)  # 3 heads of S, then h as one head


def test_one_hot_attention_puts_all_its_mass_on_the_needle():
    """One head, no positions: the query of symbol 1 (QUERY) matches only the key of symbol 5
    (the needle), strongly; every other key scores 0."""
    V, D, L = 8, 8, 64
    attention = CausalSelfAttention(AttentionConfig(d_model=D, n_heads=1, position="nope"))
    with torch.no_grad():
        attention.qkv.weight.zero_()
        attention.qkv.weight[0, 1] = 10.0      # q_0 of symbol 1
        attention.qkv.weight[D + 0, 5] = 1.0   # k_0 of symbol 5
    model = with_mixer(attention, V, D)
    with torch.no_grad():
        model.embedding.weight.copy_(torch.eye(V, D))
    tokens = np.full((2, L), 3)
    positions = np.array([10, 40])
    tokens[np.arange(2), positions] = 5
    tokens[:, -1] = 1
    needle = dg.needle_mask(positions[:, None], 1, L)
    [(layer, (mass, entropy))] = dg.attention_on_needle(model, tokens, needle, chunk=16).items()
    assert layer == 0 and mass.shape == (2, 1)
    assert mass == pytest.approx(1.0, abs=1e-6) and entropy == pytest.approx(0.0, abs=1e-6)
    with torch.no_grad():
        attention.qkv.weight.zero_()  # every score 0: uniform over the L keys
    [(mass, entropy)] = dg.attention_on_needle(model, tokens, needle, chunk=16).values()
    assert mass == pytest.approx(1 / L) and entropy == pytest.approx(math.log(L))


@pytest.mark.parametrize("config", [dict(position="rope", rope_scaling="yarn"), dict(position="alibi"),
                                    dict(position="rope", window=6)])
@torch.no_grad()
def test_attention_weights_give_the_forward_pass_output_of_their_queries(config):
    """weights @ values is what the fast path computes, past a cache, RoPE scaled, ALiBi, windowed."""
    from longarch.mixers.attention import LocalAttentionConfig

    torch.manual_seed(0)
    kind = LocalAttentionConfig if "window" in config else AttentionConfig
    attention = CausalSelfAttention(kind(d_model=12, n_heads=3, **config))
    attention.set_context(8, 32)
    x = torch.randn(2, 20, 12)
    _, state = attention(x[:, :13])
    y, _ = attention(x[:, 13:], state)
    weights = attention.attention_weights(x[:, 13:], state, queries=[0, 6])  # (B, H, 2, K)
    assert torch.allclose(weights.sum(-1), torch.ones(2, 3, 2))
    values = torch.cat([state.values, attention.qkv(x[:, 13:]).view(2, 7, 3, 3, -1)[:, :, 2].transpose(1, 2)], 2)
    mixed = (weights @ values).transpose(1, 2).reshape(2, 2, -1)  # (B, 2, H*Dh)
    assert torch.allclose(attention.out(mixed), y[:, [0, 6]], atol=1e-5)


def test_an_accumulating_state_grows_linearly():
    task = needle_task()
    model = with_mixer(Accumulator(), task.vocab_size)
    data = dg.state_norms(model, task, train_length=16, max_factor=8, samples=2, seed=0, chunk=16)
    assert data["lengths"] == [16, 32, 64, 128]
    norms = np.array(data["layers"][0]["norm"])
    # the normalised inputs differ by symbol, so the ratio is only near 2; with one symbol it is exact
    assert np.all(np.diff(norms) > 0)
    constant = np.full((2, 128), 4)

    class Same:
        def generate(self, length, n, seed, depth=None):
            return type("S", (), {"tokens": constant[:n, :length]})()

    exact = dg.state_norms(model, Same(), train_length=16, max_factor=8, samples=2, seed=0, chunk=16)
    assert np.array(exact["layers"][0]["norm"]) / exact["layers"][0]["norm"][0] == pytest.approx([1, 2, 4, 8])


def test_loss_bins_are_those_of_a_model_whose_loss_is_known():
    task = needle_task()
    V = task.vocab_size
    data = dg.position_loss(BinOracle(V), task, train_length=16, max_factor=4, samples=3, seed=2, chunk=5)
    assert data["bins"] == [1, 2, 4, 8, 16, 32]  # the last symbol before the tail of a 64 is at 61
    expected = [math.log(V + math.exp(b)) for b in range(6)]
    assert data["haystack"] == pytest.approx(expected)
    for b, value in enumerate(data["needle"]):
        assert value is None or value == pytest.approx(expected[b])
    # the answer of a sample of length L is predicted at position L: bin log2(L)
    assert data["answer"] == pytest.approx([math.log(V + math.exp(math.log2(L))) for L in (16, 32, 64)])
    m, tail = task.needle_length, task.tail_length
    needle_bins = np.zeros(6, dtype=int)  # each needle symbol's bin, from where the samples put it
    for L in (16, 32, 64):
        for start in task.generate(length=L, n=3, seed=dg.sample_seed(2, L)).meta["needle_position"]:
            for t in range(max(start, 1), start + m):  # the symbol at position 0 is predicted by none
                needle_bins[int(math.log2(t))] += 1
    assert data["needle_n"] == needle_bins.tolist() and needle_bins.sum() >= 3 * 3 * m - 3
    body = 3 * sum(L - tail - 1 for L in (16, 32, 64))  # positions 1 .. L - tail - 1 of 3 samples per length
    assert sum(data["haystack_n"]) + sum(data["needle_n"]) == body


def test_bad_measures_are_refused_in_one_line():
    with pytest.raises(ValueError, match="unknown diagnostic 'entropy'"):
        dg.measure("entropy", None, needle_task(), 16, 2, 1, 0)
    with pytest.raises(ValueError, match="needs a needle task"):
        dg.measure("loss", None, tasks.get("mqar", family="tokens"), 16, 2, 1, 0)


def test_retention_sentence_names_the_best_head_on_each_format():
    def row(label, values, seed=0):
        data = {"train_length": 64, "steps": [1, 2048], "layers": [
            {"layer": 1, "mixer": "mamba2", "heads": 2, "retention": [[0.9, values[0]], [0.8, values[1]]]}]}
        return DiagnosticRow(f"c{label}{seed}", "m", "mamba2", seed, "retention", label, data, 0.0)

    rows = [row("noise", [0.66, 0.1]), row("text", [0.05, 0.2])]
    assert retention_sentences(grouped(rows), ["mamba2"], ["noise", "text"]) == [
        "mamba2's best head keeps 66% of the needle after 2,048 noise symbols (layer 1, head 0) and 20% after "
        "text (layer 1, head 1)."]
    # a head of one seed is not that head in another: each seed's best, then their mean
    rows += [row("noise", [0.1, 0.5], seed=1)]
    assert retention_sentences(grouped(rows), ["mamba2"], ["noise"]) == [
        "mamba2's best head keeps 58% of the needle after 2,048 noise symbols (mean of 2 seeds' best heads: "
        "layer 1, head 0; layer 1, head 1)."]
    # more than the whole write: said what it means
    grown = retention_sentences(grouped([row("noise", [2.45, 0.1])]), ["mamba2"], ["noise"])
    assert grown[0].startswith("mamba2's best head keeps 245% of the needle") and "amplifies" in grown[0]


DIAGNOSED = {**TINY, "models": ["transformer", "mamba2"],
             "eval": {**TINY["eval"], "max_factor": 2, "depths": [50], "samples": 2},
             "diagnostics": {"max_factor": 2, "samples": 2}}


def test_diagnostics_leave_every_other_id_as_it_was(tmp_path):
    plain = load_study(str(write_study(tmp_path, **{k: v for k, v in DIAGNOSED.items() if k != "diagnostics"})))
    with_them = load_study(str(write_study(tmp_path, **DIAGNOSED)))
    assert "diagnostics" not in plain.model_dump(mode="json")
    assert runner.plan(plain)[0][0].model_id == runner.plan(with_them)[0][0].model_id
    assert [c.cell_id for c in runner.plan(plain)[1]] == [c.cell_id for c in runner.plan(with_them)[1]]
    assert "planned_diagnostics" not in runner.Controlled(plain).plan().meta
    cells = runner.diagnostic_cells(with_them, runner.plan(with_them)[0])
    # transformer: loss, attention, state-norm; mamba2: loss, retention, state-norm; one format
    assert sorted((c.model.label, c.measure) for c in cells) == sorted(
        [("transformer", m) for m in ("loss", "attention", "state-norm")]
        + [("mamba2", m) for m in ("loss", "retention", "state-norm")])
    assert len({c.cell_id for c in cells}) == 6


def test_a_study_with_diagnostics_stores_them_and_reports_them(tmp_path):
    study = load_study(str(write_study(tmp_path, **DIAGNOSED)))
    out = tmp_path / "out"
    runner.run_study(study, out, quiet())
    with Store(out / "results.sqlite") as store:
        rows = store.diagnostics()
        assert store.cell_ids() >= {r.cell_id for r in rows}
    assert sorted((r.model, r.measure) for r in rows) == sorted(
        [("transformer", m) for m in ("loss", "attention", "state-norm")]
        + [("mamba2", m) for m in ("loss", "retention", "state-norm")])
    report = (out / "report.md").read_text()
    assert "## Diagnostics" in report
    for measure in ("loss", "retention", "attention", "state_norm"):
        assert (out / "figures" / f"diagnostics_{measure}.png").is_file()
        assert f"figures/diagnostics_{measure}.png" in report
    assert "mamba2's best head keeps" in report
    assert report.index("## Accuracy by length") < report.index("## Diagnostics")
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["diagnostics"]) == {"loss", "retention", "attention", "state-norm"}
    assert summary["cells"]["planned"] == summary["cells"]["stored"] == 2 * 2 + 6  # evaluations and diagnostics
    # a model below the learned bar is said to be one, first: its diagnostics explain no lost needle
    section = report[report.index("## Diagnostics"):report.index("### ", report.index("## Diagnostics"))]
    for model in summary["models"]:
        said = f"{model['name']} did not learn the task at T" in section
        assert said == (not model["solved_at_train_length"]), model


def test_an_old_store_without_the_table_reads_as_holding_no_diagnostics(tmp_path):
    path = tmp_path / "results.sqlite"
    with Store(path):
        pass
    db = sqlite3.connect(path)
    db.execute("DROP TABLE diagnostics")
    db.commit()
    db.close()
    from longarch.study.store import read_only

    with read_only(path) as store:
        assert store.diagnostics() == [] and store.cell_ids() == set()
    with Store(path) as store:  # opened for writing: the table is added
        store.put_diagnostic(DiagnosticRow("c", "m", "x", 0, "loss", "noise", {"a": 1}, 0.5))
        assert store.diagnostics()[0].data == {"a": 1} and store.cell_ids() == {"c"}


def test_a_study_without_a_needle_format_is_refused_diagnostics(tmp_path):
    from longarch.controlled.config import ConfigError

    path = write_study(tmp_path, task={"name": "mqar", "knobs": {}}, diagnostics={"samples": 2})
    with pytest.raises(ConfigError, match="diagnostics read where a needle stands"):
        load_study(str(path))
    bad = write_study(tmp_path, diagnostics={"measures": ["loss", "entropy"]})
    with pytest.raises(ConfigError, match="diagnostics.measures.1: Input should be 'loss'"):
        load_study(str(bad))


@pytest.mark.parametrize("diagnostics, fragment", [
    ({"measures": ["entropy"]}, "diagnostics.measures.0"),
    ({"max_factor": 0}, "diagnostics.max_factor"),
    ({"measures": ["loss", "loss"]}, "diagnostic 'loss' appears twice"),
    ({"samples": 2, "every": 3}, "diagnostics.every"),
])
def test_bad_diagnostics_are_one_line_and_exit_2_on_the_command_line(tmp_path, diagnostics, fragment):
    from typer.testing import CliRunner

    from longarch.cli import app

    result = CliRunner().invoke(app, ["run", str(write_study(tmp_path, diagnostics=diagnostics)),
                                      "--out", str(tmp_path / "out"), "--workers", "0"])
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert fragment in lines[0] and not (tmp_path / "out").exists()


def test_a_diagnostic_longer_than_the_machine_holds_is_refused_before_any_work(tmp_path):
    from longarch.controlled.config import ConfigError

    path = write_study(tmp_path, diagnostics={"max_factor": 1 << 40})
    with pytest.raises(ConfigError, match="a diagnostic's samples"):
        load_study(str(path))
