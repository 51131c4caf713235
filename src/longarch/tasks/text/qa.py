"""RULER's QA tasks: a question over golden documents hidden among distractor documents.

qa_1 reads a SQuAD v2 file (e.g. dev-v2.0.json), qa_2 a HotpotQA distractor-setting dev file
(e.g. hotpot_dev_distractor_v1.json), both from paths the user gives; nothing is downloaded.
Without the file the task raises TaskSkipped with one line saying which file to provide.
"""

from __future__ import annotations

import functools
import json
import random
from dataclasses import dataclass
from pathlib import Path

QA_TEMPLATE = (  # this project's wording (RULER's structure: instruction, documents, instruction again, question)
    "Use the documents below to answer the question, and reply with the answer alone.\n\n"
    "Documents:\n\n{context}\n\nUse the documents above to answer the question, and reply with the "
    "answer alone.\n\nQuestion: {query}"
)
QA_PREFIX = " Answer:"
WANTED = {"squad": "a SQuAD v2 dev file (dev-v2.0.json)",
          "hotpotqa": "a HotpotQA dev file (hotpot_dev_distractor_v1.json)"}


class TaskSkipped(RuntimeError):
    pass


@functools.lru_cache(maxsize=4)
def _load(dataset: str, path: str) -> tuple[list[str], list[tuple[str, tuple[str, ...], tuple[int, ...]]]]:
    """(documents, [(question, answers, golden document indices)])."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    docs: dict[str, int] = {}
    questions = []
    if dataset == "squad":
        for article in data["data"]:
            for para in article["paragraphs"]:
                i = docs.setdefault(para["context"], len(docs))
                for qa in para["qas"]:
                    if not qa.get("is_impossible") and qa["answers"]:
                        answers = tuple(dict.fromkeys(a["text"] for a in qa["answers"]))
                        questions.append((qa["question"], answers, (i,)))
    else:
        for item in data:
            golden = tuple(docs.setdefault(f"{title}\n{''.join(sents)}", len(docs)) for title, sents in item["context"])
            questions.append((item["question"], (item["answer"],), golden))
    if not questions:
        raise ValueError(f"{path}: no answerable questions found")
    return list(docs), questions


@dataclass
class QA:
    dataset: str = "squad"         # squad (qa_1) | hotpotqa (qa_2)
    path: str | None = None        # the dataset file
    max_new_tokens: int = 32

    def __post_init__(self):
        if self.dataset not in WANTED:
            raise ValueError(f"dataset must be squad or hotpotqa, not {self.dataset!r}")
        if self.path is None or not Path(self.path).is_file():
            task = "qa_1" if self.dataset == "squad" else "qa_2"
            given = "" if self.path is None else f" ({self.path!r} does not exist)"
            raise TaskSkipped(f"{task} skipped: give {WANTED[self.dataset]} as path=FILE{given}")

    def build(self, n: int, seed: int, length: int) -> tuple[str, list[str], dict]:
        docs, questions = _load(self.dataset, str(self.path))
        rng = random.Random(seed)
        question, answers, golden = questions[rng.randrange(len(questions))]
        others = [i for i in random.Random(f"{seed}-docs").sample(range(len(docs)), min(len(docs), n + len(golden)))
                  if i not in golden][:n]
        chosen = list(golden) + others
        random.Random(f"{seed}-order").shuffle(chosen)  # golden positions move with n; RULER does the same
        context = "\n\n".join(f"Document {k + 1}:\n{docs[i]}" for k, i in enumerate(chosen))
        prompt = QA_TEMPLATE.format(context=context, query=question) + QA_PREFIX
        return prompt, list(answers), {"haystack_units": n, "documents": len(chosen), "question": question}
