"""Training from scratch on a task at one training length.

Every architecture sees the same batches (the batch of step s is drawn from seed (seed, s)),
the same optimizer and the same schedule; only the model differs. The loss is the
cross-entropy of the answer symbols, the only predictable part of a sample.

A schedule is a list of phases, each a length and a number of steps (a length curriculum:
short samples first, which are cheaper and where recurrent models leave the digit-prior
plateau sooner); the last phase is at the training length T. The learning rate warms up and
then follows one cosine over all planned steps. `Until` trains to a criterion: held-out
accuracy at T is checked every `Check.every` steps of the last phase, and training stops at the
first check where every judged task reaches the bar (after `anneal` more steps, with the rate
falling linearly to zero, when set), or goes on past the plan (at the final rate) up to
`max_steps`.

A mixture draws each step's task by its weight; with `focus`, by its weight times its error at
the last held-out check (plus `focus`), so that the steps go where the model is still wrong.

Along the way: the loss every 10 steps and held-out accuracy per task at T every
`Check.every` steps (the curve), and, every `checkpoint_every` steps, the whole training state
(weights, optimizer, step, curve) in one safetensors file, so that an interrupted training
resumes where it stopped and ends with the same weights as an uninterrupted one.

A training intervention (`TrainIntervention`, a study's `interventions:`) changes the state each
batch starts from, nothing else of the recipe: `state-passing` starts it from the state the last
batch left (detached), `noise-state` from the state a prefix of random symbols leaves, and `tbptt`
trains on samples `pieces` times as long, fed in pieces with the state carried and detached
between them. `state-passing` with `steps` is a post-training instead (`post_training`): the
baseline's trained model goes on for that many steps at T with state passing, at a tenth of
the rate. Only the layers whose state is bounded (`models.bounded_layers`) are started so;
global attention starts empty. The carried state of `state-passing` is not part of the saved
training state: a resumed training starts it from zero again.

A training whose loss, or whose weights at the end, are not finite raises `Diverged` with the
step: a result of the recipe (the same seed diverges at the same step every time), which the
runner stores as such; a sweep goes on to its next rate.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as save_tensors

from ..study.checkpoints import write_atomic
from .evaluate import evaluate_samples
from ..models import LanguageModel, bounded_layers, detached

LOSS_EVERY = 10  # steps between two points of the stored loss curve


@dataclass(frozen=True)
class Phase:
    length: int  # every sample of the phase has exactly this many symbols
    steps: int


@dataclass(frozen=True)
class Until:
    """Train to a criterion: stop once held-out accuracy at T reaches `accuracy` on every
    judged task (`labels`, default all), checked every Check.every steps; at most max_steps.
    Then, with `anneal`, that many more steps at a rate falling to zero."""
    accuracy: float
    max_steps: int
    labels: tuple[str, ...] | None = None
    anneal: int = 0  # steps after the criterion is met, the rate falling linearly to zero from where it was

    def judges(self, label: str) -> bool:
        """Whether the criterion reads the task named `label`."""
        return not self.labels or label in self.labels


@dataclass(frozen=True)
class Check:
    every: int | None = None  # None: a tenth of the planned steps
    samples: int = 64         # held-out samples per task at each check
    depths: tuple[float, ...] | None = None  # needle depths, samples split evenly; None: uniformly random

    def __post_init__(self):
        if self.depths is not None:
            object.__setattr__(self, "depths", tuple(float(d) for d in self.depths))


@dataclass(frozen=True)
class TrainIntervention:
    """A training intervention (controlled/interventions.py says what each does): its name, for
    `tbptt` the number of T-long pieces each sample is fed in (1 for the others), and for a
    post-training (`state-passing` with `steps`) its number of steps on the baseline's checkpoint
    (None: the model is trained from scratch under the intervention)."""
    name: str
    pieces: int = 1
    steps: int | None = None

    def to_dict(self) -> dict:
        return {"name": self.name, **({"pieces": self.pieces} if self.name == "tbptt" else {}),
                **({"steps": self.steps} if self.steps is not None else {})}  # from-scratch ids as they were


@dataclass(frozen=True)
class TrainSpec:
    length: int            # training length T: every sample of the last phase has exactly T symbols
    steps: int = 1000      # planned steps (the sum of the phases' when there are phases)
    batch_size: int = 32
    lr: float = 3e-3
    weight_decay: float = 0.1
    warmup: int = 50
    grad_clip: float = 1.0
    eval_samples: int = 200  # samples at length T for the final training accuracy
    phases: tuple[Phase, ...] | None = None  # None: one phase of `steps` at T
    until: Until | None = None
    check: Check = Check()
    checkpoint_every: int = 0  # steps between mid-training checkpoints; 0: none
    lr_sweep: tuple[float, ...] | None = None  # rates to try in turn (`train_sweep`); None: `lr` alone
    focus: float | None = None  # a mixture's shares follow each task's error (`Mixture.shares`); None: fixed weights
    intervention: TrainIntervention | None = None  # how each batch's initial state is made; None: zeros

    def __post_init__(self):
        if self.lr_sweep is not None:
            object.__setattr__(self, "lr_sweep", tuple(float(x) for x in self.lr_sweep))
        if self.phases is not None:
            object.__setattr__(self, "phases", tuple(p if isinstance(p, Phase) else Phase(**p) for p in self.phases))
            object.__setattr__(self, "steps", sum(p.steps for p in self.phases))
        if isinstance(self.until, dict):
            labels = self.until.get("labels")
            object.__setattr__(self, "until", Until(**{**self.until, "labels": None if labels is None else tuple(labels)}))
        if isinstance(self.check, dict):
            object.__setattr__(self, "check", Check(**self.check))
        if isinstance(self.intervention, dict):
            object.__setattr__(self, "intervention", TrainIntervention(**self.intervention))

    @property
    def pieces(self) -> int:
        """How many pieces of the step's length each sample has (tbptt's; 1 otherwise)."""
        return self.intervention.pieces if self.intervention is not None else 1

    @property
    def schedule(self) -> tuple[Phase, ...]:
        return self.phases if self.phases is not None else (Phase(self.length, self.steps),)

    @property
    def max_steps(self) -> int:
        """Steps at most: until's max_steps and its anneal, else the planned steps."""
        return self.until.max_steps + self.until.anneal if self.until is not None else self.steps

    def end(self, criterion: int | None) -> int:
        """The step training stops at: the anneal's end once the criterion is met at step
        `criterion`, else until's max_steps (or the planned steps)."""
        if self.until is None:
            return self.steps
        return self.until.max_steps if criterion is None else criterion + self.until.anneal

    @property
    def check_every(self) -> int:
        return self.check.every or max(1, self.steps // 10)

    def length_at(self, step: int) -> int:
        """The sample length of step `step` (0-based): its phase's; T past the plan."""
        end = 0
        for phase in self.schedule:
            end += phase.steps
            if step < end:
                return phase.length
        return self.length

    def tokens(self, steps: int | None = None) -> int:
        """Symbols trained on in the first `steps` steps (default: the planned ones): batch x the
        length of each step, so a curriculum's short phases count at their own length (times
        tbptt's pieces)."""
        steps = self.steps if steps is None else steps
        total, done = 0, 0
        for phase in self.schedule:
            take = min(phase.steps, steps - done)
            if take <= 0:
                break
            total, done = total + take * phase.length, done + take
        return self.batch_size * self.pieces * (total + max(0, steps - done) * self.length)

    @property
    def last_phase_start(self) -> int:
        return self.steps - self.schedule[-1].steps

    def to_dict(self) -> dict:
        """What determines the trained weights, for the model's id: the fields of the original
        recipe as they were, plus phases, until, lr_sweep and focus only when set (and with until the
        checks, which decide when training stops). Checks and checkpoints alone do not change
        the weights."""
        out = {k: v for k, v in asdict(self).items()
               if k not in ("phases", "until", "check", "checkpoint_every", "lr_sweep", "focus", "intervention")}
        if self.intervention is not None:  # a recipe without one keeps its id
            out["intervention"] = self.intervention.to_dict()
        if self.focus is not None:
            out["focus"] = self.focus
        if self.lr_sweep is not None:
            out["lr_sweep"] = list(self.lr_sweep)
        if self.phases is not None:
            out["phases"] = [asdict(p) for p in self.phases]
        if self.until is not None:
            until = asdict(self.until)
            if not until["anneal"]:  # recipes from before anneal keep their ids
                del until["anneal"]
            if until["labels"] is None:
                del until["labels"]
            else:
                until["labels"] = list(until["labels"])
            out["until"] = until
            out["check"] = {"every": self.check_every, "samples": self.check.samples}
            if self.check.depths is not None:  # recipes from before check depths keep their ids
                out["check"]["depths"] = list(self.check.depths)
        return out


class Diverged(FloatingPointError):
    """Training went non-finite at step `step` (0-based): its loss (`what` "loss", `value` the
    loss), or the weights after it (`what` "weights"). Carries what training recorded before
    (`losses`: [step, loss] every LOSS_EVERY steps; `checks`; `seconds`) and, from a sweep whose
    every rate diverged, each rate tried (`tries`)."""

    def __init__(self, step: int, value: float = float("nan"), what: str = "loss"):
        self.step, self.value, self.what = step, value, what
        self.losses: list = []
        self.checks: list = []
        self.seconds, self.tries = 0.0, []
        detail = f"({value})" if what == "loss" else "(not finite after it)"
        super().__init__(f"the {what} diverged at step {step} {detail}; lower the learning rate")

    def __reduce__(self):  # pickled as its fields (a worker's exception crosses to the driver)
        return _diverged, (self.step, self.value, self.what, self.__dict__)

    @property
    def steps(self) -> int:
        """Steps run, the diverging one included."""
        return self.step + 1

    def after(self, progress: dict, seconds: float) -> "Diverged":
        """This error with the curve recorded until it and the time it took."""
        self.losses, self.checks, self.seconds = list(progress["losses"]), list(progress["checks"]), seconds
        return self


def _diverged(step: int, value: float, what: str, fields: dict) -> Diverged:
    error = Diverged(step, value, what)
    error.__dict__.update(fields)
    return error


@dataclass
class TrainResult:
    seconds: float
    final_loss: float
    train_accuracy: float  # exact-match accuracy at the training length, on held-out samples
    losses: list[float] = field(default_factory=list)  # every LOSS_EVERY-th step
    steps: int = 0  # steps run
    steps_to_criterion: int | None = None  # the first check at which `until` was met
    checks: list[dict] = field(default_factory=list)  # {"step": s, "accuracy": {label: acc}}
    task_accuracy: dict[str, float] = field(default_factory=dict)  # final accuracy per task at T


POST_TRAINING_RATE = 0.1  # a post-training's peak rate, as a share of the recipe's


def post_training(spec: TrainSpec, steps: int) -> TrainSpec:
    """The recipe of `state-passing` post-training (Buitrago Ruiz & Gu 2025 post-train a trained
    model with state passing): `steps` steps at T on the trained model, from a fresh optimizer,
    at a tenth of the recipe's rate (its first rate, under a sweep), warmed up over a tenth of
    the steps and then one cosine; a fixed number of steps (no criterion), held-out checks at T
    every tenth of them, batches, checks and the rest of the recipe as the baseline's."""
    if steps < 1:
        raise ValueError(f"a post-training needs at least one step, not {steps}")
    return replace(spec, steps=steps, phases=None, until=None, lr=spec.lr * POST_TRAINING_RATE, lr_sweep=None,
                   warmup=max(1, steps // 10), check=replace(spec.check, every=None),
                   intervention=TrainIntervention("state-passing", steps=steps))


def post_training_seed(seed: int) -> int:
    """The seed a post-training of the model trained with `seed` draws its batches and checks
    from: another stream than the baseline's, so it sees new batches at T, not the ones it was
    trained on."""
    return int(np.random.SeedSequence([seed, 0x706F7374]).generate_state(1)[0]) % 2**31


def batch_seed(seed: int, step: int) -> int:
    """Seed of one training batch: identical for every architecture trained with `seed`."""
    return int(np.random.SeedSequence([seed, step]).generate_state(1)[0])


CHECK_SEED = -2 % 2**31  # the step number whose batch seed draws the held-out check samples


def answer_loss(model: LanguageModel, tokens: torch.Tensor, answers: torch.Tensor,
                answer_positions: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy of the k answer symbols: teacher-forced after the prompt, or, given
    answer_positions (B, k), predicted at those positions of the sequence in one pass.
    tokens (B, L), answers (B, k)."""
    return answer_loss_from(model, tokens, answers, answer_positions)[0]


def answer_loss_from(model: LanguageModel, tokens: torch.Tensor, answers: torch.Tensor,
                     answer_positions: torch.Tensor | None = None, state: list | None = None
                     ) -> tuple[torch.Tensor, list]:
    """`answer_loss` with the sequences started from `state` (None: zeros), and the state they
    leave (after the teacher-forced answer but its last symbol)."""
    k = answers.shape[1]
    if answer_positions is not None:
        logits, state = model(tokens, state)  # (B, L, V)
        index = answer_positions[:, :, None].expand(-1, -1, logits.shape[-1])  # (B, k, V)
        answer_logits = torch.gather(logits, 1, index)  # (B, k, V)
        return F.cross_entropy(answer_logits.reshape(-1, answer_logits.shape[-1]), answers.reshape(-1)), state
    inputs = torch.cat([tokens, answers[:, :-1]], dim=1)  # (B, L + k - 1)
    logits, state = model(inputs, state)
    answer_logits = logits[:, -k:]  # (B, k, V): the positions that predict the answers
    return F.cross_entropy(answer_logits.reshape(-1, answer_logits.shape[-1]), answers.reshape(-1)), state


def learning_rate(spec: TrainSpec, step: int, criterion: int | None = None) -> float:
    """Linear warmup, then cosine decay to a tenth over the planned steps; a tenth after them.
    Once the criterion is met at step `criterion`, with until.anneal: from the rate of that step
    linearly towards zero over the anneal's steps."""
    if criterion is not None and spec.until is not None and spec.until.anneal:
        return learning_rate(spec, criterion) * (1 - (step - criterion) / spec.until.anneal)
    if step < spec.warmup:
        return spec.lr * (step + 1) / spec.warmup
    progress = min(1.0, (step - spec.warmup) / max(1, spec.steps - spec.warmup))
    return spec.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def samples_loss(model: LanguageModel, samples) -> torch.Tensor:
    """The answer loss of a batch of generated samples (its tokens, answers and positions)."""
    return answer_loss(model, *_tensors(samples))


class Mixture:
    """Several tasks with weights: the batch of each step is one task's, drawn by weight from the
    step's seed (tasks differ in answer layout, so a batch is never mixed). Accuracy is each
    task's, averaged with the weights. `labels` name the tasks in curves and criteria."""

    def __init__(self, tasks: list, weights: list[float], labels: list[str] | None = None):
        if len(tasks) != len(weights) or not tasks or min(weights) <= 0:
            raise ValueError("a mixture needs one positive weight per task")
        self.tasks = tasks
        self.weights = np.asarray(weights, dtype=float) / sum(weights)
        self.labels = list(labels) if labels is not None else [t.name for t in tasks]

    def pick(self, seed: int, shares: np.ndarray | None = None):
        """The task of one step, drawn from `seed` by `shares` (default: the weights)."""
        shares = self.weights if shares is None else shares
        return self.tasks[np.random.default_rng(seed).choice(len(self.tasks), p=shares)]

    def shares(self, accuracy: dict[str, float], floor: float) -> np.ndarray:
        """Shares of steps that follow the tasks' held-out errors: each task's weight times
        (1 - its accuracy + floor), normalised. A solved task keeps `floor` of its weight's pull,
        so it is still rehearsed; a task not in `accuracy` keeps its weight."""
        pull = np.array([w * (1.0 - accuracy[name] + floor) if name in accuracy else w
                         for name, w in zip(self.labels, self.weights)])
        return pull / pull.sum()


def _parts(task, label: str | None = None) -> list[tuple[str, object, float]]:
    """(label, task, weight) for each task trained on."""
    if isinstance(task, Mixture):
        return list(zip(task.labels, task.tasks, task.weights))
    return [(label or task.name, task, 1.0)]


def held_out_accuracy(model: LanguageModel, task, length: int, n: int, seed: int,
                      label: str | None = None, depths: tuple[float, ...] | None = None) -> dict[str, float]:
    """Accuracy per task on n held-out samples at `length` (samples from `seed`, never a
    training batch's). `depths`: a needle task's samples are split evenly among these depths
    (the first ones one more when n does not divide), as the evaluation places them; else, and
    for tasks without a depth, the depth is drawn at random."""
    model.eval()
    out = {}
    for name, part, _ in _parts(task, label):
        if depths and getattr(part, "uses_depth", False):
            scores = [evaluate_samples(model, part, part.generate(length=length, n=len(share), seed=seed + i,
                                                                  depth=depth))
                      for i, (depth, share) in enumerate(zip(depths, np.array_split(np.arange(n), len(depths))))
                      if len(share)]
            out[name] = float(np.concatenate(scores).mean())
        else:
            out[name] = float(evaluate_samples(model, part, part.generate(length=length, n=n, seed=seed)).mean())
    model.train()
    return out


# --------------------------------------------------------------------------------------------
# the training state on disk
# --------------------------------------------------------------------------------------------
def state_bytes(model: LanguageModel, optimizer: torch.optim.Optimizer, step: int, progress: dict,
                key: str) -> bytes:
    """Weights, optimizer moments, the step reached and the curve so far, as safetensors."""
    tensors = {f"model.{k}": v.detach().contiguous() for k, v in model.state_dict().items()}
    optim = optimizer.state_dict()
    for index, moments in optim["state"].items():
        for name, value in moments.items():
            tensors[f"optimizer.{index}.{name}"] = value.detach().contiguous()
    meta = {"key": key, "step": step, "progress": progress, "param_groups": optim["param_groups"]}
    return save_tensors(tensors, metadata={"training": json.dumps(meta)})


def load_state(path: Path, model: LanguageModel, optimizer: torch.optim.Optimizer, key: str) -> tuple[int, dict] | None:
    """Restore a training state written by `state_bytes` for the same `key`; returns (step,
    progress), or None, changing nothing, when the file is not such a state."""
    try:
        with safe_open(str(path), framework="pt") as file:
            meta = json.loads((file.metadata() or {})["training"])
            tensors = {name: file.get_tensor(name) for name in file.keys()}
    except (SafetensorError, OSError, ValueError, KeyError, TypeError):
        return None
    if meta.get("key") != key:
        return None
    weights = {k.removeprefix("model."): v for k, v in tensors.items() if k.startswith("model.")}
    state: dict = {}
    for name, value in tensors.items():
        if name.startswith("optimizer."):
            _, index, moment = name.split(".", 2)
            state.setdefault(int(index), {})[moment] = value
    model_before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    optimizer_before = optimizer.state_dict()  # a fresh optimizer's: no moments to copy
    try:
        model.load_state_dict(weights)
        optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
        return int(meta["step"]), meta["progress"]
    except (RuntimeError, ValueError, KeyError, TypeError):
        # The weights may have loaded before the optimizer failed: put both back.
        model.load_state_dict(model_before)
        optimizer.load_state_dict(optimizer_before)
        return None


# --------------------------------------------------------------------------------------------
# the loop
# --------------------------------------------------------------------------------------------
def _optimizer(model: LanguageModel, spec: TrainSpec) -> torch.optim.AdamW:
    """AdamW, with weight decay on the matrices only (not on norms, biases and gains)."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": spec.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=spec.lr, betas=(0.9, 0.98))


def _batch_task(task, spec: TrainSpec, progress: dict, step_seed: int):
    """The task a step's batch is drawn from: the task, or one task of a Mixture."""
    if not isinstance(task, Mixture):
        return task
    # with focus, the shares follow the last held-out check (stored in progress, so a resumed
    # training draws the same tasks); before the first check, the weights
    shares = task.shares(progress["checks"][-1]["accuracy"], spec.focus) \
        if spec.focus is not None and progress["checks"] else None
    return task.pick(step_seed, shares)


def _update(model: LanguageModel, optimizer: torch.optim.Optimizer, samples, spec: TrainSpec, step: int,
            state: list | None = None) -> tuple[float, list]:
    """One optimizer step on a batch started from `state` (None: zeros); its loss, which must be
    finite, and the state the batch left, detached (None without a training intervention, which
    carries nothing)."""
    optimizer.zero_grad(set_to_none=True)
    if spec.pieces > 1:
        loss_value, state = _piecewise_backward(model, samples, spec.pieces, state)
    else:
        loss, state = answer_loss_from(model, *_tensors(samples), state)
        loss.backward()
        loss_value = loss.item()
    torch.nn.utils.clip_grad_norm_(model.parameters(), spec.grad_clip)
    optimizer.step()
    if not math.isfinite(loss_value):
        raise Diverged(step, loss_value)
    return loss_value, detached(state) if spec.intervention is not None else None  # only an intervention carries it


def _tensors(samples) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """A batch's tokens (B, L), answers (B, k) and answer positions (B, k) or None."""
    positions = None if samples.answer_positions is None else torch.from_numpy(samples.answer_positions)
    return torch.from_numpy(samples.tokens), torch.from_numpy(samples.answers), positions


def _piecewise_backward(model: LanguageModel, samples, pieces: int, state: list | None) -> tuple[float, list]:
    """Truncated backpropagation through time: the batch fed in `pieces` pieces of equal length,
    the state carried from one to the next and detached between them, each piece's share of the
    answer loss backpropagated through that piece alone (gradients add up over the pieces). A
    piece without an answer is fed without gradients. Returns the loss (the same mean over
    every answer symbol as `answer_loss`) and the final state."""
    tokens, answers, positions = _tensors(samples)
    size = -(-tokens.shape[1] // pieces)
    total = 0.0
    for start in range(0, tokens.shape[1], size):
        piece = tokens[:, start:start + size]  # (B, size)
        last = start + size >= tokens.shape[1]
        inside = None if positions is None else (positions >= start) & (positions < start + piece.shape[1])  # (B, k)
        if (positions is None and not last) or (inside is not None and not inside.any()):
            with torch.no_grad():
                _, state = model(piece, state)
            continue
        if positions is None:
            loss, state = answer_loss_from(model, piece, answers, None, state)
        else:
            logits, state = model(piece, state)  # (B, size, V)
            rows, cols = inside.nonzero(as_tuple=True)
            picked = logits[rows, positions[rows, cols] - start]  # (n, V)
            loss = F.cross_entropy(picked, answers[rows, cols], reduction="sum") / answers.numel()
        loss.backward()
        total += loss.item()
        state = detached(state)
    return total, state


def _carried(model: LanguageModel, state: list) -> list:
    """The layer states a training intervention starts the next batch from: those of bounded
    layers; None (an empty key/value cache) for global attention."""
    return [s if bounded else None for s, bounded in zip(state, bounded_layers(model.config))]


@torch.no_grad()
def random_prefix_state(model: LanguageModel, batch: int, length: int, seed: int) -> list:
    """`noise-state`'s initial state: what `length` symbols drawn uniformly from the model's
    vocabulary (from `seed`) leave in the bounded layers, one prefix per sequence of the batch."""
    generator = torch.Generator().manual_seed(seed)
    prefix = torch.randint(0, model.config.vocab_size, (batch, length), generator=generator)  # (B, length)
    _, state = model(prefix)
    return _carried(model, state)


def _initial_state(model: LanguageModel, spec: TrainSpec, carried: list | None, samples, step_seed: int
                   ) -> list | None:
    """The state a step's batch starts from: the last batch's (`state-passing`), a random
    prefix's (`noise-state`, as long as the batch's samples), else zeros (None)."""
    name = None if spec.intervention is None else spec.intervention.name
    if name == "state-passing":
        return carried
    if name == "noise-state":
        return random_prefix_state(model, samples.tokens.shape[0], samples.tokens.shape[1] // spec.pieces,
                                   (step_seed + 1) % 2**32)
    return None


def _finite_weights(model: LanguageModel, step: int) -> None:
    """Raise Diverged when a weight is not finite after `step` steps: an update can blow the
    weights up on a step whose loss was still finite, and no later step's loss shows it."""
    if not all(bool(torch.isfinite(p).all()) for p in model.parameters()):
        raise Diverged(step - 1, what="weights")


def _check(model: LanguageModel, task, spec: TrainSpec, progress: dict, step: int, check_seed: int,
           label: str | None, on_check) -> None:
    """A held-out check at T, kept in `progress`; the criterion is met here when every judged task
    reaches `until.accuracy` in the last phase."""
    accuracy = held_out_accuracy(model, task, spec.length, spec.check.samples, check_seed, label, spec.check.depths)
    progress["checks"].append({"step": step, "accuracy": accuracy})
    if on_check is not None:
        on_check(step, accuracy)
    if spec.until is not None and progress["criterion"] is None and step >= spec.last_phase_start + 1 \
            and all(value >= spec.until.accuracy for name, value in accuracy.items() if spec.until.judges(name)):
        progress["criterion"] = step


def train(model: LanguageModel, task, spec: TrainSpec, seed: int,
          on_step: Callable[[int, float], None] | None = None,
          on_check: Callable[[int, dict[str, float]], None] | None = None,
          state_path: Path | None = None, state_key: str = "", label: str | None = None,
          keep_final_state: bool = False) -> TrainResult:
    """Train `model` in place on `task` (or a `Mixture`) with `spec`; return the loss, the
    accuracy at T (a mixture's is the weighted mean of its tasks') and the curve.

    `state_path`: where the training state is saved every spec.checkpoint_every steps; a state
    found there for the same `state_key` (the model's id) is resumed from. `keep_final_state`:
    save the finished state there too, so that a finished training is not run again (a sweep's
    tried rates). `label`: a single task's name in the curve (default: its task name)."""
    torch.set_flush_denormal(True)  # denormals slow CPU training about tenfold after a few hundred steps
    torch.manual_seed(seed)
    optimizer = _optimizer(model, spec)
    progress = {"losses": [], "checks": [], "seconds": 0.0, "criterion": None}
    first = 0
    if state_path is not None and Path(state_path).is_file():
        resumed = load_state(Path(state_path), model, optimizer, state_key)
        if resumed is not None:
            first, progress = resumed
    model.train()
    start = time.perf_counter() - progress["seconds"]
    try:
        step, loss_value = _steps(model, optimizer, task, spec, seed, progress, first, start, state_path, state_key,
                                  label, on_step, on_check)
        _finite_weights(model, step)
    except Diverged as error:
        raise error.after(progress, time.perf_counter() - start) from None
    seconds = time.perf_counter() - start
    if state_path is not None and keep_final_state and step > first:
        progress["seconds"] = seconds
        write_atomic(Path(state_path), state_bytes(model, optimizer, step, progress, state_key), point="partial")
    task_accuracy = held_out_accuracy(model, task, spec.length, spec.eval_samples, batch_seed(seed, -1 % 2**31), label)
    model.eval()
    accuracy = sum(weight * task_accuracy[name] for name, _, weight in _parts(task, label))
    return TrainResult(seconds, loss_value, accuracy, [loss for _, loss in progress["losses"]], steps=step,
                       steps_to_criterion=progress["criterion"], checks=progress["checks"],
                       task_accuracy=task_accuracy)


def _steps(model: LanguageModel, optimizer: torch.optim.Optimizer, task, spec: TrainSpec, seed: int, progress: dict,
           first: int, start: float, state_path: Path | None, state_key: str, label: str | None, on_step,
           on_check) -> tuple[int, float]:
    """`train`'s steps from `first` to the end, `progress` kept up to date; the step reached and
    its loss (the last one recorded when no step is left to run)."""
    check_seed = batch_seed(seed, CHECK_SEED)
    loss_value = progress["losses"][-1][1] if progress["losses"] else float("nan")
    step, carried = first, None  # carried: the state the last batch left (state-passing)
    while step < spec.end(progress["criterion"]):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(spec, step, progress["criterion"])
        step_seed = batch_seed(seed, step)
        samples = _batch_task(task, spec, progress, step_seed).generate(length=spec.length_at(step) * spec.pieces,
                                                                       n=spec.batch_size, seed=step_seed)
        loss_value, left = _update(model, optimizer, samples, spec, step,
                                   _initial_state(model, spec, carried, samples, step_seed))
        carried = _carried(model, left) if spec.intervention is not None else None
        if step % LOSS_EVERY == 0:
            progress["losses"].append([step, loss_value])
        step += 1
        if on_step is not None:
            on_step(step - 1, loss_value)
        if step % spec.check_every == 0 or step == spec.end(progress["criterion"]):
            _check(model, task, spec, progress, step, check_seed, label, on_check)
        if state_path is not None and spec.checkpoint_every and step % spec.checkpoint_every == 0 \
                and step < spec.end(progress["criterion"]):
            progress["seconds"] = time.perf_counter() - start
            write_atomic(Path(state_path), state_bytes(model, optimizer, step, progress, state_key), point="partial")
    return step, loss_value


# --------------------------------------------------------------------------------------------
# a learning-rate sweep
# --------------------------------------------------------------------------------------------
@dataclass
class SweepResult:
    result: TrainResult   # the kept rate's
    model: LanguageModel  # trained at the kept rate
    lr: float             # the kept rate
    tries: list[dict]     # per rate tried, in order: lr, steps, steps_to_criterion, worst_accuracy, seconds


def worst_accuracy(result: TrainResult, spec: TrainSpec) -> float:
    """The lowest final held-out accuracy at T over the judged tasks (all, without until.labels)."""
    values = [v for name, v in result.task_accuracy.items() if spec.until is None or spec.until.judges(name)]
    return min(values) if values else result.train_accuracy


def train_sweep(build: Callable[[], LanguageModel], task, spec: TrainSpec, seed: int,
                attempt_path: Callable[[int], Path] | None = None, state_key: str = "",
                on_try: Callable[[int, float], None] | None = None, **hooks) -> SweepResult:
    """Train at each rate of spec.lr_sweep in turn (each from `build()`, the same initialisation)
    and keep one: the first that meets `until`; without `until`, or when no rate meets it, the
    one with the best lowest-task held-out accuracy at T (the earlier on a tie). Every other
    part of the recipe is the same for every rate. `attempt_path(i)`: where try i's training
    state lives; a finished try leaves its final state there, so an interrupted sweep resumes
    inside the rate it was training and does not train the finished ones again. `on_try(i, lr)`
    is called as try i starts; `hooks` (on_step, on_check, label) go to `train`. A rate whose
    training diverges is recorded (`diverged`: its step) and the next one tried; when every rate
    diverges, the last `Diverged` is raised with every try."""
    rates = spec.lr_sweep or (spec.lr,)
    tries, trained, diverged = [], [], None
    for index, rate in enumerate(rates):
        if on_try is not None:
            on_try(index, rate)
        model = build()
        one = replace(spec, lr=rate, lr_sweep=None)
        try:
            result = train(model, task, one, seed, state_path=None if attempt_path is None else attempt_path(index),
                           state_key=f"{state_key}.lr{index}", keep_final_state=True, **hooks)
        except Diverged as error:  # too high a rate for this model: one of the others may do
            diverged = error
            tries.append({"lr": rate, "steps": error.steps, "steps_to_criterion": None, "worst_accuracy": None,
                          "seconds": error.seconds, "diverged": error.step})
            continue
        trained.append((index, model, result))
        tries.append({"lr": rate, "steps": result.steps, "steps_to_criterion": result.steps_to_criterion,
                      "worst_accuracy": worst_accuracy(result, spec), "seconds": result.seconds})
        if spec.until is not None and result.steps_to_criterion is not None:
            break  # the first to meet the criterion; the rates after it are not tried
    else:
        if not trained:
            diverged.tries = tries
            raise diverged
        # none met it (or there is none): the best lowest task, the earlier on a tie
        trained.sort(key=lambda kept: (tries[kept[0]]["worst_accuracy"], -kept[0]))
    index, model, result = trained[-1]
    return SweepResult(result, model, rates[index], tries)
