"""Study configuration: YAML in, validated objects out.

A study is data: which architectures, which task, one training recipe, one evaluation grid.
`task` is the task trained on and evaluated; `train.tasks` (a weighted mixture) and
`eval.tasks` (several tasks or formats, each with a label) replace it on either side, so
"train on a noise haystack, evaluate on noise and on text" is one `eval.tasks` list.
A study of several task names (a mixture of needle, copy, ...) gives each name its own, disjoint
range of symbol ids (`Study.id_offsets`), so that no id means two things; one name keeps its ids.
Every key is checked against the schema (a typo is an error naming the key, never a silent
default), and values are checked against what the task and the registry accept before any
work starts.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
from collections import Counter
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_serializer, model_validator

from .. import mixers, models, tasks
from ..mixers import plugins
from ..study import limits
from ..study.schema import ConfigError, Strict, distinct, distinct_models, named_entries, plain_name, repeated
from . import interventions as registry
from ..tasks.shifted import Shifted
from ..analysis.diagnostics import is_needle_task
from ..analysis.settings import RENAMED, AnalysisSettings
from ..analysis.settings import from_stored as settings_from_stored


MAX_SWEEP = 8  # learning rates a model's sweep may try
AnyFloat = Annotated[float, Field(allow_inf_nan=True)]  # a float a validator of its own checks for finiteness
BUDGET_TOLERANCE = 0.05  # a model with an explicit d_model may be this far (relative) from `params`


class TaskConfig(Strict):
    name: str = "needle"
    knobs: dict[str, Any] = Field(default_factory=dict)

    def make(self):
        return tasks.get(self.name, family="tokens", **self.knobs)


class TrainTask(TaskConfig):
    weight: float = Field(1.0, gt=0, description="relative share of training steps")


class EvalTask(TaskConfig):
    label: str | None = Field(None, description="its name in tables and plots; default: name and the knobs that differ")
    depths: list[float] | Literal["random"] | None = Field(
        None, description="needle depths for this task instead of eval.depths; 'random': one cell per length, "
                          "each sample's needle at a uniformly random depth (RULER's default)")

    @field_validator("depths")
    @classmethod
    def _task_depths_in_range(cls, depths):
        if isinstance(depths, list):
            return _check_depths(depths)
        return depths


class ModelEntry(Strict):
    arch: str = Field(description="a registered architecture (`longarch models`), or a plugin's: path/to/file.py:Object "
                      "or package.module:Object (an ArchSpec or a mixer class)")
    name: str | None = None  # label in tables and plots; defaults to arch
    family: str | None = Field(None, description="the family it is reported under, instead of its mixers' (one "
                               "family, or hybrid for several)")
    overrides: dict[str, Any] = Field(default_factory=dict)
    # a rate or a sweep: `_rates` says which rate is not positive and finite (the schema's own
    # "not finite" would be reported for the first branch of the union, "not a number", for a sweep)
    lr: AnyFloat | list[AnyFloat] | None = Field(
        None, description="this model's learning rate instead of train.lr, or a sweep [a, b, ...]: the rates are "
        "tried in turn from the same initialisation and the first to meet `until` is kept (without `until`, or "
        "when none meets it: the best lowest-task held-out accuracy at T); part of its id; reported")

    @field_validator("lr")
    @classmethod
    def _rates(cls, lr):
        rates = lr if isinstance(lr, list) else [] if lr is None else [lr]
        if isinstance(lr, list) and not 1 <= len(lr) <= MAX_SWEEP:
            raise ValueError(f"a learning-rate sweep takes 1 to {MAX_SWEEP} rates (it has {len(lr)})")
        for rate in rates:
            if not math.isfinite(rate) or rate <= 0:
                raise ValueError(f"a learning rate must be positive and finite (got {rate})")
        if len(set(rates)) != len(rates):
            raise ValueError(f"a learning-rate sweep repeats a rate: {lr}")
        return lr

    @property
    def rates(self) -> list[float] | None:
        """The rates to try, in order (None: the study's train.lr)."""
        return None if self.lr is None else list(self.lr) if isinstance(self.lr, list) else [self.lr]

    @property
    def label(self) -> str:
        return self.name or self.arch


class PhaseConfig(Strict):
    length: int = Field(ge=1, description="the length of every sample of this phase")
    steps: int = Field(ge=1)


class UntilConfig(Strict):
    accuracy: float = Field(gt=0, le=1, description="held-out accuracy at T (a fraction) every judged task must reach")
    max_steps: int = Field(ge=1, description="steps at most, the planned ones included")
    labels: list[str] | None = Field(None, min_length=1, description="the trained tasks judged (eval labels); default: all")
    anneal: int = Field(0, ge=0, description="steps trained on once the criterion is met, the learning rate falling "
                        "linearly from its value then to zero (a margin over the bar); 0: stop at once")


class CheckConfig(Strict):
    every: int | None = Field(None, ge=1, description="steps between held-out checks at T; default: a tenth of the planned steps")
    samples: int = Field(64, ge=1, description="held-out samples per task at each check")
    depths: list[float] | None = Field(None, min_length=1, description="needle depths (0-100) of the check "
                                       "samples, split evenly among them, as the evaluation places them; "
                                       "default: a random depth per sample")

    @field_validator("depths")
    @classmethod
    def _depths_in_range(cls, depths: list[float] | None) -> list[float] | None:
        return None if depths is None else _check_depths(depths)


class TrainConfig(Strict):
    length: int = Field(ge=1, description="training length T")
    steps: int = Field(1000, ge=1, description="planned steps; with `phases`, their sum (leave `steps` out)")
    batch_size: int = Field(32, ge=1)
    lr: float = Field(3e-3, gt=0, allow_inf_nan=False)
    weight_decay: float = Field(0.1, ge=0, allow_inf_nan=False)
    warmup: int = Field(50, ge=0)
    eval_samples: int = Field(200, ge=1)
    phases: list[PhaseConfig] | None = Field(None, min_length=1, description="a length curriculum: phases in order, "
                                             "each a length and steps; the last at `length`")
    until: UntilConfig | None = Field(None, description="train to a criterion, checked at T in the last phase")
    check: CheckConfig = Field(default_factory=CheckConfig, description="held-out checks at T, for the curve and `until`")
    checkpoint_every: int = Field(200, ge=0, description="steps between mid-training checkpoints (0: none); "
                                  "an interrupted training resumes from the last one")
    tasks: list[TrainTask] | None = Field(None, min_length=1, description="a weighted mixture to train on instead of `task`")
    focus: float | None = Field(None, gt=0, le=1, allow_inf_nan=False,
                                description="a mixture's shares follow the held-out errors: after each check, each "
                                "task's share is its weight x (1 - its accuracy at T + focus); default: the weights")

    @model_validator(mode="after")
    def _schedule(self) -> "TrainConfig":
        if self.phases is not None:
            total = sum(phase.steps for phase in self.phases)
            if "steps" in self.model_fields_set and self.steps != total:
                raise ValueError(f"steps ({self.steps}) is not the phases' sum ({total}): leave steps out with phases")
            if self.phases[-1].length != self.length:
                raise ValueError(f"the last phase is at length {self.phases[-1].length}; it must be at the "
                                 f"training length {self.length}")
            self.steps = total
        if self.focus is not None and not self.tasks:
            raise ValueError("focus reweights a mixture's tasks: it needs train.tasks")
        if self.until is not None and self.until.max_steps < self.steps:
            raise ValueError(f"until.max_steps ({self.until.max_steps}) is below the planned steps ({self.steps})")
        return self


class EvalConfig(Strict):
    max_factor: int = Field(32, ge=1, description="evaluate at T, 2T, 4T, ... up to max_factor * T")
    lengths: list[int] | None = Field(None, description="explicit lengths instead of the doubling ladder")
    depths: list[float] = Field(default_factory=lambda: [float(d) for d in range(0, 101, 10)])
    samples: int = Field(100, ge=1, description="samples per (length, depth) cell")
    chunk: int = Field(1024, ge=1, description="tokens fed per forward call at evaluation")
    seed: int = Field(1234, ge=0)
    tasks: list[EvalTask] | None = Field(None, min_length=1, description="tasks or formats to evaluate instead of `task`")

    @field_validator("depths")
    @classmethod
    def _depths_in_range(cls, depths: list[float]) -> list[float]:
        return _check_depths(depths)


DIAGNOSTICS = ("loss", "retention", "attention", "state-norm")  # analysis/diagnostics.py's MEASURES


class DiagnosticsConfig(Strict):
    """Diagnostics of every trained model (analysis/diagnostics.py): each measure on each
    evaluated needle format is a cell run once the model is trained, stored in the store's
    `diagnostics` table and drawn in the report's Diagnostics section."""

    measures: list[Literal["loss", "retention", "attention", "state-norm"]] = Field(
        default_factory=lambda: list(DIAGNOSTICS), min_length=1,
        description="which diagnostics: loss (per-position loss past T), retention (the needle's write left in "
                    "a recurrent state after k symbols), attention (attention mass on the needle and entropy), "
                    "state-norm (each layer's state norm with length)")
    max_factor: int = Field(64, ge=1, description="measured up to max_factor * T")
    samples: int = Field(16, ge=1, description="samples per measure, format and length")
    seed: int = Field(4321, ge=0, description="seed of the samples (with each model's training seed)")

    @field_validator("measures")
    @classmethod
    def _distinct_measures(cls, measures: list[str]) -> list[str]:
        return distinct(measures, "diagnostic")


KNOBS = ("pieces", "steps", "samples")  # the interventions' knobs (each taken by those whose `options` name it)


class InterventionEntry(Strict):
    """An intervention of the study (controlled/interventions.py): `name`, or `{name: tbptt,
    pieces: 8}` with its knob."""
    name: str
    pieces: int | None = Field(None, ge=2, description="tbptt only: samples this many times T long, fed in pieces "
                               f"of T (default {registry.TBPTT_PIECES})")
    steps: int | None = Field(None, ge=1, description="state-passing only: post-train the baseline's checkpoint this "
                              "many steps at T (as Buitrago Ruiz & Gu 2025); unset: train from scratch")
    samples: int | None = Field(None, ge=1, description="decay-scale-fit only: calibration samples of the training "
                                f"task per model and length (default {registry.DECAY_FIT_SAMPLES})")

    @field_validator("name")
    @classmethod
    def _known(cls, name: str) -> str:
        registry.get(name)  # a ValueError naming the known ones
        return name

    @model_validator(mode="after")
    def _knobs(self) -> "InterventionEntry":
        for knob in KNOBS:
            if getattr(self, knob) is not None and knob not in registry.get(self.name).options:
                owners = [i.name for i in registry.REGISTRY.values() if knob in i.options]
                raise ValueError(f"intervention {self.name!r} takes no {knob} (only {', '.join(owners)} does)")
        return self

    @property
    def given(self) -> dict:
        """The knobs the study set."""
        return {knob: getattr(self, knob) for knob in KNOBS if getattr(self, knob) is not None}

    @property
    def options(self) -> dict:
        """Its knobs, defaults filled in."""
        return {**registry.get(self.name).options, **self.given}

    @property
    def changed(self) -> dict:
        """Its knobs set to other than their defaults: what an inference intervention's cell ids
        hold besides its name (none: the ids it had before it had knobs)."""
        defaults = registry.get(self.name).options
        return {k: v for k, v in self.given.items() if v != defaults[k]}

    @model_serializer(mode="wrap")
    def _as_before(self, handler):
        """No `samples` or `steps` key when it is not set, so that the stored configuration, and so the
        identity, of a study from before the knob existed is as it was."""
        data = handler(self)
        if isinstance(data, dict) and self.samples is None:
            data.pop("samples", None)
        if isinstance(data, dict) and self.steps is None:
            data.pop("steps", None)
        return data

    @property
    def stage(self) -> str:
        return registry.get(self.name).stage


def _check_depths(depths: list[float]) -> list[float]:
    bad = [d for d in depths if not 0 <= d <= 100]
    if bad:
        raise ValueError(f"depth {bad[0]} is outside 0-100")
    if not depths:
        raise ValueError("at least one depth is needed")
    return distinct(depths, "depth")  # a repeated depth would be one cell planned twice


class Study(Strict):
    kind: Literal["controlled"] = "controlled"
    name: str
    description: str = ""
    task: TaskConfig = Field(default_factory=TaskConfig)
    models: list[ModelEntry] = Field(min_length=1)
    params: int | None = Field(None, ge=1, description="parameter budget every model is sized to (within 2%)")
    params_count: Literal["all", "non-embedding"] = Field(
        "all", description="what the budget counts: every parameter, or all but the token embedding and output head "
                           "(for a large vocabulary, such as a text haystack's words)")
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    plugins: list[str] = Field(default_factory=list, description="mixers and architectures from outside longarch: "
                               "Python files or importable modules, imported before the models are read (a file's path "
                               "relative to the study file; --plugin adds more, relative to the working directory)")

    @field_validator("seeds")
    @classmethod
    def _seeds_non_negative(cls, seeds: list[int]) -> list[int]:
        negative = [x for x in seeds if x < 0]
        if negative:
            raise ValueError(f"seed {negative[0]} is negative; seeds are integers >= 0")
        return distinct(seeds, "seed")  # a repeated seed would train the same model twice

    @field_validator("name")
    @classmethod
    def _plain_name(cls, name: str) -> str:
        return plain_name(name)
    train: TrainConfig
    eval: EvalConfig = Field(default_factory=EvalConfig)
    analysis: AnalysisSettings = Field(default_factory=AnalysisSettings,
                                       description="how the report judges the results (never part of a result's id)")
    diagnostics: DiagnosticsConfig | None = Field(None, description="why models fail past T: per-position loss, "
                                                  "needle retention, attention on the needle, state norms (default: none)")

    interventions: list[InterventionEntry] = Field(
        default_factory=list, description="interventions measured beside the baseline, by name (state-passing, tbptt, "
        "noise-state, decay-scale, decay-scale-fit, token-filter, rope-pi, rope-ntk, rope-yarn, window), each on the "
        "models it applies to")

    @field_validator("interventions", mode="before")
    @classmethod
    def _names_are_interventions(cls, entries):
        """`interventions: [tbptt]` is short for `interventions: [{name: tbptt}]`."""
        return named_entries(entries, "name")

    @field_validator("interventions")
    @classmethod
    def _distinct_interventions(cls, entries: list[InterventionEntry]) -> list[InterventionEntry]:
        distinct([e.name for e in entries], "intervention")
        return entries

    @model_validator(mode="after")
    def _labels_stay_distinct(self) -> "Study":
        """A model under an intervention is stored as `<label>+<intervention>`: no entry may be named so."""
        labels = {entry.label for entry in self.models}
        taken = [registry.labelled(entry.label, i.name) for entry in self.models for i in self.interventions
                 if registry.labelled(entry.label, i.name) in labels]
        if taken:
            raise ValueError(f"model name {taken[0]!r} is the name of a model under an intervention; rename it")
        return self

    @model_serializer(mode="wrap")
    def _as_before(self, handler):
        """No `diagnostics` key when there are none and no `interventions` key when there are none,
        so that the stored configuration, and so the study's identity (study/directory.py), of a
        study without them is as it was before they existed."""
        data = handler(self)
        if isinstance(data, dict) and self.diagnostics is None:
            data.pop("diagnostics", None)
        if isinstance(data, dict) and not self.interventions:
            data.pop("interventions", None)
        return data

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, data):
        """A top-level name from before issue 15 is refused with its new name (inside `analysis:`
        the settings do the same)."""
        if isinstance(data, dict) and "min_train_accuracy" in data:
            raise ValueError(f"'min_train_accuracy' was renamed: use {RENAMED['min_train_accuracy']}")
        return data

    @model_validator(mode="before")
    @classmethod
    def _plugins_loaded(cls, data):
        """Import the plugins, and name each model's architecture as registered: a plugin
        reference (file.py:Object, module:Object) becomes its name, and its module joins
        `plugins`; `mixer: NAME_OR_REFERENCE` becomes the architecture of that mixer alone."""
        if isinstance(data, dict) and (data.get("plugins") or _references(data.get("models"))):
            return load_plugins(data)
        return data

    @field_validator("models", mode="before")
    @classmethod
    def _names_are_entries(cls, entries):
        """`models: [mamba2, ...]` is short for `models: [{arch: mamba2}, ...]`."""
        if isinstance(entries, list):
            return [{"arch": e} if isinstance(e, str) else e for e in entries]
        return entries

    @field_validator("models")
    @classmethod
    def _distinct_names(cls, entries: list[ModelEntry]) -> list[ModelEntry]:
        return distinct_models(entries)

    @model_validator(mode="after")
    def _lengths(self) -> "Study":
        if self.eval.lengths is not None and not self.eval.lengths:
            raise ValueError("eval.lengths is empty")
        return self

    def eval_lengths(self) -> list[int]:
        if self.eval.lengths is not None:
            return sorted(set(self.eval.lengths))
        lengths, length = [], self.train.length
        while length <= self.eval.max_factor * self.train.length:
            lengths.append(length)
            length *= 2
        return lengths

    def make_task(self):
        return self.task.make()

    def train_tasks(self) -> list[tuple[object, float]]:
        """(task, weight) for each task trained on, in its name's id range (`id_offsets`)."""
        offsets = self.id_offsets()
        return [(shifted(task, offsets[task.name]), weight) for task, weight in self._made_train_tasks()]

    def eval_tasks(self) -> list[tuple[str, object]]:
        """(label, task) for each task evaluated, in its name's id range (`id_offsets`). A default
        label is the task's name, plus the knobs whose values differ between evaluated tasks of
        that name."""
        offsets = self.id_offsets()
        return [(label, shifted(task, offsets[task.name])) for label, task in self._made_eval_tasks()]

    def id_offsets(self) -> dict[str, int]:
        """Task name -> the first id of its range. Each task numbers its symbols from 0, so in a
        study of several task names (train and eval tasks together) each name gets its own range,
        in order of first appearance, as wide as the largest vocabulary of a task of that name;
        tasks of one name share it (their symbols mean the same). One name: every offset is 0."""
        made = [task for task, _ in self._made_train_tasks()] + [task for _, task in self._made_eval_tasks()]
        widths: dict[str, int] = {}
        for task in made:
            widths[task.name] = max(widths.get(task.name, 0), task.vocab_size)
        if len(widths) == 1:
            return dict.fromkeys(widths, 0)
        starts = itertools.accumulate(widths.values(), initial=0)
        return dict(zip(widths, starts))

    def _made_train_tasks(self) -> list[tuple[object, float]]:
        if self.train.tasks is None:
            return [(self.task.make(), 1.0)]
        return [(entry.make(), entry.weight) for entry in self.train.tasks]

    def _made_eval_tasks(self) -> list[tuple[str, object]]:
        """`eval_tasks` before the id ranges: labels are made from the tasks' own knobs."""
        entries = self.eval.tasks or [EvalTask(name=self.task.name, knobs=self.task.knobs)]
        made = [entry.make() for entry in entries]
        # per task name, once (linear in the entries): its tasks, and the knobs some entry of
        # that name writes (a default resolved per task, such as a text haystack's vocabulary, is
        # not what tells the tasks apart)
        same_name: dict[str, list] = {}
        written: dict[str, set] = {}
        for entry, task in zip(entries, made):
            same_name.setdefault(task.name, []).append(task)
            written.setdefault(task.name, set()).update(entry.knobs)
        varies = {}  # (name, knob) -> whether tasks of that name differ in it
        labels = []
        for entry, task in zip(entries, made):
            if entry.label is not None:
                labels.append(entry.label)
                continue
            differing = []
            for knob in (f.name for f in dataclasses.fields(task) if f.name in written[task.name]):
                if (task.name, knob) not in varies:
                    first = getattr(same_name[task.name][0], knob)
                    varies[task.name, knob] = any(getattr(t, knob) != first for t in same_name[task.name])
                if varies[task.name, knob]:
                    differing.append(knob)
            labels.append(" ".join([task.name] + [f"{k}={_short(getattr(task, k))}" for k in differing]))
        twice = repeated(labels)
        if twice is not None:
            raise ValueError(f"eval.tasks: two tasks are labelled {twice!r}; give them distinct labels")
        return list(zip(labels, made))

    def task_depths(self) -> dict[str, list[float | None]]:
        """label -> the depths each of its cells is evaluated at: the entry's own `depths`, else
        eval.depths; [None] for 'random' and for tasks without a needle depth."""
        entries = self.eval.tasks or [EvalTask(name=self.task.name, knobs=self.task.knobs)]
        out = {}
        for entry, (label, task) in zip(entries, self.eval_tasks()):
            depths = self.eval.depths if entry.depths is None else entry.depths
            out[label] = [None] if depths == "random" or not task.uses_depth else list(depths)
        return out

    def vocab_size(self) -> int:
        """Symbols every task of the study needs: the end of the last id range (one task name:
        the largest vocabulary of its tasks)."""
        return max(task.vocab_size for task in [t for t, _ in self.train_tasks()] + [t for _, t in self.eval_tasks()])


