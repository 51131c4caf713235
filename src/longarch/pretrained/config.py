"""Pretrained studies: RULER-style text tasks on checkpoints, as data.

A pretrained study names checkpoints (`hf:<path or hub id>` for anything `transformers` loads,
`mamba_ssm:<path or hub id>` for the state-spaces format), the text tasks to run (`ruler` is
RULER's 13), the lengths, and the decoding settings. Nothing is trained. A task entry may fix
the needle depth (`depths`, one cell per depth: the depth ablation) and may give its lengths as
multiples of each model's training length (`length_factors`), as the paper's ablation does at
T and 2T. The YAML says `kind: pretrained`; `longarch eval` builds the same object from flags.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from ..analysis.settings import AnalysisSettings, from_stored as settings_from_stored
from ..study import limits
from ..study.schema import Strict, distinct, distinct_models, named_entries, plain_name, repeated
from .. import tasks
from ..tasks import text
from . import args as arguments

SCHEMES = ("hf", "mamba_ssm")
SUITES = {"ruler": text.names}  # a name in `tasks` that stands for several tasks
DTYPES = ("float32", "bfloat16", "float16")
DEVICE = re.compile(r"cpu|mps|cuda(:[0-9]+)?")  # the devices a checkpoint is evaluated on


class PretrainedModel(Strict):
    model: str = Field(description="hf:<path or hub id> or mamba_ssm:<path or hub id>")
    name: str | None = Field(None, description="its name in tables and plots [default: the path's last part]")
    train_length: int | None = Field(None, ge=1, description="its training context [default: what its config declares]")
    tokenizer: str | None = Field(None, description="tokenizer path or hub id [default: the checkpoint's own]")
    template: Literal["base", "chat"] | None = Field(None, description="prompt template [default: eval.template]")
    trust_remote_code: bool = Field(False, description="the checkpoint needs the code it ships; it runs only when "
                                                       "the study (or --trust-remote-code) allows remote code")
    model_args: dict[str, Any] = Field(default_factory=dict, description="lm-eval's --model_args: revision, "
                                       "attn_implementation, dtype, and config overrides such as rope_scaling "
                                       "(a mapping, or KEY=VALUE,... as on the command line; pretrained/args.py)")
    gen_args: dict[str, Any] = Field(default_factory=dict, description="generation arguments: max_new_tokens "
                                     "(max_gen_toks), until (a mapping, or KEY=VALUE,...)")

    @field_validator("model_args", "gen_args", mode="before")
    @classmethod
    def _pairs(cls, value, info):
        return arguments.as_mapping(value, info.field_name)

    @field_validator("model")
    @classmethod
    def _scheme(cls, spec: str) -> str:
        scheme, sep, target = spec.partition(":")
        if not sep or scheme not in SCHEMES or not target.strip():
            raise ValueError(f"model {spec!r} must look like hf:<path or hub id> or mamba_ssm:<path or hub id>")
        return spec

    @model_validator(mode="after")
    def _own_tokenizer(self) -> "PretrainedModel":
        if self.tokenizer is not None and self.model.startswith("hf:"):
            raise ValueError(f"{self.model}: an hf: model uses its own tokenizer; 'tokenizer' is for mamba_ssm: "
                             "checkpoints")
        return self

    @model_validator(mode="after")
    def _arguments(self) -> "PretrainedModel":
        """Arguments normalised (pretrained/args.py); lm-eval's trust_remote_code=True among the model
        arguments is this entry's trust_remote_code."""
        given = arguments.model_args(self.model_args, self.model.partition(":")[0], f"{self.label}: model_args")
        if "trust_remote_code" in given:
            object.__setattr__(self, "trust_remote_code", given.pop("trust_remote_code"))
        object.__setattr__(self, "model_args", given)
        object.__setattr__(self, "gen_args", arguments.gen_args(self.gen_args, f"{self.label}: gen_args"))
        return self

    def dtype(self, default: str) -> str:
        """The dtype it is evaluated in: its model_args' dtype, else the study's."""
        return self.model_args.get("dtype", default)

    @property
    def label(self) -> str:
        return self.name or self.model.partition(":")[2].rstrip("/").split("/")[-1]


