"""The kinds of study as the engine takes them: one table, one union on `kind:`, the same
protocol for each kind, and stores of either kind (or from before `kind:` was written) read
back as their own kind."""

from __future__ import annotations

import typing

import pytest
import yaml
from typer.testing import CliRunner

from longarch import kinds
from longarch.cli import app
from longarch.study import load as loading
from longarch.study.driver import StudyKind
from longarch.study.schema import ConfigError, Strict
from longarch.study.store import Store

CONTROLLED = {"name": "tiny", "task": {"name": "needle", "knobs": {"haystack": "random"}}, "models": ["transformer"],
              "train": {"length": 32, "steps": 2, "batch_size": 2}, "eval": {"max_factor": 1, "samples": 2}}
PRETRAINED = {"kind": "pretrained", "name": "ckpt", "models": ["hf:org/name"], "tasks": ["vt"]}


def _yaml(tmp_path, data, name="study.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return str(path)


@pytest.mark.parametrize("kind", kinds.kinds(), ids=lambda k: k.kind)
def test_every_kind_in_the_table_implements_the_protocol(kind):
    """What the engine, the CLI and the report writer call on a kind, and a schema whose `kind`
    field is a Literal of the kind's name (the union's tag)."""
    members = [m for m in dir(StudyKind) if not m.startswith("_")] + list(typing.get_type_hints(StudyKind))
    missing = sorted({m for m in members if m != "name"} - set(dir(kind)))
    assert missing == []
    assert issubclass(kind.Config, Strict)
    assert typing.get_args(kind.Config.model_fields["kind"].annotation) == (kind.kind,)
    assert set(kind.options) <= {"corpus", "scale", "squad", "hotpotqa", "trust_remote_code", "plugin",
                                 "model_args", "gen_args", "system_prompt", "log_prompts"}


def test_the_kinds_have_distinct_names():
    names = [k.kind for k in kinds.kinds()]
    assert len(set(names)) == len(names) and names[0] == "controlled"  # the default without `kind:`


def test_a_study_without_kind_is_of_the_first_kind_and_says_so_when_dumped(tmp_path):
    implicit = kinds.load_study(_yaml(tmp_path, CONTROLLED))
    explicit = kinds.load_study(_yaml(tmp_path, {**CONTROLLED, "kind": "controlled"}, "explicit.yaml"))
    assert implicit == explicit and kinds.kind_of(implicit).kind == "controlled"
    assert implicit.model_dump(mode="json")["kind"] == "controlled"


def test_each_kind_is_validated_by_its_own_schema(tmp_path):
    study = kinds.load_study(_yaml(tmp_path, PRETRAINED))
    assert kinds.kind_of(study).kind == "pretrained" and study.tasks[0].name == "vt"
    with pytest.raises(ConfigError, match=r"unknown key 'train'"):  # a controlled key in a pretrained study
        kinds.load_study(_yaml(tmp_path, {**PRETRAINED, "train": {"length": 8}}))


def test_an_error_names_the_key_not_the_union_tag(tmp_path):
    """pydantic puts the kind's name first in a tagged union's error locations; the line names
    the study's own key."""
    with pytest.raises(ConfigError) as error:
        kinds.load_study(_yaml(tmp_path, {**PRETRAINED, "models": [{"model": "nope"}]}))
    message = str(error.value)
    assert ": models.0.model: " in message and "pretrained.models" not in message
    with pytest.raises(ConfigError, match=r": train.batch_size: "):
        kinds.load_study(_yaml(tmp_path, {**CONTROLLED, "train": {"length": 32, "batch_size": "x"}}))


def test_an_unknown_kind_is_one_line_naming_the_kinds(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown kind 'trained' \(kinds: controlled, pretrained\)"):
        kinds.load_study(_yaml(tmp_path, {**CONTROLLED, "kind": "trained"}))
    result = CliRunner().invoke(app, ["plan", _yaml(tmp_path, {**CONTROLLED, "kind": 3})])
    assert result.exit_code == 2 and "unknown kind 3" in result.output


@pytest.mark.parametrize("args, message", [
    (["--scale", "2"], "--scale is for controlled studies"),
    (["--squad", "x.json"], None),  # taken: a pretrained study has qa tasks
])
def test_an_option_is_refused_for_a_kind_that_does_not_take_it(tmp_path, args, message):
    study = _yaml(tmp_path, PRETRAINED)
    if message is None:
        with pytest.raises(ConfigError, match="squad file x.json does not exist"):  # taken, then checked
            kinds.load_study(study, squad="x.json")
        return
    result = CliRunner().invoke(app, ["plan", study, *args])
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output


def test_a_stored_study_reads_back_as_its_kind(tmp_path):
    for data in (CONTROLLED, PRETRAINED):
        study = kinds.load_study(_yaml(tmp_path, data))
        assert kinds.stored_study(study.model_dump(mode="json")) == study
    legacy = {k: v for k, v in kinds.load_study(_yaml(tmp_path, CONTROLLED)).model_dump(mode="json").items()
              if k != "kind"}  # stored before studies named their kind
    assert kinds.kind_of(kinds.stored_study(legacy)).kind == "controlled"


def test_the_kind_of_a_store_comes_from_its_meta_then_its_config(tmp_path):
    with Store(tmp_path / "results.sqlite") as store:
        store.set_meta("config", {"name": "old"})  # a store from before either was written
    assert kinds.stored_kind(tmp_path).kind == "controlled"
    with Store(tmp_path / "results.sqlite") as store:
        store.set_meta("config", {"name": "x", "kind": "pretrained"})
    assert kinds.stored_kind(tmp_path).kind == "pretrained"
    with Store(tmp_path / "results.sqlite") as store:
        store.set_meta("kind", "bogus")
    with pytest.raises(ConfigError, match="unknown kind 'bogus'"):
        kinds.stored_kind(tmp_path)


def test_the_engine_loads_any_table_it_is_handed(tmp_path):
    """study/load.py names no kind: a table of one kind is a union of one."""
    controlled_only = kinds.kinds()[:1]
    assert loading.load(_yaml(tmp_path, CONTROLLED), controlled_only).name == "tiny"
    with pytest.raises(ConfigError, match=r"unknown kind 'pretrained' \(kinds: controlled\)"):
        loading.load(_yaml(tmp_path, PRETRAINED), controlled_only)