def shifted(task, offset: int):
    """The task in the id range starting at `offset` (the task itself at 0)."""
    return Shifted(task, offset) if offset else task


def _short(value) -> str:
    """A knob value for a label: a corpus file by its name."""
    text = str(value)
    return Path(text).name if isinstance(value, str) and ("/" in text or "\\" in text) else text


def prepare(data: dict, origin: str, corpus: str | None = None, scale: int | None = None,
            plugin: list[str] | None = None) -> dict:
    """A controlled study's YAML before validation: scaled by `scale` (the CLI's --scale, else
    the YAML's `scale`, else 1; see `scaled`), with its plugin paths made absolute (the YAML's
    against its folder, --plugin's against the working directory)."""
    data = dict(data)
    in_yaml = data.pop("scale", 1)
    return scaled(absolute_plugins(data, origin, plugin), in_yaml if scale is None else scale, origin)


def absolute_plugins(data: dict, origin: str, given: list[str] | None) -> dict:
    """The study with every plugin file path absolute, so that it means the same from any
    working directory and in every worker; the --plugin values join `plugins`."""
    here = Path(origin).parent if Path(origin).is_file() else None
    listed = data.get("plugins")
    if given or listed:
        if listed is not None and not (isinstance(listed, list) and all(isinstance(r, str) for r in listed)):
            raise ConfigError(f"{origin}: plugins must be a list of files or modules, not {listed!r}")
        data["plugins"] = list(dict.fromkeys([plugins.absolute(r, here) for r in listed or []]
                                             + [plugins.absolute(r) for r in given or []]))
    entries = data.get("models")
    if isinstance(entries, list):
        data["models"] = [_absolute_entry(entry, here) for entry in entries]
    return data