class TextTaskEntry(Strict):
    name: str
    knobs: dict[str, Any] = Field(default_factory=dict)
    label: str | None = None
    depths: list[float] | None = Field(None, min_length=1, description="fixed needle depths, one cell each (NIAH only)")
    length_factors: list[float] | None = Field(
        None, min_length=1, description="lengths as multiples of each model's training length, instead of eval.lengths")

    @field_validator("depths")
    @classmethod
    def _in_range(cls, depths):
        bad = [d for d in depths or [] if not 0 <= d <= 100]
        if bad:
            raise ValueError(f"depth {bad[0]} is outside 0-100")
        return depths if depths is None else distinct(depths, "depth")  # else one cell twice

    @field_validator("length_factors")
    @classmethod
    def _positive(cls, factors):
        bad = [f for f in factors or [] if f <= 0]
        if bad:
            raise ValueError(f"length factor {bad[0]} is not positive")
        return factors


class PretrainedEval(Strict):
    lengths: list[int] = Field(default_factory=lambda: [1024, 2048, 4096, 8192, 16384], min_length=1)
    samples: int = Field(250, ge=1, description="samples per (task, length, depth) cell")
    seed: int = Field(0, ge=0)
    template: Literal["base", "chat"] = "base"
    dtype: Literal[DTYPES] = Field("float32", description="float32, bfloat16 or float16")
    device: str = Field("cpu", description="cpu, cuda, cuda:N (the Nth GPU) or mps")
    chunk: int | None = Field(None, ge=1, description="prefill chunk in tokens, where exact [default: whole prompt]")
    batch_tokens: int = Field(16384, ge=1, description="prompt tokens per generation batch")
    fit: Literal["exact", "ruler"] = Field(
        "exact", description="how prompts are fitted to a length: exact (each as close to it as whole haystack units "
                             "allow, at least fit_tolerance of it) or ruler (RULER's own procedure and shuffles, to "
                             "reproduce published RULER numbers; fills can be far under the length)")
    fit_tolerance: float = Field(
        text.fit.TOLERANCE, gt=0, le=1,
        description="fit: exact refuses a prompt + generation budget under this share of the length")

    @model_validator(mode="after")
    def _tolerance_is_exact(self) -> "PretrainedEval":
        if self.fit == "ruler" and self.fit_tolerance != text.fit.TOLERANCE:
            raise ValueError("fit_tolerance applies to fit: exact only (fit: ruler keeps whatever fill RULER's "
                             "procedure gives)")
        return self

    def fit_identity(self) -> dict:
        """The fit settings as cell ids see them: only those not at their defaults, so the cells of
        a study that leaves them alone keep the ids they had before the settings existed."""
        out = {}
        if self.fit != "exact":
            out["fit"] = self.fit
        if self.fit_tolerance != text.fit.TOLERANCE:
            out["fit_tolerance"] = self.fit_tolerance
        return out

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, data):
        if isinstance(data, dict) and "threshold" in data:
            raise ValueError("'threshold' was renamed: use analysis.effective_length_bar_fraction, a fraction "
                             "(85.6 -> 0.856)")
        return data

    @field_validator("lengths")
    @classmethod
    def _lengths(cls, lengths):
        bad = [n for n in lengths if n < 1]
        if bad:
            raise ValueError(f"length {bad[0]} is not positive")
        return sorted(set(lengths))

    @field_validator("device")
    @classmethod
    def _device(cls, device: str) -> str:
        if not DEVICE.fullmatch(device):
            raise ValueError(f"unknown device {device!r}: cpu, cuda, cuda:N (the Nth GPU) or mps")
        return device


