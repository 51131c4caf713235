"""Helpers shared by the text-task tests (this module has no tests of its own): a locally trained
tokenizer with a real tokenizer's granularity, and small SQuAD- and HotpotQA-shaped data files."""

import functools
import json
import random
import uuid


@functools.lru_cache(maxsize=2)
def bpe_tokenizer(vocab_size: int = 8000):
    """A byte-level BPE (GPT-2 style) trained here in about half a second.

    Trained on Python's help topics plus some uuids, 7-digit numbers and the key-word lists, so its
    granularity resembles a real BPE tokenizer's on these prompts: about 1.4 tokens per essay word,
    about 23 tokens per uuid (so about 58 per uuid needle: Llama-2 and Llama-3 give roughly 55-75),
    4 per 7-digit number, about 30 per noise sentence."""
    import tokenizers
    import transformers
    from longarch.tasks.corpus import _default_text
    from longarch.tasks.text.haystack import word_list

    rng = random.Random(0)
    extra = [" ".join(str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(20)) for _ in range(100)]
    extra += [" ".join(str(rng.randint(10**6, 10**7 - 1)) for _ in range(50)) for _ in range(20)]
    extra.append(" ".join(word_list()))
    bpe = tokenizers.Tokenizer(tokenizers.models.BPE(unk_token="[UNK]"))
    bpe.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = tokenizers.trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["[UNK]"],
                                             initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator([_default_text()] + extra, trainer)
    return transformers.PreTrainedTokenizerFast(tokenizer_object=bpe, name_or_path=f"test-bpe-{vocab_size}")


def n_tokens(tokenizer, text: str) -> int:
    return len(tokenizer(text)["input_ids"])


def _passage(rng: random.Random, low: int, high: int) -> list[str]:
    """low-high consecutive words of Python's help topics, cut into sentences of about 15 words."""
    from longarch.tasks.text.haystack import essay_words

    words = essay_words(None)
    count = rng.randint(low, high)
    start = rng.randrange(len(words) - count)
    chunk = words[start:start + count]
    return [" ".join(chunk[i:i + 15]).rstrip(".") + "." for i in range(0, count, 15)]


def write_squad(path, articles: int = 40, paragraphs: int = 6, seed: int = 0):
    """A SQuAD v2-shaped file: paragraphs of 80-160 words (SQuAD's average about 120), each with one
    answerable question (answers: two spellings) and one impossible question."""
    rng = random.Random(seed)
    data = []
    for a in range(articles):
        paras = []
        for p in range(paragraphs):
            code = f"code{a}x{p}"
            body = _passage(rng, 80, 160)
            body.insert(rng.randrange(len(body) + 1), f"The code word of article {a} part {p} is {code}.")
            paras.append({"context": " ".join(body), "qas": [
                {"question": f"What is the code word of article {a} part {p}?", "is_impossible": False,
                 "answers": [{"text": code}, {"text": code.upper()}]},
                {"question": "What is never said?", "is_impossible": True, "answers": []}]})
        data.append({"title": f"Article {a}", "paragraphs": paras})
    path.write_text(json.dumps({"version": "v2.0", "data": data}))
    return path


def write_hotpot(path, items: int = 60, seed: int = 0):
    """A HotpotQA distractor-setting-shaped file: ten [title, sentences] paragraphs of 30-80 words per
    question, two of which hold the answer's two hops."""
    rng = random.Random(seed)
    data = []
    for i in range(items):
        context = [[f"Topic {i}-{j}", [s + " " for s in _passage(rng, 30, 80)]] for j in range(10)]
        context[3][1].append(f"Item {i} lies in box{i}. ")
        context[7][1].append(f"Box{i} is kept in room{i}. ")
        data.append({"_id": str(i), "question": f"In which room is the box that holds item {i}?",
                     "answer": f"room{i}", "type": "bridge", "level": "hard", "context": context})
    path.write_text(json.dumps(data))
    return path
