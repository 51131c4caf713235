"""The results store: one SQLite database per study (<out>/results.sqlite).

Tables
- study:   key -> JSON value (the validated config, the command, versions, git commit)
- models:  one row per trained model (architecture x seed): family, parameters, state size,
           training length and accuracy, steps run and steps to the criterion, checkpoint path
           and the sha256 of its bytes; a model whose training diverged is a row too, with the
           step it diverged at (a result of its recipe, so a rerun does not train it again)
- curves:  per trained model, the training loss every 10 steps and the held-out accuracy of
           each trained task at T at every check
- failures: cells that failed every attempt, with the last error (cleared when one succeeds)
- running:  cells handed to the workers (running or queued) and not finished; meaningful
           while a run holds the study's lock
- skipped: cells not run because a cell they need has nothing for them (its model diverged),
           with the reason; written again by every run, and not retried as failures are
- pretrained: one row per pretrained checkpoint of a pretrained study: its spec, kind, family,
           parameters and training length (with where that length came from), as JSON
- results: one row per evaluated cell (model x task x length x depth): n, accuracy and the
           per-sample scores (so intervals can be recomputed from the store alone). `label`
           names the evaluated task or format ("needle haystack=text"); `depth` is NULL for a
           task without a needle depth.
- diagnostics: one row per diagnostic cell (trained model x measure x evaluated format) of a
           study with `diagnostics:` (analysis/diagnostics.py): the measure's data as JSON. A
           store from before the table gets it when next opened for writing, and reads as
           holding none until then.

A model row and a result row name the intervention they were made under (`intervention`: a
training intervention for a model, and for a result its model's or its own inference one;
'' for the baseline and in stores from before interventions).

Every write is one transaction, so a crash leaves either the whole row or none of it; rows
are keyed by content-addressed ids, so a rerun recognises what is already stored.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS study (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS models (
    model_id       TEXT PRIMARY KEY,
    name           TEXT NOT NULL,
    arch           TEXT NOT NULL,
    family         TEXT NOT NULL,
    seed           INTEGER NOT NULL,
    params         INTEGER NOT NULL,
    state_floats   INTEGER NOT NULL,   -- floats of state per sequence at the training length
    state_growth   TEXT NOT NULL,      -- 'constant' or 'linear' in the sequence length
    train_length   INTEGER NOT NULL,
    train_accuracy REAL NOT NULL,
    train_seconds  REAL NOT NULL,
    final_loss     REAL NOT NULL,
    config         TEXT NOT NULL,      -- JSON: model config and training spec
    checkpoint     TEXT NOT NULL,
    steps          INTEGER,            -- training steps run (NULL in stores from before curves)
    steps_to_criterion INTEGER,        -- the first check at which train.until was met; NULL: not met or none
    diverged       INTEGER,            -- the step its training diverged at (no checkpoint); NULL: trained
    sha256         TEXT,               -- of the checkpoint's bytes; NULL in stores from before it was recorded
    intervention   TEXT NOT NULL DEFAULT ''  -- its training intervention; '': the baseline
);
CREATE TABLE IF NOT EXISTS curves (
    model_id  TEXT NOT NULL,
    step      INTEGER NOT NULL,        -- steps done
    kind      TEXT NOT NULL,           -- 'loss' (training batch) or 'accuracy' (held-out, at T)
    label     TEXT NOT NULL,           -- the trained task's label ('' for the loss)
    value     REAL NOT NULL,
    PRIMARY KEY (model_id, step, kind, label)
);
CREATE TABLE IF NOT EXISTS pretrained (
    model_id  TEXT PRIMARY KEY,
    name      TEXT NOT NULL,
    spec      TEXT NOT NULL,           -- hf:<path or id> or mamba_ssm:<path or id>
    info      TEXT NOT NULL            -- JSON: kind, family, params, declared/train length and source, dtype
);
CREATE TABLE IF NOT EXISTS results (
    cell_id   TEXT PRIMARY KEY,
    model_id  TEXT NOT NULL REFERENCES models(model_id),
    model     TEXT NOT NULL,
    task      TEXT NOT NULL,
    label     TEXT NOT NULL,           -- the evaluated task's label in tables and plots
    knobs     TEXT NOT NULL,           -- JSON
    length    INTEGER NOT NULL,
    depth     REAL,                    -- percent; NULL when the task has no needle depth
    seed      INTEGER NOT NULL,
    n         INTEGER NOT NULL,
    accuracy  REAL NOT NULL,           -- mean per-sample score, in [0, 1]
    scores    TEXT NOT NULL,           -- JSON list of the n per-sample scores
    seconds   REAL NOT NULL,
    intervention TEXT NOT NULL DEFAULT ''  -- its model's training or its own inference intervention; '': none
);
CREATE TABLE IF NOT EXISTS diagnostics (
    cell_id   TEXT PRIMARY KEY,
    model_id  TEXT NOT NULL REFERENCES models(model_id),
    model     TEXT NOT NULL,
    seed      INTEGER NOT NULL,
    measure   TEXT NOT NULL,           -- loss | retention | attention | state-norm
    label     TEXT NOT NULL,           -- the evaluated task's (format's) label
    data      TEXT NOT NULL,           -- JSON: what the measure computed (analysis/diagnostics.py)
    seconds   REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS failures (
    cell_id   TEXT PRIMARY KEY,        -- a model_id for a training cell
    kind      TEXT NOT NULL,           -- 'train' or 'eval'
    what      TEXT NOT NULL,           -- readable: model, task, length, depth
    attempts  INTEGER NOT NULL,
    error     TEXT NOT NULL,           -- the last error, one line
    at        REAL NOT NULL            -- unix time
);
CREATE TABLE IF NOT EXISTS running (
    cell_id   TEXT PRIMARY KEY,
    kind      TEXT NOT NULL,
    what      TEXT NOT NULL,
    started   REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS skipped (
    cell_id   TEXT PRIMARY KEY,
    kind      TEXT NOT NULL,
    what      TEXT NOT NULL,
    reason    TEXT NOT NULL,           -- why it is not run: what a cell it needs came to
    at        REAL NOT NULL            -- unix time
);
"""


