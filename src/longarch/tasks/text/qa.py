"""RULER's QA tasks: a question over golden documents hidden among distractor documents.

qa_1 reads a SQuAD v2 file (e.g. dev-v2.0.json), qa_2 a HotpotQA distractor-setting dev file
(e.g. hotpot_dev_distractor_v1.json), both from paths the user gives; nothing is downloaded.
Without the file the task raises TaskSkipped with one line saying which file to provide.

As in RULER: the documents are every distinct paragraph of the file; a SQuAD question's golden
document is its paragraph and its first distractors are the other paragraphs of the same article;
a HotpotQA question's golden documents are all ten paragraphs of its own context (the two
supporting ones and its eight distractors); further distractors are drawn from the whole file,
and when more documents are wanted than the file holds, the whole list repeats. The documents are
shuffled, so the golden ones move as the count changes: by default with a permutation drawn per
sample; with `fit: ruler` with RULER's fixed seed, so that (the golden documents coming first
before the shuffle) their positions depend on the number of documents alone. Sample seed s asks question s mod the
number of answerable questions, so the seeds 0, 1, 2... of `generate` walk the file in order,
as RULER's sample indices do.
"""

from __future__ import annotations

import functools
import json
import random
from dataclasses import dataclass
from pathlib import Path

from ..base import TextTask

from .fit import RulerSteps
from .haystack import fixed_shuffle
from .templates import render

QA_TEMPLATE = (  # this project's wording (RULER's structure: instruction, documents, instruction again, question)
    "Use the documents below to answer the question, and reply with the answer alone.\n\n"
    "Documents:\n\n{context}\n\nUse the documents above to answer the question, and reply with the "
    "answer alone.\n\nQuestion: {query}"
)
QA_PREFIX = " Answer:"
DOCUMENT = "Document {i}:\n{document}"
WANTED = {"squad": "a SQuAD v2 dev file (dev-v2.0.json)",
          "hotpotqa": "a HotpotQA dev file (hotpot_dev_distractor_v1.json)"}


class TaskSkipped(RuntimeError):
    pass


@dataclass(frozen=True)
class Question:
    question: str
    answers: tuple[str, ...]
    golden: tuple[int, ...]          # document indices that hold the answer
    related: tuple[int, ...] = ()    # preferred distractors (SQuAD: the same article's other paragraphs)


@functools.lru_cache(maxsize=4)
def _load(dataset: str, path: str) -> tuple[list[str], list[Question]]:
    """(documents, answerable questions) of one dataset file."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    if dataset == "squad":
        articles = [[p["context"] for p in article["paragraphs"]] for article in data["data"]]
        docs = sorted({c for paragraphs in articles for c in paragraphs})
        index = {c: i for i, c in enumerate(docs)}
        questions = []
        for article, paragraphs in zip(data["data"], articles):
            same = [index[c] for c in paragraphs]
            for para in article["paragraphs"]:
                golden = index[para["context"]]
                for qa in para["qas"]:
                    if not qa.get("is_impossible") and qa["answers"]:
                        answers = tuple(dict.fromkeys(a["text"] for a in qa["answers"]))
                        related = tuple(i for i in same if i != golden)
                        questions.append(Question(qa["question"], answers, (golden,), related))
    else:
        def text(title, sentences):
            return f"{title}\n{''.join(sentences)}"
        docs = sorted({text(t, s) for item in data for t, s in item["context"]})
        index = {c: i for i, c in enumerate(docs)}
        questions = [Question(item["question"], (item["answer"],),
                              tuple(dict.fromkeys(index[text(t, s)] for t, s in item["context"])))
                     for item in data]
    if not questions:
        raise ValueError(f"{path}: no answerable questions found")
    return docs, questions


def choose_documents(docs: int, q: Question, n: int, rng: random.Random) -> list[int]:
    """The golden documents and `n` distractors (RULER's choice), before shuffling."""
    total = len(q.golden) + n
    if total >= docs:  # RULER: the whole list, repeated as often as needed
        return (list(range(docs)) * -(-total // docs))[:total]
    if n <= len(q.related):
        return list(q.golden) + rng.sample(q.related, n)
    taken = set(q.golden) | set(q.related)
    others = [i for i in range(docs) if i not in taken]
    return list(q.golden) + list(q.related) + rng.sample(others, n - len(q.related))


@dataclass(frozen=True)
class QA(TextTask):
    dataset: str = "squad"            # squad (qa_1) | hotpotqa (qa_2)
    path: str | None = None           # the dataset file
    max_new_tokens: int = 32          # RULER's tokens_to_generate for qa
    template: str | None = None       # {context} {query}; None: this project's wording
    answer_prefix: str | None = None

    def __post_init__(self):
        if self.dataset not in WANTED:
            raise ValueError(f"dataset must be squad or hotpotqa, not {self.dataset!r}")
        if self.path is None or not Path(self.path).is_file():
            task = "qa_1" if self.dataset == "squad" else "qa_2"
            given = "" if self.path is None else f" ({self.path!r} does not exist)"
            raise TaskSkipped(f"{task} skipped: give {WANTED[self.dataset]} as path=FILE{given}")

    takes_partial = True  # documents are coarse units (a paragraph is 100-300 tokens)

    def ruler_steps(self, length: int, seed: int = 0) -> RulerSteps:
        """RULER's qa.py: documents (the golden ones included) 10 a step."""
        docs, questions = _load(self.dataset, str(self.path))
        return RulerSteps(10, offset=len(questions[seed % len(questions)].golden))

    def build(self, n: int, seed: int, length: int, count_tokens=None, partial: int = 0, ruler: bool = False
              ) -> tuple[str, list[str], dict]:
        """`partial` > 0: one more distractor, cut to its first `partial` words (never a golden
        document); `fit` uses it only where whole documents land under 95% of the length.
        `ruler`: RULER's fixed-seed shuffle, so the golden positions depend on the count alone."""
        docs, questions = _load(self.dataset, str(self.path))
        q = questions[seed % len(questions)]
        chosen = choose_documents(len(docs), q, n + (partial > 0), random.Random(f"{seed}-docs"))
        cut = None
        if partial > 0:
            distractors = [k for k, i in enumerate(chosen) if i not in q.golden]
            if distractors:
                cut = distractors[-1]  # the one distractor added for the partial unit
        order = list(range(len(chosen)))
        if ruler:
            order = fixed_shuffle(order)
        else:
            random.Random(f"{seed}-order").shuffle(order)
        chosen = [chosen[k] for k in order]
        cut = None if cut is None else order.index(cut)
        parts = [docs[i] if k != cut else " ".join(docs[i].split()[:partial]) for k, i in enumerate(chosen)]
        context = "\n\n".join(DOCUMENT.format(i=k + 1, document=text) for k, text in enumerate(parts))
        template, prefix = (QA_TEMPLATE, QA_PREFIX) if self.template is None else \
            (self.template, self.answer_prefix or "")
        prompt = render(template, prefix, context=context, query=q.question)
        golden = [k + 1 for k, i in enumerate(chosen) if i in q.golden]
        return prompt, list(q.answers), {"haystack_units": n, "documents": len(chosen), "question": q.question,
                                         "golden_documents": golden}
