"""The schema base every kind of study shares: strict models, one-line errors, reading a study's
YAML (a file or a preset's name) and the command line's YAML values safely."""

from __future__ import annotations

from collections import Counter
from importlib import resources
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from ..safe_yaml import parse_yaml, yaml_problem

class ConfigError(ValueError):
    """A study that cannot run; the message is one line naming the problem."""


class Strict(BaseModel):
    # strict: no silent coercion (a `true` is not a step count, a "5" is not a number); no float
    # of a study means anything infinite or NaN (YAML's .inf and .nan are refused)
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


def repeated(labels: list):
    """The first label (in sorted order) that appears more than once, or None. Linear in the
    labels but for the sort of the repeated ones (a study may list 100,000s of entries)."""
    twice = sorted(label for label, count in Counter(labels).items() if count > 1)
    return twice[0] if twice else None


def distinct(values: list, what: str) -> list:
    """`values` when no value repeats, else a ValueError naming the first repeated one."""
    twice = repeated(values)
    if twice is not None:
        raise ValueError(f"{what} {twice:g} appears twice; each must be distinct" if isinstance(twice, float)
                         else f"{what} {twice!r} appears twice; each must be distinct")
    return values


def named_entries(entries, key: str):
    """A list whose plain strings are short for {key: string} (`models: [gpt2]` for
    `models: [{model: gpt2}]`); anything else as it is, for the schema to judge."""
    if isinstance(entries, list):
        return [{key: e} if isinstance(e, str) else e for e in entries]
    return entries


def plain_name(name: str) -> str:
    """A study's name, which names its output directory (runs/<name>): a plain file name, so that
    it can never point into another directory."""
    if name in ("", ".", "..") or any(c in "/\\" or ord(c) < 32 for c in name):
        raise ValueError(f"name {name!r} is not a plain file name: it names the output directory runs/<name>, so "
                         "it may not be empty, '.' or '..', nor contain '/', '\\' or control characters")
    return name


def distinct_models(entries: list) -> list:
    """Model entries whose labels (names) are distinct, else a ValueError naming the repeated one."""
    twice = repeated([e.label for e in entries])
    if twice is not None:
        raise ValueError(f"model name {twice!r} appears twice; give entries distinct names")
    return entries


def preset_names() -> list[str]:
    return sorted(p.name.removesuffix(".yaml") for p in resources.files("longarch.presets").iterdir()
                  if p.name.endswith(".yaml"))


def read_yaml(source: str) -> tuple[dict, str]:
    """A study's mapping and where it came from: a YAML file, or a preset by name. A preset's name
    wins over a directory of that name (a study's output folder is often named after it)."""
    path = Path(source)
    preset = source in preset_names() and not path.is_file()
    if not preset and (path.suffix in (".yaml", ".yml") or path.exists()):
        if path.is_dir():
            raise ConfigError(f"study file {source} is a directory, not a YAML file")
        if not path.is_file():
            raise ConfigError(f"study file {source} does not exist")
        try:
            text, origin = path.read_text(encoding="utf-8"), str(path)
        except UnicodeDecodeError as error:
            raise ConfigError(f"{source}: not UTF-8 text ({error.reason} at byte {error.start})") from None
    elif preset:
        text, origin = resources.files("longarch.presets").joinpath(f"{source}.yaml").read_text(), f"preset {source}"
    else:
        raise ConfigError(f"{source!r} is neither a preset ({', '.join(preset_names())}) nor a YAML file")
    try:
        data = parse_yaml(text)
    except yaml.YAMLError as error:
        raise ConfigError(f"{origin}: not valid YAML{yaml_problem(error)}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{origin}: a study is a YAML mapping of keys to values")
    return data, origin


def one_line(error: ValidationError, origin: str, skip_tag: bool = False) -> str:
    """The first error as one line. `skip_tag`: the error comes from a union of study kinds,
    whose first location is the kind's name, not a key of the study."""
    first = error.errors()[0]
    loc = first["loc"][1:] if skip_tag and first["type"] != "union_tag_invalid" else first["loc"]
    where = ".".join(str(part) for part in loc)
    if first["type"] == "extra_forbidden":
        return f"{origin}: unknown key '{where}'"
    message = first["msg"].removeprefix("Value error, ")
    return f"{origin}: {where}: {message}" if where else f"{origin}: {message}"