def _absolute_entry(entry, here: Path | None):
    if isinstance(entry, str) and plugins.is_reference(entry):
        return plugins.absolute(entry, here)
    if isinstance(entry, dict):
        return {k: plugins.absolute(v, here) if k in ("arch", "mixer") and plugins.is_reference(v) else v
                for k, v in entry.items()}
    return entry


def _references(entries) -> bool:
    """Whether any model entry names a plugin or a mixer (and so needs `load_plugins`)."""
    if not isinstance(entries, list):
        return False
    def named(e):
        return e if isinstance(e, str) else e.get("arch") if isinstance(e, dict) else None

    return any(plugins.is_reference(named(e)) or isinstance(e, dict) and "mixer" in e
               or isinstance(named(e), str) and named(e) in mixers.MIXERS and named(e) not in mixers.ARCHITECTURES
               for e in entries)


def load_plugins(data: dict) -> dict:
    """The study's data with its plugins imported (mixers.plugins) and each model entry naming a
    registered architecture. Raises ValueError (a one-line error of the schema) on a plugin that
    does not import or declare what is named."""
    data = dict(data)
    refs = list(data.get("plugins") or [])
    if not (isinstance(refs, list) and all(isinstance(r, str) for r in refs)):
        return data  # the schema says what is wrong with it
    try:
        plugins.ensure(refs)
        entries = []
        for entry in data.get("models") or []:
            entry = {"arch": entry} if isinstance(entry, str) else entry
            if isinstance(entry, dict):
                entry = _registered_entry(entry, refs)
            entries.append(entry)
    except (plugins.PluginError, ValueError) as error:
        raise ValueError(str(error)) from None
    if "models" in data:
        data["models"] = entries
    data["plugins"] = list(dict.fromkeys(plugins.split(r)[0] for r in refs))
    return data


