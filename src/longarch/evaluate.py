"""Evaluation: greedy answers of a model to a batch of samples, scored by the task.

Prompts are fed `chunk` tokens at a time through the model's state, so a recurrent model's
memory does not grow with the length; then the answer is decoded greedily one symbol at a
time from that state.

Given the training length T, a model that scales its positions with the length (RoPE PI, NTK,
YaRN) is set for the prompt length L, s = max(1, L / T), for the whole of each sequence,
answer included, and set back to T afterwards.
"""

from __future__ import annotations

import numpy as np
import torch

from .models import LanguageModel, forward_in_chunks
from .tasks import Samples

TOKENS_PER_BATCH = 1 << 15


@torch.no_grad()
def predict(model: LanguageModel, tokens: np.ndarray, answer_length: int, chunk: int = 1024,
            tokens_per_batch: int = TOKENS_PER_BATCH, train_length: int | None = None) -> np.ndarray:
    """Greedy continuation of each row of tokens (n, L): returns (n, answer_length).
    `train_length`: the model's training length, for models that scale positions to L."""
    model.eval()
    if train_length is None:
        return _greedy(model, tokens, answer_length, chunk, tokens_per_batch)
    model.set_context(train_length, tokens.shape[1])  # one factor for the whole sequence, answer included
    try:
        return _greedy(model, tokens, answer_length, chunk, tokens_per_batch)
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


def evaluate_samples(model: LanguageModel, task, samples: Samples, chunk: int = 1024,
                     train_length: int | None = None) -> np.ndarray:
    """Per-sample scores in [0, 1]."""
    predictions = predict(model, samples.tokens, samples.answers.shape[1], chunk, train_length=train_length)
    return task.score(samples, predictions)
