"""Crash safety: a worker process SIGKILLed in the middle of training, extraction, labelling and export.
Afterwards the catalog is consistent, the interrupted job shows as interrupted and resumes (training
to the same final weights as an uninterrupted run), and no partial result is visible as complete."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml
from test_hostile_input import consistent, state
from waiting import wait_for

from mistudio_widgets import Workspace
from mistudio_widgets.core.configs import TrainConfig
from mistudio_widgets.core.jobs import effective_status
from mistudio_widgets.features import extract, latest_extraction
from mistudio_widgets.sae.io import load_sae
from mistudio_widgets.train.training import run_status, train

TINY = dict(
    batch_tokens=256,
    chunk_sequences=24,
    eval_sequences=4,
    eval_every=0,
    log_every=1,
    expansion_factor=2,
    k=16,
    warmup_steps=2,
    hook="blocks.6.hook_resid_post",
)


def _spawn(ws: Workspace, *args: str) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.Popen(
        [sys.executable, "-m", "mistudio_widgets.cli", "--workspace", str(ws.root), "--json", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
    )


def _kill_when(proc: subprocess.Popen, ready, timeout: float = 600) -> None:
    wait_for(
        ready,
        "the kill point",
        timeout=timeout,
        gone=lambda: proc.poll() is not None and f"the worker exited with {proc.returncode} first",
    )
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(30)


def _first_json(proc: subprocess.Popen, key: str) -> str:
    for line in proc.stdout:
        if line.startswith("{") and key in (obj := json.loads(line)):
            return obj[key]
    raise AssertionError(f"no {key} in the worker's output")


def same_as_uninterrupted(ws: Workspace, base: dict, resumed_sae_path) -> None:
    """Train ``base`` again without interruption and check the resumed SAE has exactly its weights."""
    full = train(ws, TrainConfig(**base, name=ws.unique_name("run", "uninterrupted")))
    a, _ = load_sae(full.path)
    b, _ = load_sae(resumed_sae_path)
    for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name


@pytest.mark.parametrize("kill_after", [2, 5])
def test_training_killed_resumes_to_the_same_weights(default_ws, tmp_path, kill_after):
    base = dict(TINY, steps=8, seed=5, checkpoint_every=1)
    before = state(default_ws)
    cfg_file = tmp_path / "train.yaml"
    cfg_file.write_text(
        yaml.safe_dump({**base, "name": default_ws.unique_name("run", f"killed-{kill_after}")})
    )
    proc = _spawn(default_ws, "train", "--config", str(cfg_file))
    run_id = _first_json(proc, "run_id")
    _kill_when(proc, lambda: (default_ws.get(run_id).meta.get("last_checkpoint") or 0) >= kill_after)
    run = default_ws.get(run_id)
    assert (
        run.meta["status"] == "running" and effective_status(run.meta) == "interrupted"
    )  # the process is gone
    assert run_status(default_ws, run_id)["status"] == "interrupted"
    assert not [a for a in default_ws.list("sae") if a.parent == run_id]  # no SAE yet
    consistent(default_ws, before)
    same_as_uninterrupted(default_ws, base, train(default_ws, resume=run_id).path)
    consistent(default_ws, before)


def test_a_live_run_cannot_be_resumed_twice(default_ws, tmp_path):
    cfg_file = tmp_path / "train.yaml"
    cfg_file.write_text(
        yaml.safe_dump(
            {**TINY, "steps": 400, "checkpoint_every": 1, "name": default_ws.unique_name("run", "live")}
        )
    )
    proc = _spawn(default_ws, "train", "--config", str(cfg_file))
    try:
        run_id = _first_json(proc, "run_id")
        wait_for(
            lambda: default_ws.get(run_id).meta.get("last_checkpoint"),
            "the run's first checkpoint",
            gone=lambda: proc.poll() is not None and f"the training exited with {proc.returncode}",
        )
        with pytest.raises(Exception, match="running in another process"):
            train(default_ws, resume=run_id)
    finally:
        proc.kill()
        proc.wait(30)
    assert run_status(default_ws, run_id)["status"] == "interrupted"


def test_extraction_killed_is_never_visible_as_done_and_resumes(default_ws, small_sae):
    before = state(default_ws)
    had = latest_extraction(default_ws, small_sae)
    name = default_ws.unique_name("extraction", "killed")
    proc = _spawn(
        default_ws,
        "extract",
        small_sae,
        "--tokens",
        "4096",
        "--batch-size",
        "2",
        "--checkpoint-every",
        "1",
        "--top-k",
        "3",
        "--name",
        name,
    )
    _kill_when(
        proc,
        lambda: (
            (ext := default_ws.find(name, "extraction")) is not None and (ext.path / "state.pt").is_file()
        ),
    )
    ext = default_ws.get(name, "extraction")
    assert effective_status(ext.meta) == "interrupted" and latest_extraction(default_ws, small_sae) == had
    consistent(default_ws, before)
    done = extract(default_ws, None, resume=ext.id)
    assert done.meta["status"] == "done" and latest_extraction(default_ws, small_sae).id == ext.id


def test_labelling_killed_keeps_the_labels_it_made(default_ws, small_sae, extraction):
    before, t_start = state(default_ws), time.time()

    def new() -> list[dict]:
        return [
            r
            for r in default_ws.labels(small_sae, history=True)
            if r["method"] == "auto" and r["time"] >= t_start
        ]

    # the statistical labels go in one transaction first; the model explainer's then one by one
    proc = _spawn(default_ws, "label", small_sae, "--top", "40", "--backend", "local", "--no-score", "--redo")
    _kill_when(proc, lambda: len(new()) >= 1)
    kept = new()
    assert kept and all(r["label"] for r in kept)  # every label stored is whole
    consistent(default_ws, before)


def test_export_killed_leaves_no_export_and_a_rerun_works(default_ws, small_sae, extraction, tmp_path):
    out = tmp_path / "np"
    proc = _spawn(
        default_ws, "export", small_sae, "--format", "neuronpedia", "--out", str(out), "--batch-size", "8"
    )
    _kill_when(
        proc,
        lambda: any(p.name.startswith(".np.tmp-") and (p / "dashboard").is_dir() for p in tmp_path.iterdir()),
    )
    assert not out.exists()  # nothing half-written under the real name
    proc = _spawn(
        default_ws, "export", small_sae, "--format", "neuronpedia", "--out", str(out), "--batch-size", "8"
    )
    assert proc.wait(600) == 0
    assert (
        json.loads((out / "manifest.json").read_text())["features"] == default_ws.get(small_sae).meta["d_sae"]
    )


def test_kernel_killed_mid_training_resumes_from_the_monitor_in_a_new_kernel(default_ws):
    """A training started from the configurator in a real kernel; the kernel is SIGKILLed after its
    third checkpoint. A monitor in a new kernel shows the run as interrupted and its Resume button
    finishes it, with the weights of an uninterrupted run."""
    from ipython_kernels import kernel

    base = dict(TINY, steps=8, seed=9, checkpoint_every=1)
    name = default_ws.unique_name("run", "kernel-killed")
    before = state(default_ws)
    with kernel(default_ws.root) as a:
        a.run(
            "import os\nimport mistudio_widgets as ms\nfrom mistudio_widgets.widgets import "
            "TrainingConfigurator, TrainingMonitor\n"
            "ws = ms.open_workspace()\nmon = TrainingMonitor(ws)\nconf = TrainingConfigurator(ws, "
            "monitor=mon)\n"
            f"job = conf.start(**{dict(base, name=name)!r})"
        )
        pid = a.eval("os.getpid()")
        run = wait_for(
            lambda: (
                (r := default_ws.find(name, "run")) is not None
                and (r.meta.get("last_checkpoint") or 0) >= 3
                and r
            ),
            "the training's third checkpoint",
            timeout=600,
            interval=0.3,
            gone=lambda: a.eval("conf.error") != {} and f"the configurator reports {a.eval('conf.error')}",
        )
        os.kill(pid, signal.SIGKILL)
        while a.km.is_alive():
            time.sleep(0.1)
    run = default_ws.get(name, "run")
    assert effective_status(run.meta) == "interrupted" and not [
        s for s in default_ws.list("sae") if s.parent == run.id
    ]
    consistent(default_ws, before)
    with kernel(default_ws.root) as b:
        b.run(
            "import mistudio_widgets as ms\nfrom mistudio_widgets.widgets import TrainingMonitor\n"
            f"ws = ms.open_workspace()\nmon = TrainingMonitor(ws, runs=[{run.id!r}])\nmon.poll()"
        )
        row = b.eval("mon.controls.runs[0]")
        assert (row["id"], row["status"], row["live"]) == (run.id, "interrupted", False) and row[
            "last_checkpoint"
        ] >= 3
        b.run(
            f"mon.controls._on_page_msg(mon.controls, {{'action': 'resume', 'args': {{'id': "
            f"{run.id!r}}}}}, [])\n"
            f"mon.jobs[{run.id!r}].wait(600)\nmon.poll()"
        )
        row = b.eval("mon.controls.runs[0]")
        assert row["status"] == "done" and row["sae"], row
    same_as_uninterrupted(default_ws, base, default_ws.get(row["sae"], "sae").path)
    consistent(default_ws, before)
