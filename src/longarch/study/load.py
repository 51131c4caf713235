"""Loading a study of any kind: one discriminated union on its `kind:` key.

The engine names no kind. The caller hands over the kinds it knows (the CLI's table, kinds.py),
each with its schema (`Config`, whose `kind` field is a Literal of the kind's name) and the
command-line options it takes; the first kind is the default of a study without `kind:`. The
YAML is validated against the union of the schemas, so a study of one kind is checked by its
schema alone, an unknown kind is one error naming the known ones, and the kind's own `complete`
then rejects what no schema can see (unknown task names, impossible lengths, missing files).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Annotated, Sequence, Union

from pydantic import Field, TypeAdapter, ValidationError

from . import inputs
from .schema import ConfigError, one_line, read_yaml

TAG = "kind"


@lru_cache(maxsize=None)
def _union(configs: tuple[type, ...]) -> TypeAdapter:
    if len(configs) == 1:
        return TypeAdapter(configs[0])
    return TypeAdapter(Annotated[Union[configs], Field(discriminator=TAG)])


def _tagged(data: dict, kinds: Sequence) -> dict:
    """The data with its kind named (a study without `kind:` is of the first kind)."""
    return data if TAG in data else {TAG: kinds[0].kind, **data}


def kind_of(tag: object, kinds: Sequence):
    """The kind named `tag` (None: the first), or a ConfigError naming the known kinds."""
    if tag is None:
        return kinds[0]
    for kind in kinds:
        if kind.kind == tag:
            return kind
    raise ConfigError(f"unknown kind {tag!r} (kinds: {', '.join(k.kind for k in kinds)})")


def validate(data: dict, kinds: Sequence, origin: str):
    """A study of any kind from plain data, through the union of the kinds' schemas."""
    data = _tagged(data, kinds)
    kind_of(data[TAG], kinds)  # an unknown kind: one line naming the known ones
    try:
        return _union(tuple(k.Config for k in kinds)).validate_python(data)
    except ValidationError as error:
        raise ConfigError(one_line(error, origin, skip_tag=len(kinds) > 1)) from None


def load(source: str, kinds: Sequence, overrides: dict | None = None, **options):
    """Load a preset name or a YAML path, of any of `kinds`, validate it fully and return it.

    `options` are the command line's (None: not given); an option the study's kind does not take
    is refused with the kinds that take it."""
    data, origin = read_yaml(source)
    data = _tagged({**data, **(overrides or {})}, kinds)
    kind = kind_of(data[TAG], kinds)
    for option, value in options.items():
        if value is not None and option not in kind.options:
            takers = [k.kind for k in kinds if option in k.options]
            flag = "--" + option.replace("_", "-")
            raise ConfigError(f"{flag} is for {' and '.join(takers)} studies; {source} is a {kind.kind} study")
    given = {k: v for k, v in options.items() if v is not None}
    return kind.complete(validate(kind.prepare(data, origin, **given), kinds, origin), origin, **given)


def stored(config: dict, kinds: Sequence, out: Path | None = None):
    """The study of a configuration stored with results in `out` (its input files read from
    there: study/inputs.py); each kind reads its older stores (`from_stored`). Anything that does
    not validate raises pydantic's ValidationError."""
    data = _tagged(dict(config), kinds)
    kind = kind_of(data[TAG], kinds)
    data = inputs.resolved(data, getattr(kind, "input_keys", ()), out)
    return _union(tuple(k.Config for k in kinds)).validate_python(_tagged(kind.from_stored(data), kinds))
