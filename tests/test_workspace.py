"""The workspace catalog: atomic artifact writes, list/rename/delete, restarts, migrations, faults."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import textwrap

import pytest

from mistudio_widgets.core.errors import ArtifactNotFound, ArtifactWriteError, WorkspaceError
from mistudio_widgets.core.workspace import SCHEMA_VERSION, Workspace


def write(ws, kind="dataset", name="a", payload=b"x" * 100, parent=None):
    with ws.write_artifact(kind, name, meta={"n": 1}, parent=parent) as w:
        (w.path / "data.bin").write_bytes(payload)
    return ws.get(w.id)


def test_write_list_reopen(tmp_path):
    ws = Workspace(tmp_path / "ws")
    art = write(ws)
    assert art.path.is_dir() and (art.path / "data.bin").read_bytes() == b"x" * 100
    assert art.path.parent.name == "datasets" and art.meta == {"n": 1}
    again = Workspace(tmp_path / "ws")  # a kernel restart: a fresh object on the same folder
    assert [a.id for a in again.list("dataset")] == [art.id]
    assert again.get("a").path == art.path
    assert again.schema_version == SCHEMA_VERSION
    assert (
        sqlite3.connect(tmp_path / "ws" / "catalog.sqlite").execute("PRAGMA journal_mode").fetchone()[0]
        == "wal"
    )


def test_failed_write_leaves_nothing(tmp_path):
    ws = Workspace(tmp_path)
    with pytest.raises(RuntimeError):
        with ws.write_artifact("dataset", "broken") as w:
            (w.path / "half.bin").write_bytes(b"half")
            raise RuntimeError("crash mid-write")
    assert ws.list() == []
    assert not any((tmp_path / ".tmp").iterdir())
    assert not (tmp_path / "datasets").exists() or not any((tmp_path / "datasets").iterdir())


def test_names_rename_delete_cascade(tmp_path):
    ws = Workspace(tmp_path)
    parent = write(ws, name="corpus")
    kid = write(ws, kind="tokenization", name="corpus@m", parent=parent.id)
    with pytest.raises(WorkspaceError, match="already exists"):
        write(ws, name="corpus")
    renamed = ws.rename("corpus", "plays")
    assert renamed.id == parent.id and ws.get("plays").id == parent.id
    with pytest.raises(ArtifactNotFound, match="plays"):
        ws.get("corpus", "dataset")
    with pytest.raises(WorkspaceError, match="derived"):
        ws.delete(parent.id)
    removed = ws.delete(parent.id, cascade=True)
    assert set(removed) == {parent.id, kid.id}
    assert ws.list() == [] and not parent.path.exists() and not kid.path.exists()


def test_update_meta_and_unique_name(tmp_path):
    ws = Workspace(tmp_path)
    write(ws, name="x")
    assert ws.unique_name("dataset", "x") == "x-2"
    assert ws.update_meta("x", extra=3).meta == {"n": 1, "extra": 3}


def test_newer_schema_is_refused(tmp_path):
    Workspace(tmp_path)
    con = sqlite3.connect(tmp_path / "catalog.sqlite")
    con.execute("UPDATE meta SET value = '999' WHERE key = 'schema_version'")
    con.commit()
    con.close()
    with pytest.raises(WorkspaceError, match="newer mistudio-widgets"):
        Workspace(tmp_path)


def test_corrupt_catalog_is_reported(tmp_path):
    (tmp_path / "catalog.sqlite").write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(WorkspaceError, match="not a readable SQLite database"):
        Workspace(tmp_path)


def test_workspace_path_is_a_file(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(WorkspaceError, match="is a file"):
        Workspace(f)


def test_stale_tmp_is_collected(tmp_path):
    ws = Workspace(tmp_path)
    stale = tmp_path / ".tmp" / "ds-0123456789.1"  # named as write_artifact names its temporary folders
    stale.mkdir(parents=True)
    os.utime(stale, (1, 1))
    Workspace(tmp_path)
    assert not stale.exists() and ws.list() == []


needs_root = pytest.mark.skipif(
    os.geteuid() != 0, reason="mounting a small tmpfs and dropping privileges need root"
)


@pytest.fixture
def tiny_disk(tmp_path):
    mnt = tmp_path / "disk"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(mnt)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount tmpfs here: {r.stderr.decode().strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)])


@needs_root
def test_disk_full_registers_nothing_and_keeps_the_rest(tiny_disk):
    ws = Workspace(tiny_disk / "ws")
    ok = write(ws, name="small", payload=b"k" * 1000)
    with pytest.raises(ArtifactWriteError, match="disk is full.*Nothing was registered"):
        write(ws, name="huge", payload=b"z" * 2_000_000)
    assert [a.name for a in ws.list()] == ["small"]
    assert (ok.path / "data.bin").read_bytes() == b"k" * 1000
    assert not any((tiny_disk / "ws" / ".tmp").iterdir())


def _as_nobody(code: str) -> subprocess.CompletedProcess:
    """Run ``code`` in a child that imports the package, then drops to uid/gid 65534."""
    prelude = (
        "import os, sys\nfrom mistudio_widgets.core.workspace import Workspace\n"
        "from mistudio_widgets.core.errors import MistudioError\nos.setgid(65534); os.setuid(65534)\n"
    )
    return subprocess.run(
        [sys.executable, "-c", prelude + textwrap.dedent(code)], capture_output=True, text=True
    )


@pytest.fixture
def shared_dir():
    import shutil
    import tempfile

    d = tempfile.mkdtemp(dir="/tmp", prefix="mistudio-perm-")
    os.chmod(d, 0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@needs_root
def test_permission_denied_during_a_write_registers_nothing(shared_dir):
    root = os.path.join(shared_dir, "ws")
    ws = Workspace(root)
    os.chmod(root, 0o777)
    for f in os.listdir(root):
        if f.startswith("catalog"):
            os.chmod(os.path.join(root, f), 0o666)
    os.makedirs(
        os.path.join(root, ".tmp"), mode=0o755, exist_ok=True
    )  # root-owned: the child cannot write here
    r = _as_nobody(f"""
        ws = Workspace({root!r})
        try:
            with ws.write_artifact("dataset", "nope") as w:
                (w.path / "f").write_text("x")
        except MistudioError as e:
            print("ERR", e); sys.exit(3)
    """)
    assert r.returncode == 3, r.stderr
    assert "permission was denied" in r.stdout and "Nothing was registered" in r.stdout
    assert ws.list() == []


@needs_root
def test_a_read_only_workspace_can_be_browsed_but_not_changed(shared_dir):
    root = os.path.join(shared_dir, "ws")
    Workspace(root).register("dataset", "kept")
    r = _as_nobody(f"""
        ws = Workspace({root!r})
        print("LIST", [a.name for a in ws.list()], ws.read_only)
        try:
            ws.register("dataset", "new")
        except MistudioError as e:
            print("ERR", e); sys.exit(3)
    """)
    assert r.returncode == 3, r.stderr
    assert "LIST ['kept'] the workspace folder is read-only" in r.stdout
    assert "open for browsing only" in r.stdout and "nothing was changed" in r.stdout
    assert [a.name for a in Workspace(root).list()] == ["kept"]


def test_a_job_in_use_is_not_deleted_until_its_process_is_gone(tmp_path):
    from mistudio_widgets.core.jobs import owner_stamp

    ws = Workspace(tmp_path)
    sae = ws.register("sae", "s")
    live = ws.register(
        "extraction", "mine", parent=sae.id, meta={"status": "running", "owner": owner_stamp()}
    )
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    gone = ws.register(
        "extraction",
        "gone",
        parent=sae.id,
        meta={"status": "running", "owner": {**owner_stamp(), "pid": dead.pid, "created": 0.0}},
    )
    with pytest.raises(WorkspaceError, match=f"'mine' derived from it is running in process {os.getpid()}"):
        ws.delete(sae.id, cascade=True)
    with pytest.raises(WorkspaceError, match="is in use"):
        ws.delete(live.id)
    assert ws.delete(gone.id) == [gone.id]  # its process is gone: shown as interrupted, deletable
    ws.update_meta(live.id, status="done")
    assert set(ws.delete(sae.id, cascade=True)) == {sae.id, live.id}
