"""The "Findings" section of a controlled study's report: the paper's four claims checked against
this run's results (findings.py), with the evidence per model as a table. Only a study that asks
for them (`analysis.claims: paper`) has the section; every number in it is in percent or
percentage points.

The planned grid comes from the store's metadata (tasks, lengths, depths), so a claim whose
cells are not all stored says so and is judged inconclusive rather than on what happens to
be there.
"""

from __future__ import annotations

import math

from .. import tasks as task_registry
from .findings import Finding, findings
from .settings import AnalysisSettings
from .measures import Plan
from .render import MISSING, Block

VERDICT = {"supported": "supported", "not supported": "not supported", "inconclusive": "inconclusive at this sample size"}


def plan_of(meta: dict, cells: dict) -> Plan | None:
    """The planned grid: each planned task label with the planned depths when the label was
    evaluated with a needle depth (seen in its stored cells), else without one, and each label's
    answer length from the stored config."""
    labels, lengths = meta.get("planned_tasks"), meta.get("planned_lengths")
    if not labels or not lengths:
        return None
    answers = answer_lengths(meta.get("config"))
    per_label = meta.get("planned_task_depths")
    if isinstance(per_label, dict):
        return Plan(tuple(labels), tuple(int(n) for n in lengths),
                    {label: tuple(None if d is None else float(d) for d in per_label.get(label) or [None])
                     for label in labels}, answers)
    with_depth = {label for (_, label, _, depth) in cells if depth is not None}
    depths = tuple(float(d) for d in meta.get("planned_depths") or []) or (None,)
    return Plan(tuple(labels), tuple(int(n) for n in lengths),
                {label: depths if label in with_depth else (None,) for label in labels}, answers)


def answer_lengths(config) -> dict[str, int] | None:
    """Answer symbols per sample of each evaluated label, from a stored study config (the task
    made from its name and knobs); None when the config does not say or a task cannot be made."""
    if not isinstance(config, dict):
        return None
    entries = (config.get("eval") or {}).get("tasks")
    if not entries:
        task = config.get("task") or {}
        entries = [{"name": task.get("name", "needle"), "knobs": task.get("knobs") or {},
                    "label": task.get("name", "needle")}]
    found = {}
    for entry in entries:
        try:
            made = task_registry.get(entry["name"], family="tokens", **(entry.get("knobs") or {}))
        except Exception:  # an old or foreign config: claim 4 then compares every format and says so
            return None
        found[entry.get("label") or entry["name"]] = int(made.answer_length)
    return found


def check_claims(meta: dict, models, cells: dict, settings: AnalysisSettings) -> list[Finding]:
    return findings(models, cells, plan_of(meta, cells), settings)


def _estimate(e) -> str:
    if e.n == 0 or math.isnan(e.value):
        return MISSING
    return f"{100 * e.value:.1f} [{100 * e.low:.1f}, {100 * e.high:.1f}]"


def findings_blocks(result: list[Finding], level: float = 0.95) -> list[Block]:
    blocks: list[Block] = [("h2", "Findings"), ("p",
        "The four claims of Huang (COLING 2025) about long-context extrapolation, which this study asks about "
        f"(`analysis.claims: paper`), each checked against this run: the measure per model with its {100 * level:g}% interval, the rule in one sentence, and a verdict "
        "computed from the intervals. An accuracy's interval is the Jeffreys interval of its counts pooled over "
        "seeds (every seed is evaluated on its own samples); it covers the mean accuracy of these trained seeds, "
        "not of seeds not trained, and at 100% it still has width (48 of 48: 94.9-100). A difference gets Newcombe's "
        "interval built from the two; where one statement reads several lengths or depths at once, its intervals "
        "are widened (Bonferroni) so that the statement holds at the stated level. A bootstrap over 3 seeds "
        "covered the truth far less often than stated in simulation (tests/test_intervals.py) and is not used. "
        "Only what was learned at T is read, judged on this evaluation's cells at T (accuracy pooled over seeds and "
        "depths at or above the learned bar, `analysis.learned_bar_fraction`), not on the training run's own check: "
        "a model below it on any format is left out, or, for a study trained on a mixture, a model enters each "
        "claim only with the formats it learned; the formats and models left out are named.")]
    for finding in result:
        blocks.append(("h3", f"Claim {finding.number}: {finding.claim}"))
        blocks.append(("p", f"**Verdict: {VERDICT.get(finding.verdict, finding.verdict)}.** Rule: {finding.rule}"))
        if not finding.complete:
            coverage = finding.coverage
            blocks.append(("warn", f"{coverage.expected - coverage.covered} of the {coverage.expected} planned cells "
                                   "this claim needs are not stored; the models missing cells are inconclusive."))
        rows = [[e.model, e.family, e.quantity, _estimate(e.estimate), e.verdict or "shown only", e.reason,
                 f"{e.coverage.covered} of {e.coverage.expected}"] for e in finding.evidence]
        if rows:
            blocks.append(("table", ["model", "family", "measure", f"points [{100 * level:g}% interval]", "verdict",
                                     "why", "cells"], rows))
        shown = tuple(f"- {e.model} (" for e in finding.evidence)  # per-model lines: already in the table
        lines = [line for line in finding.explanation.splitlines()[1:]
                 if not line.startswith(shown) or " left out on " in line or " excluded: " in line]
        if lines:  # per family, and the models left out with the reason
            blocks.append(("p", "\n".join(lines)))
    return blocks