def _registered_entry(entry: dict, refs: list[str]) -> dict:
    entry = dict(entry)
    if "mixer" in entry:
        if "arch" in entry:
            raise ValueError("a model entry names an arch or a mixer, not both")
        ref = entry.pop("mixer")
        name = plugins.resolve(ref) if plugins.is_reference(ref) else mixers.get(str(ref)).name
        if plugins.is_reference(ref):
            refs.append(plugins.split(ref)[0])
        entry["arch"] = plugins.alone(name)
    elif plugins.is_reference(entry.get("arch")):
        ref = entry["arch"]
        entry["arch"] = plugins.resolve(ref)
        refs.append(plugins.split(ref)[0])
    elif entry.get("arch") in mixers.MIXERS and entry.get("arch") not in mixers.ARCHITECTURES:
        entry["arch"] = plugins.alone(entry["arch"])  # a mixer's name: that mixer alone
    return entry


def complete(study: Study, origin: str, corpus: str | None = None, scale: int | None = None,
             plugin: list[str] | None = None) -> Study:
    """The validated study with `corpus` (the CLI's --corpus: a text file read by every task whose
    haystack is `text`), checked against what the schema cannot see."""
    if corpus is not None:
        study = with_corpus(study, corpus, origin)
    check(study, origin)
    return study


