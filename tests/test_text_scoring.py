"""RULER's metrics on hand-made predictions for every task (scripts/eval/synthetic/constants.py):
case-insensitive substring matches, partial credit for several answers (string_match_all), any of
the answers for QA (string_match_part), empty predictions, other orders, and RULER's postprocessing
of predictions (scripts/eval/evaluate.py: strip, control characters to newlines, strip)."""

import pytest

from longarch import tasks
from longarch.tasks import text as T
from longarch.tasks.text.scoring import postprocess, score, string_match_all, string_match_part
from test_text_support import write_hotpot, write_squad


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    """name -> answers of one built sample of each task."""
    folder = tmp_path_factory.mktemp("qa")
    paths = {"qa_1": write_squad(folder / "s.json", articles=4), "qa_2": write_hotpot(folder / "h.json", items=4)}
    out = {}
    for name in T.names():
        task = tasks.get(name, path=str(paths[name])) if name in paths else tasks.get(name)
        out[name] = task.build(40, 3, 4096, len)[1]
    return out


def test_answer_counts(samples):
    counts = {name: len(answers) for name, answers in samples.items()}
    assert counts == {"niah_single_1": 1, "niah_single_2": 1, "niah_single_3": 1, "niah_multikey_1": 1,
                      "niah_multikey_2": 1, "niah_multikey_3": 1, "niah_multivalue": 4, "niah_multiquery": 4,
                      "vt": 5, "cwe": 10, "fwe": 3, "qa_1": 2, "qa_2": 1}


@pytest.mark.parametrize("name", T.names())
def test_every_task_on_hand_made_predictions(name, samples):
    answers = samples[name]
    qa = name.startswith("qa")
    # all answers, in reverse order, other case, inside a sentence, on several lines: full credit
    shouted = " The answers are:\n" + ",\n".join(a.upper() for a in reversed(answers)) + ".  \n"
    assert score(name, [shouted], [answers]) == 100.0
    # nothing generated: no credit
    assert score(name, [""], [answers]) == 0.0 and score(name, ["  \n\t "], [answers]) == 0.0
    # some of the answers
    if qa:  # any one of the alternatives is enough
        assert score(name, [f"maybe {answers[-1].lower()}"], [answers]) == 100.0
        assert score(name, ["no idea"], [answers]) == 0.0
    elif len(answers) > 1:  # partial credit: the fraction found
        k = len(answers) // 2
        got = score(name, [" ".join(answers[:k])], [answers])
        assert got == pytest.approx(100.0 * k / len(answers))
    else:
        assert score(name, [answers[0][:-1]], [answers]) == 0.0  # a truncated value is not a match


def test_partial_credit_by_hand():
    # niah_multivalue: 4 values, 3 given in another order (and one wrong)
    assert string_match_all(["4444444, 2222222, 9999999 and 1111111"],
                            [["1111111", "2222222", "3333333", "4444444"]]) == 75.0
    # vt: five variables, two named
    assert score("vt", ["VAR abcde, fghij"], [["ABCDE", "FGHIJ", "KLMNO", "PQRST", "UVWXY"]]) == pytest.approx(40.0)
    # cwe: 10 words, all given plus extra ones: extra words cost nothing in RULER's metric
    words = [f"word{i}" for i in range(10)]
    assert score("cwe", [" ".join(words + ["extra", "more"])], [words]) == 100.0
    # fwe: two of three
    assert score("fwe", ["1. qwerty 2. asdfgh 3. zzzzzz"], [["asdfgh", "qwerty", "yxcvbn"]]) == pytest.approx(200 / 3)
    # averaged over samples
    refs = [["111", "222", "333", "444"], ["x"]]
    assert string_match_all(["111 and 333", "nothing"], refs) == pytest.approx(25.0)
    assert string_match_all(["444 333 222 111", "X"], refs) == 100.0


def test_qa_any_of_by_hand():
    qa = [["Denver Broncos", "The Broncos", "Broncos"], ["1990"]]
    assert string_match_part(["the broncos won", "in 1991"], qa) == 50.0
    assert score("qa_1", ["DENVER BRONCOS", "1990."], qa) == 100.0
    assert score("qa_2", ["denver", "nineteen ninety"], qa) == 0.0
    assert string_match_all(["the broncos won", "1990"], qa) == pytest.approx(100 * (2 / 3 + 1) / 2)  # for contrast


def test_substring_semantics():
    """RULER tests containment, not equality: a reference inside a longer token still counts."""
    assert string_match_all(["Answer: 91234567890"], [["1234567"]]) == 100.0
    assert string_match_all(["the special magic number is 123-4567"], [["1234567"]]) == 0.0


def test_postprocessing():
    assert postprocess("  \n 1234567 \t") == "1234567"
    assert postprocess("\x00abc\x07def\x1f") == "abc\ndef"
    assert postprocess("first line\nsecond 1234567") == "first line\nsecond 1234567"  # no cut at a newline
    assert string_match_all(["\tthe value is\n1234567\n\nmore text"], [["1234567"]]) == 100.0
    # a control character inside a value breaks it, in RULER too
    assert string_match_all(["123\x004567"], [["1234567"]]) == 0.0
    assert string_match_all(["  "], [["1234567"]]) == 0.0


def test_errors():
    with pytest.raises(ValueError, match="predictions for"):
        string_match_all(["a"], [])
    with pytest.raises(ValueError, match="no predictions"):
        string_match_part([], [])
    with pytest.raises(ValueError, match="at least one reference"):
        string_match_all(["a"], [[]])
