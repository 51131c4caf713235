"""Study configuration: the presets validate, and every malformed study is a ConfigError whose
one-line message names the problem."""

from __future__ import annotations

import copy
import itertools

import pytest
import yaml

from longarch import models
from longarch.controlled import config
from longarch.study import schema
from longarch.controlled.config import ConfigError, Study
from longarch.kinds import load_study, stored_study

pytestmark = pytest.mark.usefixtures("one_thread")

# controlled studies; the pretrained presets (kind: pretrained) are tested in test_pretrained.py
PRESETS = [p for p in schema.preset_names() if getattr(load_study(p), "kind", None) != "pretrained"]

VALID = {
    "name": "tiny",
    "task": {"name": "needle", "knobs": {"haystack": "random"}},
    "models": ["transformer", "mamba2"],
    "params": 20000,
    "train": {"length": 16, "steps": 5, "batch_size": 4},
    "eval": {"max_factor": 4, "depths": [0, 50, 100], "samples": 2},
}


def _write(tmp_path, data=None, text=None):
    path = tmp_path / "study.yaml"
    path.write_text(text if text is not None else yaml.safe_dump(data), encoding="utf-8")
    return path


def _changed(change):
    data = copy.deepcopy(VALID)
    change(data)
    return data


def _sized(study: Study) -> dict[str, int]:
    """Each model's parameters as the budget counts them (params_count), at the study's vocabulary."""
    vocab_size = study.vocab_size()
    out = {}
    for entry in study.models:
        overrides = config.resolve_overrides(study, entry, vocab_size)
        built = models.config(entry.arch, vocab_size=vocab_size, **overrides)
        out[entry.label] = models.count_params(built, embeddings=study.params_count == "all")
    return out


# ---------------------------------------------------------------- presets


def test_the_documented_presets_exist():
    assert {"quick", "smoke"} <= set(PRESETS)


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_validates(preset):
    study = load_study(preset)
    assert isinstance(study, Study) and study.name == preset
    assert study.models and all(entry.arch in models.names() for entry in study.models)
    task = study.make_task()
    assert task.name == study.task.name and study.train.length >= task.min_length
    lengths = study.eval_lengths()
    assert lengths[0] == study.train.length and lengths == sorted(set(lengths))
    assert all(0 <= d <= 100 for d in study.eval.depths)


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_models_are_within_five_percent_of_the_budget(preset):
    study = load_study(preset)
    if study.params is None:
        pytest.skip("no parameter budget")
    for label, params in _sized(study).items():
        assert abs(params - study.params) <= 0.05 * study.params, (label, params)


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_models_are_parameter_matched_to_each_other(preset):
    study = load_study(preset)
    sized = _sized(study)
    for (a, pa), (b, pb) in itertools.combinations(sized.items(), 2):
        assert abs(pa - pb) <= 0.05 * max(pa, pb), f"{a}: {pa:,} vs {b}: {pb:,}"


def test_quick_evaluates_to_at_least_32_times_the_training_length():
    study = load_study("quick")
    lengths = study.eval_lengths()
    assert max(lengths) >= 32 * study.train.length
    assert all(b == 2 * a for a, b in zip(lengths, lengths[1:]))  # a doubling ladder


def test_quick_compares_the_trained_noise_haystack_with_text():
    study = load_study("quick")
    [(trained, _)] = study.train_tasks()
    evaluated = dict(study.eval_tasks())
    assert trained.haystack == "noise" and set(evaluated) == {"noise", "text"}
    assert evaluated["noise"] == trained  # the noise evaluation is the training distribution
    assert evaluated["text"].haystack == "text" and evaluated["text"].n_filler > 1000  # a real word vocabulary
    assert study.vocab_size() == evaluated["text"].vocab_size and study.params_count == "non-embedding"


def test_overrides_replace_top_level_keys():
    study = load_study("smoke", {"seeds": [3, 4]})
    assert study.seeds == [3, 4]


# ---------------------------------------------------------------- malformed studies


def test_the_base_study_is_valid(tmp_path):
    study = load_study(str(_write(tmp_path, VALID)))
    assert [entry.label for entry in study.models] == ["transformer", "mamba2"]


