"""YAML read safely, for every YAML this package reads from a user (study files, --knob values,
prompt template files): plain data only, no key twice in one mapping, aliases bounded. It
imports nothing of the package, so every layer may use it."""

from __future__ import annotations

import yaml

# Aliases may add at most this many nodes to a document once expanded: a study's few shared
# recipes add tens, while a "billion laughs" (aliases of aliases of aliases ...) adds billions,
# which every later step (validation, the stored config, the report) would walk in full.
MAX_ALIAS_NODES = 100_000


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
