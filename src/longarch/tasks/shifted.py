"""A task whose symbol ids are moved up by a fixed offset, so that tasks mixed in one study use
disjoint ranges of ids.

Every token task numbers its symbols from 0 (0 padding, 1 QUERY, then its alphabets). A study
that trains or evaluates several task names gives each name its own range (config.Study.id_offsets):
`Shifted(task, offset)` generates the task's samples with every token and answer id plus `offset`,
scores predictions by moving them back (a prediction outside the range is never correct), and
is otherwise the task: its name, version, lengths and knobs, plus the knob `id_offset`, so that a
shifted result never shares an id with an unshifted one.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from .base import Samples


def _of_task(attribute: str) -> property:
    """A read-only attribute that is the wrapped task's own."""
    return property(lambda self: getattr(self.task, attribute), doc=f"the wrapped task's {attribute}")


@dataclasses.dataclass(frozen=True)
class Shifted:
    task: object
    offset: int

    def __post_init__(self):
        if not isinstance(self.offset, int) or isinstance(self.offset, bool) or self.offset < 1:
            raise ValueError(f"an id offset is a positive integer, not {self.offset!r}")

    # the contract of base.py, stated so that none of it depends on __getattr__
    name = _of_task("name")
    family = _of_task("family")
    version = _of_task("version")
    min_length = _of_task("min_length")
    answer_length = _of_task("answer_length")
    item_length = _of_task("item_length")
    ordered = _of_task("ordered")
    uses_depth = _of_task("uses_depth")

    @property
    def knobs(self) -> dict:
        return {**self.task.knobs, "id_offset": self.offset}

    @property
    def vocab_size(self) -> int:
        return self.task.vocab_size + self.offset

    def generate(self, length: int, n: int, seed: int, depth: float | None = None) -> Samples:
        samples = self.task.generate(length=length, n=n, seed=seed, depth=depth)
        return dataclasses.replace(samples, knobs=self.knobs, tokens=samples.tokens + self.offset,
                                   answers=samples.answers + self.offset)

    def unshift(self, samples: Samples) -> Samples:
        """Samples of this task as the unshifted task wrote them."""
        return dataclasses.replace(samples, knobs=self.task.knobs, tokens=samples.tokens - self.offset,
                                   answers=samples.answers - self.offset)

    def score(self, samples: Samples, predictions: np.ndarray) -> np.ndarray:
        predictions = np.asarray(predictions)
        inside = (predictions >= self.offset) & (predictions < self.vocab_size)
        # -1 is no symbol of any task: a prediction outside the range matches no answer
        return self.task.score(self.unshift(samples), np.where(inside, predictions - self.offset, -1))

    def symbol(self, token: int) -> str:
        if self.offset <= token < self.vocab_size:
            return self.task.symbol(token - self.offset)
        return f"<{token}>"

    def __getattr__(self, name: str):
        """The task's own knobs and helpers (only reached for what this class does not define);
        a helper called with samples of this task gets them unshifted (needle's unknown_share)."""
        # while unpickling (and copying) `task` is not set yet: no recursion through it
        if name.startswith("__") or "task" not in self.__dict__:
            raise AttributeError(name)
        value = getattr(self.__dict__["task"], name)
        if not callable(value) or isinstance(value, type):
            return value

        def unshifting(*args, **kwargs):
            args = [self.unshift(a) if isinstance(a, Samples) else a for a in args]
            kwargs = {k: self.unshift(v) if isinstance(v, Samples) else v for k, v in kwargs.items()}
            return value(*args, **kwargs)
        return unshifting