def _set(path: str, value):
    def change(data):
        *parents, last = path.split(".")
        node = data
        for key in parents:
            node = node[key]
        node[last] = value
    return change


def _drop(path: str):
    def change(data):
        *parents, last = path.split(".")
        node = data
        for key in parents:
            node = node[key]
        del node[last]
    return change


# (id, change to VALID or raw YAML text, substrings the message must contain)
MALFORMED = [
    ("unknown-top-level-key", _set("colour", "blue"), ["unknown key", "colour"]),
    ("unknown-top-level-key-starting-str", _set("strategy", "grid"), ["unknown key", "strategy"]),
    ("unknown-nested-key", _set("train.stepz", 10), ["unknown key", "train.stepz"]),
    ("unknown-eval-key", _set("eval.depht", [0]), ["eval.depht"]),
    ("unknown-task-section-key", _set("task.knob", {}), ["task.knob"]),
    ("unknown-model-entry-key", _set("models", [{"arch": "mamba2", "nmae": "m2"}]), ["nmae"]),
    ("wrong-type", _set("train.steps", "many"), ["train.steps", "integer"]),
    ("wrong-type-fraction", _set("train.batch_size", 2.5), ["train.batch_size"]),
    ("negative-steps", _set("train.steps", 0), ["train.steps"]),
    ("missing-required", _drop("train.length"), ["train.length", "required"]),
    ("missing-name", _drop("name"), ["name", "required"]),
    ("depth-150", _set("eval.depths", [0, 150]), ["eval.depths", "150"]),
    ("no-depths", _set("eval.depths", []), ["depth"]),
    ("no-models", _set("models", []), ["models"]),
    ("unknown-architecture", _set("models", ["transformer", "mamab2"]),
     ["mamab2", "did you mean 'mamba2'"]),
    ("unknown-architecture-no-budget", lambda d: (d.pop("params"), d.update(models=["transformr"])),
     ["transformr", "did you mean 'transformer'"]),
    ("unknown-task", _set("task.name", "neddle"), ["neddle", "did you mean 'needle'"]),
    ("unknown-task-knob", _set("task.knobs", {"n_kyes": 4}), ["n_kyes"]),
    ("bad-task-knob-value", _set("task.knobs", {"haystack": "zeros"}), ["haystack", "zeros"]),
    ("train-length-below-minimum", _set("train.length", 3), ["length 3", "minimum 5"]),
    ("eval-length-below-minimum", _set("eval.lengths", [4, 16]), ["length 4", "minimum 5"]),
    ("impossible-budget", _set("params", 10), ["transformer", "10 parameters"]),
    ("unknown-model-override", _set("models", [{"arch": "mamba2", "overrides": {"d_stat": 8}}]),
     ["mamba2", "d_stat"]),
    ("duplicate-model-names", _set("models", ["transformer", "mamba2", "transformer"]),
     ["transformer", "twice"]),
    ("duplicate-explicit-names", _set("models", ["mamba2", {"arch": "transformer", "name": "mamba2"}]),
     ["mamba2", "twice"]),
    ("empty-mixture", _set("train.tasks", []), ["train.tasks", "at least 1 item"]),
    ("mixture-weight-zero", _set("train.tasks", [{"name": "needle", "weight": 0}]), ["train.tasks.0.weight"]),
    ("mixture-unknown-key", _set("train.tasks", [{"name": "needle", "wieght": 2}]), ["unknown key", "wieght"]),
    ("mixture-task-below-minimum", _set("train.tasks", [{"name": "needle", "knobs": {"value": "uuid"}}]),
     ["training length 16", "minimum 36"]),
    ("empty-eval-tasks", _set("eval.tasks", []), ["eval.tasks", "at least 1 item"]),
    ("unknown-eval-task", _set("eval.tasks", [{"name": "neddle"}]), ["neddle", "did you mean 'needle'"]),
    ("bad-eval-task-knob", _set("eval.tasks", [{"name": "needle", "knobs": {"haystack": "essay"}}]),
     ["haystack", "essay"]),
    ("repeated-eval-labels", _set("eval.tasks", [{"name": "needle", "label": "a"},
                                                 {"name": "needle", "label": "a", "knobs": {"haystack": "text"}}]),
     ["'a'", "distinct labels"]),
    ("missing-eval-corpus", _set("eval.tasks", [{"name": "needle", "knobs": {"haystack": "text",
                                                                             "corpus": "/no/such/corpus.txt"}}]),
     ["/no/such/corpus.txt", "does not exist"]),
    # the analysis settings (analysis/settings.py): a name from before issue 15 is refused with its new name
    ("renamed-min-train-accuracy", _set("min_train_accuracy", 0.9),
     ["'min_train_accuracy' was renamed", "use analysis.learned_bar_fraction"]),
    ("renamed-analysis-threshold", _set("analysis", {"threshold": 85.6}),
     ["analysis: 'threshold' was renamed", "effective_length_bar_fraction", "85.6 -> 0.856"]),
    ("renamed-analysis-level", _set("analysis", {"level": 0.9}), ["'level' was renamed", "interval_level_fraction"]),
    ("renamed-analysis-min-drop", _set("analysis", {"min_drop": 0.3}), ["'min_drop' was renamed", "sharp_drop_fraction"]),
    ("retired-analysis-chance", _set("analysis", {"chance": 0.1}), ["'chance' was renamed", "none: claim 2"]),
    ("analysis-bar-as-percent", _set("analysis", {"effective_length_bar_fraction": 85.6}),
     ["analysis.effective_length_bar_fraction", "less than or equal to 1"]),
    ("analysis-learned-bar-above-one", _set("analysis", {"learned_bar_fraction": 1.5}),
     ["analysis.learned_bar_fraction", "less than or equal to 1"]),
    ("analysis-unknown-key", _set("analysis", {"learned_bar": 0.9}), ["unknown key", "analysis.learned_bar"]),
    ("analysis-bad-gate", _set("analysis", {"gate": "seed"}), ["analysis.gate"]),
    ("analysis-unknown-label", _set("analysis", {"labels": ["nedle"]}), ["analysis: 'nedle' is not an eval task label"]),
    ("invalid-yaml", "name: [tiny\ntrain: {length: 16}\n", ["not valid YAML"]),
    ("invalid-yaml-indent", "name: tiny\n  train: 3\n", ["not valid YAML", "line 2"]),
    ("yaml-list", "- transformer\n- mamba2\n", ["mapping"]),
    ("empty-file", "", ["mapping"]),
]


