"""The run's progress display: a bar per stage (models to train, cells to evaluate) and, while
they train, a bar per model (its kind's watcher: see driver.py's StudyKind.watch).

Each line reads: what, the bar, done/total, time elapsed, time left, and a note. The note (the
`info` field: the last cell stored, or a model's loss) is the part cut short when the terminal is
narrow, so that the counts and the times stay on one line.

A bar's fields, beyond rich's own: `info` (the note; required), `rate` (steps a second, as the
bar's watcher measured them: then the time left is the steps left at that rate; without it, the
bar's own average since it started) and `upto` (the total is a bound, not a plan: a model that
trains to a criterion stops at most there; shown as "up to N").
"""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, Progress, ProgressColumn, Task, TextColumn, TimeElapsedColumn
from rich.table import Column
from rich.text import Text


def progress_display(console: Console) -> Progress:
    return Progress(Note("{task.description}", max_width=32), BarColumn(bar_width=24), Count(),
                    TimeElapsedColumn(), Remaining(), Note("{task.fields[info]}"),
                    console=console, transient=False)


def time_left(task: Task) -> float | None:
    """Seconds left to a bar, or None while there is nothing to go by. From its `rate` when its
    watcher measures one (a model in training: its own steps a second, whatever the other
    models do); else from its average since it started (elapsed / done x left): a stage's cells
    may take minutes each, and rich's own estimate (the last 30 seconds) seldom holds two."""
    if task.total is None:
        return None
    left = max(0.0, task.total - task.completed)
    if not left:
        return 0.0
    if "rate" in task.fields:  # a watcher's bar: its own rate or nothing (a resumed step is no progress)
        rate = task.fields["rate"]
        return left / rate if rate else None
    elapsed = task.elapsed
    if task.completed > 0 and elapsed:
        return elapsed * left / task.completed
    return None


def clock(seconds: float) -> str:
    minutes, seconds = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}"


class Remaining(ProgressColumn):
    """A bar's time left ("eta 0:01:40"; "eta -:--:--" until it can be told): see time_left."""

    max_refresh = 0.5  # as rich's own: an estimate that changes ten times a second is unreadable

    def __init__(self):
        super().__init__(table_column=Column(no_wrap=True))

    def render(self, task: Task) -> Text:
        if task.total is None:
            return Text("")
        left = time_left(task)
        return Text(f"eta {'-:--:--' if left is None else clock(left)}", style="progress.remaining")


class Count(ProgressColumn):
    """Done out of total ("120/1000"; "120/up to 5000" when the total is a bound)."""

    def __init__(self):
        super().__init__(table_column=Column(no_wrap=True))

    def render(self, task: Task) -> Text:
        if task.total is None:
            return Text(f"{int(task.completed)}", style="progress.download")
        total = str(int(task.total))
        bound = "up to " if task.fields.get("upto") else ""
        return Text(f"{int(task.completed):>{len(total)}}/{bound}{total}", style="progress.download")


class Note(TextColumn):
    """Plain text (no markup: a note may quote a file name with brackets) on one line, cut short
    with an ellipsis in a narrow terminal: the table shrinks these columns first."""

    def __init__(self, text_format: str, max_width: int | None = None):
        super().__init__(text_format, markup=False,
                         table_column=Column(no_wrap=False, overflow="ellipsis", max_width=max_width))

    def render(self, task: Task) -> Text:
        text = super().render(task)
        text.no_wrap, text.overflow = True, "ellipsis"
        return text
