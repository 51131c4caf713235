"""The calibration of `decay-scale-fit` (controlled/interventions.py): the exponent p of its
decay factor s = (T/L)^p, chosen per (model, length L) before an evaluation cell's samples are
scored.

For each p of DECAY_EXPONENTS, the model is set to s = (T/L)^p (`set_decay_exponent`, then
`set_context(T, L, "decay-scale-fit")`) and its answer loss, the cross-entropy of the answer
symbols averaged over every answer symbol of the calibration samples (training's `answer_loss`),
is measured on `samples` samples of the training task at L, needle depths drawn at random. The p
of the lowest loss is chosen, ties to the smaller p (p = 0 is the baseline). The samples come
from `calibration_seed(model seed, L)`, a SeedSequence over a tag of its own, so they are none of
the evaluation's (`eval_seed`) or the training's (`batch_seed`) samples; the calibration depends
on the model, L and the number of samples alone, and every cell of one model at one length
chooses the same p. Its cost: len(DECAY_EXPONENTS) x samples forward passes at L (no decoding),
fed `chunk` tokens at a time through the state as the evaluation is. At L <= T nothing is
calibrated (the intervention is the identity).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..mixers.base import set_decay_exponent
from ..models import LanguageModel
from .evaluate import TOKENS_PER_BATCH
from .interventions import DECAY_EXPONENTS

INTERVENTION = "decay-scale-fit"
# The calibration samples' seed is SeedSequence([CALIBRATION_TAG, model seed, L]). The tag is the
# first 4 bytes of sha256(b"longarch decay-scale-fit calibration"): training batches draw from
# SeedSequence([model seed, step]) (`batch_seed`) and evaluation cells from SeedSequence([eval.seed,
# L, depth, 1, model seed]) or SeedSequence([eval.seed, L, depth]) (`eval_seed`), so no sample of
# either is a calibration sample unless a study's eval.seed were this tag and its lengths seeds.
CALIBRATION_TAG = 0x5B277229


def calibration_seed(model_seed: int, length: int) -> int:
    """The seed of the calibration samples of a model trained with `model_seed`, at `length`."""
    return int(np.random.SeedSequence([CALIBRATION_TAG, model_seed, length]).generate_state(1)[0])


@torch.no_grad()
def answer_loss_in_chunks(model: LanguageModel, samples, chunk: int = 1024,
                          tokens_per_batch: int = TOKENS_PER_BATCH) -> float:
    """Training's `answer_loss` of `samples` (the mean cross-entropy of every answer symbol,
    teacher-forced after the prompt, or predicted at `answer_positions`), computed without
    gradients, `chunk` tokens at a time through the model's state and a batch of about
    `tokens_per_batch` tokens at a time, so that its memory does not grow with the length."""
    model.eval()
    device = next(model.parameters()).device
    tokens, answers = torch.from_numpy(samples.tokens), torch.from_numpy(samples.answers)  # (n, L), (n, k)
    n, length = tokens.shape
    k = answers.shape[1]
    if samples.answer_positions is not None:
        sequences, positions = tokens, torch.from_numpy(samples.answer_positions)  # (n, k)
    else:  # the positions that predict the answer: the prompt's last and the teacher-forced answer's
        sequences = torch.cat([tokens, answers[:, :-1]], dim=1)  # (n, L + k - 1)
        positions = (length - 1 + torch.arange(k)).expand(n, k)
    total, batch = 0.0, max(1, tokens_per_batch // sequences.shape[1])
    for first in range(0, n, batch):
        x = sequences[first:first + batch].to(device)  # (b, S)
        wanted, targets = positions[first:first + batch], answers[first:first + batch]  # (b, k)
        state = None
        for start in range(0, x.shape[1], chunk):
            logits, state = model(x[:, start:start + chunk], state)  # (b, c, V)
            inside = (wanted >= start) & (wanted < start + logits.shape[1])  # (b, k)
            if inside.any():
                rows, cols = torch.nonzero(inside, as_tuple=True)
                picked = logits[rows.to(device), (wanted[rows, cols] - start).to(device)]  # (m, V)
                total += F.cross_entropy(picked.double(), targets[rows, cols].to(device), reduction="sum").item()
    return total / (n * k)


def calibration_losses(model: LanguageModel, samples, train_length: int, chunk: int = 1024,
                       exponents: tuple[float, ...] = DECAY_EXPONENTS) -> list[float]:
    """The answer loss of `samples` (at their length L) under s = (T/L)^p for each p of
    `exponents`; the model is set back to its training length (and p to 1) afterwards."""
    length = samples.tokens.shape[1]
    losses = []
    try:
        for exponent in exponents:
            set_decay_exponent(model, exponent)
            model.set_context(train_length, length, INTERVENTION)
            losses.append(answer_loss_in_chunks(model, samples, chunk))
    finally:
        set_decay_exponent(model, 1.0)
        model.set_context(train_length, train_length)
    return losses


def chosen(losses: list[float], exponents: tuple[float, ...] = DECAY_EXPONENTS) -> float:
    """The exponent of the lowest loss, ties to the smaller exponent (a loss that is not a number
    is never chosen; with none finite, p = 0, the baseline)."""
    best = None
    for exponent, loss in sorted(zip(exponents, losses)):
        if np.isfinite(loss) and (best is None or loss < best[1]):
            best = (exponent, loss)
    return 0.0 if best is None else best[0]


def calibrate(model: LanguageModel, task, train_length: int, length: int, samples: int, model_seed: int,
              chunk: int = 1024) -> dict | None:
    """decay-scale-fit's calibration of `model` (trained at `train_length` on `task`, a mixture's
    first task) at `length`: {"exponent": p chosen, "exponents": the grid, "losses": each one's
    answer loss, "samples", "calibration_seed"}; None at length <= train_length (nothing to calibrate)."""
    if length <= train_length:
        return None
    seed = calibration_seed(model_seed, length)
    drawn = task.generate(length=length, n=samples, seed=seed)  # needle depths at random
    losses = calibration_losses(model, drawn, train_length, chunk)
    return {"exponent": chosen(losses), "exponents": list(DECAY_EXPONENTS), "losses": losses,
            "samples": samples, "calibration_seed": seed}