@pytest.mark.parametrize("case_id,change,expected", MALFORMED, ids=[c[0] for c in MALFORMED])
def test_malformed_study_is_a_one_line_config_error(tmp_path, case_id, change, expected):
    path = _write(tmp_path, text=change) if isinstance(change, str) else _write(tmp_path, _changed(change))
    with pytest.raises(ConfigError) as info:
        load_study(str(path))
    message = str(info.value)
    assert isinstance(info.value, ValueError)
    assert "\n" not in message and message.strip() == message
    assert str(path) in message  # says which file
    for fragment in expected:
        assert fragment in message, f"{fragment!r} not in {message!r}"


def test_missing_file_is_a_config_error(tmp_path):
    path = tmp_path / "absent.yaml"
    with pytest.raises(ConfigError) as info:
        load_study(str(path))
    assert "does not exist" in str(info.value) and str(path) in str(info.value)
    assert "\n" not in str(info.value)


def test_unknown_preset_is_a_config_error():
    with pytest.raises(ConfigError) as info:
        load_study("quik")
    message = str(info.value)
    assert "'quik'" in message and "\n" not in message
    assert all(preset in message for preset in PRESETS)


def test_bad_override_is_a_config_error():
    with pytest.raises(ConfigError, match="params"):
        load_study("smoke", {"params": -5})


# ---------------------------------------------------------------- training and evaluation tasks


def test_one_task_trains_and_evaluates_by_default(tmp_path):
    study = load_study(str(_write(tmp_path, VALID)))
    [(trained, weight)] = study.train_tasks()
    [(label, evaluated)] = study.eval_tasks()
    assert trained == evaluated == study.make_task() and weight == 1.0 and label == "needle"


