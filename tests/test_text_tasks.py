"""RULER text tasks: the registry and its knobs, determinism, the disk cache, the depth knob.
Length fitting is in test_text_fit.py, RULER's facts in test_text_ruler.py and test_text_qa.py,
metrics in test_text_scoring.py, template files in test_text_templates.py."""

import pytest

from longarch import tasks
from longarch.tasks import text as T
from longarch.tasks.text import fit as fitmod
from test_text_support import write_hotpot, write_squad

SYNTHETIC = [n for n in T.names() if not n.startswith("qa_")]


def test_registry_and_knobs():
    assert len(T.names()) == 13 and all(tasks.describe(n) for n in T.names())
    assert tasks.get("cwe", freq_cw=20).freq_cw == 20
    with pytest.raises(ValueError, match="no knob"):
        tasks.get("vt", num_hop=3)
    with pytest.raises(ValueError, match="did you mean"):
        tasks.get("niah_single1")
    with pytest.raises(ValueError, match="outside 0-100"):
        tasks.get("niah_single_2", depth=101)
    with pytest.raises(ValueError, match="type_haystack"):
        tasks.get("vt", type_haystack="needle")


def test_multi_needles_and_queries(tok):
    s = T.fit_sample(tasks.get("niah_multiquery"), tok, 2048, seed=1)
    assert len(s.answers) == 4 and len(s.metadata["keys"]) == 4
    question = s.prompt[s.prompt.rindex("\n"):]
    assert all(k in question for k in s.metadata["keys"])  # all keys in the query line
    s = T.fit_sample(tasks.get("niah_multivalue"), tok, 2048, seed=1)
    key = s.metadata["keys"][0]
    assert len(set(s.answers)) == 4 and s.prompt.count(f"for {key} is:") == 4


@pytest.mark.parametrize("name", T.names())
def test_deterministic(name, tok, tmp_path):
    files = {"qa_1": write_squad(tmp_path / "s.json", articles=8), "qa_2": write_hotpot(tmp_path / "h.json", items=20)}
    task = tasks.get(name, path=str(files[name])) if name in files else tasks.get(name)
    a = T.fit_sample(task, tok, 2048, seed=7)
    b = T.fit_sample(task, tok, 2048, seed=7)
    c = T.fit_sample(task, tok, 2048, seed=8)
    assert (a.prompt, a.answers, a.metadata) == (b.prompt, b.answers, b.metadata)
    assert a.prompt != c.prompt


def test_same_seed_same_needles_whatever_the_size():
    for name in SYNTHETIC:
        task = tasks.get(name)
        small, large = task.build(50, 5, 8192, len), task.build(400, 5, 8192, len)
        assert small[1] == large[1], name  # the answers do not move with the haystack size


def test_depth_knob(tok):
    """Every needle at the given depth; the needles, answers and haystack are those of random depths."""
    for name in ("niah_single_1", "niah_single_2", "niah_multikey_2", "niah_multivalue"):
        free = T.fit_sample(tasks.get(name), tok, 4096, seed=2)
        for depth in (0, 50, 100):
            fixed = T.fit_sample(tasks.get(name, depth=depth), tok, 4096, seed=2)
            assert fixed.answers == free.answers and fixed.metadata["depths"] == [depth] * len(fixed.answers)
            where = [fixed.prompt.index(f"is: {a}.") / len(fixed.prompt) for a in fixed.answers]
            assert all(abs(w - depth / 100) < 0.08 for w in where), (name, depth, where)


def test_cache_hit(tok, tmp_path, monkeypatch):
    calls = []
    real = fitmod.fit
    monkeypatch.setattr(fitmod, "fit", lambda *a, **k: calls.append(1) or real(*a, **k))
    first = T.generate("vt", tasks.get("vt"), tok, 1024, n=2, seed=0, cache_dir=tmp_path)
    assert len(calls) == 2 and len(list(tmp_path.glob("*.jsonl"))) == 1
    second = T.generate("vt", tasks.get("vt"), tok, 1024, n=2, seed=0, cache_dir=tmp_path)
    assert len(calls) == 2 and first == second and first[0].prompt != first[1].prompt
    T.generate("vt", tasks.get("vt", num_hops=2), tok, 1024, n=2, seed=0, cache_dir=tmp_path)  # new knobs: new entry
    T.generate("vt", tasks.get("vt"), tok, 2048, n=2, seed=0, cache_dir=tmp_path)  # new length: new entry
    T.generate("vt", tasks.get("vt", template="{context} Q: {query}?", answer_prefix=" A:"), tok, 1024, n=2,
               seed=0, cache_dir=tmp_path)  # new prompt wording: new entry
    assert len(calls) == 8 and len(list(tmp_path.glob("*.jsonl"))) == 4


def test_qa_skip_message():
    with pytest.raises(T.TaskSkipped, match=r"^qa_1 skipped: give a SQuAD v2 dev file"):
        tasks.get("qa_1")
    with pytest.raises(T.TaskSkipped, match=r"^qa_2 skipped: .*HotpotQA.*does not exist"):
        tasks.get("qa_2", path="/nonexistent/hotpot.json")
