"""The length rule of the issue on all 13 text tasks: prompt + generation budget <= target and >= 95%
of it, at 1K-16K, with a tokenizer of a real BPE tokenizer's granularity; where RULER's whole-unit
haystacks cannot reach 95% the fit fails with an exact error; and the search is exact and short."""

import collections
import random
import re

import pytest

from longarch import tasks
from longarch.tasks import text as T
from longarch.tasks.text.fit import largest_fitting
from test_text_support import n_tokens

LENGTHS = [1024, 2048, 4096, 8192, 16384]
SEEDS = [0, 1]
BUDGET = {"niah": 128, "vt": 30, "cwe": 120, "fwe": 50, "qa": 32}  # RULER's tokens_to_generate
# Where one haystack unit is over 5% of the target (a uuid-keyed distractor needle, ~58 tokens, at 1K;
# a SQuAD-sized paragraph, ~110-280 tokens, at 1K-4K; a HotpotQA-sized one at 1K-2K) the fit adds
# the first words of one more distractor unit, so 95% is reached there too. Only where a
# HotpotQA question's own ten paragraphs (all golden in RULER) exceed the budget is there no fit.
COARSE = {("qa_2", 1024)}


def make(name, qa_files):
    return tasks.get(name, path=str(qa_files[name])) if name in qa_files else tasks.get(name)


def check_content(name, s):
    prompt, answers = s.prompt, s.answers
    found = any if name.startswith("qa") else all  # QA lists alternative answers, the rest all of them
    assert answers and found(a in prompt for a in answers), name  # the answer is recoverable from the prompt
    if name.startswith("niah"):
        single = len(answers) == 1
        assert prompt.endswith("given in the text is" if single else "given in the text are")
        for a in answers:
            assert re.search(rf"One of the secret \w+ for .+? is: {re.escape(a)}\.", prompt)
    elif name == "vt":
        start = prompt.rindex("Follow the chains")
        example, real = prompt[:start], prompt[start:]  # the one-shot example, then the question
        assert example.startswith("Follow the chains") and re.search(r"they are:  [A-Z]{3}( [A-Z]{3}){4}\n\n$", example)
        value = re.search(r"assigned the value (\d+) in the text above", real).group(1)
        assert f"VAR {answers[0]} = {value}" in real and len(answers) == 5
        for a, b in zip(answers, answers[1:]):
            assert real.index(f"VAR {a} =") < real.index(f"VAR {b} = VAR {a}")
    elif name == "cwe":
        listed = prompt.rsplit("most often.\n", 1)[1].split("\nQuestion:")[0]
        counts = collections.Counter(re.findall(r"\d+\. (.+?)(?= \d+\. |$)", listed))
        assert {w for w, _ in counts.most_common(10)} == set(answers)
        assert min(counts[a] for a in answers) > max(c for w, c in counts.items() if w not in answers)
    elif name == "fwe":
        stream = prompt.split("occur most often. ", 1)[1].split("\nQuestion:")[0].split()
        counts = collections.Counter(w for w in stream if w != "...")
        ranked = counts.most_common(4)
        assert [w for w, _ in ranked[:3]] == answers and ranked[2][1] > ranked[3][1]
    else:
        assert s.metadata["question"] in prompt and prompt.endswith(" Answer:")


@pytest.mark.parametrize("name", T.names())
def test_length_rule(name, tok, qa_files):
    task = make(name, qa_files)
    assert task.max_new_tokens == BUDGET[name.split("_")[0]]
    fitted = 0
    for length in LENGTHS:
        for seed in SEEDS:
            try:
                s = T.fit_sample(task, tok, length, seed=seed)
            except T.FitError as error:
                # only where one unit is over the 5% slack, and genuine: n units fit under 95%, n + 1 overflow
                assert (name, length) in COARSE, (name, length, str(error))
                if error.best_total is None:  # the golden documents alone are too long
                    assert name == "qa_2" and length == 1024 and "without haystack" in str(error)
                    continue
                assert error.best_total < 0.95 * length and error.next_total > length
                assert error.next_total - error.best_total > 0.05 * length
                continue
            fitted += 1
            total = n_tokens(tok, s.prompt) + s.max_new_tokens
            assert 0.95 * length <= total <= length, (name, length, seed, total)
            assert s.metadata["total_tokens"] == total and s.metadata["length"] == length
            assert s.metadata["fit_calls"] <= 2 * length.bit_length() + 8  # a search, not a scan
            check_content(name, s)
    assert fitted >= len(SEEDS) * sum((name, length) not in COARSE for length in LENGTHS)


