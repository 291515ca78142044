"""The catalog's SQLite schema, as numbered migrations (a catalog at version n-1 is brought to n by
migration n; append, never edit)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from .errors import WorkspaceError

SCHEMA_VERSION = 3


# Migration n brings a catalog from version n-1 to n. Append, never edit.
MIGRATIONS: dict[int, str] = {
    1: """
    CREATE TABLE artifacts (
        id TEXT PRIMARY KEY,
        kind TEXT NOT NULL,
        name TEXT NOT NULL,
        path TEXT,
        parent TEXT,
        created REAL NOT NULL,
        updated REAL NOT NULL,
        meta TEXT NOT NULL DEFAULT '{}',
        UNIQUE (kind, name)
    );
    CREATE INDEX artifacts_parent ON artifacts(parent);
    """,
    2: """
    CREATE TABLE metrics (
        run TEXT NOT NULL,
        step INTEGER NOT NULL,
        split TEXT NOT NULL,
        name TEXT NOT NULL,
        value REAL,
        time REAL NOT NULL,
        PRIMARY KEY (run, split, name, step)
    );
    """,
    3: """
    CREATE TABLE labels (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        sae TEXT NOT NULL,
        feature INTEGER NOT NULL,
        label TEXT NOT NULL,
        method TEXT NOT NULL,
        model TEXT,
        template TEXT,
        score REAL,
        time REAL NOT NULL,
        meta TEXT NOT NULL DEFAULT '{}'
    );
    CREATE INDEX labels_sae_feature ON labels(sae, feature, id);
    """,
}


def upgrade(con: sqlite3.Connection, root: Path) -> None:
    """Bring the catalog (inside the caller's transaction) to :data:`SCHEMA_VERSION`; a catalog written
    by a newer version is refused."""
    con.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)")
    row = con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    version = int(row[0]) if row else 0
    if version > SCHEMA_VERSION:
        raise WorkspaceError(
            f"The workspace {root} was written by a newer mistudio-widgets "
            f"(schema {version}, this one knows {SCHEMA_VERSION}).",
            "upgrade mistudio-widgets (pip install -U mistudio-widgets) or use another workspace.",
        )
    for v in range(version + 1, SCHEMA_VERSION + 1):
        for stmt in MIGRATIONS[v].split(";"):
            if stmt.strip():
                con.execute(stmt)
    if version != SCHEMA_VERSION:
        con.execute("INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
