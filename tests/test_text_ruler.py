"""The synthetic tasks against RULER's code (scripts/synthetic.yaml, scripts/data/synthetic/*.py,
scripts/data/synthetic/constants.py): configurations, budgets, needles, depths, vt's one-shot
example, cwe's example and short-context switch, fwe's vocabulary and noise word."""

import collections
import re

import pytest

from longarch import tasks
from longarch.tasks import text as T
from longarch.tasks.text import haystack
from longarch.tasks.text.aggregation import zeta
from test_text_support import n_tokens


def test_configurations_match_synthetic_yaml():
    expect = {  # (haystack, key type, value type, keys, values, queries) from scripts/synthetic.yaml
        "niah_single_1": ("noise", "words", "numbers", 1, 1, 1), "niah_single_2": ("essay", "words", "numbers", 1, 1, 1),
        "niah_single_3": ("essay", "words", "uuids", 1, 1, 1), "niah_multikey_1": ("essay", "words", "numbers", 4, 1, 1),
        "niah_multikey_2": ("needle", "words", "numbers", 1, 1, 1), "niah_multikey_3": ("needle", "uuids", "uuids", 1, 1, 1),
        "niah_multivalue": ("essay", "words", "numbers", 1, 4, 1),
        "niah_multiquery": ("essay", "words", "numbers", 4, 1, 4),  # num_needle_k: 1 in the yaml, raised to 4
    }
    for name, fields in expect.items():
        t = tasks.get(name)
        assert (t.type_haystack, t.type_needle_k, t.type_needle_v, t.num_needle_k, t.num_needle_v,
                t.num_needle_q) == fields, name
        assert t.max_new_tokens == 128
    vt, cwe, fwe = tasks.get("vt"), tasks.get("cwe"), tasks.get("fwe")
    assert (vt.type_haystack, vt.num_chains, vt.num_hops, vt.max_new_tokens) == ("noise", 1, 4, 30)
    assert (cwe.freq_cw, cwe.freq_ucw, cwe.num_cw, cwe.num_fewshot, cwe.max_new_tokens) == (30, 3, 10, 1, 120)
    assert (fwe.alpha, fwe.coded_wordlen, fwe.vocab_size, fwe.max_new_tokens) == (2.0, 6, None, 50)


def test_depths_and_key_words():
    assert haystack.DEPTHS[:4] == [0, 3, 5, 8] and haystack.DEPTHS[-1] == 100 and len(set(haystack.DEPTHS)) == 40
    adjectives, nouns = haystack.key_words()
    prompt, answers, meta = tasks.get("niah_multikey_1").build(300, 0, 4096)
    keys = re.findall(r"One of the secret numbers for (.+?) is:", prompt)
    assert len(keys) == 4
    for key in keys:  # ADJECTIVE-NOUN keys
        assert any(key.startswith(a + "-") and key[len(a) + 1:] in nouns for a in adjectives), key
    assert all(d in haystack.DEPTHS for d in meta["depths"]) and len(set(meta["depths"])) == 4


def test_needles_singular_and_plural():
    prompt, answers, _ = tasks.get("niah_single_2").build(200, 1, 4096)
    assert prompt.startswith("A secret number is") and prompt.endswith("given in the text is")
    assert "One of the secret numbers for " in prompt  # the needle itself stays plural, as in RULER
    prompt, answers, _ = tasks.get("niah_multivalue").build(200, 1, 4096)
    assert prompt.startswith("Some secret numbers are") and prompt.endswith("given in the text are")
    assert re.search(r"numbers for .+?, and .+? given", tasks.get("niah_multiquery").build(200, 1, 4096)[0])


def test_needle_positions():
    """Essay: between sentences at one of RULER's depths. Noise/needle: any unit, not just those depths."""
    prompt, answers, meta = tasks.get("niah_single_2").build(3000, 4, 8192)
    before = prompt[:prompt.index("One of the secret")].rstrip()
    assert re.search(r"[.!?][\"')\]]*$", before)  # just after a sentence
    seen = set()
    for seed in range(60):
        _, _, meta = tasks.get("niah_single_1").build(1000, seed, 8192)
        seen.add(round(meta["depths"][0], 6))
    assert len(seen) == 60 and not seen <= set(haystack.DEPTHS)


