"""Findings and measures on synthetic results with known answers."""

from __future__ import annotations

import json

import numpy as np
import pytest

from longarch.analysis.findings import (INCONCLUSIVE, NOT_SUPPORTED, SUPPORTED, Settings, claim_degradation,
                                        claim_format_inconsistency, claim_lost_in_the_middle,
                                        claim_recurrent_vs_attention, findings)
from longarch.analysis.measures import (Plan, cell_estimate, difference, effective_length, extrapolation_ratio,
                                        format_sensitivity, middle_index, select)
from longarch.analysis.stats import Cell, ModelSummary

T = 64
DEPTHS = (0.0, 20.0, 40.0, 50.0, 60.0, 80.0, 100.0)
U_SHAPE = dict(zip(DEPTHS, (0.95, 0.6, 0.4, 0.3, 0.4, 0.6, 0.9)))
FAST = Settings(resamples=400)


def exact(accuracy: float, n: int, seed: int = 0) -> np.ndarray:
    """n scores of which exactly round(accuracy * n) are 1, shuffled."""
    ones = int(round(accuracy * n))
    scores = np.array([1.0] * ones + [0.0] * (n - ones))
    np.random.default_rng(seed).shuffle(scores)
    return scores


def cells_from(table: dict, n: int = 200, seeds=(0, 1, 2)) -> dict:
    """{(model, label, length, depth): accuracy} -> cells with exact accuracies in every seed."""
    cells = {}
    for i, (key, accuracy) in enumerate(table.items()):
        cells[key] = Cell(*key, per_seed={s: exact(accuracy, n, seed=100 * i + s) for s in seeds})
    return cells


def summary(name: str, family: str, train_accuracy: float = 1.0) -> ModelSummary:
    return ModelSummary(name, family, 1000, 10, "constant", T, train_accuracy, 1.0, [0, 1, 2])


def curve(model: str, by_length: dict, label: str = "needle", depths=(None,)) -> dict:
    return {(model, label, length, depth): acc for length, acc in by_length.items() for depth in depths}


# --------------------------------------------------------------------------------------------
# intervals
# --------------------------------------------------------------------------------------------
def test_cell_interval_covers_the_true_accuracy_about_95_percent_of_the_time():
    rng = np.random.default_rng(1)
    truth, draws = 0.7, 200
    covered = 0
    for i in range(draws):
        cell = Cell("m", "needle", T, None, {0: (rng.random(150) < truth).astype(float)})
        estimate = cell_estimate(cell, resamples=400, seed=i)
        covered += estimate.low <= truth <= estimate.high
    assert 0.90 <= covered / draws <= 0.99


def test_paired_difference_interval_covers_about_95_percent_of_the_time():
    rng = np.random.default_rng(2)
    draws, covered = 200, 0
    for i in range(draws):
        first = [Cell("m", "x", T, 0.0, {0: (rng.random(120) < 0.8).astype(float)})]
        second = [Cell("m", "x", T, 50.0, {0: (rng.random(120) < 0.5).astype(float)})]
        estimate = difference(first, second, resamples=400, seed=i)
        covered += estimate.low <= 0.3 <= estimate.high
    assert 0.90 <= covered / draws <= 0.99


def test_cell_interval_spans_seed_disagreement():
    cell = Cell("m", "needle", T, None, {0: exact(1.0, 100), 1: exact(0.0, 100)})
    estimate = cell_estimate(cell, resamples=400)
    assert estimate.value == pytest.approx(0.5)
    assert estimate.low < 0.2 and estimate.high > 0.8  # a sample-only interval would be about +-0.07


# --------------------------------------------------------------------------------------------
# effective length and extrapolation ratio
# --------------------------------------------------------------------------------------------
def test_effective_length_is_the_longest_length_above_the_threshold_even_past_a_dip():
    cells = cells_from(curve("m", {64: 0.95, 128: 0.5, 256: 0.9, 512: 0.2}))
    found = effective_length(cells, "m", T, resamples=200)
    assert found.length == 256 and not found.contiguous
    assert extrapolation_ratio(found) == 4.0
    assert [p.length for p in found.points] == [64, 128, 256, 512]
    assert found.coverage.complete and found.coverage.expected == 4


def test_effective_length_threshold_is_strict_and_none_when_nothing_passes():
    at_bar = cells_from(curve("m", {64: 0.95, 128: 0.856, 256: 0.1}), n=1000)
    found = effective_length(at_bar, "m", T, resamples=200)
    assert found.length == 64 and found.contiguous and found.ratio == 1.0
    above = cells_from(curve("m", {64: 0.95, 128: 0.857, 256: 0.1}), n=1000)
    assert effective_length(above, "m", T, resamples=200).length == 128
    nothing = cells_from(curve("m", {64: 0.5, 128: 0.2}))
    found = effective_length(nothing, "m", T, resamples=200)
    assert found.length is None and not found.contiguous and found.ratio is None
    assert effective_length(nothing, "m", T, threshold=0.3, resamples=200).length == 64


