"""qa_1/qa_2 against RULER's scripts/data/synthetic/qa.py: which documents are golden, which
distractors come first, the question order, and what happens when the file runs out of documents."""

import json
import re

import pytest

from longarch import tasks
from longarch.tasks import text as T
from longarch.tasks.text.qa import _load
from test_text_support import write_hotpot, write_squad


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("qa")
    return write_squad(folder / "squad.json", articles=10), write_hotpot(folder / "hotpot.json", items=12)


def documents(prompt):
    return re.findall(r"Document \d+:\n(.*?)(?=\n\nDocument \d+:\n|\n\nUse the documents above)", prompt, re.S)


def test_squad_golden_and_same_article_distractors(files):
    squad = json.loads(files[0].read_text())["data"]
    task = tasks.get("qa_1", path=str(files[0]))
    docs, questions = _load("squad", str(files[0]))
    assert len(questions) == 60  # the impossible questions are left out
    seed = 13  # question 13: article 2, paragraph 1
    article = [p["context"] for p in squad[2]["paragraphs"]]
    for n, expect_all_same in ((3, True), (5, True), (9, False)):
        prompt, answers, meta = task.build(n, seed, 4096)
        shown = documents(prompt)
        assert len(shown) == n + 1 == meta["documents"]
        assert answers == ["code2x1", "CODE2X1"] and article[1] in shown
        assert meta["golden_documents"] == [shown.index(article[1]) + 1]
        same = sum(d in article for d in shown)
        assert same == (n + 1 if expect_all_same else len(article))  # the article's paragraphs come first
        assert prompt.endswith("Question: What is the code word of article 2 part 1? Answer:")


def test_hotpot_golden_is_the_whole_own_context(files):
    item = json.loads(files[1].read_text())[4]
    own = [f"{title}\n{''.join(sentences)}" for title, sentences in item["context"]]
    prompt, answers, meta = tasks.get("qa_2", path=str(files[1])).build(6, 4, 8192)
    shown = documents(prompt)
    assert answers == ["room4"] and len(shown) == 16 and all(d in shown for d in own)
    assert sorted(meta["golden_documents"]) == sorted(shown.index(d) + 1 for d in own)


def test_question_order_follows_the_seed(files, tmp_path):
    """Sample i of generate(seed=0) asks question i, as RULER's sample i asks the file's question i."""
    task = tasks.get("qa_1", path=str(files[0]))
    asked = [task.build(2, seed, 4096)[2]["question"] for seed in (0, 1, 2, 60, 61)]
    assert asked[:3] == [f"What is the code word of article 0 part {p}?" for p in range(3)]
    assert asked[3:] == asked[:2]  # wraps around after the last question


def test_more_documents_than_the_file_repeats_it(files):
    docs, _ = _load("squad", str(files[0]))
    prompt, _, meta = tasks.get("qa_1", path=str(files[0])).build(len(docs) + 20, 0, 100_000)
    shown = documents(prompt)
    assert len(shown) == len(docs) + 21 and set(shown) == set(docs)


def test_qa_from_user_files_fits(files):
    from test_text_support import bpe_tokenizer, n_tokens

    tok = bpe_tokenizer()
    for name, path in (("qa_1", files[0]), ("qa_2", files[1])):
        s = T.fit_sample(tasks.get(name, path=str(path)), tok, 8192, seed=0)  # 5% of 8K is over any one document
        total = n_tokens(tok, s.prompt) + 32
        assert 0.95 * 8192 <= total <= 8192 and s.prompt.endswith(" Answer:")
        assert any(a in s.prompt for a in s.answers) and s.metadata["question"] in s.prompt
