"""Prompt templates: filling them in, and loading exact ones from a user-given file.

Every text task has `template` and `answer_prefix` knobs; None means this project's own wording.
A YAML or JSON file can give others (for example RULER's exact prompts, which this repository does
not ship), keyed by task name or by RULER's task family:

    niah:                      # all eight niah_* tasks
      template: "... {type_needle_v} ... {context} ... {query} ..."
      answer_prefix: " ... {type_needle_v} for {query} ..."
    vt: {template: "... {context} ... {query} ...", answer_prefix: " ... {num_v} ... {query} ..."}
    qa_2: {template: "... {context} ... {query}", answer_prefix: " Answer:"}

A task name's entry wins over its family's. `tasks.get(name, template=FILE)` applies a file. `{context}` is required; the other placeholders each
family offers are in PLACEHOLDERS. NIAH templates are written in the plural: as RULER does, they
are rewritten for the singular (Some -> A, are -> is, ...) when one value is asked for.
"""

from __future__ import annotations

import string
from pathlib import Path

FAMILIES = {
    "niah": ("niah_single_1", "niah_single_2", "niah_single_3", "niah_multikey_1", "niah_multikey_2",
             "niah_multikey_3", "niah_multivalue", "niah_multiquery"),
    "variable_tracking": ("vt",),
    "common_words_extraction": ("cwe",),
    "freq_words_extraction": ("fwe",),
    "qa": ("qa_1", "qa_2"),
}
PLACEHOLDERS = {
    "niah": {"type_needle_v", "context", "query"},
    "variable_tracking": {"context", "query", "num_v"},
    "common_words_extraction": {"context", "num_cw", "query"},
    "freq_words_extraction": {"context", "query"},
    "qa": {"context", "query"},
}
FAMILY_OF = {task: family for family, tasks in FAMILIES.items() for task in tasks}


class Prompt(str):
    """A prompt that knows the answer prefix it ends with (the text the model continues). A base
    model reads the whole string; a chat template goes between the rest and the prefix, which then
    opens the assistant's turn, as RULER places it."""

    answer_prefix: str

    def __new__(cls, text: str, answer_prefix: str) -> "Prompt":
        if not text.endswith(answer_prefix):
            raise ValueError("a prompt must end with its answer prefix")
        prompt = super().__new__(cls, text)
        prompt.answer_prefix = answer_prefix
        return prompt

    @property
    def body(self) -> str:
        """The prompt without its answer prefix."""
        return str(self)[:len(self) - len(self.answer_prefix)]

    def after(self, preamble: str) -> "Prompt":
        """`preamble` (a one-shot example, say) then this prompt, keeping the answer prefix."""
        return Prompt(preamble + str(self), self.answer_prefix)

    def __reduce__(self):  # pickled (to workers) with its prefix
        return (Prompt, (str(self), self.answer_prefix))


def render(template: str, answer_prefix: str, **fields) -> Prompt:
    """The prompt: template then answer prefix, their {placeholders} filled from `fields`."""
    try:
        return Prompt(template.format(**fields) + answer_prefix.format(**fields), answer_prefix.format(**fields))
    except (KeyError, IndexError) as error:
        raise ValueError(f"template placeholder {error} is not one of {sorted(fields)}") from None


def _placeholders(text: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(text) if name is not None}


def load_templates(path: str | Path) -> dict[str, dict[str, str]]:
    """{task name: {"template": ..., "answer_prefix": ...}} for every task the file covers, ready to
    pass as knobs: `tasks.get(name, **load_templates(path).get(name, {}))`."""
    import yaml  # YAML is a superset of JSON, so one parser reads both

    from ...safe_yaml import parse_yaml, yaml_problem

    file = Path(path)
    if not file.is_file():
        raise ValueError(f"template file {str(file)!r} does not exist")
    try:  # a repeated key, an alias bomb, a tag: bad input, one line, as in a study file
        data = parse_yaml(file.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise ValueError(f"{file}: not valid YAML{yaml_problem(error)}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{file}: expected a mapping of task name -> {{template, answer_prefix}}")
    out: dict[str, dict[str, str]] = {}
    for key in sorted(data, key=lambda k: k in FAMILY_OF):  # families first, so task names win
        entry = data[key]
        family = key if key in FAMILIES else FAMILY_OF.get(key)
        if family is None:
            raise ValueError(f"{file}: {key!r} is neither a text task nor a family ({', '.join(FAMILIES)})")
        if not isinstance(entry, dict) or set(entry) - {"template", "answer_prefix"} or "template" not in entry:
            raise ValueError(f"{file}: {key!r} must be a mapping with 'template' and optionally 'answer_prefix'")
        template, prefix = entry["template"], entry.get("answer_prefix", "")
        if not isinstance(template, str) or not isinstance(prefix, str):
            raise ValueError(f"{file}: {key!r}: template and answer_prefix must be strings")
        try:
            used = _placeholders(template) | _placeholders(prefix)
        except ValueError as error:
            raise ValueError(f"{file}: {key!r}: {error}") from None
        if "context" not in used:
            raise ValueError(f"{file}: {key!r}: the template has no {{context}}")
        unknown = used - PLACEHOLDERS[family]
        if unknown:
            raise ValueError(f"{file}: {key!r}: unknown placeholder {{{sorted(unknown)[0]}}} "
                             f"({family} offers {', '.join(sorted(PLACEHOLDERS[family]))})")
        for task in (FAMILIES[key] if key in FAMILIES else (key,)):
            out[task] = {"template": template, "answer_prefix": prefix}
    return out
