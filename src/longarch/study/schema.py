"""The schema base every kind of study shares: strict models, one-line errors, reading a study's
YAML (a file or a preset's name) and the command line's YAML values safely."""

from __future__ import annotations

from collections import Counter
from importlib import resources
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

# Aliases may add at most this many nodes to a document once expanded: a study's few shared
# recipes add tens, while a "billion laughs" (aliases of aliases of aliases ...) adds billions,
# which every later step (validation, the stored config, the report) would walk in full.
MAX_ALIAS_NODES = 100_000


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


# libyaml's parser where PyYAML has it: a hundred times faster than the pure-Python one on a
# study of 100,000s of entries, and it refuses nesting past 1,000 levels itself
_SafeLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class StudyLoader(_SafeLoader):
    """PyYAML's safe loader (plain data only: an explicit tag such as !!python/object is an
    error) that also refuses a key repeated in one mapping, which PyYAML would silently read as
    its last value, and aliases that expand a document by more than MAX_ALIAS_NODES nodes."""

    anchored = True  # whether the text may hold an anchor (parse_yaml: whether it has a '&')

    def get_single_node(self):
        node = super().get_single_node()
        if node is None or not self.anchored:  # an empty document; no anchor, so no alias
            return node
        added = _expanded_nodes(node)
        if added > MAX_ALIAS_NODES:
            raise yaml.composer.ComposerError(None, None, f"its aliases expand it by {added:,} nodes, more than the "
                                              f"{MAX_ALIAS_NODES:,} allowed", node.start_mark)
        return node

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            # before merge keys (<<) are flattened in, whose keys a mapping may override
            lines: dict = {}
            for key_node, _ in node.value:
                if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node)
                line = key_node.start_mark.line + 1
                if key in lines:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"key {key!r} appears twice in one mapping (first at line {lines[key]})",
                        key_node.start_mark)
                lines[key] = line
        return super().construct_mapping(node, deep)


def _children(node) -> list:
    if isinstance(node, yaml.SequenceNode):
        return node.value
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return []


def _expanded_nodes(root) -> int:
    """The nodes aliases add to a composed document once expanded (each node counted once per
    path to it, less the nodes written). Walked once, without recursion: a node's expanded size
    is computed once however many aliases point at it. A node that contains an alias of itself
    can never be expanded: a ComposerError."""
    sizes: dict[int, int] = {}
    path: set[int] = set()
    stack = [(root, False)]
    while stack:
        node, leaving = stack.pop()
        key = id(node)
        if leaving:
            path.discard(key)
            sizes[key] = 1 + sum(sizes[id(child)] for child in _children(node))
        elif key in path:
            raise yaml.composer.ComposerError(None, None, "an alias refers to a node that contains it",
                                              node.start_mark)
        elif key not in sizes:
            path.add(key)
            stack.append((node, True))
            stack.extend((child, False) for child in _children(node))
    return sizes[id(root)] - len(sizes)


def parse_yaml(text: str):
    """The plain data of one YAML document, read with StudyLoader; any problem is a
    yaml.YAMLError (one nested too deeply for the parser included)."""
    loader = StudyLoader(text)
    loader.anchored = "&" in text  # an alias names an anchor, and an anchor starts with '&'
    try:
        return loader.get_single_data()
    except RecursionError:
        raise yaml.YAMLError("it is nested too deeply") from None
    finally:
        loader.dispose()


def yaml_problem(error: yaml.YAMLError, lines: bool = True) -> str:
    """A YAML error as one line: its line, when known (and `lines`), and what is wrong."""
    mark = getattr(error, "problem_mark", None)
    where = f" at line {mark.line + 1}" if mark and lines else ""
    problem = getattr(error, "problem", None) or (str(error).splitlines() or [""])[0]
    return where + (": " + " ".join(problem.split()) if problem else "")


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