def scaled(data: dict, scale, origin: str = "study") -> dict:
    """A controlled study's YAML scaled up by an integer factor k, for bigger machines: k times
    the seeds (the listed ones, then the next unused integers) and k times eval.samples. Models,
    data and lengths are unchanged, so the models and cells of the unscaled study are reused;
    only the intervals narrow. The result names its seeds and samples, so it reproduces alone.
    A scale whose models to train alone could not be planned on this machine is refused before
    the seeds are listed (see study/limits.py)."""
    if isinstance(scale, bool) or not isinstance(scale, int) or scale < 1:
        raise ConfigError(f"scale must be an integer >= 1, not {scale!r}")
    if scale == 1:
        return data
    data = dict(data)
    seeds = list(data.get("seeds") or [0])
    entries = data.get("models")
    trained = len(seeds) * scale * max(1, len(entries) if isinstance(entries, list) else 1)
    limits.check_memory(f"{origin}: scale {scale:,} ({trained:,} models to train)",
                        trained * limits.PLANNED_CELL_BYTES)
    taken = {x for x in seeds if isinstance(x, int)}  # a set: a list would make listing n new seeds take n^2 steps
    unused = (x for x in itertools.count() if x not in taken)
    data["seeds"] = seeds + [next(unused) for _ in range((scale - 1) * len(seeds))]
    evaluation = dict(data.get("eval") or {})
    samples = evaluation.get("samples", EvalConfig.model_fields["samples"].default)
    if isinstance(samples, int) and not isinstance(samples, bool):
        evaluation["samples"] = samples * scale
    data["eval"] = evaluation
    return data


