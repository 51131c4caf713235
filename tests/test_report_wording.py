"""Issue 21, the report's wording: one unit (percent, or percentage points for a difference) in
every table and sentence of report.md while summary.json keeps fractions; each rule's inputs in
plain sentences; the seeds column lists the seeds and their count; and a study says what it asks
(`analysis.title`, `analysis.question`), with the paper's four claims judged only when it says
`analysis.claims: paper` (a store from before that setting reads as such)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from longarch.analysis.findings import claim_degradation, claim_format_inconsistency, claim_recurrent_vs_attention
from longarch.analysis.measures import Plan
from longarch.analysis.settings import AnalysisSettings, from_stored
from longarch.controlled.report import seeds_text
from longarch.controlled.runner import plan
from longarch.kinds import build_report, kind_of, load_study
from longarch.study.directory import identity
from longarch.study.store import Store
from test_findings import T, cells_from, curve, summary
from test_report import write_study

FRACTION_WITH_INTERVAL = re.compile(r"\b[01]\.\d\d \[")  # "1.00 [1.00, 1.00]": an accuracy as a fraction
FRACTION = re.compile(r"(?<![\d.])0\.\d{2,3}\b")          # "0.20", "0.950": a bar or accuracy as a fraction
COMPACT = re.compile(r"(above|below) [01]\.\d+:")          # "(large above 0.30: below, below, ...)"


def _report(out: Path, analysis: dict | None = None) -> tuple[str, str, dict]:
    """A two-model store (alpha learned, beta did not), its `analysis:` block replaced when given;
    report.md, report.html and summary.json as built from it."""
    out.mkdir(parents=True, exist_ok=True)
    write_study(out)
    if analysis is not None:
        with Store(out / "results.sqlite") as store:
            store.set_meta("config", {**store.meta()["config"], "analysis": analysis})
    paths = build_report(out)
    return paths["md"].read_text(), paths["html"].read_text(), json.loads(paths["summary"].read_text())


def _body(md: str) -> str:
    """report.md without its Reproducibility section (which quotes the configuration as YAML)."""
    return md.split("## Reproducibility")[0]


def _learning_rates_left_out(md: str) -> str:
    """The body without the training section, whose learning rates are rates, not accuracies."""
    body = _body(md)
    return body.split("## Training")[0] + body.split("## Accuracy by length", 1)[1]


# --------------------------------------------------------------------------------------------
# one unit: percent
# --------------------------------------------------------------------------------------------
def test_no_accuracy_bar_or_interval_is_a_fraction_in_the_report(tmp_path):
    md, page, data = _report(tmp_path, {"learned_bar_fraction": 0.75, "claims": "paper"})
    text = _learning_rates_left_out(md)
    assert "## Findings" in text and "### Claim 1" in text
    assert not FRACTION_WITH_INTERVAL.search(text), FRACTION_WITH_INTERVAL.search(text)
    assert not FRACTION.search(text), FRACTION.search(text)
    assert "11.1% on needle at T=16, below the 75% bar" in text  # beta's exclusion, once 0.111 below 0.750
    assert "an interval wholly above 20 points" in text and "The drop from T straddles 20 points at 32 (2T)" in text
    assert "| points [95% interval] |" in text
    # summary.json keeps fractions: the machine-readable numbers are as they were
    degradation = data["findings"][0]
    assert 0 < degradation["evidence"][0]["estimate"]["value"] < 1
    assert data["analysis"]["sharp_drop_fraction"] == 0.2 and data["learned_bar_fraction"] == 0.75


def test_the_setup_table_lists_the_seeds_and_their_count(tmp_path):
    md, _, _ = _report(tmp_path)
    setup = md.split("## Setup")[1].split("##")[0]
    assert re.search(r"^\| alpha \|.*\| 0, 1 \(2 seeds\) \|", setup, flags=re.M)
    assert re.search(r"^\| beta \|.*\| 0 \(1 seed\) \|", setup, flags=re.M)
    assert seeds_text([0]) == "0 (1 seed)" and seeds_text([3, 4, 5]) == "3, 4, 5 (3 seeds)"


# --------------------------------------------------------------------------------------------
# each rule's inputs in sentences
# --------------------------------------------------------------------------------------------
def test_claim_1_says_each_lengths_side_of_the_bar_in_a_sentence():
    models = [summary("m", "attention")]
    cells = cells_from(curve("m", {T: 1.0, 2 * T: 0.99, 4 * T: 0.8, 8 * T: 0.2}))
    reason = claim_degradation(models, cells).evidence[0].reason
    assert "The drop from T is at or below 20 points at 128 (2T), straddles 20 points at 256 (4T), is wholly " \
           "above 20 points at 512 (8T)." in reason
    assert not COMPACT.search(reason) and not FRACTION.search(reason)


def test_claim_2_names_where_each_family_is_ahead_in_words():
    models = [summary("rec", "state-space"), summary("att", "attention")]
    cells = cells_from({**curve("rec", {T: 1.0, 2 * T: 1.0, 4 * T: 0.5}), **curve("att", {T: 1.0, 2 * T: 0.5,
                                                                                              4 * T: 0.5})})
    finding = claim_recurrent_vs_attention(models, cells)
    reason = finding.evidence[0].reason
    assert reason.startswith("rec is ahead by more than 10 points at 128 (2T), att at no length, neither at 256 (4T).")
    assert "margin of 10 points" in finding.rule and not FRACTION.search(finding.rule + reason)


def test_claim_4_says_each_spread_against_its_bar_in_words():
    models = [summary("m", "attention")]
    plan_ = Plan(("a", "b"), (T, 4 * T), {"a": (None,), "b": (None,)}, {"a": 3, "b": 3})
    cells = cells_from({**curve("m", {T: 1.0, 4 * T: 0.9}, "a"), **curve("m", {T: 1.0, 4 * T: 0.1}, "b")})
    finding = claim_format_inconsistency(models, cells, plan_)
    reason = finding.evidence[0].reason
    assert reason.startswith("Across the formats a and b the spread is 0.0 points [")
    assert "at T=64, which is at or below 10 points, and 80.0 points [" in reason
    assert "at 256 (4T), which is wholly above 30 points; a is best and b worst." in reason
    assert "below 10 points at T and above 30 points at 4T" in finding.rule
    assert not FRACTION.search(finding.rule + reason) and not COMPACT.search(finding.explanation)


# --------------------------------------------------------------------------------------------
# a study's own title and question; the paper's claims only when asked for
# --------------------------------------------------------------------------------------------
OWN = {"title": "Does attention forget?", "question": "How far past T does alpha keep its accuracy?"}


def test_a_study_with_its_own_question_has_no_claims_and_no_paper(tmp_path):
    md, page, data = _report(tmp_path, {**OWN, "claims": "none"})
    body = _body(md)
    assert md.startswith("# Does attention forget?\n") and "longarch report: unit-study" not in md
    assert "**Question:** How far past T does alpha keep its accuracy?" in body
    assert "<title>Does attention forget?</title>" in page and "<strong>Question:</strong>" in page
    assert "Huang" not in md and "## Findings" not in md and "claim" not in body.lower()
    assert "## Per-model measures" in body and "effective length" in body  # the measures stay
    assert "findings" not in data and data["analysis"]["claims"] == "none"
    assert data["analysis"]["title"] == OWN["title"]


def test_a_study_without_the_setting_has_no_claims(tmp_path):
    md, _, data = _report(tmp_path, AnalysisSettings().model_dump(mode="json"))  # as a new study stores it
    assert "Huang" not in md and "## Findings" not in md and "findings" not in data
    assert md.startswith("# longarch report: unit-study\n") and "**Question:**" not in md


def test_claims_paper_shows_the_four_claims_under_the_studys_own_title(tmp_path):
    md, _, data = _report(tmp_path, {**OWN, "claims": "paper"})
    assert md.startswith("# Does attention forget?\n")
    section = md.split("## Findings")[1]
    assert "Huang (COLING 2025)" in section and "`analysis.claims: paper`" in section
    assert [int(n) for n in re.findall(r"### Claim (\d):", section)] == [1, 2, 3, 4]
    assert [f["claim"] for f in data["findings"]] == [1, 2, 3, 4]


def test_a_store_from_before_the_setting_keeps_its_claims():
    """A stored block without `claims` was written when every report judged the paper's claims."""
    assert from_stored({"learned_bar_fraction": 0.9})[0].claims == "paper"
    assert from_stored(None)[0].claims == "paper"
    assert from_stored({"threshold": 85.6})[0].claims == "paper"      # names from before issue 15 too
    assert from_stored({"retired_key": 1})[0].claims == "paper"       # and a block that no longer validates
    assert from_stored({"claims": "none"})[0].claims == "none"
    assert AnalysisSettings().claims == "none"


@pytest.mark.parametrize("preset, claims", [("controlled", "paper"), ("quick", "paper"), ("smoke", "none")])
def test_the_presets_that_ask_the_papers_claims_say_so(preset, claims):
    assert load_study(preset).analysis.claims == claims


def test_title_question_and_claims_are_no_part_of_a_studys_identity():
    study = load_study("smoke")
    shown = study.model_copy(update={"analysis": AnalysisSettings(claims="paper", **OWN)})
    kind = kind_of(study)
    assert identity(kind, study.model_dump(mode="json")) == identity(kind, shown.model_dump(mode="json"))
    assert [c.cell_id for c in plan(study)[1]] == [c.cell_id for c in plan(shown)[1]]


@pytest.mark.parametrize("bad", [{"claims": "mine"}, {"title": ""}, {"question": 3}])
def test_the_settings_are_checked(bad):
    with pytest.raises(ValueError):
        AnalysisSettings.model_validate(bad)
