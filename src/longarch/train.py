"""Training from scratch on a task at one training length.

Every architecture sees the same batches (the batch of step s is drawn from seed (seed, s)),
the same optimizer and the same schedule; only the model differs. The loss is the
cross-entropy of the answer symbols, the only predictable part of a sample.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from .evaluate import evaluate_samples
from .models import LanguageModel


@dataclass(frozen=True)
class TrainSpec:
    length: int            # training length T: every training sample has exactly T symbols
    steps: int = 1000
    batch_size: int = 32
    lr: float = 3e-3
    weight_decay: float = 0.1
    warmup: int = 50
    grad_clip: float = 1.0
    eval_samples: int = 200  # samples at length T for the training accuracy

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class TrainResult:
    seconds: float
    final_loss: float
    train_accuracy: float  # exact-match accuracy at the training length, on held-out samples
    losses: list[float] = field(default_factory=list)  # every 10th step


def batch_seed(seed: int, step: int) -> int:
    """Seed of one training batch: identical for every architecture trained with `seed`."""
    return int(np.random.SeedSequence([seed, step]).generate_state(1)[0])


def answer_loss(model: LanguageModel, tokens: torch.Tensor, answers: torch.Tensor,
                answer_positions: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy of the k answer symbols: teacher-forced after the prompt, or, given
    answer_positions (B, k), predicted at those positions of the sequence in one pass.
    tokens (B, L), answers (B, k)."""
    k = answers.shape[1]
    if answer_positions is not None:
        logits, _ = model(tokens)  # (B, L, V)
        index = answer_positions[:, :, None].expand(-1, -1, logits.shape[-1])  # (B, k, V)
        answer_logits = torch.gather(logits, 1, index)  # (B, k, V)
        return F.cross_entropy(answer_logits.reshape(-1, answer_logits.shape[-1]), answers.reshape(-1))
    inputs = torch.cat([tokens, answers[:, :-1]], dim=1)  # (B, L + k - 1)
    logits, _ = model(inputs)
    answer_logits = logits[:, -k:]  # (B, k, V): the positions that predict the answers
    return F.cross_entropy(answer_logits.reshape(-1, answer_logits.shape[-1]), answers.reshape(-1))


def learning_rate(spec: TrainSpec, step: int) -> float:
    """Linear warmup, then cosine decay to a tenth."""
    if step < spec.warmup:
        return spec.lr * (step + 1) / spec.warmup
    progress = (step - spec.warmup) / max(1, spec.steps - spec.warmup)
    return spec.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def samples_loss(model: LanguageModel, samples) -> torch.Tensor:
    positions = None if samples.answer_positions is None else torch.from_numpy(samples.answer_positions)
    return answer_loss(model, torch.from_numpy(samples.tokens), torch.from_numpy(samples.answers), positions)


class Mixture:
    """Several tasks with weights: the batch of each step is one task's, drawn by weight from the
    step's seed (tasks differ in answer layout, so a batch is never mixed). Accuracy is each
    task's, averaged with the weights."""

    def __init__(self, tasks: list, weights: list[float]):
        if len(tasks) != len(weights) or not tasks or min(weights) <= 0:
            raise ValueError("a mixture needs one positive weight per task")
        self.tasks = tasks
        self.weights = np.asarray(weights, dtype=float) / sum(weights)

    def pick(self, seed: int):
        return self.tasks[np.random.default_rng(seed).choice(len(self.tasks), p=self.weights)]


def train(model: LanguageModel, task, spec: TrainSpec, seed: int,
          on_step: Callable[[int, float], None] | None = None) -> TrainResult:
    """Train `model` in place on `task` (or a `Mixture`) at length spec.length; return loss and
    accuracy (a mixture's is the weighted mean of its tasks')."""
    torch.set_flush_denormal(True)  # denormals slow CPU training about tenfold after a few hundred steps
    torch.manual_seed(seed)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": spec.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=spec.lr, betas=(0.9, 0.98))
    model.train()
    start = time.perf_counter()
    losses: list[float] = []
    loss_value = float("nan")
    for step in range(spec.steps):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(spec, step)
        step_seed = batch_seed(seed, step)
        step_task = task.pick(step_seed) if isinstance(task, Mixture) else task
        samples = step_task.generate(length=spec.length, n=spec.batch_size, seed=step_seed)
        loss = samples_loss(model, samples)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), spec.grad_clip)
        optimizer.step()
        loss_value = loss.item()
        if step % 10 == 0:
            losses.append(loss_value)
        if on_step is not None:
            on_step(step, loss_value)
    seconds = time.perf_counter() - start
    model.eval()
    held_out_seed = batch_seed(seed, -1 % 2**31)
    parts = (task.tasks, task.weights) if isinstance(task, Mixture) else ([task], [1.0])
    accuracy = 0.0
    for part, weight in zip(*parts):
        held_out = part.generate(length=spec.length, n=spec.eval_samples, seed=held_out_seed)
        accuracy += weight * float(evaluate_samples(model, part, held_out).mean())
    return TrainResult(seconds, loss_value, accuracy, losses)
