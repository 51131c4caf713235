"""Prompt templates from a user-given YAML or JSON file (made-up wording here, nothing of RULER's)."""

import json

import pytest

from longarch import tasks
from longarch.tasks import text as T
from test_text_support import bpe_tokenizer, write_squad

MADE_UP = """
niah:
  template: "Some hidden {type_needle_v} are all around.\\n{context}\\nList the {type_needle_v} for {query}."
  answer_prefix: " Here are the {type_needle_v} for {query}:"
niah_multikey_3:
  template: "UUIDs below.\\n{context}\\nGive the value of {query}."
  answer_prefix: " Value:"
vt:
  template: "Chains:\\n{context}\\nWho holds {query}? ({num_v} of them)"
  answer_prefix: " They are:"
common_words_extraction:
  template: "Words:\\n{context}\\nTop {num_cw}?"
  answer_prefix: " Top:"
fwe:
  template: "Coded: {context}\\nTop three?"
qa:
  template: "Docs:\\n{context}\\nQ: {query}"
  answer_prefix: " A:"
"""


@pytest.fixture
def table(tmp_path):
    path = tmp_path / "templates.yaml"
    path.write_text(MADE_UP)
    return T.load_templates(path)


def test_load_covers_tasks_and_families(table):
    assert set(table) == set(T.names())
    assert table["niah_multikey_3"] == {"template": "UUIDs below.\n{context}\nGive the value of {query}.",
                                        "answer_prefix": " Value:"}  # a task's own entry wins over its family's
    assert table["niah_single_1"]["answer_prefix"] == " Here are the {type_needle_v} for {query}:"
    assert table["fwe"]["answer_prefix"] == ""


def test_prompts_use_the_file(table, tmp_path):
    prompt, answers, _ = tasks.get("niah_multivalue", **table["niah_multivalue"]).build(50, 0, 4096)
    assert prompt.startswith("Some hidden numbers are all around.\n") and prompt.endswith(":")
    assert " Here are the numbers for " in prompt
    # one value asked for: RULER's singular rewrite (Some -> A, are all -> is, are -> is)
    prompt, _, _ = tasks.get("niah_single_2", **table["niah_single_2"]).build(50, 0, 4096)
    assert prompt.startswith("A hidden number is around.\n") and "List the number for " in prompt
    assert " Here is the number for " in prompt and prompt.endswith(":")
    prompt, answers, _ = tasks.get("vt", **table["vt"]).build(5, 0, 4096, len)
    assert prompt.count("Chains:\n") == 2 and prompt.endswith("? (5 of them) They are:")
    prompt, _, _ = tasks.get("cwe", **table["cwe"]).build(5, 0, 4096)
    assert prompt.count("Top 10?") == 2 and prompt.endswith("Top 10? Top:")
    prompt, _, _ = tasks.get("fwe", **table["fwe"]).build(200, 0, 4096)
    assert prompt.startswith("Coded: ") and prompt.endswith("\nTop three?")
    squad = write_squad(tmp_path / "s.json", articles=2)
    prompt, _, _ = tasks.get("qa_1", path=str(squad), **table["qa_1"]).build(3, 0, 4096)
    assert prompt.startswith("Docs:\nDocument 1:\n") and prompt.endswith("\nQ: What is the code word of article 0 "
                                                                          "part 0? A:")


def test_fitting_with_a_template_file(table):
    tokenizer = bpe_tokenizer()
    s = T.fit_sample(tasks.get("niah_multiquery", **table["niah_multiquery"]), tokenizer, 2048, seed=0)
    assert 0.95 * 2048 <= s.metadata["total_tokens"] <= 2048 and s.prompt.startswith("Some hidden numbers")


def test_template_file_as_a_knob(tmp_path):
    """`template=FILE`, as a study's knobs give it: the file's entry for the task is applied."""
    path = tmp_path / "templates.yaml"
    path.write_text(MADE_UP)
    task = tasks.get("niah_multikey_3", template=str(path))
    assert (task.template, task.answer_prefix) == ("UUIDs below.\n{context}\nGive the value of {query}.", " Value:")
    assert tasks.get("vt", template=str(path), answer_prefix=" Mine:").answer_prefix == " Mine:"  # explicit wins
    assert tasks.get("vt", template="{context}?").template == "{context}?"  # text with {context} is the template
    other = tmp_path / "qa-only.yaml"
    other.write_text("qa:\n  template: '{context} {query}'\n")
    with pytest.raises(ValueError, match="no entry for 'cwe'"):
        tasks.get("cwe", template=str(other))
    with pytest.raises(ValueError, match="does not exist"):
        tasks.get("cwe", template=str(tmp_path / "missing.yaml"))


def test_json_file_and_errors(tmp_path):
    path = tmp_path / "t.json"
    path.write_text(json.dumps({"qa_2": {"template": "{context} / {query}"}}))
    assert T.load_templates(path) == {"qa_2": {"template": "{context} / {query}", "answer_prefix": ""}}
    bad = {
        "niah_single_9": {"template": "{context}"},                          # no such task
        "cwe": {"template": "no context here"},                               # {context} missing
        "fwe": {"template": "{context} {query} {num_v}"},                     # not a fwe placeholder
        "vt": {"template": "{context}", "prefix": " A:"},                     # unknown field
        "qa": "{context}",                                                    # not a mapping
    }
    messages = ["neither a text task", "has no {context}", "unknown placeholder {num_v}", "'template' and optionally",
                "'template' and optionally"]
    for (key, entry), message in zip(bad.items(), messages):
        path.write_text(json.dumps({key: entry}))
        with pytest.raises(ValueError, match=message.replace("{", r"\{").replace("}", r"\}")):
            T.load_templates(path)
    path.write_text("- just\n- a list\n")
    with pytest.raises(ValueError, match="expected a mapping"):
        T.load_templates(path)