def from_stored(config: dict) -> dict:
    """A configuration stored with results, as the schema reads it now. A store written before
    issue 15 still reads: its top-level `min_train_accuracy` and its `analysis:` names are read as
    their new equivalents (`analysis.settings.from_stored`)."""
    data = {**config}
    bar = data.pop("min_train_accuracy", None)
    bar = bar if isinstance(bar, (int, float)) and not isinstance(bar, bool) else None
    settings, _ = settings_from_stored(data.get("analysis") if isinstance(data.get("analysis"), dict) else None, bar)
    return {**data, "analysis": settings.model_dump()}


def with_corpus(study: Study, corpus: str, origin: str) -> Study:
    """The study with `corpus` set on each task that reads text (knob haystack: text)."""
    if Path(corpus).is_dir():
        raise ConfigError(f"corpus file {corpus} is a directory, not a text file")
    if not Path(corpus).is_file():
        raise ConfigError(f"corpus file {corpus} does not exist")
    study = study.model_copy(deep=True)
    entries = [study.task, *(study.train.tasks or []), *(study.eval.tasks or [])]
    reading = [entry for entry in entries if entry.knobs.get("haystack") == "text"]
    if not reading:
        raise ConfigError(f"{origin}: --corpus is given but no task of the study has haystack: text")
    for entry in reading:
        entry.knobs["corpus"] = str(corpus)
    return study


