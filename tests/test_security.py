"""Security regressions (issue 18): paths from the catalog never lead outside the workspace. Every test
works only inside its own temporary folder: the 'victim' is a folder beside the test's workspace."""
from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys

from mistudio_widgets import Workspace


def _tampered(tmp_path, relpath):
    ws = Workspace(tmp_path / "ws")
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "precious.txt").write_text("keep me")
    art = ws.register("dataset", "harmless", meta={})
    with sqlite3.connect(ws.root / "catalog.sqlite") as con:
        con.execute("UPDATE artifacts SET path = ? WHERE id = ?", (relpath, art.id))
    return ws, art, victim


def test_a_catalog_path_outside_the_workspace_is_never_deleted(tmp_path):
    for relpath in ("../victim", str(tmp_path / "victim"), "datasets/../../victim"):
        ws, art, victim = _tampered(tmp_path, relpath)
        got = ws.get(art.id)
        assert got.path is None and "outside the workspace" in got.meta["refused_because"]
        assert ws.delete(art.id, cascade=True) == [art.id]
        assert (victim / "precious.txt").read_text() == "keep me"
        shutil.rmtree(tmp_path / "ws"), shutil.rmtree(victim)


def test_a_symlinked_artifact_folder_leading_outside_is_not_followed(tmp_path):
    ws, art, victim = _tampered(tmp_path, "datasets/linked")
    (ws.root / "datasets").mkdir(exist_ok=True)
    os.symlink(victim, ws.root / "datasets" / "linked")
    assert ws.get(art.id).path is None
    env = {**os.environ, "MISTUDIO_HOME": str(ws.root)}
    proc = subprocess.run([sys.executable, "-m", "mistudio_widgets.cli", "--json", "delete", art.id, "--cascade"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert (victim / "precious.txt").read_text() == "keep me"
    assert json.loads(proc.stdout.splitlines()[-1])
