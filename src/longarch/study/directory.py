"""A study directory's identity: what a run may write into, decided before anything is written.

A study directory holds one study: its store records the study's kind and content id (the hash
of its validated configuration, less what only changes how results are shown). A run of another
study or another kind is refused with one line, and nothing in the directory is touched; so is
a directory holding files longarch did not write, and a SQLite file that is not a longarch store.
--force lets a run write beside files longarch did not write (they are left as they are), and
continue a study whose settings changed as that study (what is stored stays, and the report
reads the study as last run); never a study of another kind. A store from
before identities were recorded is read by the running kind's schema: if it reads as the same
study, it is adopted.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from . import inputs
from .ids import content_id
from .load import stored as read_stored
from .store import StoreError, read_only

# the names a run writes into a study directory (the SQLite side files included)
WRITTEN = {"results.sqlite", "results.sqlite-wal", "results.sqlite-shm", "results.sqlite-journal", "run.lock",
           "run.log", "report.md", "report.html", "summary.json", "figures", "checkpoints", "predictions",
           inputs.FOLDER}
EXPORTED = {"export.csv", "export.jsonl", "export.parquet", "lm-eval"}  # `longarch export` writes beside a store
STARTED = {"run.lock", "run.log"}  # what a run killed before it created its store leaves
SHOWN_DIFFERENCES = 3


class DirectoryRefused(ValueError):
    """A directory this run must not write into; one line, nothing touched."""


def identity(kind, config: dict | None) -> dict:
    """The kind and content id of a study, from its validated configuration as plain data (keys
    the kind lists in `presentation`, such as the description and the analysis settings, change
    no result and are left out)."""
    return {"kind": kind.kind, "study_id": content_id(_settings(kind, config))}


def _settings(kind, config: dict | None) -> dict:
    shown = set(getattr(kind, "presentation", ()))
    config = inputs.by_content(config or {}, getattr(kind, "input_keys", ()))  # input files by content
    return {k: v for k, v in config.items() if k not in shown}


def claim(out: Path, kind, config: dict | None, force: bool = False) -> None:
    """Refuse (DirectoryRefused) a directory that a study of `kind`, whose validated configuration
    is `config` (plain data), must not be written into; return when the run may go on. Reads
    only."""
    if out.exists() and not out.is_dir():
        raise DirectoryRefused(f"--out {out} is a file, not a directory")
    if not out.exists():
        return
    names = {p.name for p in out.iterdir()}
    clash = names & (WRITTEN - STARTED)
    if "results.sqlite" not in names and clash:  # someone's own report.md, say: never overwritten
        raise DirectoryRefused(f"{out} holds {', '.join(sorted(clash)[:SHOWN_DIFFERENCES])} that longarch would write, "
                               "but no study of its own; choose another --out")
    foreign = names - (WRITTEN | EXPORTED if "results.sqlite" in names else STARTED)
    if foreign and not force:
        shown = ", ".join(sorted(foreign)[:SHOWN_DIFFERENCES]) + (", ..." if len(foreign) > SHOWN_DIFFERENCES else "")
        raise DirectoryRefused(f"{out} holds files longarch did not write ({shown}); choose another --out, or "
                               "--force to write the study beside them")
    if "results.sqlite" in names:
        _same_study(out, kind, config, force)


def _same_study(out: Path, kind, config: dict | None, force: bool) -> None:
    path = out / "results.sqlite"
    if path.is_dir():
        raise DirectoryRefused(f"{path} is a directory, not a results database; move it away or choose another --out")
    try:
        with read_only(path, untouched=True) as store:
            meta = store.meta()
    except (StoreError, sqlite3.Error) as error:
        raise DirectoryRefused(str(error).splitlines()[0]) from None
    recorded, stored = meta.get("identity"), meta.get("config")
    stored_kind = (recorded or {}).get("kind") or meta.get("kind") or (stored or {}).get("kind")
    if stored_kind is not None and stored_kind != kind.kind:
        raise DirectoryRefused(f"{out} holds a {stored_kind} study ({meta.get('name', '?')!r}); this is a {kind.kind} "
                               f"study ({(config or {}).get('name', '?')!r}): choose another --out")
    if recorded is not None and recorded.get("study_id") == identity(kind, config)["study_id"]:
        return
    if not isinstance(stored, dict):
        if recorded is not None or meta.get("name") is not None or _has_rows(path):
            raise DirectoryRefused(f"{out} holds a store without its study's configuration; choose another --out")
        return  # a store created by a run that stopped before writing anything
    before = _settings(kind, _as_now(out, kind, stored))
    differences = _differences(before, _settings(kind, config))
    if differences and not force:
        more = f"; and {len(differences) - SHOWN_DIFFERENCES} more" if len(differences) > SHOWN_DIFFERENCES else ""
        raise DirectoryRefused(f"{out} holds study {meta.get('name', before.get('name'))!r} with other settings ("
                               + "; ".join(differences[:SHOWN_DIFFERENCES]) + more + "): choose another --out, or "
                               "--force to continue it as this study (what is stored stays; the report reads the study "
                               "as last run)")


def _as_now(out: Path, kind, stored: dict) -> dict:
    """A stored configuration as this version writes it (its schema's defaults filled in, older
    names read as the kind reads them), so that a store from before compares with a run now."""
    if getattr(kind, "Config", None) is None:  # a kind without a schema compares what it stored
        return stored
    try:  # its input files read from `out` (study/inputs.py)
        return read_stored({"kind": kind.kind, **stored}, (kind,), out).model_dump(mode="json")
    except Exception:  # pydantic's ValidationError, or a from_stored that cannot read it
        raise DirectoryRefused(f"{out} holds a study this version cannot read as a {kind.kind} study; choose "
                               "another --out") from None


def _has_rows(path: Path) -> bool:
    with read_only(path, untouched=True) as store:
        return bool(store.cell_ids() or store.model_ids())


def _differences(before, now, where: str = "") -> list[str]:
    """Each setting that differs, as 'path old; this study has new', in the study's order."""
    if isinstance(before, dict) and isinstance(now, dict):
        out = []
        for key in list(now) + [k for k in before if k not in now]:
            out += _differences(before.get(key), now.get(key), f"{where}.{key}" if where else key)
        return out
    if before == now:
        return []
    return [f"{where} {_short(before)}; this study has {_short(now)}"]


def _short(value) -> str:
    text = "none" if value is None else str(value)
    return text if len(text) <= 60 else text[:57] + "..."