def check(study: Study, origin: str) -> None:
    """Reject what the schema cannot see: unknown names, impossible lengths and budgets."""
    try:
        trained = [task for task, _ in study.train_tasks()]
        evaluated = [task for _, task in study.eval_tasks()]
    except (ValueError, TypeError, OSError) as error:
        raise ConfigError(f"{origin}: task: {error}") from None
    for task in trained:
        if study.train.length < task.min_length:
            raise ConfigError(f"{origin}: training length {study.train.length} is below the {task.name} task's "
                              f"minimum {task.min_length}")
    for task in evaluated:
        too_short = [n for n in study.eval_lengths() if n < task.min_length]
        if too_short:
            raise ConfigError(f"{origin}: length {too_short[0]} is below the {task.name} task's minimum {task.min_length}")
    for phase in study.train.phases or ():
        short = [task for task in trained if phase.length < task.min_length]
        if short:
            raise ConfigError(f"{origin}: train.phases: length {phase.length} is below the {short[0].name} task's "
                              f"minimum {short[0].min_length}")
    unknown = [label for label in (study.train.until.labels if study.train.until else None) or ()
               if label not in train_labels(study)]
    if unknown:
        raise ConfigError(f"{origin}: train.until.labels: {unknown[0]!r} is not a trained task "
                          f"(trained: {', '.join(train_labels(study))})")
    if study.diagnostics is not None and not any(is_needle_task(task) for task in evaluated):
        raise ConfigError(f"{origin}: diagnostics read where a needle stands: they need an evaluated needle task "
                          f"(evaluated: {', '.join(label for label, _ in study.eval_tasks())})")
    labels = [label for label, _ in study.eval_tasks()]
    unknown = [label for label in study.analysis.labels or () if label not in labels]
    if unknown:
        raise ConfigError(f"{origin}: analysis: {unknown[0]!r} is not an eval task label (labels: {', '.join(labels)})")
    check_machine(study, origin)  # before the models are sized: that takes a while for many
    vocab_size = study.vocab_size()
    for entry in study.models:
        try:
            built = models.config(entry.arch, vocab_size=vocab_size, **resolve_overrides(study, entry, vocab_size))
        except (ValueError, TypeError) as error:
            raise ConfigError(f"{origin}: model {entry.label!r}: {error}") from None
        except ArithmeticError as error:  # a mixer's sizes divided by an option the checks let through
            raise ConfigError(f"{origin}: model {entry.label!r}: overrides {entry.overrides} cannot be built "
                              f"({type(error).__name__}: {error})") from None
        if models.family(entry.arch, built, entry.family) is None:
            unsaid = [name for name in dict.fromkeys(built.layers) if mixers.MIXERS[name].family is None]
            raise ConfigError(f"{origin}: model {entry.label!r}: mixer {unsaid[0]!r} declares no family; give the "
                              "model entry a family: (or its mixer class a `family` attribute)")