@pytest.mark.parametrize("name, length", [("niah_multikey_3", 1024), ("qa_1", 1024), ("qa_1", 2048)])
def test_a_partial_distractor_unit_reaches_95_percent(name, length, tok, qa_files):
    """Where one haystack unit is over 5% of the target, whole units (RULER's search, which never
    cuts one and checks no minimum fill) can land under 95%; the fit then adds the first words of
    one more distractor: never a golden document, never a queried key. Samples that reach 95% with
    whole units are left exactly as whole units make them."""
    task = make(name, qa_files)
    count = (lambda text: n_tokens(tok, text))
    partial = 0
    for seed in range(10):
        s = T.fit_sample(task, tok, length, seed=seed)
        total, k, n = s.metadata["total_tokens"], s.metadata["partial_words"], s.metadata["haystack_units"]
        assert 0.95 * length <= total <= length and total == n_tokens(tok, s.prompt) + s.max_new_tokens
        check_content(name, s)
        if k == 0:
            assert s.prompt == task.build(n, s.metadata["seed"], length, count)[0]
            continue
        partial += 1
        whole = task.build(n, s.metadata["seed"], length, count)[0]
        assert n_tokens(tok, whole) + s.max_new_tokens < 0.95 * length  # needed: whole units fall short
        assert n_tokens(tok, task.build(n + 1, s.metadata["seed"], length, count)[0]) + s.max_new_tokens > length
        if name.startswith("niah"):  # the cut needle: the first k words of a distractor, no value
            cut = [line for line in s.prompt.split("\n") if line.startswith("One of the") and not line.endswith(".")]
            assert len(cut) == 1 and len(cut[0].split()) == k
            assert not any(key in cut[0] for key in s.metadata["keys"])
        else:  # the golden documents are whole
            for g in s.metadata["golden_documents"]:
                assert re.search(rf"Document {g}:\n", s.prompt)
    assert partial > 0  # the case arises in these settings


def test_a_loose_floor_is_the_callers_choice(tok):
    task = tasks.get("niah_single_1")  # noise sentences: fine units, no partial unit
    s = T.fit_sample(task, tok, 1024, seed=0, min_fill=0.9)
    assert 0.9 * 1024 <= s.metadata["total_tokens"] <= 1024 and s.metadata["partial_words"] == 0
    with pytest.raises(T.FitError, match=r"under 100% of 1024: one more unit adds \d+ tokens"):
        T.fit_sample(task, tok, 1024, seed=0, min_fill=1.0)


def test_empty_haystack_too_long_is_an_error(tok):
    with pytest.raises(T.FitError, match="without haystack") as error:
        T.fit_sample(tasks.get("cwe"), tok, 256, seed=0)
    assert error.value.best_total is None


@pytest.mark.parametrize("seed", range(30))
def test_search_is_exact_and_short(seed):
    """largest_fitting against a scan, on lumpy increasing measures (units of 1-80 tokens)."""
    rng = random.Random(seed)
    sizes = [rng.choice([1, 2, 3, rng.randint(1, 80)]) for _ in range(3000)]
    prefix = [rng.randint(0, 500)]
    for size in sizes:
        prefix.append(prefix[-1] + size)
    budget = rng.randint(prefix[0], prefix[-1] - 1)
    def measure(n):  # grows past the table too, in case the search jumps beyond it
        return (prefix[n] if n < len(prefix) else prefix[-1] + n), n

    found = largest_fitting(measure, budget)
    best = max(n for n, t in enumerate(prefix) if t <= budget)
    assert (found.n, found.tokens, found.payload, found.next_tokens) == (best, prefix[best], best, prefix[best + 1])
    assert found.calls <= 2 * (best + 1).bit_length() + 6
    assert largest_fitting(measure, prefix[0] - 1) is None