def test_eval_tasks_get_labels_from_the_knobs_that_differ(tmp_path):
    data = _changed(_set("eval.tasks", [{"name": "needle", "knobs": {"haystack": "noise"}},
                                        {"name": "needle", "knobs": {"haystack": "text", "value": "number"}},
                                        {"name": "needle", "label": "mine", "knobs": {"haystack": "random"}}]))
    study = load_study(str(_write(tmp_path, data)))
    labels = [label for label, _ in study.eval_tasks()]
    assert labels == ["needle haystack=noise value=symbol", "needle haystack=text value=number", "mine"]
    # digits appear only in the number format: the models are built with the largest vocabulary
    assert study.vocab_size() == max(t.vocab_size for _, t in study.eval_tasks()) > study.make_task().vocab_size


def test_a_mixture_is_validated_and_weighted(tmp_path):
    data = _changed(_set("train.tasks", [{"name": "needle", "weight": 3},
                                         {"name": "needle", "knobs": {"haystack": "text"}}]))
    study = load_study(str(_write(tmp_path, data)))
    assert [w for _, w in study.train_tasks()] == [3.0, 1.0]
    assert [t.haystack for t, _ in study.train_tasks()] == ["noise", "text"]


def test_corpus_option_reaches_every_text_task(tmp_path):
    corpus = tmp_path / "mine.txt"
    corpus.write_text("the cat sat on the mat and the dog sat on the log " * 20, encoding="utf-8")
    data = _changed(_set("eval.tasks", [{"name": "needle"}, {"name": "needle", "knobs": {"haystack": "text"}}]))
    study = load_study(str(_write(tmp_path, data)), corpus=str(corpus))
    knobs = [t.knobs for _, t in study.eval_tasks()]
    assert "corpus" not in knobs[0] and knobs[1]["corpus"] == str(corpus)
    with pytest.raises(ConfigError, match="no task of the study has haystack: text"):
        load_study(str(_write(tmp_path, VALID)), corpus=str(corpus))
    with pytest.raises(ConfigError, match="does not exist"):
        load_study(str(_write(tmp_path, data)), corpus=str(tmp_path / "absent.txt"))


# ---------------------------------------------------------------- the analysis settings


def test_the_analysis_block_is_the_one_definition(tmp_path):
    from longarch.analysis.settings import AnalysisSettings

    study = load_study(str(_write(tmp_path, {**VALID, "analysis": {
        "learned_bar_fraction": 0.9, "effective_length_bar_fraction": 0.5, "labels": ["needle"], "gate": "label"}})))
    assert isinstance(study.analysis, AnalysisSettings)
    assert (study.analysis.learned_bar_fraction, study.analysis.effective_length_bar_fraction) == (0.9, 0.5)
    assert study.analysis.labels == ["needle"] and study.analysis.gate == "label"
    assert load_study(str(_write(tmp_path, VALID))).analysis == AnalysisSettings()
    assert "min_train_accuracy" not in Study.model_fields


def test_controlled_preset_sets_its_formats_and_keeps_the_default_bars():
    analysis = load_study("controlled").analysis
    assert analysis.labels == ["noise-number", "text-number", "text-uuid", "needles"] and analysis.gate == "label"
    assert analysis.learned_bar_fraction == 0.95 and analysis.effective_length_bar_fraction == 0.856


def test_a_config_stored_before_issue_15_still_reads():
    """`longarch status` reads a store's config: the old names are read as their new ones."""
    stored = {**load_study("smoke").model_dump(mode="json"), "min_train_accuracy": 0.8,
              "analysis": {"threshold": 50, "level": 0.9, "min_drop": 0.3, "factor": 2, "chance": 0.0}}
    study = stored_study(stored)
    assert study.analysis.learned_bar_fraction == 0.8 and study.analysis.effective_length_bar_fraction == 0.5
    assert study.analysis.interval_level_fraction == 0.9 and study.analysis.sharp_drop_fraction == 0.3
    assert stored_study({**stored, "analysis": {"retired": 1}}).name == "smoke"  # defaults, but it reads
    new = load_study("smoke")
    assert stored_study(new.model_dump(mode="json")) == new  # a current store reads back as it was written