class PretrainedStudy(Strict):
    kind: Literal["pretrained"] = "pretrained"
    name: str
    description: str = ""
    models: list[PretrainedModel] = Field(min_length=1)
    tasks: list[TextTaskEntry] = Field(min_length=1)
    eval: PretrainedEval = Field(default_factory=PretrainedEval)
    corpus: str | None = Field(None, description="essay haystack text file [default: Python's help topics]")
    squad: str | None = Field(None, description="SQuAD v2 dev file for qa_1 (without it qa_1 is skipped)")
    hotpotqa: str | None = Field(None, description="HotpotQA dev file for qa_2 (without it qa_2 is skipped)")
    trust_remote_code: bool = False
    system_prompt: str | None = Field(None, description="a system prompt for every model: the chat template's "
                                                        "system message, or before the prompt under `base`")
    log_prompts: bool = Field(False, description="keep each prompt's whole text in the prediction files (its "
                                                 "SHA-256 and token count are always kept)")
    reference: Literal["huang2025"] | None = Field(None, description="published numbers shown beside this run's")
    analysis: AnalysisSettings = Field(
        default_factory=AnalysisSettings,
        description="how the report judges the results, as for a controlled study; a pretrained study reads "
                    "effective_length_bar_fraction, interval_level_fraction and labels (the tasks averaged)")

    @field_validator("name")
    @classmethod
    def _plain_name(cls, name: str) -> str:
        return plain_name(name)

    @field_validator("models", mode="before")
    @classmethod
    def _specs_are_entries(cls, entries):
        return named_entries(entries, "model")

    @field_validator("tasks", mode="before")
    @classmethod
    def _names_are_entries(cls, entries):
        """`tasks: [ruler, vt]` is short for entries; `ruler` stands for its 13 tasks."""
        if not isinstance(entries, list):
            return entries
        out = []
        for entry in entries:
            if isinstance(entry, str):
                out.extend({"name": n} for n in (SUITES[entry]() if entry in SUITES else [entry]))
            else:
                out.append(entry)
        return out

    @field_validator("models")
    @classmethod
    def _distinct(cls, entries):
        return distinct_models(entries)

    @model_validator(mode="after")
    def _tasks(self) -> "PretrainedStudy":
        twice = repeated([label for label, _ in self.task_entries()])
        if twice is not None:
            raise ValueError(f"tasks: two entries are labelled {twice!r}; give them distinct labels")
        return self

    def averaged_labels(self) -> list[str]:
        """The labels of the tasks the report averages at each length (entries with neither fixed
        depths nor relative lengths), in the study's order."""
        return [label for label, entry in self.task_entries() if not entry.depths and not entry.length_factors]

    def task_entries(self) -> list[tuple[str, TextTaskEntry]]:
        """(label, entry); a default label is the task's name (with its depths' format when fixed)."""
        return [(entry.label or entry.name, entry) for entry in self.tasks]

    def make_task(self, entry: TextTaskEntry, depth: float | None = None):
        """The task object of an entry, with the study's data files set where the task reads them."""
        knobs = dict(entry.knobs)
        if entry.name not in tasks.names("text"):
            return tasks.get(entry.name, family="text")  # the error names the known tasks
        fields = {f.name for f in dataclasses.fields(tasks.task_class(entry.name))}
        if "corpus" in fields and self.corpus is not None:
            knobs.setdefault("corpus", self.corpus)
        if entry.name == "qa_1" and self.squad is not None:
            knobs.setdefault("path", self.squad)
        if entry.name == "qa_2" and self.hotpotqa is not None:
            knobs.setdefault("path", self.hotpotqa)
        if depth is not None:
            knobs["depth"] = depth
        return tasks.get(entry.name, family="text", **knobs)

    def lengths_for(self, entry: TextTaskEntry, train_length: int | None) -> list[int]:
        if entry.length_factors is None:
            return list(self.eval.lengths)
        if train_length is None:
            raise ValueError(f"task {entry.label or entry.name!r} gives lengths as multiples of the training "
                             "length, so every model needs train_length")
        return sorted({round(f * train_length) for f in entry.length_factors})


def check(study: PretrainedStudy, origin: str) -> None:
    """What the schema cannot see: unknown tasks and knobs, missing files, impossible depths."""
    from ..study.schema import ConfigError

    skipped = set()  # labels of the tasks skipped at run time: they plan no cells
    for path, what in ((study.corpus, "corpus"), (study.squad, "squad"), (study.hotpotqa, "hotpotqa")):
        if path is not None and not Path(path).is_file():
            raise ConfigError(f"{origin}: {what} file {path} does not exist")
    for label, entry in study.task_entries():
        try:
            task = study.make_task(entry)
        except text.TaskSkipped:
            skipped.add(label)
            continue  # skipped at run time with its one line; the rest runs
        except (ValueError, TypeError) as error:
            raise ConfigError(f"{origin}: task {label!r}: {error}") from None
        if entry.depths is not None and not hasattr(task, "depth"):
            raise ConfigError(f"{origin}: task {label!r}: only the niah tasks take fixed depths")
    averaged = study.averaged_labels()
    unknown = [label for label in study.analysis.labels or () if label not in averaged]
    if unknown:
        raise ConfigError(f"{origin}: analysis: {unknown[0]!r} is not a task averaged over the study's lengths "
                          f"(those are: {', '.join(averaged) or 'none'})")
    for model in study.models:
        target = model.model.partition(":")[2].strip()
        local = Path(target).expanduser()
        if target.startswith(("/", ".", "~")) and not local.is_dir():
            what = "is not a folder" if local.exists() else "does not exist"
            raise ConfigError(f"{origin}: model {model.label!r}: {target} {what}")
        for label, entry in study.task_entries():
            try:
                study.lengths_for(entry, model.train_length)
            except (ValueError, OverflowError) as error:  # Overflow: a factor x its length past a float
                raise ConfigError(f"{origin}: model {model.label!r}: {error}") from None
    check_arguments(study, origin)
    check_machine(study, origin, skipped)


