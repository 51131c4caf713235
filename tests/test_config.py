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
    # values that repeat or make no sense (issue 19)
    ("duplicate-seeds", _set("seeds", [0, 0]), ["seeds", "seed 0 appears twice"]),
    ("duplicate-seeds-apart", _set("seeds", [3, 1, 2, 1]), ["seeds", "seed 1 appears twice"]),
    ("duplicate-eval-depths", _set("eval.depths", [0, 50, 100, 50.0]), ["eval.depths", "depth 50 appears twice"]),
    ("duplicate-task-depths", _set("eval.tasks", [{"name": "needle", "depths": [10, 90, 10]}]),
     ["eval.tasks.0.depths", "depth 10 appears twice"]),
    ("duplicate-check-depths", _set("train.check", {"depths": [0, 0]}), ["train.check.depths", "depth 0 appears twice"]),
    ("explicit-d-model-breaks-budget", _set("models", [{"arch": "transformer", "overrides": {"d_model": 256}}]),
     ["model 'transformer'", "d_model 256 gives", "more than 5% from the budget params 20,000"]),
    ("explicit-d-model-breaks-non-embedding-budget",
     lambda d: d.update(params_count="non-embedding", models=[{"arch": "mamba2", "overrides": {"d_model": 8}}]),
     ["model 'mamba2'", "d_model 8 gives", "(non-embedding)", "budget params 20,000"]),
    ("override-n-heads-zero", _set("models", [{"arch": "transformer", "overrides": {"n_heads": 0}}]),
     ["model 'transformer'", "n_heads must be positive", "not 0"]),
    ("override-n-heads-zero-no-budget",
     lambda d: (d.pop("params"), d.update(models=[{"arch": "retnet", "overrides": {"n_heads": 0}}])),
     ["model 'retnet'", "n_heads must be positive", "not 0"]),
    ("override-head-dim-zero", _set("models", [{"arch": "mamba2", "overrides": {"head_dim": 0}}]),
     ["model 'mamba2'", "head_dim must be positive"]),
    ("override-mlp-ratio-negative", _set("models", [{"arch": "gla", "overrides": {"mlp_ratio": -1.0}}]),
     ["model 'gla'", "mlp_ratio must be >= 0", "-1.0"]),
    ("override-expand-infinite", _set("models", [{"arch": "mamba", "overrides": {"expand": float("inf")}}]),
     ["model 'mamba'", "expand must be positive and finite", "inf"]),
    ("name-empty", _set("name", ""), ["name", "'' is not a plain file name"]),
    ("name-dot", _set("name", "."), ["name", "'.' is not a plain file name"]),
    ("name-dot-dot", _set("name", ".."), ["name", "'..' is not a plain file name"]),
    ("name-with-slash", _set("name", "../elsewhere"), ["name", "'../elsewhere' is not a plain file name"]),
    ("name-absolute", _set("name", "/tmp/x"), ["name", "'/tmp/x' is not a plain file name"]),
    ("name-with-backslash", _set("name", "a\\b"), ["name", "is not a plain file name"]),
    ("name-with-nul", _set("name", "a\x00b"), ["name", "'a\\x00b' is not a plain file name"]),
    # YAML that PyYAML reads silently or without bound (safe_yaml.py's StudyLoader)
    ("yaml-duplicate-key", yaml.safe_dump(VALID) + "seeds: [1]\nseeds: [2]\n",
     ["not valid YAML at line", "key 'seeds' appears twice in one mapping"]),
    ("yaml-duplicate-nested-key", "name: tiny\nmodels: [transformer]\ntrain:\n  length: 16\n  steps: 5\n  length: 32\n",
     ["not valid YAML at line 6", "key 'length' appears twice in one mapping (first at line 4)"]),
    ("yaml-duplicate-key-in-a-flow-mapping", "name: tiny\nmodels: [{arch: gla, arch: transformer}]\n",
     ["line 2", "key 'arch' appears twice"]),
    ("yaml-alias-bomb", "name: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"k{i}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 10)}]\n" for i in range(8)),
     ["not valid YAML", "its aliases expand it by", "more than the 100,000 allowed"]),
    ("yaml-recursive-alias", "name: tiny\nmodels: &m [transformer, *m]\n",
     ["not valid YAML", "an alias refers to a node that contains it"]),
    ("yaml-python-tag", "name: !!python/object/apply:os.getcwd []\n",
     ["not valid YAML at line 1", "python/object/apply:os.getcwd"]),
    ("yaml-local-tag", "name: !mine tiny\n", ["not valid YAML at line 1", "'!mine'"]),
    ("yaml-nested-too-deeply", "name: " + "[" * 5000 + "]" * 5000 + "\n", ["not valid YAML", "nest"]),
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


