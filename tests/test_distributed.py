"""Data-parallel training under torchrun (gloo, 2 CPU processes) on the real default model: the two
processes together train the same SAE one process trains from the same config, and the catalog
holds one run and one SAE.

The config trains with Adam: the averaged gradient equals the single process's up to float32
rounding, which Adam's update passes on as rounding. Sign descent (the default optimiser) turns it
into a full step wherever a gradient is zero in one sum and 5e-11 in the other (measured: one such
weight of 663,552 in the first step), and the runs drift apart after that."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import torch

from mistudio_widgets.sae.io import load_sae

CONFIG = """steps: 6
batch_tokens: 512
chunk_sequences: 16
eval_sequences: 4
eval_every: 3
checkpoint_every: 3
log_every: 2
expansion_factor: 2
k: 16
warmup_steps: 2
seed: 5
optimizer: adam
"""


def _train(ws, cfg_path, name, processes: int) -> dict:
    cli = [
        "-m",
        "mistudio_widgets.cli",
        "--workspace",
        str(ws.root),
        "train",
        "--config",
        str(cfg_path),
        "--name",
        name,
        "--json",
    ]
    launch = (
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)]
        if processes > 1
        else [sys.executable]
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(launch + cli, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summaries = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith('{"summary"')]
    assert len(summaries) == 1, "only the main process reports"
    return summaries[0]


def test_two_processes_train_the_sae_one_process_trains(default_ws, tmp_path):
    """The data-parallel reductions reproduce one process's training. The model runs in float32 here:
    in bf16 ('auto' on a CPU with native bf16) a forward over half the batch rounds differently from one
    over the whole batch, which would hide what this test checks."""
    from mistudio_widgets.core.configs import ModelConfig
    from mistudio_widgets.data.models import add_model, resolve_model

    fp32 = default_ws.find("smollm-fp32", "model") or add_model(
        default_ws,
        ModelConfig(source=str(resolve_model(default_ws).path / "hf"), name="smollm-fp32", dtype="float32"),
    )
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(CONFIG + f"model: {fp32.name}\n")
    name = default_ws.unique_name("run", "ddp")
    ddp = _train(default_ws, cfg, name, 2)
    single = _train(default_ws, cfg, name + "-single", 1)
    run = default_ws.get(ddp["run_id"], "run")
    assert run.meta["processes"] == 2 and run.meta["status"] == "done"
    assert len([r for r in default_ws.list("run") if r.name == name]) == 1
    assert [r["step"] for r in default_ws.metrics(run.id, "train")] == [2, 4, 6]
    assert ddp["metrics"]["tokens"] == single["metrics"]["tokens"] == 6 * 512
    a, _ = load_sae(ddp["path"])
    b, _ = load_sae(single["path"])
    for key, value in a.state_dict().items():
        assert torch.allclose(value, b.state_dict()[key], atol=1e-4, rtol=1e-3), key
    assert abs(ddp["metrics"]["explained_variance"] - single["metrics"]["explained_variance"]) < 1e-3
