"""The study engine, the same for every kind of study.

A kind of study (controlled: train, then evaluate; pretrained: evaluate checkpoints) says what
its cells are, what job computes each, and how a finished one is stored (`StudyKind` in
driver.py). The engine does the rest the same way for every kind: content-addressed ids
(ids.py), one lock per study directory, one driver loop with one retry policy, one progress
display and one log (driver.py).
"""

from .driver import Cell, Plan, Skip, StudyKind, drive
from .ids import content_id, eval_seed

__all__ = ["Cell", "Plan", "Skip", "StudyKind", "content_id", "drive", "eval_seed"]