def check_machine(study: Study, origin: str) -> None:
    """The study against this machine's memory (study/limits.py), from its numbers alone: its
    planned cells, then one training batch, the held-out samples of a check, one evaluation
    cell's samples at the longest length and a diagnostic's longest samples, each as int64 symbols."""
    trained = len(study.models) * len(study.seeds)
    lengths = study.eval_lengths()
    per_model = len(lengths) * sum(len(depths) for depths in study.task_depths().values())
    length = max([study.train.length] + [phase.length for phase in study.train.phases or ()])
    batch, checked = study.train.batch_size, max(study.train.check.samples, study.train.eval_samples)
    held = {
        f"a training batch ({batch:,} x {length:,} symbols)": batch * length * limits.SYMBOL_BYTES,
        f"a held-out check ({checked:,} samples x {study.train.length:,} symbols)":
            checked * study.train.length * limits.SYMBOL_BYTES,
        f"one evaluation cell ({study.eval.samples:,} samples x {max(lengths):,} symbols)":
            study.eval.samples * max(lengths) * limits.SYMBOL_BYTES}
    if study.diagnostics is not None:  # its longest samples, the retention's among them
        samples, longest = study.diagnostics.samples, (study.diagnostics.max_factor + 1) * study.train.length
        held[f"a diagnostic's samples ({samples:,} x {longest:,} symbols)"] = samples * longest * limits.SYMBOL_BYTES
    limits.check_plan(origin, trained * (1 + per_model), held)


def resolve_overrides(study: Study, entry: ModelEntry, vocab_size: int) -> dict:
    """The build overrides of one entry: its own, plus the d_model that meets the budget. An
    explicit d_model under a budget must meet it within BUDGET_TOLERANCE, counted as
    size_to_budget counts (params_count), or the comparison would not be parameter-matched."""
    # each value with its type: 1, 1.0 and True are equal keys, but only one is a valid count
    given = tuple((key, type(value), value) for key, value in entry.overrides.items())
    arguments = (study.params, study.params_count == "all", entry.arch, vocab_size, given, mixers.generation())
    try:
        hash(arguments)
    except TypeError:  # a list or mapping as an override's value: refused by models.config, uncached
        return dict(_resolved.__wrapped__(*arguments))
    return dict(_resolved(*arguments))


@functools.lru_cache(maxsize=1024)
def _resolved(params: int | None, embeddings: bool, arch: str, vocab_size: int, given: tuple, generation: int = 0
              ) -> tuple:
    """`resolve_overrides` from hashable arguments, the overrides as (key, value) pairs: a study
    of many entries of one architecture sizes it once (the check and the plan both ask). The
    registry's generation keeps an edited plugin from being sized from the cache."""
    overrides = {key: value for key, _, value in given}
    if params is not None and "d_model" not in overrides:
        overrides = models.size_to_budget(arch, params, vocab_size=vocab_size, embeddings=embeddings, **overrides)
    built = models.config(arch, vocab_size=vocab_size, **overrides)  # raises on unknown options
    if params is not None and any(key == "d_model" for key, _, _ in given):
        counted = models.count_params(built, embeddings=embeddings)
        if abs(counted - params) > BUDGET_TOLERANCE * params:
            raise ValueError(f"d_model {overrides['d_model']} gives {counted:,} parameters"
                             f"{'' if embeddings else ' (non-embedding)'}, more than {BUDGET_TOLERANCE:.0%} from "
                             f"the budget params {params:,}; leave d_model out to size the model to the budget")
    return tuple(overrides.items())


def train_labels(study: Study) -> list[str]:
    """A name for each trained task, in curves and in `until.labels`: the label of the evaluated
    task with the same name and knobs, else the task's name (numbered when it repeats)."""
    trained = study.train.tasks or [TrainTask(name=study.task.name, knobs=study.task.knobs)]
    evaluated = study.eval.tasks or [EvalTask(name=study.task.name, knobs=study.task.knobs)]
    eval_labels = [label for label, _ in study.eval_tasks()]
    labels = []
    for entry in trained:
        same = [label for other, label in zip(evaluated, eval_labels)
                if other.name == entry.name and other.knobs == entry.knobs]
        labels.append(same[0] if same else entry.name)
    if len(set(labels)) < len(labels):
        counts = Counter(labels)
        labels = [f"{label} #{i + 1}" if counts[label] > 1 else label for i, label in enumerate(labels)]
    return labels
