"""The workspace: a folder holding ``catalog.sqlite`` and one folder per artifact.

Artifacts (datasets, tokenizations, models, SAEs, runs, ...) are written under a temporary
name, renamed into place when complete, and only then registered in the catalog, so a crash or a
full disk never leaves a half-written artifact visible as complete.
"""

from __future__ import annotations

import builtins
import contextlib
import json
import os
import shutil
import sqlite3
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

from . import housekeeping
from .artifact import ID_LIKE, KIND_PREFIX, RECORD, Artifact, _valid_name
from .catalog_schema import SCHEMA_VERSION, upgrade
from .disk import _fsync_tree, atomic_folder, disk_error, os_error_in
from .errors import ArtifactNotFound, WorkspaceError
from .housekeeping import collect_garbage, refuse_lost_catalog
from .records import Records

__all__ = [  # the workspace's public names, wherever they live now
    "ID_LIKE",
    "KIND_PREFIX",
    "RECORD",
    "SCHEMA_VERSION",
    "Artifact",
    "ArtifactWriter",
    "Workspace",
    "atomic_folder",
    "default_root",
    "disk_error",
    "os_error_in",
]

ENV_HOME = "MISTUDIO_HOME"
DEFAULT_DIRNAME = "mistudio-workspace"
OWN_FOLDERS = (".tmp", ".trash")  # the workspace's housekeeping folders (never links)


def _now() -> float:
    return time.time()


def default_root() -> Path:
    return Path(os.environ.get(ENV_HOME) or Path.cwd() / DEFAULT_DIRNAME)


class ArtifactWriter:
    """Handed out by :meth:`Workspace.write_artifact`: write files under ``path``, fill ``meta``."""

    def __init__(self, id: str, kind: str, name: str, path: Path, parent: str | None, meta: dict[str, Any]):
        self.id, self.kind, self.name, self.path, self.parent, self.meta = id, kind, name, path, parent, meta