def test_vt_one_shot_example(tok):
    """RULER prepends a solved example: 3-letter variables, min(hops, 10) hops, value randomized, its
    prompt grown to at most 500 tokens, then its answer and a blank line; it counts toward the length."""
    for hops in (4, 12):
        task = tasks.get("vt", num_hops=hops)
        s = T.fit_sample(task, tok, 2048, seed=3)
        start = s.prompt.rindex("Follow the chains")
        example = s.prompt[:start]
        ex_hops = min(hops, 10)
        answer = re.search(r"they are:  ((?:[A-Z]{3} ?)+)\n\n$", example).group(1).split()
        assert len(answer) == ex_hops + 1 and f"{ex_hops + 1} variables are assigned" in example
        prompt_only = example[:example.rindex(" " + " ".join(answer))]
        assert 400 < n_tokens(tok, prompt_only) <= 500
        assert len(re.findall(r"^VAR ", example, re.M)) == ex_hops + 1 and len(s.answers) == hops + 1
        assert all(len(v) == 5 for v in s.answers)
        assert s.metadata["total_tokens"] == n_tokens(tok, s.prompt) + 30  # the example is counted
    a, b = T.fit_sample(tasks.get("vt"), tok, 1024, seed=1), T.fit_sample(tasks.get("vt"), tok, 1024, seed=2)
    assert a.prompt[:200] != b.prompt[:200]  # a fresh example per sample


def test_vt_essay_haystack(tok):
    s = T.fit_sample(tasks.get("vt", type_haystack="essay"), tok, 4096, seed=0)
    real = s.prompt[s.prompt.rindex("Follow the chains"):]
    for a, b in zip(s.answers, s.answers[1:]):
        assert real.index(f"VAR {a} ") < real.index(f"VAR {b} = VAR {a}.")


def _cwe_lists(prompt):
    return [collections.Counter(re.findall(r"\d+\. (.+?)(?= \d+\. |$)", part.split("\nQuestion:")[0]))
            for part in prompt.split("most often.\n")[1:]]


def test_cwe_example_and_short_switch():
    task = tasks.get("cwe")
    example, main = _cwe_lists(task.build(100, 0, 2048)[0])  # below 4096: example 20 words at 3/1, list at 6/1
    assert len(example) == 20 and sorted(set(example.values())) == [1, 3]
    assert sorted(set(main.values())) == [1, 6] and len(main) == 110
    example, main = _cwe_lists(task.build(100, 0, 4096)[0])  # from 4096: example 40 words at 10/3, list 30/3
    assert len(example) == 40 and sorted(set(example.values())) == [3, 10]
    assert sorted(set(main.values())) == [3, 30]
    prompt = task.build(100, 0, 4096)[0]
    assert prompt.count("Question:") == 2 and re.search(r"list are: 1\. .+ 10\. [^\n]+\nHere is", prompt)


def test_cwe_more_words_than_the_list():
    words = len(haystack.word_list())
    _, answers, _ = tasks.get("cwe").build(words + 50, 0, 200_000)
    assert len(answers) == 10  # topped up with distinct compounds, as RULER tops up with another list


def test_fwe_vocabulary_and_noise():
    task = tasks.get("fwe")
    assert zeta(2.0) == pytest.approx(1.6449340668, abs=1e-9)
    for length in (1024, 16384):
        prompt, answers, meta = task.build(2000, 0, length)
        assert meta["vocab_size"] == (length - 50) // 50
        stream = prompt.split("occur most often. ", 1)[1].split("\nQuestion:")[0].split()
        counts = collections.Counter(stream)
        assert counts.most_common(1)[0][0] == "..."  # the top-ranked word is noise, RULER's three dots
        assert [w for w, _ in counts.most_common(4)[1:]] == answers
        assert counts["..."] == int(2000 / zeta(2.0)) and counts[answers[0]] == int(2000 / 4 / zeta(2.0))
        assert prompt.count("Answer:") == 1  # no solved example, unlike vt and cwe
    assert tasks.get("fwe", vocab_size=30).build(500, 0, 1024)[2]["vocab_size"] == 30
