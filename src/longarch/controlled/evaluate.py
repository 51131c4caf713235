"""Evaluation: greedy answers of a model to a batch of samples, scored by the task.

Prompts are fed `chunk` tokens at a time through the model's state, so a recurrent model's
memory does not grow with the length; then the answer is decoded greedily one symbol at a
time from that state. A task whose answers sit inside the sequence (`answer_positions`) is
read off the logits at those positions in the same chunked pass.

Given the training length T, a model that scales its positions with the length (RoPE PI, NTK,
YaRN) is set for the prompt length L, s = max(1, L / T), for the whole of each sequence,
answer included, and set back to T afterwards. An inference intervention (decay-scale,
token-filter, rope-pi, window, ...; controlled/interventions.py) is set the same way, on the
mixers that implement it. token-filter's budget is per forward call: each prompt chunk of c
tokens keeps ceil(c T / L) per head, so about T over the prompt, and each answer symbol, fed
alone, is kept.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch

from ..models import LanguageModel, forward_in_chunks
from ..tasks import Samples

TOKENS_PER_BATCH = 1 << 15


@torch.no_grad()
def predict(model: LanguageModel, tokens: np.ndarray, answer_length: int, chunk: int = 1024,
            tokens_per_batch: int = TOKENS_PER_BATCH, train_length: int | None = None,
            intervention: str | None = None) -> np.ndarray:
    """Greedy continuation of each row of tokens (n, L): returns (n, answer_length).
    `train_length`: the model's training length, for models that scale positions to L (and for
    an inference `intervention`)."""
    model.eval()
    with _context(model, train_length, tokens.shape[1], intervention):
        return _greedy(model, tokens, answer_length, chunk, tokens_per_batch)


@contextlib.contextmanager
def _context(model: LanguageModel, train_length: int | None, length: int, intervention: str | None = None):
    """The model set for sequences of `length` (one factor for the whole sequence, answer
    included), under `intervention` if given, and set back to its training length afterwards;
    nothing without a train_length."""
    if train_length is None:
        if intervention is not None:
            raise ValueError(f"intervention {intervention!r} needs the training length")
        yield
        return
    if intervention is None:
        model.set_context(train_length, length)
    else:
        model.set_context(train_length, length, intervention)
    try:
        yield
    finally:
        model.set_context(train_length, train_length)


def _greedy(model: LanguageModel, tokens: np.ndarray, answer_length: int, chunk: int,
            tokens_per_batch: int) -> np.ndarray:
    """`predict` as the model is set: prompts in chunks, then the answer one symbol at a time."""
    n, length = tokens.shape
    device = next(model.parameters()).device
    batch = max(1, tokens_per_batch // length)
    out = np.empty((n, answer_length), dtype=np.int64)
    for start in range(0, n, batch):
        x = torch.from_numpy(tokens[start:start + batch]).to(device)  # (b, L)
        logits, state = forward_in_chunks(model, x, chunk)  # (b, V)
        symbols = []
        for i in range(answer_length):
            next_symbol = logits.argmax(dim=-1)  # (b,)
            symbols.append(next_symbol)
            if i + 1 < answer_length:
                step_logits, state = model(next_symbol[:, None], state, last_only=True)
                logits = step_logits[:, -1]
        out[start:start + batch] = torch.stack(symbols, dim=1).cpu().numpy()
    return out


@torch.no_grad()
def predict_at(model: LanguageModel, tokens: np.ndarray, positions: np.ndarray, chunk: int = 1024,
               tokens_per_batch: int = TOKENS_PER_BATCH, train_length: int | None = None,
               intervention: str | None = None) -> np.ndarray:
    """The greedy symbol predicted at given positions of each row, in one pass over the
    tokens (fed `chunk` at a time): tokens (n, L), positions (n, k) -> (n, k)."""
    model.eval()
    n, length = tokens.shape
    with _context(model, train_length, length, intervention):
        device = next(model.parameters()).device
        batch = max(1, tokens_per_batch // length)
        out = np.zeros(positions.shape, dtype=np.int64)
        for first in range(0, n, batch):
            x = torch.from_numpy(tokens[first:first + batch]).to(device)  # (b, L)
            wanted = positions[first:first + batch]  # (b, k)
            found = np.zeros(wanted.shape, dtype=np.int64)
            state = None
            for start in range(0, length, chunk):
                logits, state = model(x[:, start:start + chunk], state)  # (b, c, V)
                inside = (wanted >= start) & (wanted < start + logits.shape[1])  # (b, k)
                if inside.any():
                    rows, cols = np.nonzero(inside)
                    symbols = logits[torch.from_numpy(rows), torch.from_numpy(wanted[rows, cols] - start)].argmax(-1)
                    found[rows, cols] = symbols.cpu().numpy()
            out[first:first + batch] = found
        return out


def evaluate_samples(model: LanguageModel, task, samples: Samples, chunk: int = 1024,
                     train_length: int | None = None, with_predictions: bool = False,
                     intervention: str | None = None):
    """Per-sample scores in [0, 1], (n,); with_predictions: (the scores, the predicted symbols
    (n, k), aligned with samples.answers). `intervention`: an inference intervention, at T/L."""
    if samples.answer_positions is not None:
        predictions = predict_at(model, samples.tokens, samples.answer_positions, chunk, train_length=train_length,
                                 intervention=intervention)
    else:
        predictions = predict(model, samples.tokens, samples.answers.shape[1], chunk, train_length=train_length,
                              intervention=intervention)
    scores = task.score(samples, predictions)
    return (scores, predictions) if with_predictions else scores
