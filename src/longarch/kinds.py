"""The kinds of study the command line knows, in one table, and what it does with any of them.

Every kind implements study/driver.py's `StudyKind`. The first is the default of a study
YAML without `kind:`. The engine names no kind: loading, the grid, the driver and the report
writer take the kind they are handed, so adding a kind is a package with one class and a line
here.
"""

from __future__ import annotations

from pathlib import Path

from .study import load as loading
from .study.schema import ConfigError
from .study.store import for_reading


def kinds() -> tuple:
    """The kinds, imported when first needed (the command line starts without torch)."""
    from .controlled.runner import Controlled
    from .pretrained.runner import Pretrained

    return (Controlled, Pretrained)


def checkpoints_kind():
    """The kind `longarch eval` builds from its flags: checkpoints evaluated on text tasks."""
    from .pretrained.runner import Pretrained

    return Pretrained


def kind_of(study):
    """The kind of a loaded study."""
    return loading.kind_of(study.kind, kinds())


def load_study(source: str, overrides: dict | None = None, corpus: str | None = None, scale: int | None = None,
               **options):
    """A preset name or a YAML path, of any kind, fully validated. The options are the command
    line's (--corpus, --scale, --squad, ...; None: not given)."""
    return loading.load(source, kinds(), overrides, corpus=corpus, scale=scale, **options)


def stored_study(config: dict, out: Path | None = None):
    """The study of a configuration stored with results in `out` (its input files read from
    there), of any kind; pydantic's ValidationError when it does not validate."""
    return loading.stored(config, kinds(), out)


def stored_kind(out: Path):
    """The kind of the study stored in `out`: the store's `kind`, else its configuration's, else
    the default kind."""
    path = Path(out) / "results.sqlite"
    if not path.is_file():
        raise FileNotFoundError(f"no results database at {path}")
    with for_reading(path) as store:
        meta = store.meta()
    return kind_named(meta, out)


def kind_named(meta: dict, out: Path):
    """The kind a store's metadata names (its `kind`, else its configuration's, else the default
    kind), for a reader that opened the store itself; `out` names the study in an error."""
    config = meta.get("config") if isinstance(meta.get("config"), dict) else {}
    try:
        return loading.kind_of(meta.get("kind", config.get("kind")), kinds())
    except ConfigError as error:
        raise ConfigError(f"{out}: {error}") from None


def build_report(out: Path, dest: Path | None = None) -> dict[str, Path]:
    """Write summary.json, figures/, report.md and report.html for the study stored in `out`, into
    `dest` (default `out`); return the written paths ("summary", "md", "html", each figure by its
    relative path)."""
    from .analysis.report import write

    dest = Path(dest or out)
    dest.mkdir(parents=True, exist_ok=True)
    return write(dest, stored_kind(out).report(Path(out), dest), stored_state(Path(out)))


def stored_state(out: Path):
    """The plan of the study stored in `out` against its store (study/grid.py's GridState), or
    None when the stored configuration no longer makes a plan (a plugin it records is gone): the
    report is still written, without the count of its cells."""
    from .study.grid import grid_state

    with for_reading(Path(out) / "results.sqlite") as store:
        config = store.meta().get("config")
    try:
        study = stored_study(config, Path(out))
        return grid_state(kind_of(study)(study).plan(), Path(out))
    except (ValueError, TypeError, KeyError, AttributeError):  # pydantic's ValidationError is a ValueError
        return None


def summary_table(out: Path):
    """The terminal's table of the study stored in `out`."""
    return stored_kind(out).table(Path(out))
