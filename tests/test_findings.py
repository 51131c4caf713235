"""Findings and measures on synthetic results with known answers (exact counts, no noise).

The rules' verdicts on drawn (Bernoulli) stores with planted truths, and the coverage of the
intervals, are proven in tests/test_claims_simulated.py; this file checks the plumbing: the
gates, missing cells, exclusions, the per-format and pooled measures, and the JSON of a finding.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from longarch.analysis.findings import (INCONCLUSIVE, NOT_SUPPORTED, SUPPORTED, claim_degradation,
                                        claim_format_inconsistency, claim_lost_in_the_middle,
                                        claim_recurrent_vs_attention, findings)
from longarch.analysis.measures import (Plan, cell_estimate, difference, effective_length, format_sensitivity,
                                        middle_index, select)
from longarch.analysis.settings import AnalysisSettings
from longarch.analysis.stats import Cell, ModelSummary

T = 64
DEPTHS = (0.0, 20.0, 40.0, 50.0, 60.0, 80.0, 100.0)
U_SHAPE = dict(zip(DEPTHS, (0.95, 0.6, 0.4, 0.3, 0.4, 0.6, 0.9)))
LABEL_GATE = AnalysisSettings(gate="label")


def exact(accuracy: float, n: int, seed: int = 0) -> np.ndarray:
    """n scores of which exactly round(accuracy * n) are 1, in a shuffled order."""
    ones = int(round(accuracy * n))
    scores = np.concatenate([np.ones(ones), np.zeros(n - ones)])
    np.random.default_rng(seed).shuffle(scores)
    return scores


def cells_from(table: dict, n: int = 200, seeds=(0, 1, 2)) -> dict:
    """{(model, label, length, depth): accuracy} -> cells with that exact accuracy in every seed."""
    return {key: Cell(*key, per_seed={s: exact(accuracy, n, seed=97 * i + s) for s in seeds})
            for i, (key, accuracy) in enumerate(table.items())}


def summary(name: str, family: str, train_accuracy: float = 1.0) -> ModelSummary:
    return ModelSummary(name, family, 1000, 10, "constant", T, train_accuracy, 1.0, [0, 1, 2])


def curve(model: str, by_length: dict, label: str = "needle", depths=(None,)) -> dict:
    return {(model, label, length, depth): accuracy for length, accuracy in by_length.items() for depth in depths}


def one_sentence(text: str) -> bool:
    return len(re.findall(r"[.!?](?:\s|$)", text.strip())) <= 1


# --------------------------------------------------------------------------------------------
# measures
# --------------------------------------------------------------------------------------------
def test_effective_length_is_contiguous_on_the_lower_bound_and_ruler_length_is_the_point_rule():
    cells = cells_from(curve("m", {64: 0.95, 128: 0.5, 256: 0.9, 512: 0.2}))
    found = effective_length(cells, "m", T)
    assert found.length == 64 and found.ratio == 1.0  # the dip at 128 ends the run
    assert found.ruler_length == 256  # RULER: the longest length whose point is above 0.856
    assert found.optimistic == 64
    assert [p.length for p in found.points] == [64, 128, 256, 512]
    assert found.coverage.complete and found.coverage.expected == 4
    assert found.model == "m" and found.train_length == T and found.bar == pytest.approx(0.856)


def test_effective_length_bar_and_none():
    # a lower bound above the bar at 128 (0.95 of 600), below it at 256 (0.87 of 600: point above)
    cells = cells_from(curve("m", {64: 1.0, 128: 0.95, 256: 0.87, 512: 0.1}))
    found = effective_length(cells, "m", T)
    assert found.length == 128 and found.ruler_length == 256 and found.optimistic == 256
    nothing = cells_from(curve("m", {64: 0.5, 128: 0.2}))
    found = effective_length(nothing, "m", T)
    assert found.length is None and found.ratio is None and found.ruler_length is None
    assert effective_length(nothing, "m", T, bar=0.3).length == 64


def test_effective_length_per_format_and_pooled():
    cells = cells_from({**curve("m", {64: 1.0, 128: 1.0}, label="a"), **curve("m", {64: 1.0, 128: 0.5}, label="b")})
    assert effective_length(cells, "m", T, labels=["a"]).length == 128
    assert effective_length(cells, "m", T, labels=["b"]).length == 64
    assert effective_length(cells, "m", T).length == 64  # pooled: 0.75 at 128


def test_middle_index_reports_primacy_recency_and_the_u_index_apart():
    cells = cells_from({("m", "needle", T, d): a for d, a in U_SHAPE.items()})
    found = middle_index(cells, "m", T)
    assert (found.start_depth, found.end_depth, found.middle) == (0.0, 100.0, (40.0, 50.0, 60.0))
    middle = (0.4 + 0.3 + 0.4) / 3
    assert found.middle_accuracy.value == pytest.approx(middle)
    assert found.primacy.value == pytest.approx(0.95 - middle)
    assert found.recency.value == pytest.approx(0.9 - middle)
    assert found.u_index.value == pytest.approx(0.9 - middle) and found.u_index.low > 0
    flat = middle_index(cells_from(curve("m", {T: 0.7}, depths=DEPTHS)), "m", T)
    assert flat.u_index.compare(0.0) == "undecided"
    rising = {("m", "needle", T, d): 0.2 + 0.008 * d for d in DEPTHS}  # recency only
    found = middle_index(cells_from(rising), "m", T)
    assert found.recency.low > 0 and found.primacy.high < 0 and found.u_index.compare(0.0) == "below"


def test_format_sensitivity_reports_spread_best_and_worst_at_every_length():
    cells = cells_from({**curve("m", {64: 1.0, 128: 0.9}, label="a"), **curve("m", {64: 1.0, 128: 0.2}, label="b")})
    spreads = format_sensitivity(cells, "m")
    assert [s.length for s in spreads] == [64, 128]
    assert spreads[0].spread.value == 0 and 0 < spreads[0].spread.high < 0.02  # equal, but not certainly so
    assert spreads[1].spread.value == pytest.approx(0.7)
    assert spreads[1].best == "a" and spreads[1].worst == "b" and spreads[1].spread.low > 0.5
    assert set(spreads[1].by_label) == {"a", "b"}


def test_cells_missing_a_seed_still_give_an_estimate():
    first = [Cell("m", "x", T, 0.0, {0: exact(0.9, 50), 1: exact(0.8, 50)})]
    second = [Cell("m", "x", T, 50.0, {1: exact(0.4, 50)})]
    estimate = difference(first, second)
    assert np.isfinite([estimate.value, estimate.low, estimate.high]).all()
    assert estimate.low < estimate.value < estimate.high


def test_a_cell_interval_has_width_at_the_ceiling():
    estimate = cell_estimate(Cell("m", "needle", T, None, {s: np.ones(16) for s in range(3)}))
    assert estimate.value == 1.0 and estimate.high == 1.0 and estimate.low == pytest.approx(0.949, abs=1e-3)


# --------------------------------------------------------------------------------------------
# missing cells
# --------------------------------------------------------------------------------------------
def test_missing_cells_are_counted_against_the_plan_and_without_one():
    cells = cells_from(curve("m", {64: 1.0, 128: 0.9, 256: 0.88}, depths=(0.0, 50.0, 100.0)))
    del cells[("m", "needle", 128, 50.0)]
    plan = Plan(("needle",), (64, 128, 256, 512), (0.0, 50.0, 100.0))
    everything = select(cells, "m", plan)
    assert (everything.coverage.expected, everything.coverage.covered) == (12, 8)
    assert not everything.coverage.complete
    assert ("m", "needle", 512, 0.0) in everything.coverage.missing
    unplanned = select(cells, "m")  # the interior hole still shows without a plan
    assert (unplanned.coverage.expected, unplanned.coverage.covered) == (9, 8)
    found = effective_length(cells, "m", T, plan=plan)
    assert [p.coverage.complete for p in found.points] == [True, False, True, False]
    assert not found.coverage.complete and found.coverage.covered == 8
    # 128 lacks a planned cell; counted (lower bound 0.87 on its two cells) or not, 256 (0.88) ends the run
    assert found.length in (64, 128)


def test_a_missing_cell_makes_a_decided_model_inconclusive():
    models = [summary("t", "attention")]
    cells = cells_from(curve("t", {64: 1.0, 128: 0.1, 256: 0.0}))
    plan = Plan(("needle", "needle text"), (64, 128, 256))
    assert claim_degradation(models, cells).verdict == SUPPORTED
    finding = claim_degradation(models, cells, plan)
    assert finding.verdict == INCONCLUSIVE and not finding.complete
    assert finding.coverage.expected == 6 and finding.coverage.covered == 3  # T and both lengths past it
    reason = finding.evidence[0].reason
    assert "decided on the stored cells, but 3 of 6 planned cells are missing" in reason
    allowed = claim_degradation(models, cells, plan, AnalysisSettings(allow_incomplete=True))
    assert allowed.verdict == SUPPORTED and not allowed.complete


# --------------------------------------------------------------------------------------------
# gates and exclusions
# --------------------------------------------------------------------------------------------
def test_models_below_the_learned_bar_are_excluded_with_the_reason():
    models = [summary("t", "attention"), summary("bad", "attention", train_accuracy=0.5)]
    cells = cells_from({**curve("t", {64: 1.0, 128: 0.0}), **curve("bad", {64: 0.5, 128: 0.5})})
    finding = claim_degradation(models, cells)  # gate None: 'model'
    assert finding.verdict == SUPPORTED  # the unlearned model would have said otherwise
    assert [e.model for e in finding.evidence] == ["t"]
    assert [x.model for x in finding.excluded] == ["bad"] and finding.excluded[0].reason == \
        "did not learn its task: 50.0% on needle at T=64, below the 95% bar"
    assert "bad" in finding.explanation
    lenient = claim_degradation(models, cells, settings=AnalysisSettings(learned_bar_fraction=0.4))
    assert lenient.verdict == NOT_SUPPORTED and not lenient.excluded


def test_label_gate_judges_each_model_on_the_formats_it_learned_at_t():
    lengths = {T: 1.0, 2 * T: 0.1, 4 * T: 0.0}
    table = {**curve("ssm", lengths, "noise"), **curve("ssm", {T: 0.5, 2 * T: 0.5, 4 * T: 0.5}, "text"),
             **curve("attn", {T: 0.3, 2 * T: 0.3, 4 * T: 0.3}, "noise"),
             **curve("attn", {T: 0.2, 2 * T: 0.2, 4 * T: 0.2}, "text")}
    cells = cells_from(table)
    models = [summary("ssm", "state-space", train_accuracy=0.75), summary("attn", "attention", train_accuracy=0.25)]
    plan = Plan(("noise", "text"), (T, 2 * T, 4 * T))
    # by model: both models' mixture accuracy is below 0.95, so nothing is judged
    by_model = claim_degradation(models, cells, plan, AnalysisSettings(gate="model"))
    assert by_model.verdict == INCONCLUSIVE and not by_model.evidence and len(by_model.excluded) == 2
    # by label: ssm is judged on noise only (text at T is 0.5) and degrades there; attn learned nothing
    gated = claim_degradation(models, cells, plan, LABEL_GATE)
    assert [e.model for e in gated.evidence] == ["ssm"] and gated.evidence[0].verdict == SUPPORTED
    assert gated.verdict == INCONCLUSIVE  # the attention family has no judged model
    assert {k[1] for k in gated.evidence[0].cells} == {"noise"}
    drops = {int(k): v for k, v in gated.evidence[0].details["drops"].items()}
    assert drops[2 * T][0] == pytest.approx(0.9) and drops[4 * T][0] == pytest.approx(1.0)
    reasons = {x.model: x.reason for x in gated.excluded}
    assert reasons["ssm"].startswith("labels below the 95% bar at T=64: text 50.0%")
    assert reasons["attn"].startswith("every label below the 95% bar") and "noise 30.0%" in reasons["attn"]
    # the verdict flips when the data do: ssm keeps its accuracy on noise
    kept = cells_from({**table, **curve("ssm", {T: 1.0, 2 * T: 1.0, 4 * T: 0.98}, "noise")})
    assert claim_degradation(models, kept, plan, LABEL_GATE).verdict == NOT_SUPPORTED


def test_claim_2_compares_a_pair_on_the_formats_both_learned():
    """Under the label gate the recurrent model learned a and b, the attention model a only:
    the pair is compared on a alone (where the recurrent model keeps 0.9 and attention falls to
    0.1), not on everything each learned."""
    table = {**curve("r", {T: 1.0, 2 * T: 0.9, 4 * T: 0.9}, "a"), **curve("r", {T: 1.0, 2 * T: 0.0, 4 * T: 0.0}, "b"),
             **curve("att", {T: 1.0, 2 * T: 0.1, 4 * T: 0.1}, "a"),
             **curve("att", {T: 0.5, 2 * T: 0.9, 4 * T: 0.9}, "b")}
    models = [summary("r", "state-space"), summary("att", "attention")]
    plan = Plan(("a", "b"), (T, 2 * T, 4 * T))
    finding = claim_recurrent_vs_attention(models, cells_from(table), plan, LABEL_GATE)
    assert finding.verdict == SUPPORTED, finding.explanation
    (pair,) = [e for e in finding.evidence if e.verdict is not None]
    assert pair.model == "r vs att"
    assert {k[1] for k in pair.cells} == {"a"}
    assert pair.details["recurrent_ahead"] == [2 * T, 4 * T] and pair.details["attention_ahead"] == []
    differences = {int(k): v for k, v in pair.details["differences"].items()}
    assert differences[2 * T][0] == pytest.approx(0.8)


def test_claim_2_needs_both_a_recurrent_and_an_attention_model_and_ignores_hybrids():
    only_attention = claim_recurrent_vs_attention([summary("t", "attention")],
                                                  cells_from(curve("t", {64: 1.0, 128: 0.0})))
    assert only_attention.verdict == INCONCLUSIVE
    models = [summary("t", "attention"), summary("s", "state-space"), summary("h", "hybrid")]
    table = {**curve("t", {64: 1.0, 128: 0.0}), **curve("s", {64: 1.0, 128: 0.9}), **curve("h", {64: 1.0, 128: 0.0})}
    finding = claim_recurrent_vs_attention(models, cells_from(table))
    assert finding.verdict == SUPPORTED
    assert [e.model for e in finding.evidence if e.verdict is not None] == ["s vs t"]


def test_an_every_family_claim_is_inconclusive_while_a_family_is_not_judged():
    table = {**curve("ssm", {T: 1.0, 2 * T: 0.2, 4 * T: 0.0}), **curve("lin", {T: 0.5, 2 * T: 0.1, 4 * T: 0.0})}
    models = [summary("ssm", "state-space"), summary("lin", "linear-recurrent", train_accuracy=0.5)]
    plan = Plan(("needle",), (T, 2 * T, 4 * T))
    found = claim_degradation(models, cells_from(table), plan)
    assert found.verdict == INCONCLUSIVE and "no model of linear-recurrent could be judged" in found.explanation
    alone = claim_degradation(models[:1], cells_from(table), plan)  # the same data, one family in the study
    assert alone.verdict == SUPPORTED


def test_settings_bars_are_the_ones_read():
    models = [summary("t", "attention")]
    cells = cells_from(curve("t", {64: 1.0, 128: 0.7, 256: 0.7}))  # a drop of 0.3
    assert claim_degradation(models, cells).verdict == SUPPORTED
    assert claim_degradation(models, cells, settings=AnalysisSettings(sharp_drop_fraction=0.5)).verdict == NOT_SUPPORTED
    with pytest.raises(ValueError, match="sharp_drop_fraction"):
        AnalysisSettings(min_drop=0.2)


# --------------------------------------------------------------------------------------------
# every finding
# --------------------------------------------------------------------------------------------
def test_all_findings_serialise_and_explain_themselves():
    models = [summary("t", "attention"), summary("s", "state-space")]
    table = {}
    for model, past in (("t", 0.0), ("s", 0.5)):
        for label, shift in (("a", 0.0), ("b", 0.4)):
            table |= {(model, label, T, d): a for d, a in U_SHAPE.items()}
            table |= {(model, label, 2 * T, d): max(past - shift, 0.0) for d in DEPTHS}
    # a U at T averages 59%: judged at a learned bar of 50%, so that every claim reads both models
    result = findings(models, cells_from(table, n=50), settings=AnalysisSettings(learned_bar_fraction=0.5))
    assert [f.number for f in result] == [1, 2, 3, 4]
    for finding in result:
        assert finding.verdict in (SUPPORTED, NOT_SUPPORTED, INCONCLUSIVE)
        assert finding.explanation.startswith(f"Verdict: {finding.verdict}.")
        assert finding.rule and one_sentence(finding.rule), finding.rule
        assert finding.complete
        text = json.dumps(finding.as_dict())
        assert json.loads(text)["verdict"] == finding.verdict
        for evidence in finding.evidence:
            json.dumps(evidence.details)
    assert result[0].verdict == SUPPORTED  # t falls by 0.59 at 2T, s by 0.29
    assert result[1].verdict == SUPPORTED  # s keeps 0.3 on average at 2T, t falls to 0
    assert result[2].verdict == SUPPORTED  # a U at T, off the ceiling
    # claim 4: the fixed length 4T was not evaluated, so no model can be judged
    assert result[3].verdict == INCONCLUSIVE


def test_claim_4_and_claim_3_use_the_fixed_settings():
    models = [summary("m", "state-space")]
    table = {**curve("m", {64: 1.0, 128: 0.9, 256: 1.0}, label="a"),
             **curve("m", {64: 1.0, 128: 0.1, 256: 1.0}, label="b")}
    cells = cells_from(table)
    # the spread is large at 2T only: read at the fixed 4T it is not, at 2T it is
    assert claim_format_inconsistency(models, cells).verdict == NOT_SUPPORTED
    assert claim_format_inconsistency(models, cells, settings=AnalysisSettings(format_length_factor=2)).verdict \
        == SUPPORTED
    u_at_2t = cells_from({**{("m", "needle", T, d): 1.0 for d in DEPTHS},
                          **{("m", "needle", 2 * T, d): a for d, a in U_SHAPE.items()}})
    found = claim_lost_in_the_middle(models, u_at_2t)
    assert found.verdict == SUPPORTED  # T is at the ceiling, 2T is read
    assert found.evidence[0].details["read_lengths"] == [2 * T]
    # with the ceiling raised to 1.0, T is read too: a flat 1.0 there is undecided, the U at 2T decides
    raised = claim_lost_in_the_middle(models, u_at_2t, settings=AnalysisSettings(ceiling_fraction=1.0))
    assert raised.verdict == SUPPORTED and raised.evidence[0].details["read_lengths"] == [T, 2 * T]


def test_claim_1_names_the_drop_it_shows_first_sharp_or_largest():
    """A supported model shows its first sharp drop (not the largest, which comes later); an
    undecided one its largest."""
    models = [summary("t", "attention")]
    sharp = claim_degradation(models, cells_from(curve("t", {64: 1.0, 128: 0.6, 256: 0.0})))
    evidence = sharp.evidence[0]
    assert evidence.quantity == "drop from T=64 (first sharp, at 128)"
    assert evidence.estimate.value == pytest.approx(0.4) and "first sharp drop" in evidence.reason
    assert "largest" not in evidence.reason
    flat = claim_degradation(models, cells_from(curve("t", {64: 1.0, 128: 0.95, 256: 0.9})))
    assert flat.verdict == NOT_SUPPORTED
    assert "largest drop" in flat.evidence[0].reason and flat.evidence[0].quantity == "drop from T=64 (largest, at 256)"