class Workspace(Records):
    """A workspace folder. Cheap to construct; every call opens its own short sqlite connection,
    so one Workspace may be used from several threads and several kernels at once."""

    def __init__(
        self,
        root: str | os.PathLike[str] | None = None,
        *,
        create: bool = True,
        repair: bool = False,
        existing: bool = False,
    ):
        """Open (or with ``create`` make) the workspace at ``root``. With ``existing`` (read-only
        commands) a folder without a catalog is refused and left exactly as it is."""
        self.root = Path(root).expanduser().resolve() if root else default_root().resolve()
        if not self.root.exists():
            if not create:
                raise WorkspaceError(
                    f"No workspace at {self.root}.", "pass an existing folder or create=True."
                )
            try:
                self.root.mkdir(parents=True)
            except OSError as exc:
                raise WorkspaceError(
                    f"Cannot create the workspace folder {self.root}: {exc.strerror}.",
                    "choose a folder you can write to (argument, --workspace or MISTUDIO_HOME).",
                ) from exc
        elif not self.root.is_dir():
            raise WorkspaceError(f"{self.root} is a file, not a workspace folder.", "choose a folder.")
        self.catalog_path = self.root / "catalog.sqlite"
        self.read_only: str | None = None  # why the catalog is open for reading only, when it is
        was_workspace = self.catalog_path.is_file() and self.catalog_path.stat().st_size > 0
        if existing and not was_workspace:
            self._refuse_links()
            refuse_lost_catalog(self)  # artifact folders without a catalog: say so, and name the repair
            raise WorkspaceError(
                f"{self.root} is not a mistudio workspace (it has no catalog.sqlite); nothing was read, "
                "created or cleaned there.",
                "pass the workspace folder (--workspace or MISTUDIO_HOME); a command that adds something "
                "(e.g. mistudio datasets add default) makes a new workspace.",
            )
        self._refuse_links()
        if not repair:
            refuse_lost_catalog(self)
        try:
            self._migrate()
        except WorkspaceError as exc:
            if not self._readable_without_writing(exc):
                raise
        if not self.read_only and was_workspace:
            collect_garbage(self)

    def __repr__(self) -> str:
        return f"Workspace({str(self.root)!r})"

    # -- catalog -------------------------------------------------------------------------
    @contextlib.contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        try:
            if self.read_only:
                con = sqlite3.connect(
                    f"{self.catalog_path.as_uri()}?{self._ro_mode}",
                    uri=True,
                    timeout=30,
                    isolation_level=None,
                )
            else:
                con = sqlite3.connect(self.catalog_path, timeout=30, isolation_level=None)
        except sqlite3.Error as exc:
            raise WorkspaceError(
                f"Cannot open the catalog {self.catalog_path}: {exc}.", "check the folder's permissions."
            ) from exc
        try:
            con.execute("PRAGMA busy_timeout = 30000")
            yield con
        except sqlite3.OperationalError as exc:
            if not self.read_only:
                raise
            raise WorkspaceError(
                f"The workspace {self.root} is open for browsing only ({self.read_only}); "
                "nothing was changed.",
                "free some disk space, then try again."
                if "full" in self.read_only
                else "make the folder writable, or copy the workspace somewhere writable, then try again.",
            ) from exc
        finally:
            con.close()

    def _readable_without_writing(self, exc: WorkspaceError) -> bool:
        """After the catalog could not be opened for writing (a read-only folder, a full disk): open it
        for reading only when it is readable and up to date, so the workspace can still be browsed."""
        cause = str(exc.__cause__ or "")
        if not self.catalog_path.is_file() or not any(
            w in cause for w in ("readonly", "read-only", "unable to open", "disk is full", "disk I/O")
        ):
            return False
        self.read_only = (
            "the disk is full"
            if "full" in cause or self._disk_full()
            else "the workspace folder is read-only"
        )
        for mode in (
            "mode=ro",
            "immutable=1",
        ):  # immutable: WAL catalogs in folders where -shm cannot be made
            self._ro_mode = mode
            try:
                with self._db() as con:
                    row = con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            except (WorkspaceError, sqlite3.Error):
                continue
            if row and int(row[0]) == SCHEMA_VERSION:
                return True
        self.read_only = None
        return False

    def _migrate(self) -> None:
        try:
            with self._db() as con:
                if con.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                    con.execute("PRAGMA journal_mode = WAL")
                con.execute("BEGIN IMMEDIATE")
                try:
                    upgrade(con, self.root)
                    con.execute("COMMIT")
                except BaseException:
                    con.execute("ROLLBACK")
                    raise
        except sqlite3.OperationalError as exc:
            if "full" in str(exc) or self._disk_full():
                raise WorkspaceError(
                    f"Cannot use the catalog {self.catalog_path}: the disk is full ({exc}).",
                    "free some disk space or point MISTUDIO_HOME at a larger disk.",
                ) from exc
            raise WorkspaceError(
                f"Cannot use the catalog {self.catalog_path}: {exc}.",
                "the workspace folder and catalog.sqlite must be writable by you; fix their permissions "
                "or choose another workspace.",
            ) from exc
        except sqlite3.DatabaseError as exc:
            raise WorkspaceError(
                f"The catalog {self.catalog_path} is not a readable SQLite database ({exc}).",
                "move the damaged catalog.sqlite aside, then run `mistudio repair` to register the "
                "artifact folders again (they are kept).",
            ) from exc

    def _refuse_links(self) -> None:
        """The workspace's own folders (``.tmp``, ``.trash``, ``<kind>s/``) and the catalog are never
        symbolic links: a link there would lead housekeeping, writes or deletes outside the workspace."""
        for name in (*OWN_FOLDERS, *(f"{kind}s" for kind in KIND_PREFIX), "catalog.sqlite"):
            self.no_link(name, "folder" if name != "catalog.sqlite" else "catalog")

    def no_link(self, rel: str | Path, what: str = "folder") -> Path:
        """``root / rel``, after checking that neither it nor any folder between it and the root is a
        symbolic link (a clear error otherwise; nothing is touched)."""
        p = self.root
        for part in Path(rel).parts:
            p = p / part
            if p.is_symlink():
                raise WorkspaceError(
                    f"The workspace's {what} {p} is a symbolic link (to {os.readlink(p)}); mistudio never "
                    "follows links inside a workspace, so nothing there was read, written or deleted.",
                    f"replace the link with a real folder (move what it points to into {p}), or remove it.",
                )
        return p

    def _disk_full(self) -> bool:
        with contextlib.suppress(OSError):
            return os.statvfs(self.root).f_bavail == 0
        return False

    def repair(self) -> dict[str, Any]:
        """Register every artifact folder the catalog does not know (see :func:`housekeeping.repair`)."""
        return housekeeping.repair(self)

    @property
    def schema_version(self) -> int:
        with self._db() as con:
            return int(con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0])

    def _row(self, row: tuple) -> Artifact:
        id_, kind, name, path, parent, created, updated, meta = row
        try:
            data = json.loads(meta or "{}")
        except (json.JSONDecodeError, TypeError, RecursionError) as exc:
            raise WorkspaceError(
                f"The catalog row of the {kind} {name!r} ({id_}) has unreadable metadata ({exc}).",
                "restore catalog.sqlite from a backup, or remove the row: sqlite3 "
                f"{self.root / 'catalog.sqlite'} "
                f"\"DELETE FROM artifacts WHERE id = '{id_}'\".",
            ) from exc
        if not isinstance(data, dict):  # a catalog changed by hand: keep the row usable
            data = {"refused_meta": data, "refused_because": "its metadata is not a JSON object"}
        folder = None
        if path:
            try:
                folder = self.contained(path, f"folder of the {kind} {name!r}")
                if path != f"{kind}s/{id_}":
                    folder = None
                    raise WorkspaceError(
                        f"its recorded folder {path!r} is not {kind}s/{id_}", "remove the catalog row."
                    )
                self.no_link(path, f"folder of the {kind} {name!r}")
            except (
                WorkspaceError
            ) as exc:  # a tampered catalog: the row stays listable and deletable, its folder unused
                folder = None
                data = {**data, "refused_path": str(path), "refused_because": exc.problem}
        return Artifact(id_, kind, name, folder, parent, created, updated, data)

    def contained(self, path: str | Path, what: str = "path") -> Path:
        """``path`` (relative to the workspace, or absolute) if, with symlinks and '..' resolved, it lies
        strictly inside the workspace; otherwise a clear error (and the caller touches nothing)."""
        p = self.root / path
        try:
            real = p.resolve()
        except (RuntimeError, OSError) as exc:  # a symbolic link loop
            raise WorkspaceError(
                f"The {what} ({path}) cannot be resolved ({exc}); nothing there is read, written or deleted.",
                "remove the looping link, or the catalog entry (mistudio delete ID removes only the row).",
            ) from None
        if real == self.root or not real.is_relative_to(self.root):
            raise WorkspaceError(
                f"The {what} ({path}) leads to {real}, outside the workspace {self.root}; nothing "
                "there is read, written or deleted.",
                "the catalog or bundle was changed by hand or by another program: remove that entry "
                "(mistudio delete ID removes only the catalog row).",
            )
        return p

    _COLS = "id, kind, name, path, parent, created, updated, meta"

    def list(self, kind: str | None = None, *, parent: str | None = None) -> list[Artifact]:
        """Artifacts, oldest first, optionally of one kind and/or one parent."""
        sql, args = f"SELECT {self._COLS} FROM artifacts WHERE 1=1", []
        if kind:
            sql += " AND kind = ?"
            args.append(kind)
        if parent:
            sql += " AND parent = ?"
            args.append(parent)
        with self._db() as con:
            return [self._row(r) for r in con.execute(sql + " ORDER BY created, id", args)]

    def find(self, ref: str, kind: str | None = None) -> Artifact | None:
        """An artifact by id, or by name within ``kind``; None when absent."""
        with self._db() as con:
            row = con.execute(f"SELECT {self._COLS} FROM artifacts WHERE id = ?", (ref,)).fetchone()
            if row is None:
                sql, args = f"SELECT {self._COLS} FROM artifacts WHERE name = ?", [ref]
                if kind:
                    sql += " AND kind = ?"
                    args.append(kind)
                rows = con.execute(sql, args).fetchall()
                if len(rows) > 1:
                    raise WorkspaceError(
                        f"The name {ref!r} is used by several artifacts ({', '.join(r[1] for r in rows)}).",
                        "refer to it by id instead.",
                    )
                row = rows[0] if rows else None
        art = self._row(row) if row else None
        if art and kind and art.kind != kind:
            return None
        return art

    def get(self, ref: str | Artifact, kind: str | None = None) -> Artifact:
        """Like :meth:`find`, but raises :class:`ArtifactNotFound` naming what exists."""
        if isinstance(ref, Artifact):
            ref = ref.id
        art = self.find(ref, kind)
        if art is None:
            names = [a.name for a in self.list(kind)]
            what = kind or "artifact"
            raise ArtifactNotFound(
                f"No {what} called {ref!r} in the workspace {self.root}.",
                f"use one of: {', '.join(names)}." if names else f"add a {what} first.",
            )
        return art

    def new_id(self, kind: str) -> str:
        return f"{KIND_PREFIX.get(kind, kind[:3])}-{uuid.uuid4().hex[:10]}"

    def unique_name(self, kind: str, base: str) -> str:
        """``base``, or ``base-2``, ``base-3``, ... whichever is still free for ``kind``."""
        like = base.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "-%"
        with self._db() as con:  # only the names that could clash, not every artifact of the kind
            taken = {
                r[0]
                for r in con.execute(
                    "SELECT name FROM artifacts WHERE kind = ? AND (name = ? OR name LIKE ? ESCAPE '\\')",
                    (kind, base, like),
                )
            }
        name, n = base, 1
        while name in taken:
            n += 1
            name = f"{base}-{n}"
        return name

    def check_names_free(self, kind: str, names: builtins.list[str]) -> None:
        """Raise the error :meth:`register` would give for the first of ``names`` not free for ``kind``
        (a group of artifacts about to be made checks them all before making the first)."""
        with self._db() as con:
            for name in names:
                self._check_name_free(kind, name, con)

    def _check_name_free(
        self, kind: str, name: str, con: sqlite3.Connection, own_id: str | None = None
    ) -> None:
        if not name or not name.strip():
            raise WorkspaceError(f"An empty name was given for a {kind}.", "give a non-empty name.")
        if ID_LIKE.fullmatch(name) and name != own_id:
            raise WorkspaceError(
                f"The name {name!r} for a {kind} has the form of an artifact id; it could hide the artifact "
                "with that id.",
                "choose a name that is not of the form xx-0123456789.",
            )
        if not _valid_name(name):
            raise WorkspaceError(
                f"The name {name[:80]!r} for a {kind} holds line breaks or other control characters.",
                "give a name of printable characters.",
            )
        if con.execute("SELECT 1 FROM artifacts WHERE kind = ? AND name = ?", (kind, name)).fetchone():
            raise WorkspaceError(
                f"A {kind} called {name!r} already exists.",
                "choose another name, or delete or rename the existing one.",
            )

    def register(
        self,
        kind: str,
        name: str,
        *,
        meta: dict[str, Any] | None = None,
        parent: str | None = None,
        id: str | None = None,
        relpath: str | None = None,
    ) -> Artifact:
        """Register an artifact that needs no folder (e.g. a hub model reference)."""
        now = time.time()
        id = id or self.new_id(kind)
        with self._db() as con:
            con.execute("BEGIN IMMEDIATE")
            try:
                self._check_name_free(kind, name, con, own_id=id)
                con.execute(
                    f"INSERT INTO artifacts ({self._COLS}) VALUES (?,?,?,?,?,?,?,?)",
                    (id, kind, name, relpath, parent, now, now, json.dumps(meta or {})),
                )
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise
        return self._keep_record(self.get(id))

    def _keep_record(self, art: Artifact) -> Artifact:
        """Write the artifact's row into its folder too, so that a lost catalog can be rebuilt
        (:meth:`repair`). Best effort: the catalog stays the source of truth."""
        if art.path is not None and art.path.is_dir():
            tmp = art.path / f".{RECORD}.{uuid.uuid4().hex[:6]}"
            try:
                tmp.write_text(
                    json.dumps({k: v for k, v in art.to_dict().items() if k != "path"}, default=str)
                )
                os.replace(tmp, art.path / RECORD)
            except OSError:
                tmp.unlink(missing_ok=True)
        return art

    @contextlib.contextmanager
    def write_artifact(
        self, kind: str, name: str, *, meta: dict[str, Any] | None = None, parent: str | None = None
    ) -> Iterator[ArtifactWriter]:
        """Write a new artifact folder atomically.

        Files go into ``writer.path`` (a temporary folder). When the block ends without error the
        folder is renamed to ``<kind>s/<id>`` and the artifact is registered; on any error the
        temporary folder is removed and nothing is registered. Disk-full and permission errors
        become :class:`ArtifactWriteError`.
        """
        with self._db() as con:
            self._check_name_free(kind, name, con)
        id_ = self.new_id(kind)
        tmp = self.no_link(".tmp") / f"{id_}.{os.getpid()}"
        final_rel = f"{kind}s/{id_}"
        final = self.root / final_rel
        try:
            tmp.mkdir(parents=True)
            self.no_link(f"{kind}s").mkdir(exist_ok=True)
            self.no_link(".tmp"), self.no_link(f"{kind}s")
        except OSError as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            raise disk_error(exc, f"the {kind} {name!r}") from exc
        writer = ArtifactWriter(id_, kind, name, tmp, parent, dict(meta or {}))
        try:
            yield writer
            _fsync_tree(tmp)
            os.replace(tmp, final)
        except BaseException as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            if (os_exc := os_error_in(exc)) is not None:
                raise disk_error(os_exc, f"the {kind} {name!r}") from exc
            raise
        try:
            self.register(kind, name, meta=writer.meta, parent=parent, id=id_, relpath=final_rel)
        except BaseException:
            shutil.rmtree(final, ignore_errors=True)
            raise

    def create_folder(
        self, kind: str, name: str, *, meta: dict[str, Any] | None = None, parent: str | None = None
    ) -> Artifact:
        """Register an artifact whose folder fills over time (a training run): it is visible at once,
        and its ``meta['status']`` says whether it is complete. Files inside are written atomically
        by their writers (see :func:`atomic_folder`)."""
        id_ = self.new_id(kind)
        rel = f"{kind}s/{id_}"
        try:
            self.no_link(f"{kind}s")
            (self.root / rel).mkdir(parents=True)
            self.no_link(rel)
        except OSError as exc:
            raise disk_error(exc, f"the {kind} {name!r}") from exc
        try:
            return self.register(kind, name, meta=meta, parent=parent, id=id_, relpath=rel)
        except BaseException:
            shutil.rmtree(self.root / rel, ignore_errors=True)
            raise

    def update_meta(self, ref: str, **changes: Any) -> Artifact:
        """Merge ``changes`` into an artifact's metadata."""
        with self._db() as con:
            con.execute("BEGIN IMMEDIATE")
            try:
                row = con.execute("SELECT meta FROM artifacts WHERE id = ?", (self.get(ref).id,)).fetchone()
                meta = {**json.loads(row[0]), **changes}
                con.execute(
                    "UPDATE artifacts SET meta = ?, updated = ? WHERE id = ?",
                    (json.dumps(meta), time.time(), self.get(ref).id),
                )
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise
        return self._keep_record(self.get(ref))

    def rename(self, ref: str, new_name: str) -> Artifact:
        art = self.get(ref)
        with self._db() as con:
            con.execute("BEGIN IMMEDIATE")
            try:
                if new_name != art.name:
                    self._check_name_free(art.kind, new_name, con, own_id=art.id)
                con.execute(
                    "UPDATE artifacts SET name = ?, updated = ? WHERE id = ?", (new_name, time.time(), art.id)
                )
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise
        return self._keep_record(self.get(art.id))

    def children(self, ref: str) -> builtins.list[Artifact]:
        return self.list(parent=self.get(ref).id)

    def delete(self, ref: str, *, cascade: bool = False, force: bool = False) -> builtins.list[str]:
        """Delete an artifact (and, with ``cascade``, everything derived from it). Returns the ids removed.
        A job running in a live process here is never deleted; one marked running on another machine
        only with ``force`` (after the user checked it no longer runs there)."""
        art = self.get(ref)
        kids = self.children(art.id)
        self._refuse_in_use(art, kids if cascade else [], force=force)
        if kids and not cascade:
            raise WorkspaceError(
                f"The {art.kind} {art.name!r} has {len(kids)} derived artifact(s): "
                f"{', '.join(k.name for k in kids)}.",
                "delete those first, or pass cascade=True (--cascade) to delete them too.",
            )
        removed: list[str] = []
        for kid in kids:
            removed += self.delete(kid.id, cascade=True, force=force)
        with self._db() as con:
            con.execute("DELETE FROM artifacts WHERE id = ?", (art.id,))
            con.execute("DELETE FROM metrics WHERE run = ?", (art.id,))
            con.execute("DELETE FROM labels WHERE sae = ?", (art.id,))
        if (
            art.path
            and art.path.exists()
            and self.contained(art.path, f"folder of the {art.kind} {art.name!r}")
        ):
            self.no_link(art.path.relative_to(self.root), f"folder of the {art.kind} {art.name!r}")
            trash = self.no_link(".trash") / f"{art.id}.{uuid.uuid4().hex[:6]}"
            trash.parent.mkdir(exist_ok=True)
            self.no_link(".trash")
            os.replace(art.path, trash)
            shutil.rmtree(trash, ignore_errors=True)
        return removed + [art.id]

    def _refuse_in_use(self, art: Artifact, kids: builtins.list[Artifact], force: bool = False) -> None:
        """Refuse to delete a job (training, extraction) that a live process is still running, or,
        for a cascade, anything derived from ``art`` that is."""
        from .jobs import Status, owner_alive

        todo = [art, *kids]
        while todo:
            a = todo.pop()
            owner = a.meta.get("owner") or {}
            alive = owner_alive(a.meta) if owner else False
            if a.meta.get("status") == Status.RUNNING and owner and (alive or (alive is None and not force)):
                what = "it" if a.id == art.id else f"the {a.kind} {a.name!r} derived from it"
                elsewhere = alive is None
                raise WorkspaceError(
                    f"The {art.kind} {art.name!r} is in use: {what} is running in process "
                    f"{owner.get('pid', '?')} "
                    f"on {owner.get('host', 'another machine')}. Nothing was deleted.",
                    "check on that machine that the job no longer runs, then delete with force=True "
                    "(CLI: --force)."
                    if elsewhere
                    else "stop that job (or wait for it to finish), then delete again.",
                )
            if a.id != art.id:
                todo += self.children(a.id)

    def summary(self) -> dict[str, int]:
        """How many artifacts of each kind."""
        out: dict[str, int] = {}
        for a in self.list():
            out[a.kind] = out.get(a.kind, 0) + 1
        return out
