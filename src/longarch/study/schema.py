"""The schema base every kind of study shares: strict models, one-line errors, reading a study's
YAML (a file or a preset's name)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError


class ConfigError(ValueError):
    """A study that cannot run; the message is one line naming the problem."""


class Strict(BaseModel):
    # strict: no silent coercion (a `true` is not a step count, a "5" is not a number)
    model_config = ConfigDict(extra="forbid", strict=True)


def repeated(labels: list[str]) -> str | None:
    """The first label (in sorted order) that appears more than once, or None."""
    twice = sorted({x for x in labels if labels.count(x) > 1})
    return twice[0] if twice else None


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
    path = Path(source)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if path.is_dir():
            raise ConfigError(f"study file {source} is a directory, not a YAML file")
        if not path.is_file():
            raise ConfigError(f"study file {source} does not exist")
        try:
            text, origin = path.read_text(encoding="utf-8"), str(path)
        except UnicodeDecodeError as error:
            raise ConfigError(f"{source}: not UTF-8 text ({error.reason} at byte {error.start})") from None
    elif source in preset_names():
        text, origin = resources.files("longarch.presets").joinpath(f"{source}.yaml").read_text(), f"preset {source}"
    else:
        raise ConfigError(f"{source!r} is neither a preset ({', '.join(preset_names())}) nor a YAML file")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{origin}: not valid YAML{where}") from None
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