def test_effective_length_per_format_and_pooled():
    table = {**curve("m", {64: 1.0, 128: 1.0}, label="a"), **curve("m", {64: 1.0, 128: 0.5}, label="b")}
    cells = cells_from(table)
    assert effective_length(cells, "m", T, labels=["a"], resamples=200).length == 128
    assert effective_length(cells, "m", T, labels=["b"], resamples=200).length == 64
    assert effective_length(cells, "m", T, resamples=200).length == 64  # pooled: 0.75 at 128


# --------------------------------------------------------------------------------------------
# lost in the middle and format sensitivity
# --------------------------------------------------------------------------------------------
def test_u_shape_gives_a_positive_middle_index_with_an_interval_above_zero():
    cells = cells_from(curve("m", {T: 1.0}, depths=DEPTHS) | {("m", "needle", T, d): a for d, a in U_SHAPE.items()})
    found = middle_index(cells, "m", T, resamples=400)
    assert found.ends == (0.0, 100.0) and found.middle == (40.0, 50.0, 60.0)
    assert found.index.value == pytest.approx((0.95 + 0.9) / 2 - (0.4 + 0.3 + 0.4) / 3, abs=1e-9)
    assert found.index.low > 0
    flat = cells_from(curve("m", {T: 0.7}, depths=DEPTHS))
    assert middle_index(flat, "m", T, resamples=400).index.compare(0.0) == "undecided"


def test_format_sensitivity_reports_spread_best_and_worst():
    table = {**curve("m", {64: 1.0, 128: 0.9}, label="a"), **curve("m", {64: 1.0, 128: 0.2}, label="b")}
    spreads = format_sensitivity(cells_from(table), "m", resamples=400)
    assert [s.length for s in spreads] == [64, 128]
    assert spreads[0].spread.value == 0 and spreads[0].spread.high == 0
    assert spreads[1].spread.value == pytest.approx(0.7)
    assert spreads[1].best == "a" and spreads[1].worst == "b" and spreads[1].spread.low > 0.5


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
    found = effective_length(cells, "m", T, plan=plan, resamples=200)
    assert found.length == 256 and not found.coverage.complete and found.coverage.covered == 8
    assert [p.coverage.complete for p in found.points] == [True, False, True, False]


def test_a_missing_cell_makes_a_decided_model_inconclusive():
    models = [summary("t", "attention")]
    cells = cells_from(curve("t", {64: 1.0, 128: 0.1, 256: 0.0}))
    plan = Plan(("needle", "needle text"), (64, 128, 256))
    assert claim_degradation(models, cells, settings=FAST).verdict == SUPPORTED
    finding = claim_degradation(models, cells, plan, FAST)
    assert finding.verdict == INCONCLUSIVE and not finding.complete
    assert finding.coverage.expected == 4 and finding.coverage.covered == 2
    reason = finding.evidence[0].reason  # says what the stored cells show, then why it is not decided
    assert "degrades (interval clear of 0.20); decided on the stored cells, but 2 of 4 planned cells" in reason
    assert "straddles" not in reason
    allowed = claim_degradation(models, cells, plan, Settings(resamples=400, allow_incomplete=True))
    assert allowed.verdict == SUPPORTED and not allowed.complete


# --------------------------------------------------------------------------------------------
# the claims
# --------------------------------------------------------------------------------------------
def test_models_below_the_training_threshold_are_excluded_with_the_reason():
    models = [summary("t", "attention"), summary("bad", "attention", train_accuracy=0.5)]
    cells = cells_from({**curve("t", {64: 1.0, 128: 0.0}), **curve("bad", {64: 0.5, 128: 0.5})})
    finding = claim_degradation(models, cells, settings=FAST)
    assert finding.verdict == SUPPORTED  # the unlearned model would have said otherwise
    assert [e.model for e in finding.evidence] == ["t"]
    assert [x.model for x in finding.excluded] == ["bad"] and "0.500 below 0.950" in finding.excluded[0].reason
    assert "bad" in finding.explanation


