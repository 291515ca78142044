"""Two processes on one workspace (as two kernels would be): simultaneous trainings while a third
reads the catalog, and deletes while another process reads. SQLite in WAL mode with busy timeouts
keeps the catalog whole; readers see an artifact or a clear ArtifactNotFound, never a broken one."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import yaml
from test_crash_safety import TINY as CRASH_TINY
from test_hostile_input import consistent, state
from waiting import wait_for

from mistudio_widgets import Workspace
from mistudio_widgets.core.errors import ArtifactNotFound

TINY = dict(CRASH_TINY, steps=6, checkpoint_every=2)


def _spawn(ws: Workspace, *args: str) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.Popen(
        [sys.executable, "-m", "mistudio_widgets.cli", "--workspace", str(ws.root), "--json", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def test_two_trainings_at_once_while_a_reader_watches(default_ws, tmp_path):
    before = state(default_ws)
    names = [default_ws.unique_name("run", f"together-{i}") for i in range(2)]
    procs = []
    for i, name in enumerate(names):
        f = tmp_path / f"{i}.yaml"
        f.write_text(yaml.safe_dump({**TINY, "seed": i, "name": name}))
        procs.append(_spawn(default_ws, "train", "--config", str(f)))
    reads = 0
    while any(p.poll() is None for p in procs):
        for a in default_ws.list("run"):  # the monitor's reads, meanwhile
            default_ws.metrics(a.id, "train", since_step=-1)
        reads += 1
        time.sleep(0.05)
    for p in procs:
        assert p.wait() == 0, p.stderr.read()[-2000:]
    runs = [default_ws.get(n, "run") for n in names]
    assert all(r.meta["status"] == "done" for r in runs) and reads > 3
    assert len({r.meta["sae"] for r in runs}) == 2
    assert all(len(default_ws.metrics(r.id, "train")) == TINY["steps"] for r in runs)
    consistent(default_ws, before)


DELETER = """
import sys
from mistudio_widgets import Workspace
ws = Workspace(sys.argv[1])
for a in ws.list("dataset"):
    if a.name.startswith("doomed-"):
        ws.delete(a.id)
"""


def test_deletes_while_another_process_reads(tmp_path):
    ws = Workspace(tmp_path / "ws")
    ids = []
    for i in range(60):
        with ws.write_artifact("dataset", f"doomed-{i}", meta={"i": i}) as w:
            (w.path / "data.txt").write_text("x" * 1000)
        ids.append(w.id)
    proc = subprocess.Popen([sys.executable, "-c", DELETER, str(ws.root)], stderr=subprocess.PIPE, text=True)
    seen_missing = 0
    while proc.poll() is None:
        for i in ids:
            try:
                a = ws.get(i)
            except ArtifactNotFound:
                seen_missing += 1
                continue
            try:  # a folder may vanish between reading the row and the file
                (a.path / "data.txt").read_text()
            except FileNotFoundError:
                seen_missing += 1
    assert proc.wait() == 0, proc.stderr.read()[-2000:]
    assert ws.list("dataset") == []
    consistent(ws)


def test_extraction_in_one_kernel_while_another_browses(default_ws, small_sae, extraction):
    """Two real kernels with widgets on one workspace: kernel A extracts features of an SAE (as the
    browser's Extract button does, in a worker thread) while kernel B browses the same SAE, labels a
    feature and tries to delete it; B keeps reading the finished extraction and sees the new one at the
    end."""
    from ipython_kernels import kernel

    before = state(default_ws)
    setup = (
        "import os\nimport mistudio_widgets as ms\nfrom mistudio_widgets.widgets import FeatureBrowser\n"
        f"ws = ms.open_workspace()\nfb = FeatureBrowser(ws, sae={small_sae!r})"
    )
    with kernel(default_ws.root) as a, kernel(default_ws.root) as b:
        a.run(setup)
        b.run(setup)
        old = b.eval("fb.extraction['id']")
        a_pid = a.eval("os.getpid()")
        a.run("fb.do('extract', fb.action_extract, tokens=8192, batch_size=4, top_k=5)")
        running = wait_for(
            lambda: [
                e
                for e in default_ws.list("extraction")
                if e.meta.get("status") == "running" and e.meta.get("owner", {}).get("pid") == a_pid
            ],
            "kernel A's extraction to start",
            timeout=120,
            gone=lambda: (
                a.eval("fb.status") != "busy" and f"kernel A is {a.eval('fb.status')}: {a.eval('fb.error')}"
            ),
        )
        new = running[0].id
        # while A extracts: B cannot delete the SAE (nor the extraction), and is told why
        content, _ = b.execute(f"ws.delete({small_sae!r}, cascade=True)")
        assert content["status"] == "error" and content["ename"] == "WorkspaceError"
        assert "is in use" in content["evalue"] and f"process {a_pid}" in content["evalue"]
        content, _ = b.execute(f"ws.delete({new!r})")
        assert content["status"] == "error" and "is in use" in content["evalue"]
        # ... and browses the finished extraction (never the one being written): features open, labels
        # are written, the list refreshes
        opened = 0
        while a.eval("fb.status") == "busy":
            i = (37 * opened) % 576
            b.run(
                f"fb.action_open({i})\nassert fb.detail['index'] == {i}, "
                "fb.error\nfb.refresh()\nassert not fb.error, fb.error\n"
                f"assert fb.extraction['id'] == {old!r} or ws.get(fb.extraction['id']).meta['status'] "
                "== 'done'"
            )
            if opened == 1:
                b.run(f"fb.action_label({i}, 'seen while kernel A extracts')\nassert not fb.error, fb.error")
            opened += 1
        assert a.eval("fb.error") == {}, a.eval("fb.error")
        assert opened >= 3, "kernel A finished before kernel B could browse during it"
        b.run("fb.refresh()")
        assert b.eval("fb.extraction['id']") == new != old
        b.run("fb.action_open(5)\nassert fb.detail['index'] == 5 and not fb.error, fb.error")
    assert default_ws.get(new).meta["status"] == "done"
    assert any(r["label"] == "seen while kernel A extracts" for r in default_ws.labels(small_sae))
    consistent(default_ws, before)
