"""The natural-text stream behind the `text` haystack: offline default corpus, vocabulary, spans."""

import collections

import numpy as np
import pytest

from longarch.tasks.corpus import DEFAULT_SOURCE, WORD, load_corpus, words_for_unknown_share


def test_default_corpus_is_python_help_prose_and_loads_offline():
    stream = load_corpus()
    assert stream.source == DEFAULT_SOURCE
    assert len(stream.ids) > 50_000  # tens of thousands of words of English
    assert stream.n_words == 256 and stream.words[0] == "the"
    assert {"a", "of", "is", "and", "object"} <= set(stream.words)
    assert stream.ids.min() >= 0 and stream.ids.max() == stream.unknown  # rarer words map to unknown


def test_vocabulary_is_the_most_frequent_words_ties_alphabetical(tmp_path):
    corpus = tmp_path / "tiny.txt"
    corpus.write_text("b a c a b d. A don't d  ÉTÉ zz", encoding="utf-8")
    stream = load_corpus(corpus, n_words=3)
    # counts: a 3, b 2, d 2, then c, don't, t (the a-z run inside "été") and zz once each
    assert stream.words == ("a", "b", "d")
    tokens = WORD.findall(corpus.read_text().lower())
    expected = [stream.words.index(t) if t in stream.words else 3 for t in tokens]
    assert stream.ids.tolist() == expected
    assert stream.word(0) == "a" and stream.word(3) == "<unk>"


def test_frequency_order_matches_a_direct_count():
    stream = load_corpus(n_words=50)
    counts = collections.Counter(stream.ids.tolist())
    frequencies = [counts[i] for i in range(stream.n_words)]
    assert frequencies == sorted(frequencies, reverse=True)


def test_words_for_an_unknown_share_is_the_smallest_vocabulary_that_meets_it(tmp_path):
    corpus = tmp_path / "tiny.txt"
    corpus.write_text("a a a a b b b c c d", encoding="utf-8")  # unknown with 1, 2, 3, 4 words: 6, 3, 1, 0 of 10
    assert [words_for_unknown_share(corpus, share) for share in (1.0, 0.6, 0.59, 0.3, 0.1, 0.05, 0.0)] == \
        [1, 1, 2, 2, 3, 4, 4]
    for share in (0.05, 0.03):  # the default corpus: the share is met with one word to spare, not with one less
        n = words_for_unknown_share(None, share)
        unknown = [np.mean(load_corpus(n_words=k).ids == k) for k in (n - 1, n)]
        assert unknown[0] > share >= unknown[1]
    assert words_for_unknown_share(None, 0.03) == 1771 and words_for_unknown_share(None, 0.05) == 1380
    with pytest.raises(ValueError, match="share must be a fraction"):
        words_for_unknown_share(None, 5)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        words_for_unknown_share(tmp_path / "missing.txt", 0.05)


@pytest.mark.parametrize("length", [1, 7, 4096, 200_000])  # the last is longer than the corpus
def test_spans_have_the_exact_length_are_seeded_and_contiguous(length):
    stream = load_corpus()
    a = stream.spans(np.random.default_rng(3), 4, length)
    b = stream.spans(np.random.default_rng(3), 4, length)
    assert a.shape == (4, length) and a.dtype == np.int64
    assert np.array_equal(a, b)
    # Each row is a window of the corpus, wrapping at its end: its first symbols occur contiguously.
    k = min(length, 16)
    wrapped = np.concatenate([stream.ids, stream.ids[:k]])
    windows = np.lib.stride_tricks.sliding_window_view(wrapped, k)[:len(stream.ids)]  # (T, k)
    for row in a:
        assert (windows == row[:k]).all(axis=1).any()
        if length > len(stream.ids):  # longer than the corpus: the corpus repeats
            assert np.array_equal(row[len(stream.ids):2 * len(stream.ids)], row[:len(stream.ids)])
    assert not np.array_equal(a, stream.spans(np.random.default_rng(4), 4, length))


def test_bad_corpus_files_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_corpus(tmp_path / "missing.txt")
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("caf\xe9 au lait".encode("latin-1"))
    with pytest.raises(ValueError, match="not UTF-8"):
        load_corpus(latin1)
    empty = tmp_path / "digits.txt"
    empty.write_text("123 456 !!!", encoding="utf-8")
    with pytest.raises(ValueError, match="no words"):
        load_corpus(empty)
    with pytest.raises(ValueError, match="n_words"):
        load_corpus(n_words=0)