def test_a_preset_name_wins_over_a_directory_named_like_it(tmp_path, monkeypatch):
    """`longarch run smoke --out smoke` leaves a folder named smoke: the next `run smoke` run from
    there still means the preset; a file of that name is the user's study, and still read."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "smoke").mkdir()
    assert load_study("smoke").name == "smoke"
    (tmp_path / "quick").write_text("name: mine\nmodels: [transformer]\n")
    with pytest.raises(ConfigError, match="quick"):  # read as the file it is (not a full study)
        load_study("quick")


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


# ---------------------------------------------------------------- non-finite floats (issue 19)


def _float_fields(model: type, seen: set | None = None) -> set[tuple[str, str]]:
    """(schema class, field) for every field of `model` and the schemas inside it that holds a
    float (alone, in a list or in a union)."""
    import typing

    from pydantic import BaseModel

    seen = set() if seen is None else seen
    found = set()

    def parts(annotation):
        yield annotation
        for arg in typing.get_args(annotation):
            yield from parts(arg)

    for name, field in model.model_fields.items():
        for part in parts(field.annotation):
            if part is float:
                found.add((model.__name__, name))
            elif isinstance(part, type) and issubclass(part, BaseModel) and part not in seen:
                seen.add(part)
                found |= _float_fields(part, seen)
    return found


def _analysis(field: str, value):
    pair = [value, 60.0] if field == "middle_depths_percent" else value
    return _set("analysis", {field: pair})


# (schema class, float field) -> a change to VALID that sets the field to `value`
NON_FINITE = {
    ("TrainTask", "weight"): lambda v: _set("train.tasks", [{"name": "needle", "weight": v}]),
    ("EvalTask", "depths"): lambda v: _set("eval.tasks", [{"name": "needle", "depths": [50, v]}]),
    ("ModelEntry", "lr"): lambda v: _set("models", [{"arch": "transformer", "lr": v}]),
    ("UntilConfig", "accuracy"): lambda v: _set("train.until", {"accuracy": v, "max_steps": 10}),
    ("CheckConfig", "depths"): lambda v: _set("train.check", {"depths": [v]}),
    ("TrainConfig", "lr"): lambda v: _set("train.lr", v),
    ("TrainConfig", "weight_decay"): lambda v: _set("train.weight_decay", v),
    ("TrainConfig", "focus"): lambda v: _set("train.focus", v),
    ("EvalConfig", "depths"): lambda v: _set("eval.depths", [0, v]),
    **{("AnalysisSettings", field): (lambda field: lambda v: _analysis(field, v))(field)
       for field in ("learned_bar_fraction", "interval_level_fraction", "effective_length_bar_fraction",
                     "sharp_drop_fraction", "lead_margin_fraction", "middle_depths_percent", "ceiling_fraction",
                     "floor_fraction", "middle_gap_fraction", "small_spread_fraction", "large_spread_fraction")},
}


def test_every_float_of_the_schema_has_a_non_finite_case():
    """A float field added to the schema is added to NON_FINITE, so that the test below covers it."""
    assert _float_fields(Study) == set(NON_FINITE)


@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan")], ids=["inf", "-inf", "nan"])
@pytest.mark.parametrize("where", sorted(NON_FINITE), ids=[".".join(k) for k in sorted(NON_FINITE)])
def test_a_non_finite_float_is_refused_as_such(tmp_path, where, value):
    """YAML's .inf, -.inf and .nan, wherever the schema takes a float: refused as not finite,
    not as a bound a NaN happens to miss, or taken (an infinite weight, learning rate, ...)."""
    data = _changed(NON_FINITE[where](value))
    if where == ("TrainConfig", "focus"):
        data["train"]["tasks"] = [{"name": "needle"}]  # focus needs a mixture
    path = _write(tmp_path, data)
    with pytest.raises(ConfigError) as info:
        load_study(str(path))
    message = str(info.value)
    assert message.startswith(f"{path}: ") and "\n" not in message, message
    assert "finite" in message.removeprefix(f"{path}: "), message  # the test's directory is named "...finite..."


# ---------------------------------------------------------------- linear checks, YAML, budgets (issue 19)


class _Counted(str):
    """A label that counts the equality tests made on it."""
    comparisons = 0

    def __eq__(self, other):
        _Counted.comparisons += 1
        return str.__eq__(self, other)

    __hash__ = str.__hash__


def test_repeated_names_the_first_repeat_in_sorted_order():
    assert schema.repeated(["b", "c", "a", "c", "b"]) == "b"
    assert schema.repeated(["x", "y"]) is None and schema.repeated([]) is None
    assert schema.repeated([3, 1, 3, 1.0]) == 1  # depths and seeds too: 1 and 1.0 are one value


def test_repeated_is_linear_in_the_labels():
    """A study may list 100,000s of models: each label is compared about once, not with every
    other label (list.count in a loop took over 300 s for 200,000 entries)."""
    labels = [_Counted(f"model {i}") for i in range(2000)] + [_Counted("model 7")]
    _Counted.comparisons = 0
    assert schema.repeated(labels) == "model 7"
    assert _Counted.comparisons <= 2 * len(labels)


def test_a_study_of_many_models_is_checked_in_one_pass(tmp_path):
    """Entries of one architecture are sized once, and labels are made and compared once each."""
    data = _changed(_set("models", [{"arch": "transformer", "name": f"t{i}"} for i in range(3000)]))
    config._resolved.cache_clear()
    study = load_study(str(_write(tmp_path, data)))
    assert len(study.models) == 3000
    assert config._resolved.cache_info().currsize == 1  # one sizing per (architecture, overrides, budget)
    data["models"].append({"arch": "gla", "name": "t2999"})
    with pytest.raises(ConfigError, match="model name 't2999' appears twice"):
        load_study(str(_write(tmp_path, data)))


def test_merge_keys_and_aliases_still_read(tmp_path):
    """A mapping may override the keys it merges in (<<), and aliases of a few nodes are fine
    (the controlled preset shares its recipes this way)."""
    text = ("name: tiny\nmodels:\n  - {arch: transformer, overrides: &recipe {init: torch, tie_head: false}}\n"
            "  - {arch: gla, overrides: *recipe}\ntrain: &train {length: 16, steps: 5, batch_size: 4}\n"
            "eval:\n  <<: {max_factor: 4, samples: 2}\n  samples: 3\n")
    study = load_study(str(_write(tmp_path, text=text)))
    assert study.models[1].overrides == {"init": "torch", "tie_head": False}
    assert study.eval.samples == 3 and study.eval.max_factor == 4 and study.train.steps == 5


def test_an_explicit_d_model_within_the_budget_is_kept(tmp_path):
    sized = models.size_to_budget("transformer", 20000, vocab_size=load_study(
        str(_write(tmp_path, VALID))).vocab_size())  # d_model and the MLP's ratio
    data = _changed(_set("models", [{"arch": "transformer", "overrides": sized}, "mamba2"]))
    study = load_study(str(_write(tmp_path, data)))
    assert config.resolve_overrides(study, study.models[0], study.vocab_size()) == sized
    assert abs(_sized(study)["transformer"] - 20000) <= 0.05 * 20000
    without_budget = _changed(lambda d: (d.pop("params"), d.update(models=[{"arch": "transformer",
                                                                            "overrides": {"d_model": 256}}])))
    assert load_study(str(_write(tmp_path, without_budget))).models[0].overrides == {"d_model": 256}


def test_an_override_of_the_wrong_type_is_not_taken_from_the_sizing_cache(tmp_path):
    """1, 1.0 and True are equal as cache keys; only the first is a head count."""
    good = _changed(_set("models", [{"arch": "transformer", "overrides": {"n_heads": 2}}]))
    load_study(str(_write(tmp_path, good)))
    with pytest.raises(ConfigError, match="n_heads must be an integer, not 2.0"):
        load_study(str(_write(tmp_path, _changed(_set("models", [{"arch": "transformer",
                                                                   "overrides": {"n_heads": 2.0}}])))))


# ---------------------------------------------------------------- the machine's limits (study/limits.py)


def test_machine_memory_is_the_physical_memory_or_a_lower_cgroup_limit(tmp_path, monkeypatch):
    from longarch.study import limits

    monkeypatch.setattr(limits, "CGROUP_LIMIT", tmp_path / "absent")
    physical = limits.machine_memory()
    assert isinstance(physical, int) and physical > 2 ** 20
    (tmp_path / "memory.max").write_text("max\n")
    monkeypatch.setattr(limits, "CGROUP_LIMIT", tmp_path / "memory.max")
    assert limits.machine_memory() == physical
    (tmp_path / "memory.max").write_text(f"{2 ** 30}\n")
    assert limits.machine_memory() == min(physical, 2 ** 30)
    assert [limits.human(n) for n in (512, 3 * 2 ** 10, 3 * 2 ** 40, 2 ** 70)] == [
        "512 B", "3.0 KiB", "3.0 TiB", "1,024.0 EiB"]


@pytest.mark.parametrize("change, expected", [
    (_set("seeds", list(range(100))), ["the plan's 2,000 cells", "2.0 MiB", "this machine has 1.0 MiB"]),
    (_set("models", [{"arch": "transformer", "name": f"t{i}"} for i in range(200)]),
     ["the plan's 2,000 cells", "needs at least 2.0 MiB"]),
    (_set("eval.samples", 4096), ["one evaluation cell (4,096 samples x 64 symbols)", "2.0 MiB"]),
    (_set("train.batch_size", 16384), ["a training batch (16,384 x 16 symbols)", "2.0 MiB"]),
])
def test_a_study_over_this_machines_memory_is_refused_with_the_estimate(tmp_path, monkeypatch, change, expected):
    """On a machine of 1 MiB; the studies without the change fit."""
    from longarch.study import limits

    monkeypatch.setattr(limits, "machine_memory", lambda: 2 ** 20)
    load_study(str(_write(tmp_path, VALID)))
    with pytest.raises(ConfigError) as info:
        load_study(str(_write(tmp_path, _changed(change))))
    message = str(info.value)
    assert message.startswith(f"{tmp_path / 'study.yaml'}: ") and "\n" not in message
    for fragment in expected:
        assert fragment in message, message


def test_a_scale_over_this_machines_memory_is_refused_before_its_seeds_are_listed(monkeypatch):
    from longarch.study import limits

    monkeypatch.setattr(limits, "machine_memory", lambda: 2 ** 20)
    assert config.scaled({"seeds": [5, 0], "models": ["a"]}, 3)["seeds"] == [5, 0, 1, 2, 3, 4]
    listed = []
    monkeypatch.setattr(config.itertools, "count", lambda: listed.append(1) or iter(range(10)))
    with pytest.raises(ConfigError, match=r"study: scale 1,000,000 \(2,000,000 models to train\) needs at least "
                                          r"1\.9 GiB of memory; this machine has 1\.0 MiB"):
        config.scaled({"seeds": [0, 1], "models": ["a"]}, 10 ** 6)
    assert listed == []  # refused before the seeds were listed


# ---------------------------------------------------------------- a pretrained study's schema


def _pretrained(tmp_path, **changes) -> str:
    data = {"kind": "pretrained", "name": "tiny", "models": ["hf:org/name"], "tasks": ["vt"],
            "eval": {"lengths": [1024], "samples": 2}}
    return str(_write(tmp_path, with_changes(data, changes)))


def with_changes(data: dict, changes: dict) -> dict:
    """`data` with each change made in place: `key=value` at the top, `section__key=value` in a section."""
    for key, value in changes.items():
        section, _, name = key.partition("__")
        if name:
            data[section][name] = value
        else:
            data[key] = value
    return data


@pytest.mark.parametrize("device", ["cpu", "cuda", "cuda:0", "cuda:12", "mps"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
def test_a_pretrained_study_takes_the_known_dtypes_and_devices(tmp_path, dtype, device):
    study = load_study(_pretrained(tmp_path, eval__dtype=dtype, eval__device=device))
    assert (study.eval.dtype, study.eval.device) == (dtype, device)


@pytest.mark.parametrize("changes, expected", [
    ({"eval__dtype": "float64"}, ["eval.dtype", "'float32', 'bfloat16' or 'float16'"]),
    ({"eval__dtype": "bf16"}, ["eval.dtype"]),
    ({"eval__device": "tpu"}, ["eval.device", "unknown device 'tpu'"]),
    ({"eval__device": "cuda:"}, ["eval.device", "unknown device 'cuda:'"]),
    ({"eval__device": "cuda:x"}, ["eval.device", "unknown device 'cuda:x'"]),
    ({"eval__device": "CPU"}, ["eval.device", "unknown device 'CPU'"]),
    ({"name": "../up"}, ["name", "'../up' is not a plain file name"]),
    ({"name": ""}, ["name", "'' is not a plain file name"]),
    ({"tasks": [{"name": "niah_single_1", "depths": [50, 50]}]}, ["tasks.0.depths", "depth 50 appears twice"]),
    ({"tasks": [{"name": "niah_single_1", "depths": [float("nan")]}]}, ["tasks.0.depths.0", "finite"]),
    ({"tasks": [{"name": "niah_single_1", "length_factors": [float("inf")]}], "models":
      [{"model": "hf:org/name", "train_length": 1024}]}, ["tasks.0.length_factors.0", "finite"]),
    ({"tasks": [{"name": "niah_single_1", "length_factors": [1e308]}], "models":
      [{"model": "hf:org/name", "train_length": 1024}]}, ["model 'name'", "infinity"]),
    ({"analysis": {"effective_length_bar_fraction": float("nan")}}, ["analysis.effective_length_bar_fraction",
                                                                     "finite"]),
    ({"eval__fit_tolerance": float("nan")}, ["eval.fit_tolerance"]),
    ({"eval__fit_tolerance": 1.5}, ["eval.fit_tolerance", "less than or equal to 1"]),
    ({"eval__fit": "ruler", "eval__fit_tolerance": 0.9}, ["fit_tolerance applies to fit: exact only"]),
    ({"eval__samples": 10 ** 15}, ["one cell's prompts (1,000,000,000,000,000 samples x 1,024 tokens)",
                                   "needs at least", "this machine has"]),
    ({"eval__lengths": [1024, 10 ** 15]}, ["one cell's prompts (2 samples x 1,000,000,000,000,000 tokens)"]),
])
def test_a_bad_pretrained_value_is_a_one_line_config_error(tmp_path, changes, expected):
    path = _pretrained(tmp_path, **changes)
    with pytest.raises(ConfigError) as info:
        load_study(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and "\n" not in message
    for fragment in expected:
        assert fragment in message, message


def test_every_float_of_the_pretrained_schema_is_covered_above():
    from longarch.pretrained.config import PretrainedStudy

    assert _float_fields(PretrainedStudy) == {("TextTaskEntry", "depths"), ("TextTaskEntry", "length_factors"),
                                              ("PretrainedEval", "fit_tolerance")} | {
        key for key in NON_FINITE if key[0] == "AnalysisSettings"}


@pytest.mark.parametrize("text, expected", [
    ("niah: [unclosed\n", "not valid YAML at line 2: "),  # libyaml adds "did not find" before "expected"
    ("niah: !!python/name:os.system x\n", "not valid YAML at line 1: could not determine a constructor"),
    ("niah: {template: '{context} a', template: '{context} b'}\n", "not valid YAML at line 1: key 'template' appears twice"),
    ("a: &a [x, x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
     "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]\n"
     "e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d]\nniah: [*e, *e]\n", "not valid YAML"),  # a billion laughs, small
])
def test_a_template_file_that_is_not_plain_yaml_is_one_line(tmp_path, text, expected):
    """A `template=FILE` knob's file is read as YAML too: its error names the file and the line."""
    templates = tmp_path / "templates.yaml"
    templates.write_text(text)
    path = _pretrained(tmp_path, tasks=[{"name": "niah_single_1", "knobs": {"template": str(templates)}}])
    with pytest.raises(ConfigError) as info:
        load_study(path)
    message = str(info.value)
    assert message.startswith(f"{path}: task 'niah_single_1': {templates}: {expected}"), message
    assert "\n" not in message and any(why in message for why in ("expected ',' or ']'", "constructor", "twice",
                                                                    "nodes, more than"))