@dataclass
class ModelRow:
    model_id: str
    name: str
    arch: str
    family: str
    seed: int
    params: int
    state_floats: int
    state_growth: str
    train_length: int
    train_accuracy: float
    train_seconds: float
    final_loss: float
    config: dict
    checkpoint: str
    steps: int | None = None
    steps_to_criterion: int | None = None
    diverged: int | None = None   # the step training diverged at (train_accuracy 0, no checkpoint); None: trained
    sha256: str | None = None     # of the checkpoint file's bytes; None: not recorded (an older store)
    intervention: str = ""        # its training intervention ("": the baseline)


@dataclass
class ResultRow:
    cell_id: str
    model_id: str
    model: str
    task: str
    knobs: dict
    length: int
    depth: float | None
    seed: int
    n: int
    accuracy: float
    scores: list[float]
    seconds: float
    label: str = ""  # empty: the task's name
    intervention: str = ""  # its model's training intervention or its own inference one ("": none)


@dataclass
class DiagnosticRow:
    cell_id: str
    model_id: str
    model: str
    seed: int
    measure: str
    label: str
    data: dict
    seconds: float


class StoreError(ValueError):
    """A results file that is not a usable store (the file is never modified)."""


TABLES = {"study", "models", "curves", "pretrained", "results", "diagnostics", "failures", "running", "skipped"}


