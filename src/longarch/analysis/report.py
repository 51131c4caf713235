"""The one report writer, for every kind of study.

A kind builds its report from the store (its `report(out)`): the blocks (render.py), the
summary for summary.json, its figures (already drawn under `<out>/figures`) and a table for the
terminal. This module writes the three files every study directory gets, in the same way for
every kind: summary.json, report.md and a self-contained report.html. Everything is rebuilt
from the store alone, so `longarch report` re-renders a report without rerunning anything.
`run` is a study of any kind from start to report: the engine's driver, then this writer.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.table import Table

from ..study.driver import drive
from ..study.grid import GridState, grid_state
from .render import Block, render_html, render_markdown


@dataclass
class Report:
    name: str                      # the study's name, in the page title
    blocks: list[Block]
    summary: dict                  # written to summary.json
    table: Table                   # the terminal's summary, printed after a run and by `longarch report`
    files: dict[str, Path] = field(default_factory=dict)  # figures written, by path relative to the study dir
    title: str | None = None       # the study's own title (`analysis.title`), else "longarch report: <name>"

    @property
    def page_title(self) -> str:
        return self.title or f"longarch report: {self.name}"


def heading(name: str, config: dict, settings) -> list[Block]:
    """The top of every report: the study's title (`analysis.title`, else "longarch report:
    <name>"), its description, and the question it asks (`analysis.question`), when it sets one.
    What a study is about is its own to say: nothing here frames it as any paper's."""
    blocks: list[Block] = [("h1", settings.title or f"longarch report: {name}")]
    if config.get("description"):
        blocks.append(("p", str(config["description"])))
    if settings.question:
        blocks.append(("p", f"**Question:** {settings.question}"))
    return blocks


class Figures:
    """The figures of a report as they are drawn: each under a key for the blocks to cite, and
    every file written (a PNG and its PDF) for the list of written paths."""

    def __init__(self, out: Path):
        self.out, self.dir = Path(out), Path(out) / "figures"
        self.files: dict[str, Path] = {}
        self.keys: dict[str, str] = {}  # figure key -> its PNG, relative to the study directory

    def record(self, key: str, written: list[Path]) -> None:
        for path in written:
            self.files[path.relative_to(self.out).as_posix()] = path
        self.keys[key] = written[0].relative_to(self.out).as_posix()


def write(out: Path, report: Report, state: GridState | None = None) -> dict[str, Path]:
    """Write summary.json, report.md and report.html into `out`; return every path written:
    "summary", "md", "html" and each figure under its path relative to `out`. `state`, the
    study's plan against its store, adds what became of its cells (summary.json's "cells", and a
    sentence under the title when some are not stored), the same for every kind."""
    out = Path(out)
    summary, blocks = report.summary, report.blocks
    if state is not None:
        items = list(summary.items())  # the study's name, then what became of its cells
        summary = dict([*items[:1], ("cells", state.tally()), *items[1:]])
        unsettled = outcome(state.tally())
        blocks = blocks[:1] + [("warn", unsettled)] + blocks[1:] if unsettled else blocks
    paths = dict(report.files)
    paths["summary"] = out / "summary.json"
    paths["summary"].write_text(json.dumps(summary, indent=2) + "\n")
    paths["md"] = out / "report.md"
    paths["md"].write_text(render_markdown(blocks), encoding="utf-8")
    paths["html"] = out / "report.html"
    paths["html"].write_text(render_html(blocks, report.page_title, out), encoding="utf-8")
    return paths


def outcome(tally: dict[str, int]) -> str | None:
    """One sentence on the planned cells when some are neither stored nor skipped (None: every
    one is), e.g. "Of 66 planned cells, 60 are stored, 3 failed (see `longarch status`), 3 were
    never attempted (the run was interrupted)."""
    def were(n: int) -> str:
        return f"{n} {'was' if n == 1 else 'were'}"

    if not tally["failed"] and not tally["not_attempted"]:
        return None
    parts = [f"{tally['stored']} {'is' if tally['stored'] == 1 else 'are'} stored"]
    if tally["failed"]:
        parts.append(f"{tally['failed']} failed (see `longarch status`)")
    if tally["skipped"]:
        parts.append(f"{were(tally['skipped'])} skipped")
    if tally["not_attempted"]:
        parts.append(f"{were(tally['not_attempted'])} never attempted (the run was interrupted, or is still going)")
    return f"Of {tally['planned']} planned cells, {', '.join(parts)}."


@dataclass
class Ran:
    """What a run left: its report.md, and its plan against the store as the report read it."""

    report: Path
    state: GridState


def run(kind, out: Path, console: Console | None = None, command: str | None = None, backend: str = "local",
        workers: int | None = 0, address: str | None = None, retries: int = 2, force: bool = False) -> Ran:
    """Run (or continue) a study of any kind into `out` through the one driver, then write its
    report while the directory is still locked. workers None: the kind's default. `force`: write
    into a directory that holds files longarch did not write."""
    console = console or Console()
    workers = kind.default_workers if workers is None else workers
    ran = []

    def then(plan) -> None:
        state = grid_state(plan, out)
        ran.append(Ran(finish(out, console, kind.report(out), state), state))

    drive(kind, out, console, command, backend, workers, address, retries, force, then=then)
    return ran[0]


def finish(out: Path, console: Console, report: Report, state: GridState) -> Path:
    """After a run: the report written, its table printed, what is not stored; returns report.md's path."""
    paths = write(out, report, state)
    console.print(report.table)
    unsettled = outcome(state.tally())
    if unsettled:
        console.print(f"[red]{unsettled} Running the same command again retries what is not stored.[/red]",
                      highlight=False)
    console.print(f"report: {paths['md']}  and  {paths['html']}")
    return paths["md"]