def check_arguments(study: PretrainedStudy, origin: str) -> None:
    """Each local hf: checkpoint's config overrides, applied to its config as loading will
    (a rope_scaling transformers refuses, a key its config lacks); a hub checkpoint's are judged
    when it is loaded."""
    from ..study.schema import ConfigError

    for model in study.models:
        overrides = arguments.config_overrides(model.model_args)
        target = Path(model.model.partition(":")[2].strip()).expanduser()
        if not overrides or not model.model.startswith("hf:") or not (target / "config.json").is_file():
            continue
        from ..models import hf, pretrained

        pretrained.quiet_transformers()
        try:
            hf.configured(str(target), overrides, model.trust_remote_code and study.trust_remote_code,
                          model.model_args.get("revision"))
        except (ValueError, TypeError, OSError) as error:
            raise ConfigError(f"{origin}: model {model.label!r}: {str(error).splitlines()[0]}") from None


def check_machine(study: PretrainedStudy, origin: str, skipped: set = frozenset()) -> None:
    """The study against this machine's memory (study/limits.py), from its numbers alone: its
    planned cells (checkpoint x task x length x depth; not those of the `skipped` task labels
    nor of the models that would need remote code), and the prompts of one cell (its samples at
    the longest length, as token ids)."""
    cells, longest = 0, 0
    for model in study.models:
        if model.trust_remote_code and not study.trust_remote_code:
            continue
        for label, entry in study.task_entries():
            if label in skipped:
                continue
            lengths = study.lengths_for(entry, model.train_length)
            cells += len(lengths) * len(entry.depths or [None])
            longest = max([longest, *lengths])
    samples = study.eval.samples
    limits.check_plan(origin, cells, {f"one cell's prompts ({samples:,} samples x {longest:,} tokens)":
                                      samples * longest * limits.SYMBOL_BYTES})


def prepare(data: dict, origin: str, corpus: str | None = None, squad: str | None = None,
            hotpotqa: str | None = None, trust_remote_code: bool | None = None, model_args: str | None = None,
            gen_args: str | None = None, system_prompt: str | None = None, log_prompts: bool | None = None) -> dict:
    """A pretrained study's YAML before validation, with the command line's data files, its
    --trust-remote-code, and its --model-args, --gen-args (added to every model's, the command
    line's keys winning), --system-prompt and --log-prompts."""
    given = {"corpus": corpus, "squad": squad, "hotpotqa": hotpotqa, "trust_remote_code": trust_remote_code}
    data = {**data, **{key: str(value) if key != "trust_remote_code" else value
                       for key, value in given.items() if value is not None}}
    data.update({key: value for key, value in (("system_prompt", system_prompt), ("log_prompts", log_prompts))
                 if value is not None})
    return arguments.onto_models(data, model_args, gen_args)


def complete(study: PretrainedStudy, origin: str, **options) -> PretrainedStudy:
    check(study, origin)
    return study


def from_stored(config: dict) -> dict:
    """A configuration stored with results, as the schema reads it now: a study stored before
    issue 15 has its `eval.threshold` (a percent) read as analysis.effective_length_bar_fraction."""
    data = {**config}
    settings, _ = stored_settings(data)
    evaluation = data.get("eval")
    if isinstance(evaluation, dict):
        data["eval"] = {k: v for k, v in evaluation.items() if k != "threshold"}
    return {**data, "analysis": settings.model_dump()}


def stored_settings(config: dict) -> tuple[AnalysisSettings, str]:
    """The analysis settings of a stored pretrained study config, and a note when they had to be
    read leniently (else ""). A study stored before issue 15 has no `analysis:` block but an
    `eval.threshold` in percent: it is read as `effective_length_bar_fraction` (85.6 -> 0.856)."""
    block = config.get("analysis")
    evaluation = config.get("eval") if isinstance(config.get("eval"), dict) else {}
    threshold = evaluation.get("threshold")
    if block is not None or threshold is None:
        return settings_from_stored(block if isinstance(block, dict) else None)
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
        return AnalysisSettings(), (f"the stored eval.threshold {threshold!r} is not a number; the default analysis "
                                    "settings are used")
    settings, note = settings_from_stored({"threshold": threshold})  # percent -> fraction, validated
    if "does not validate" in note:
        return settings, note.replace("the stored `analysis:` block", f"the stored eval.threshold {threshold!r}")
    return settings, (f"this study was stored before issue 15: its eval.threshold {threshold:g} (a percent) is read as "
                      f"analysis.effective_length_bar_fraction {settings.effective_length_bar_fraction:g}")