def test_claim_1_degradation_flips_with_the_data():
    models = [summary("t", "attention"), summary("s", "state-space")]

    def verdict(last_s: float, n: int = 200, at_t: float = 1.0) -> str:
        table = {**curve("t", {64: 1.0, 128: 0.3, 256: 0.0}), **curve("s", {64: at_t, 128: 0.8, 256: last_s})}
        return claim_degradation(models, cells_from(table, n=n), settings=FAST).verdict

    assert verdict(last_s=0.2) == SUPPORTED
    assert verdict(last_s=0.95) == NOT_SUPPORTED
    assert verdict(last_s=0.6, at_t=0.9, n=10) == INCONCLUSIVE


def test_claim_2_recurrent_vs_attention_flips_with_the_data():
    models = [summary("t", "attention"), summary("s", "state-space"), summary("h", "hybrid")]

    def finding(attention: float, recurrent: float = 0.6, n: int = 200, chance: float = 0.0):
        table = {**curve("t", {64: 1.0, 128: attention}), **curve("s", {64: 1.0, 128: recurrent}),
                 **curve("h", {64: 1.0, 128: 0.3})}
        return claim_recurrent_vs_attention(models, cells_from(table, n=n),
                                            settings=Settings(resamples=400, chance=chance))

    supported = finding(attention=0.0)
    assert supported.verdict == SUPPORTED
    assert [e.verdict for e in supported.evidence] == [SUPPORTED, SUPPORTED, None]
    assert finding(attention=0.5).verdict == NOT_SUPPORTED
    assert finding(attention=0.0, recurrent=0.05).verdict == NOT_SUPPORTED
    assert finding(attention=0.1, n=10).verdict == INCONCLUSIVE
    assert finding(attention=0.2, chance=0.2).verdict == SUPPORTED  # at chance is collapsed
    # relative to chance: a recurrent model at 0.6 with chance 0.55 is trivial
    assert finding(attention=0.5, recurrent=0.6, chance=0.55).evidence[1].verdict == NOT_SUPPORTED
    only_attention = claim_recurrent_vs_attention([models[0]], cells_from(curve("t", {64: 1.0, 128: 0.0})),
                                                  settings=FAST)
    assert only_attention.verdict == INCONCLUSIVE


def test_claim_3_lost_in_the_middle_flips_with_the_data():
    models = [summary("t", "attention"), summary("s", "state-space")]
    u = {("t", "needle", T, d): a for d, a in U_SHAPE.items()}

    def verdict(other: dict, n: int = 200) -> str:
        table = {**u, **{("s", "needle", T, d): a for d, a in other.items()}}
        return claim_lost_in_the_middle(models, cells_from(table, n=n), settings=FAST).verdict

    assert verdict(U_SHAPE) == SUPPORTED
    assert verdict(dict.fromkeys(DEPTHS, 1.0)) == NOT_SUPPORTED  # perfect everywhere: not worse in the middle
    assert verdict({d: 0.7 - 0.1 * (d in (0.0, 100.0)) for d in DEPTHS}) == NOT_SUPPORTED  # middle easier
    mild = {d: 0.6 + 0.1 * (d in (0.0, 100.0)) for d in DEPTHS}
    assert verdict(mild, n=200) == SUPPORTED
    assert verdict(mild, n=8) == INCONCLUSIVE


def test_claim_4_format_inconsistency_flips_with_the_data():
    models = [summary("m", "state-space"), summary("t", "attention")]

    def verdict(a_past: float, b_past: float, n: int = 200) -> str:
        table = {**curve("m", {64: 1.0, 128: a_past}, label="a"), **curve("m", {64: 1.0, 128: b_past}, label="b"),
                 **curve("t", {64: 1.0, 128: 0.0}, label="a"), **curve("t", {64: 1.0, 128: 0.0}, label="b")}
        return claim_format_inconsistency(models, cells_from(table, n=n), settings=FAST).verdict

    assert verdict(0.9, 0.1) == SUPPORTED
    assert verdict(0.5, 0.5) == NOT_SUPPORTED
    assert verdict(0.7, 0.3, n=10) == INCONCLUSIVE
    single = claim_format_inconsistency(models[:1], cells_from(curve("m", {64: 1.0, 128: 0.2})), settings=FAST)
    assert single.verdict == INCONCLUSIVE  # one format: no spread


def test_all_findings_serialise_and_explain_themselves():
    models = [summary("t", "attention"), summary("s", "state-space")]
    table = {}
    for model, past in (("t", 0.0), ("s", 0.5)):
        for label, shift in (("a", 0.0), ("b", 0.4)):
            table |= {(model, label, T, d): a for d, a in U_SHAPE.items()}
            table |= {(model, label, 2 * T, d): max(past - shift, 0.0) for d in DEPTHS}
    result = findings(models, cells_from(table, n=50), settings=FAST)
    assert [f.number for f in result] == [1, 2, 3, 4]
    for finding in result:
        assert finding.verdict in (SUPPORTED, NOT_SUPPORTED, INCONCLUSIVE)
        assert finding.explanation.startswith(f"Verdict: {finding.verdict}.")
        assert finding.complete
        json.dumps(finding.as_dict())
    assert result[2].verdict == SUPPORTED


