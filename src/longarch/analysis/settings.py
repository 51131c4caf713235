"""The analysis settings: one definition, used by every kind of study and by every part of the report.

They are a study's `analysis:` block in YAML and are stored with its results, but they are never
part of a result's id: change them and `longarch report` judges the same results again.

Every name says its unit:
- `..._fraction`: an accuracy (or a difference of accuracies) as a fraction in [0, 1], never a
  percentage;
- `..._factor` / `..._factors`: a length as a multiple of the training length T;
- `..._percent`: a needle depth, in percent of the context (0 = start, 100 = next to the question).

The report shows every accuracy, interval, drop and bar in percent (or percentage points, for a
difference); summary.json keeps fractions, as these settings are written.

`title`, `question` and `claims` say what the report is about: a study asks its own question, and
the four claims of Huang (COLING 2025) are judged only when it says `claims: paper`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# The names an analysis block used before issue 15, and what replaced each; an old store still
# reports (see `from_stored`), a YAML with an old name is refused with the new name.
RENAMED = {
    "threshold": "effective_length_bar_fraction (a fraction: 85.6 -> 0.856)",
    "level": "interval_level_fraction",
    "min_drop": "sharp_drop_fraction",
    "factor": "none: claim 2 is now read at every length (see lead_margin_fraction)",
    "nontrivial": "lead_margin_fraction",
    "collapsed": "lead_margin_fraction",
    "chance": "none: claim 2 now compares the two families directly",
    "small_spread": "small_spread_fraction",
    "large_spread": "large_spread_fraction",
    "min_train_accuracy": "analysis.learned_bar_fraction",
}


class AnalysisSettings(BaseModel):
    """How results are judged. Accuracies are fractions; lengths past T are multiples of T."""

    # strict as the rest of the config: no silent coercion (`true` is not 1.0, "0.9" is not a number),
    # and no setting is infinite or NaN: refused as such, not as a bound it happens to miss
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)

    # -- which models, and which formats, are read -------------------------------------------
    learned_bar_fraction: float = Field(
        0.95, ge=0, le=1, description="a model (or, with gate 'label', a format) counts as learned when its accuracy "
                                      "at T, pooled over seeds and depths, reaches this; nothing else is read")
    gate: Literal["model", "label"] | None = Field(
        None, description="'model': leave out a model whose accuracy at T (pooled over seeds and depths) is "
                          "below learned_bar_fraction on any evaluated format; 'label': judge each model only on "
                          "the formats it learned at T [default: 'label' for a study trained on a mixture, else "
                          "'model']; see analysis/learned.py")
    labels: list[str] | None = Field(
        None, min_length=1, description="the evaluated formats (task labels) the claims read [default: all]")
    allow_incomplete: bool = Field(False, description="decide a model even when planned cells are missing")

    # -- intervals ----------------------------------------------------------------------------
    interval_level_fraction: float = Field(0.95, gt=0, lt=1, description="coverage of every interval")

    # -- effective length (RULER's measure, with the lower bound of the interval) -------------
    effective_length_bar_fraction: float = Field(
        0.856, ge=0, le=1, description="effective length: the longest length up to which every evaluated length's "
                                       "lower bound is above this (RULER's 85.6%, Llama-2-7B at 4K)")

    # -- claim 1: degradation past T ----------------------------------------------------------
    sharp_drop_fraction: float = Field(0.20, ge=0, le=1,
                                       description="claim 1: accuracy at T minus at a length past T counts as a "
                                                   "sharp drop above this")

    # -- claim 2: recurrent versus attention ----------------------------------------------------
    recurrent_families: list[str] = Field(["state-space", "linear-recurrent"],
                                          description="claim 2: the families that count as recurrent")
    attention_families: list[str] = Field(["attention"], description="claim 2: the families that count as attention")
    lead_margin_fraction: float = Field(0.10, ge=0, le=1,
                                        description="claim 2: a family is ahead at a length when its paired "
                                                    "difference is above this")

    # -- claim 3: lost in the middle ----------------------------------------------------------
    middle_depths_percent: list[float] = Field([40.0, 60.0], min_length=2, max_length=2,
                                               description="claim 3: the depths from .. to that are the middle")
    middle_lengths_read: int = Field(
        2, ge=1, description="claim 3 is read at the first this many evaluated lengths from T on (T included) whose "
                             "accuracy over all depths is off the ceiling and off the floor")
    ceiling_fraction: float = Field(0.95, ge=0, le=1,
                                    description="claim 3: a length whose accuracy over all depths is above this is at "
                                                "the ceiling, where the middle cannot do worse, and is not read")
    floor_fraction: float = Field(0.05, ge=0, le=1,
                                  description="claim 3: a length whose accuracy over all depths is below this is at "
                                              "the floor, where the ends cannot do better, and is not read")
    middle_gap_fraction: float = Field(0.0, ge=0, le=1,
                                       description="claim 3: the worse end minus the middle must be above this")

    # -- claim 4: inconsistency across formats ------------------------------------------------
    format_length_factor: int = Field(4, ge=2, description="claim 4 compares formats at T and at this multiple of "
                                                           "T, fixed before the results are seen")
    small_spread_fraction: float = Field(0.10, ge=0, le=1, description="claim 4: format spread at T below this")
    large_spread_fraction: float = Field(0.30, ge=0, le=1, description="claim 4: spread at the fixed length above this")

    # -- what the report is about ---------------------------------------------------------------
    title: str | None = Field(None, min_length=1, description="the report's title [default: 'longarch report: "
                                                             "<the study's name>']")
    question: str | None = Field(None, min_length=1, description="the question the study asks, shown under the "
                                                                "report's title [default: none]")
    claims: Literal["none", "paper"] = Field(
        "none", description="'paper': the report judges the four claims of Huang (COLING 2025) in a Findings "
                            "section; 'none': it shows the measures only [default; a store written before this "
                            "setting existed reads as 'paper', see `from_stored`]")

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, data):
        if isinstance(data, dict):
            old = sorted(k for k in data if k in RENAMED)
            if old:
                raise ValueError(f"'{old[0]}' was renamed: use {RENAMED[old[0]]}")
        return data

    @field_validator("middle_depths_percent")
    @classmethod
    def _middle_in_range(cls, middle):
        low, high = middle
        if not 0 <= low <= high <= 100:
            raise ValueError(f"middle depths {low}-{high} are not a range within 0-100")
        return middle

    @model_validator(mode="after")
    def _floor_below_ceiling(self):
        if self.floor_fraction >= self.ceiling_fraction:
            raise ValueError(f"floor_fraction {self.floor_fraction} is not below ceiling_fraction {self.ceiling_fraction}")
        return self

    def gate_for(self, mixture: bool) -> str:
        """The gate in effect: the one set, else 'label' for a study trained on a mixture."""
        return self.gate or ("label" if mixture else "model")


def from_stored(block: dict | None, min_train_accuracy: float | None = None) -> tuple[AnalysisSettings, str]:
    """The settings of a stored study config's `analysis:` block, and a note when it had to be
    read leniently (else ""). A block written before issue 15 has its old names translated
    (`threshold` in percent becomes a fraction; claim-2 settings that no longer exist are
    dropped); a block that still does not validate gives the defaults and says why.
    `min_train_accuracy`: the old top-level setting, now `learned_bar_fraction`.
    A block without `claims` was stored before that setting existed, when every report judged the
    paper's claims: it reads as `claims: paper`, so that its report is rebuilt as it was written (a
    new study's stored block always has the key)."""
    block = dict(block) if isinstance(block, dict) else {}
    before_claims = {} if "claims" in block else {"claims": "paper"}
    block.update(before_claims)
    translated = []
    if "threshold" in block:
        threshold = block.pop("threshold")
        if isinstance(threshold, (int, float)) and not isinstance(threshold, bool):
            block["effective_length_bar_fraction"] = float(threshold) / 100
        translated.append("threshold")
    for old, new in (("level", "interval_level_fraction"), ("min_drop", "sharp_drop_fraction"),
                     ("small_spread", "small_spread_fraction"), ("large_spread", "large_spread_fraction")):
        if old in block:
            block[new] = block.pop(old)
            translated.append(old)
    for gone in ("factor", "nontrivial", "collapsed", "chance"):
        if block.pop(gone, None) is not None:
            translated.append(gone)
    learned = dict(before_claims)
    if (isinstance(min_train_accuracy, (int, float)) and not isinstance(min_train_accuracy, bool)
            and "learned_bar_fraction" not in block):
        learned["learned_bar_fraction"] = float(min_train_accuracy)
        block.update(learned)
    try:
        settings = AnalysisSettings.model_validate(block)
    except ValueError as error:
        errors = getattr(error, "errors", lambda: [{"loc": (), "msg": str(error)}])()
        first = errors[0]
        where = ".".join(map(str, first["loc"])) or "analysis"
        try:
            fallback = AnalysisSettings.model_validate(learned)  # keep the stored training bar and claims
        except ValueError:
            fallback = AnalysisSettings()
        return fallback, (f"the stored `analysis:` block does not validate ({where}: {first['msg']}); the default "
                          "analysis settings are used")
    note = (f"the stored `analysis:` block uses names from before issue 15 ({', '.join(translated)}); they were read "
            "as their new equivalents" if translated else "")
    return settings, note