class Store:
    """A study's results database. `readonly`: opened read-only, nothing created or migrated (for
    commands that only read, on a study that may be read-only). `untouched`: read-only, and not a
    byte written anywhere, SQLite's side files included (for deciding whether a run may write)."""

    def __init__(self, path: Path, readonly: bool = False, untouched: bool = False):
        self.path, self.readonly = Path(path), readonly or untouched
        if self.readonly:
            self.db = _connect_read_only(self.path, untouched)
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            try:
                self.db = sqlite3.connect(self.path, timeout=30)
            except sqlite3.Error as error:
                raise StoreError(f"{self.path}: cannot open the results database ({error})") from None
        try:
            self._refuse_foreign()
            if not self.readonly:
                self.db.execute("PRAGMA journal_mode=WAL")
                self.db.executescript(SCHEMA)
                self._migrate()
        except sqlite3.DatabaseError as error:
            self.db.close()
            raise StoreError(f"{self.path} is not a longarch results database ({error}); it is left as it is: "
                             "move it away or choose another output directory") from None
        except StoreError:
            self.db.close()
            raise

    def _refuse_foreign(self) -> None:
        """A SQLite file with tables of its own is not ours to add to (nor to read as a store)."""
        tables = {name for (name,) in self.db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        foreign = tables - TABLES - {"sqlite_sequence"}  # older stores may lack some of ours
        if foreign:
            shown = ", ".join(sorted(foreign)[:3])
            raise StoreError(f"{self.path} is not a longarch results database (it holds the tables {shown}); it "
                             "is left as it is: move it away or choose another output directory")
        if self.readonly and not tables:  # an empty file: read as an empty store
            self.db.close()
            self.db = sqlite3.connect(":memory:")
            self.db.executescript(SCHEMA)

    def _migrate(self) -> None:
        model_columns = {row[1] for row in self.db.execute("PRAGMA table_info(models)")}
        # a store written before training curves, before divergence was a result, before checkpoint hashes
        for column, kind in (("steps", "INTEGER"), ("steps_to_criterion", "INTEGER"), ("diverged", "INTEGER"),
                             ("sha256", "TEXT")):
            if column not in model_columns:
                with self.db:
                    self.db.execute(f"ALTER TABLE models ADD COLUMN {column} {kind}")
        columns = {row[1] for row in self.db.execute("PRAGMA table_info(results)")}
        if "label" not in columns:  # a store written before labels: each row's label is its task
            with self.db:
                self.db.execute("ALTER TABLE results ADD COLUMN label TEXT NOT NULL DEFAULT ''")
                self.db.execute("UPDATE results SET label = task")
        # a store written before interventions: every row is the baseline's
        for table, present in (("models", model_columns), ("results", columns)):
            if "intervention" not in present:
                with self.db:
                    self.db.execute(f"ALTER TABLE {table} ADD COLUMN intervention TEXT NOT NULL DEFAULT ''")

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # study metadata -------------------------------------------------------------------------
    def set_meta(self, key: str, value) -> None:
        with self.db:
            self.db.execute("INSERT OR REPLACE INTO study VALUES (?, ?)", (key, json.dumps(value)))

    def meta(self) -> dict:
        return {k: json.loads(v) for k, v in self.db.execute("SELECT key, value FROM study")}

    # models ---------------------------------------------------------------------------------
    def put_model(self, row: ModelRow, curve: list[tuple[int, str, str, float]] | None = None) -> None:
        """The model's row and, in the same transaction, its curve: (step, kind, label, value)."""
        values = {**row.__dict__, "config": json.dumps(row.config)}
        updates = ", ".join(f"{column} = excluded.{column}" for column in values if column != "model_id")
        with self.db:  # an upsert keeps the row's place, so models stay in the order first trained
            self.db.execute(f"INSERT INTO models ({', '.join(values)}) VALUES ({', '.join('?' * len(values))}) "
                            f"ON CONFLICT(model_id) DO UPDATE SET {updates}", list(values.values()))
            if curve is not None:
                self.db.execute("DELETE FROM curves WHERE model_id = ?", (row.model_id,))
                self.db.executemany("INSERT INTO curves VALUES (?, ?, ?, ?, ?)",
                                    [(row.model_id, step, kind, label, value) for step, kind, label, value in curve])

    def curves(self) -> dict[str, list[tuple[int, str, str, float]]]:
        """model_id -> its curve points (step, kind, label, value), by step."""
        out: dict[str, list] = {}
        for model_id, step, kind, label, value in self.db.execute(
                "SELECT model_id, step, kind, label, value FROM curves ORDER BY model_id, step, kind, label"):
            out.setdefault(model_id, []).append((step, kind, label, value))
        return out

    def model(self, model_id: str) -> ModelRow | None:
        rows = self._models("WHERE model_id = ?", (model_id,))
        return rows[0] if rows else None

    def models(self) -> list[ModelRow]:
        return self._models("ORDER BY rowid", ())

    def _models(self, where: str, args: tuple) -> list[ModelRow]:
        cursor = self.db.execute(f"SELECT * FROM models {where}", args)
        columns = [c[0] for c in cursor.description]
        rows = [dict(zip(columns, r)) for r in cursor]
        return [ModelRow(**{**r, "config": json.loads(r["config"])}) for r in rows]

    # pretrained checkpoints -----------------------------------------------------------------
    def put_pretrained(self, model_id: str, name: str, spec: str, info: dict) -> None:
        with self.db:  # an upsert keeps the row's place: models stay in the order first evaluated
            self.db.execute("INSERT INTO pretrained VALUES (?, ?, ?, ?) ON CONFLICT(model_id) DO UPDATE SET "
                            "name = excluded.name, spec = excluded.spec, info = excluded.info",
                            (model_id, name, spec, json.dumps(info, sort_keys=True)))

    def pretrained(self) -> list[dict]:
        """{model_id, name, spec, **info} per checkpoint, in the order first evaluated."""
        if not self._has("pretrained"):  # a store from before the table, opened without adding it
            return []
        return [{"model_id": m, "name": n, "spec": s, **json.loads(i)}
                for m, n, s, i in self.db.execute("SELECT * FROM pretrained ORDER BY rowid")]

    # results --------------------------------------------------------------------------------
    def put_result(self, row: ResultRow) -> None:
        values = {**row.__dict__, "label": row.label or row.task, "knobs": json.dumps(row.knobs, sort_keys=True),
                  "scores": json.dumps(row.scores)}
        with self.db:
            self.db.execute(f"INSERT OR REPLACE INTO results ({', '.join(values)}) "
                            f"VALUES ({', '.join('?' * len(values))})", list(values.values()))

    def cell_ids(self) -> set[str]:
        """The ids of every stored cell: evaluated ones and diagnostics."""
        ids = {r[0] for r in self.db.execute("SELECT cell_id FROM results")}
        if self._has("diagnostics"):  # a store from before the table, opened without adding it
            ids |= {r[0] for r in self.db.execute("SELECT cell_id FROM diagnostics")}
        return ids

    def results(self) -> list[ResultRow]:
        cursor = self.db.execute("SELECT * FROM results ORDER BY model, label, length, depth")
        columns = [c[0] for c in cursor.description]
        rows = [dict(zip(columns, r)) for r in cursor]
        return [ResultRow(**{**r, "knobs": json.loads(r["knobs"]), "scores": json.loads(r["scores"])}) for r in rows]

    # diagnostics ----------------------------------------------------------------------------
    def put_diagnostic(self, row: DiagnosticRow) -> None:
        values = {**row.__dict__, "data": json.dumps(row.data, sort_keys=True)}
        with self.db:
            self.db.execute(f"INSERT OR REPLACE INTO diagnostics ({', '.join(values)}) "
                            f"VALUES ({', '.join('?' * len(values))})", list(values.values()))

    def diagnostics(self) -> list[DiagnosticRow]:
        """Every stored diagnostic, by model, measure, label and seed."""
        if not self._has("diagnostics"):
            return []
        return [DiagnosticRow(**{**r, "data": json.loads(r["data"])})
                for r in self._rows("SELECT * FROM diagnostics ORDER BY model, measure, label, seed")]

    # failures and cells in flight ------------------------------------------------------------
    def put_failure(self, cell_id: str, kind: str, what: str, attempts: int, error: str) -> None:
        with self.db:
            self.db.execute("INSERT OR REPLACE INTO failures VALUES (?, ?, ?, ?, ?, ?)",
                            (cell_id, kind, what, attempts, error, time.time()))

    def clear_failure(self, cell_id: str) -> None:
        with self.db:
            self.db.execute("DELETE FROM failures WHERE cell_id = ?", (cell_id,))

    def failures(self) -> list[dict]:
        return self._rows("SELECT * FROM failures ORDER BY at")

    def _rows(self, query: str) -> list[dict]:
        """The rows of a query as dicts keyed by column name."""
        cursor = self.db.execute(query)
        columns = [c[0] for c in cursor.description]
        return [dict(zip(columns, r)) for r in cursor]

    def set_running(self, cell_id: str, kind: str, what: str) -> None:
        with self.db:
            self.db.execute("INSERT OR REPLACE INTO running VALUES (?, ?, ?, ?)", (cell_id, kind, what, time.time()))

    def clear_running(self, cell_id: str | None = None) -> None:
        """One cell, or every cell (a new run starts with none in flight)."""
        with self.db:
            if cell_id is None:
                self.db.execute("DELETE FROM running")
            else:
                self.db.execute("DELETE FROM running WHERE cell_id = ?", (cell_id,))

    def running(self) -> list[dict]:
        return self._rows("SELECT * FROM running ORDER BY started")

    def set_checkpoint_hash(self, model_id: str, sha256: str) -> None:
        """Record the hash of a checkpoint accepted without one (a store from before hashes)."""
        with self.db:
            self.db.execute("UPDATE models SET sha256 = ? WHERE model_id = ?", (sha256, model_id))

    # skipped cells ---------------------------------------------------------------------------
    def put_skipped(self, cell_id: str, kind: str, what: str, reason: str) -> None:
        """A cell not run, and why; a failure recorded for it before is cleared (it is settled)."""
        with self.db:
            self.db.execute("INSERT OR REPLACE INTO skipped VALUES (?, ?, ?, ?, ?)",
                            (cell_id, kind, what, reason, time.time()))
            self.db.execute("DELETE FROM failures WHERE cell_id = ?", (cell_id,))

    def clear_skipped(self) -> None:
        """Every cell's record (a run records anew what it skips)."""
        with self.db:
            self.db.execute("DELETE FROM skipped")

    def skipped(self) -> list[dict]:
        if not self._has("skipped"):  # a store from before the table, opened without adding it
            return []
        return self._rows("SELECT * FROM skipped ORDER BY at, rowid")

    def model_ids(self) -> set[str]:
        return {r[0] for r in self.db.execute("SELECT model_id FROM models")}

    def diverged_ids(self) -> set[str]:
        """The models stored as diverged."""
        if not self._has("models", "diverged"):  # a store from before the column, opened without adding it
            return set()
        return {r[0] for r in self.db.execute("SELECT model_id FROM models WHERE diverged IS NOT NULL")}

    def _has(self, table: str, column: str | None = None) -> bool:
        """Whether the database has the table (and its column)."""
        columns = {row[1] for row in self.db.execute(f"PRAGMA table_info({table})")}
        return bool(columns) and (column is None or column in columns)

def _connect_read_only(path: Path, untouched: bool = False) -> sqlite3.Connection:
    """A read-only connection. Immutable (SQLite then writes no side file and takes no lock) on a
    directory this process cannot write, where no run can be writing either, and when asked not
    to touch anything while no write-ahead log holds data the main file lacks."""
    if not path.is_file():
        raise StoreError(f"no results database at {path}")
    wal = path.with_name(path.name + "-wal")
    pending = wal.is_file() and wal.stat().st_size > 0
    immutable = "&immutable=1" if not os.access(path.parent, os.W_OK) or (untouched and not pending) else ""
    try:
        return sqlite3.connect(f"file:{urllib.parse.quote(str(path.resolve()))}?mode=ro{immutable}", uri=True,
                               timeout=30)
    except sqlite3.Error as error:
        raise StoreError(f"{path}: cannot open the results database ({error})") from None


def read_only(path: Path, untouched: bool = False) -> Store:
    """The store at `path`, read-only (`untouched`: see Store)."""
    return Store(path, readonly=True, untouched=untouched)


def for_reading(path: Path) -> Store:
    """The store at `path` for a command that only reads: opened as usual (older stores brought up
    to date) where this process may write, else read-only."""
    path = Path(path)
    writable = os.access(path.parent, os.W_OK) and (not path.exists() or os.access(path, os.W_OK))
    return Store(path, readonly=not writable)
