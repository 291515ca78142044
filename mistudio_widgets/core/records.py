"""The workspace's two record tables beside the artifacts: training metrics (one row per run, step,
split and name) and feature labels (every label kept, the newest shown)."""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import contextlib
    import sqlite3

    from .artifact import Artifact


def _now() -> float:
    return time.time()


class Records:
    """Metrics and labels, mixed into :class:`Workspace` (which holds the catalog connection)."""

    if TYPE_CHECKING:  # what the mixin uses of the workspace

        def _db(self) -> contextlib.AbstractContextManager[sqlite3.Connection]: ...

        def get(self, ref: str | Artifact, kind: str | None = None) -> Artifact: ...

    # -- metric history (training runs) ----------------------------------------------------
    def add_metrics(self, run: str, step: int, split: str, values: dict[str, float]) -> None:
        now = time.time()
        rows = [(run, int(step), split, k, None if v is None else float(v), now) for k, v in values.items()]
        with self._db() as con:
            con.executemany("INSERT OR REPLACE INTO metrics VALUES (?,?,?,?,?,?)", rows)

    def metrics(self, run: str, split: str | None = None, since_step: int = -1) -> list[dict[str, Any]]:
        """Metric rows of a run as ``{step, split, <name>: value, ...}``, by step."""
        sql, args = (
            "SELECT step, split, name, value FROM metrics WHERE run = ? AND step > ?",
            [run, since_step],
        )
        if split:
            sql += " AND split = ?"
            args.append(split)
        out: dict[tuple[int, str], dict[str, Any]] = {}
        with self._db() as con:
            for step, sp, name, value in con.execute(sql + " ORDER BY step", args):
                out.setdefault((step, sp), {"step": step, "split": sp})[name] = value
        return sorted(out.values(), key=lambda r: (r["step"], r["split"]))

    # -- feature labels (every label is kept: the newest one of a feature is its label) -----------
    def add_label(
        self,
        sae: str,
        feature: int,
        label: str,
        *,
        method: str = "manual",
        model: str | None = None,
        template: str | None = None,
        score: float | None = None,
        meta: dict[str, Any] | None = None,
        time: float | None = None,
    ) -> int:
        sae_id = self.get(sae, "sae").id
        with self._db() as con:
            cur = con.execute(
                "INSERT INTO labels (sae, feature, label, method, model, template, score, time, meta) "
                "VALUES (?,?,?,?,?,?,?,?,?)",
                (
                    sae_id,
                    int(feature),
                    str(label),
                    method,
                    model,
                    template,
                    score,
                    time or _now(),
                    json.dumps(meta or {}),
                ),
            )
            return int(cur.lastrowid or 0)

    def add_labels(self, sae: str, rows: list[dict[str, Any]]) -> int:
        """Add many labels in one transaction (each row: feature, label, and optionally method, model,
        template, score, meta, time). Returns how many were added."""
        sae_id, now = self.get(sae, "sae").id, _now()
        values = [
            (
                sae_id,
                int(r["feature"]),
                str(r["label"]),
                r.get("method", "manual"),
                r.get("model"),
                r.get("template"),
                r.get("score"),
                r.get("time") or now,
                json.dumps(r.get("meta") or {}),
            )
            for r in rows
        ]
        with self._db() as con:
            con.execute("BEGIN IMMEDIATE")
            try:
                con.executemany(
                    "INSERT INTO labels (sae, feature, label, method, model, template, score, time, meta) "
                    "VALUES (?,?,?,?,?,?,?,?,?)",
                    values,
                )
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise
        return len(values)

    def labels(self, sae: str, feature: int | None = None, *, history: bool = False) -> list[dict[str, Any]]:
        """Labels of an SAE's features: the newest per feature, or (``history``) every one, oldest first."""
        sae_id = self.get(sae, "sae").id
        cols = "id, feature, label, method, model, template, score, time, meta"
        sql, args = f"SELECT {cols} FROM labels WHERE sae = ?", list[Any]([sae_id])
        if feature is not None:
            sql += " AND feature = ?"
            args.append(int(feature))
        if not history:
            sql += " AND id IN (SELECT MAX(id) FROM labels WHERE sae = ? GROUP BY feature)"
            args.append(sae_id)
        with self._db() as con:
            rows = con.execute(sql + " ORDER BY feature, id", args).fetchall()
        return [{**dict(zip(cols.split(", "), r)), "meta": json.loads(r[-1])} for r in rows]
