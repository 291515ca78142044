"""The workspace's care of its own folder: artifact folders the catalog lost (refused on opening,
registered again by ``repair``) and leftovers of interrupted writes and deletes (collected)."""

from __future__ import annotations

import contextlib
import re
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .artifact import ID_LIKE, KIND_PREFIX, RECORD, _read_record, _valid_name
from .errors import WorkspaceError

if TYPE_CHECKING:
    from .workspace import Workspace

STALE_TMP_SECONDS = 24 * 3600


def artifact_folders(ws: Workspace) -> list[Path]:
    """The artifact folders on disk (``<kind>s/<id>``), whether or not the catalog knows them: named
    like an id of their kind, or holding a record. A symbolic link is never one (it could lead outside
    the workspace), nor is an unrelated folder (a project's own ``datasets/`` beside a new workspace)."""
    return sorted(
        q
        for kind, prefix in KIND_PREFIX.items()
        if (ws.root / f"{kind}s").is_dir()
        for q in (ws.root / f"{kind}s").iterdir()
        if q.is_dir()
        and not q.is_symlink()
        and (re.fullmatch(rf"{prefix}-[0-9a-f]{{10}}", q.name) or (q / RECORD).is_file())
    )


def refuse_lost_catalog(ws: Workspace) -> None:
    """A missing or empty catalog beside artifact folders is a lost catalog, not a new workspace:
    opening it as new would orphan every artifact. Refuse, naming the repair."""
    cat = ws.catalog_path
    if cat.is_file() and cat.stat().st_size > 0:
        return
    folders = artifact_folders(ws)
    if folders:
        state = "is empty (0 bytes)" if cat.is_file() else "is missing"
        raise WorkspaceError(
            f"The catalog {cat} {state}, but {len(folders)} artifact folder(s) are beside it "
            f"({', '.join(f.name for f in folders[:3])}{', ...' if len(folders) > 3 else ''}). "
            "Nothing was changed.",
            f"run `mistudio --workspace {ws.root} repair` to register them again from their own "
            "metadata "
            "(labels and metric history lived only in the catalog), or restore catalog.sqlite from "
            "a backup.",
        )


def repair(ws: Workspace) -> dict[str, Any]:
    """Register every artifact folder the catalog does not know, from the folder's own record
    (``.mistudio-artifact.json``) or, without one, from where it lies (kind from ``<kind>s/``, id and
    name from the folder). Returns what was registered and what was skipped, and why."""
    known = {a.id for a in ws.list()}
    done: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    for folder in artifact_folders(ws):
        kind = folder.parent.name[:-1]
        if folder.name in known:
            continue
        rec = _read_record(folder)
        if rec.get("id") not in (None, folder.name) or rec.get("kind") not in (None, kind):
            skipped.append({"folder": str(folder), "why": "its record names another id or kind"})
            continue
        name = str(rec["name"]) if _valid_name(rec.get("name")) else folder.name
        meta: dict[str, Any] = rec["meta"] if isinstance(rec.get("meta"), dict) else {}
        art = ws.register(
            kind,
            ws.unique_name(kind, name),
            meta={**meta, "repaired": True},
            id=folder.name,
            relpath=f"{kind}s/{folder.name}",
            parent=rec.get("parent") if isinstance(rec.get("parent"), str) else None,
        )
        done.append({"id": art.id, "kind": kind, "name": art.name, "from_record": bool(rec)})
    ids = {a.id for a in ws.list()}
    with ws._db() as con:  # parents that were not recovered: the row stands alone
        for d in done:
            art = ws.get(d["id"])
            if art.parent and art.parent not in ids:
                con.execute("UPDATE artifacts SET parent = NULL WHERE id = ?", (art.id,))
    return {"registered": done, "skipped": skipped}


def collect_garbage(ws: Workspace) -> None:
    """Remove leftovers of interrupted writes and deletes: only entries named as this tool names
    them (``.trash/<id>.<hex>``, ``.tmp/<id>.<pid>`` or ``.tmp/unpack-<id>.<pid>`` older than a
    day), never following a link."""
    trash, tmp = ws.no_link(".trash"), ws.no_link(".tmp")
    ident = ID_LIKE.pattern
    for folder, pattern, age in (
        (trash, rf"{ident}\.[0-9a-f]{{6}}", 0),
        (tmp, rf"(?:unpack-)?{ident}\.[0-9]+", STALE_TMP_SECONDS),
    ):
        if not folder.is_dir():
            continue
        for p in folder.iterdir():
            with contextlib.suppress(OSError):
                if (
                    re.fullmatch(pattern, p.name)
                    and not p.is_symlink()
                    and p.is_dir()
                    and time.time() - p.lstat().st_mtime > age
                ):
                    shutil.rmtree(p, ignore_errors=True)
