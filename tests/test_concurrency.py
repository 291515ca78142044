"""Two processes on one workspace (as two kernels would be): simultaneous trainings while a third
reads the catalog, and deletes while another process reads. SQLite in WAL mode with busy timeouts
keeps the catalog whole; readers see an artifact or a clear ArtifactNotFound, never a broken one."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import yaml

from mistudio_widgets import Workspace
from mistudio_widgets.errors import ArtifactNotFound
from test_hostile_input import consistent, state

TINY = dict(batch_tokens=256, chunk_sequences=24, eval_sequences=4, eval_every=0, log_every=1, expansion_factor=2, k=16,
            warmup_steps=2, hook="blocks.6.hook_resid_post", steps=6, checkpoint_every=2)


def _spawn(ws: Workspace, *args: str) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.Popen([sys.executable, "-m", "mistudio_widgets.cli", "--workspace", str(ws.root), "--json", *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)


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
        for a in default_ws.list("run"):                                      # the monitor's reads, meanwhile
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
            try:                                   # a folder may vanish between reading the row and the file
                (a.path / "data.txt").read_text()
            except FileNotFoundError:
                seen_missing += 1
    assert proc.wait() == 0, proc.stderr.read()[-2000:]
    assert ws.list("dataset") == []
    consistent(ws)