def test_middle_index_pairs_seeds_so_seed_to_seed_spread_cancels():
    # seed 0 is a strong model, seed 1 a weak one; both are 0.2 worse in the middle
    cells = {}
    for d in DEPTHS:
        gap = 0.2 * (d in (0.0, 100.0))
        cells[("m", "needle", T, d)] = Cell("m", "needle", T, d, {0: exact(0.7 + gap, 100, seed=0),
                                                                  1: exact(0.1 + gap, 100, seed=1)})
    found = middle_index(cells, "m", T, resamples=400)
    assert found.index.value == pytest.approx(0.2)
    assert found.index.low > 0.1  # an unpaired difference of two seed-spread means would straddle 0


def test_cells_missing_a_seed_still_give_an_estimate():
    first = [Cell("m", "x", T, 0.0, {0: exact(0.9, 50), 1: exact(0.8, 50)})]
    second = [Cell("m", "x", T, 50.0, {1: exact(0.4, 50)})]
    estimate = difference(first, second, resamples=200)
    assert np.isfinite([estimate.value, estimate.low, estimate.high]).all()


# --------------------------------------------------------------------------------------------
# gating by label: models trained on a mixture enter each claim with the formats they solved
# --------------------------------------------------------------------------------------------
def test_label_gate_judges_each_model_on_the_formats_it_solved_at_t():
    lengths = {T: 1.0, 2 * T: 0.1, 4 * T: 0.0}
    table = {**curve("ssm", lengths, "noise"), **curve("ssm", {T: 0.5, 2 * T: 0.5, 4 * T: 0.5}, "text"),
             **curve("attn", {T: 0.3, 2 * T: 0.3, 4 * T: 0.3}, "noise"),
             **curve("attn", {T: 0.2, 2 * T: 0.2, 4 * T: 0.2}, "text")}
    cells = cells_from(table)
    models = [summary("ssm", "state-space", train_accuracy=0.75), summary("attn", "attention", train_accuracy=0.25)]
    plan = Plan(("noise", "text"), (T, 2 * T, 4 * T))
    # by model: both models' mixture accuracy is below 0.95, so nothing is judged
    by_model = claim_degradation(models, cells, plan, FAST)
    assert by_model.verdict == INCONCLUSIVE and not by_model.evidence and len(by_model.excluded) == 2
    # by label: ssm is judged on noise only (text at T is 0.5), and degrades there; attn solved nothing
    gated = claim_degradation(models, cells, plan, Settings(resamples=400, gate="label"))
    assert [e.model for e in gated.evidence] == ["ssm"] and gated.evidence[0].verdict == SUPPORTED
    assert gated.verdict == INCONCLUSIVE  # the attention family has no judged model
    assert {k[1] for k in gated.evidence[0].cells} == {"noise"}
    assert gated.evidence[0].estimate.value == pytest.approx(1.0)
    reasons = {x.model: x.reason for x in gated.excluded}
    assert reasons["ssm"].startswith("labels below 0.950 at T=64: text 0.500")
    assert reasons["attn"].startswith("every label below 0.950") and "noise 0.300" in reasons["attn"]
    # the verdict flips when the data does: ssm keeps its accuracy on noise
    kept = cells_from({**table, **curve("ssm", {T: 1.0, 2 * T: 1.0, 4 * T: 0.98}, "noise")})
    assert claim_degradation(models, kept, plan, Settings(resamples=400, gate="label")).verdict == NOT_SUPPORTED


def test_an_every_family_claim_is_inconclusive_while_a_family_is_not_judged():
    table = {**curve("ssm", {T: 1.0, 2 * T: 0.2, 4 * T: 0.0}), **curve("lin", {T: 0.5, 2 * T: 0.1, 4 * T: 0.0})}
    models = [summary("ssm", "state-space"), summary("lin", "linear-recurrent", train_accuracy=0.5)]
    plan = Plan(("needle",), (T, 2 * T, 4 * T))
    found = claim_degradation(models, cells_from(table), plan, FAST)
    assert found.verdict == INCONCLUSIVE and "no model of linear-recurrent could be judged" in found.explanation
    alone = claim_degradation(models[:1], cells_from(table), plan, FAST)  # the same data, one family in the study
    assert alone.verdict == SUPPORTED
