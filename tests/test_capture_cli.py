"""Activation capture on the real default model, and the CLI contract."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from mistudio_widgets.core.configs import CaptureConfig
from mistudio_widgets.core.defaults import DEFAULT_DATASET_NAME
from mistudio_widgets.data.activations import capture_stats, iter_activations
from mistudio_widgets.data.datasets import find_tokenization, load_tokens
from mistudio_widgets.data.hooks import capture, decoder_layers


def test_capture_matches_the_full_forward_and_stops_early(lm):
    ids = lm.tokenizer("WHY ARE YOU SHOUTING? I am not shouting, you are.", return_tensors="pt").input_ids
    with torch.no_grad():
        full = lm.model(ids, output_hidden_states=True).hidden_states[16]
    ran = []
    h = decoder_layers(lm.model)[16].register_forward_hook(lambda *a: ran.append(16))
    try:
        with torch.no_grad(), capture(lm.model, "blocks.15.hook_resid_post") as acts:
            lm.model(ids)
    finally:
        h.remove()
    assert ran == []
    assert torch.allclose(acts["blocks.15.hook_resid_post"], full, atol=1e-4)


def test_special_positions_are_dropped_and_counted(default_ws, lm):
    tok = find_tokenization(default_ws, DEFAULT_DATASET_NAME, lm.artifact, 128)
    tokens = load_tokens(default_ws, tok)[:8]
    special = set(lm.tokenizer.all_special_ids)
    n_special = int(np.isin(tokens, list(special)).sum())
    batches = list(iter_activations(lm, tokens, "blocks.15.hook_resid_post", batch_size=4))
    assert sum(b.dropped_special for b in batches) == n_special >= 8  # at least the BOS of each sequence
    kept = sum(b.acts.shape[0] for b in batches)
    assert kept + n_special + sum(b.outliers for b in batches) == tokens.size
    assert all(not set(b.token_ids.tolist()) & special for b in batches)
    # with the sinks kept, the largest norms are far above the median: that is why they are dropped
    raw = next(
        iter_activations(
            lm, tokens, "blocks.15.hook_resid_post", batch_size=8, drop_special=False, outlier_factor=0
        )
    )
    norms = raw.acts.norm(dim=-1)
    assert norms.max() > 20 * norms.median()


def test_capture_stats(default_ws, lm):
    res = capture_stats(
        default_ws,
        lm.artifact,
        cfg=CaptureConfig(hook="blocks.15.hook_resid_post", tokens=1024, batch_size=8),
    )
    assert res.tokens_seen == 1024 and res.d_model == 576
    assert res.dropped_special >= 8 and res.tokens_kept + res.dropped_special + res.outliers == 1024
    assert 100 < res.norm["median"] < 300 and res.norm["max"] < 10 * res.norm["median"]
    assert sum(res.norm_histogram["counts"]) == res.tokens_kept


def run_cli(*args, env_home):
    env = {**os.environ, "MISTUDIO_HOME": str(env_home)}
    return subprocess.run(
        [sys.executable, "-m", "mistudio_widgets.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )


def test_cli_json_contract(default_ws):
    r = run_cli(
        "--json",
        "capture",
        "--model",
        "default",
        "--dataset",
        "default",
        "--hook",
        "blocks.5.hook_mlp_out",
        "--tokens",
        "256",
        env_home=default_ws.root,
    )
    assert r.returncode == 0, r.stderr
    lines = [json.loads(x) for x in r.stdout.splitlines()]
    assert (
        lines[-1]["summary"]
        and lines[-1]["hook"] == "blocks.5.hook_mlp_out"
        and lines[-1]["tokens_seen"] == 256
    )
    assert any(x.get("event") == "progress" and x["stage"] == "capture" for x in lines[:-1])
    r = run_cli("models", "list", "--json", env_home=default_ws.root)
    rows = [json.loads(x) for x in r.stdout.splitlines()]
    assert any(x.get("name") == "SmolLM2-135M-Instruct" for x in rows) and rows[-1]["summary"]
    r = run_cli("datasets", "list", env_home=default_ws.root)
    assert f"{DEFAULT_DATASET_NAME}@SmolLM2-135M-Instruct/ctx128" in r.stdout


def test_cli_errors_name_the_fix(default_ws, tmp_path):
    r = run_cli(
        "--json", "capture", "--hook", "blocks.30.hook_resid_post", "--tokens", "8", env_home=default_ws.root
    )
    assert r.returncode == 2
    err = json.loads(r.stdout.splitlines()[-1])
    assert "out of range" in err["error"] and "0 to 29" in err["fix"]
    r = run_cli("datasets", "add", str(tmp_path / "nope.txt"), env_home=tmp_path / "ws")
    assert r.returncode == 2 and "No file or folder" in r.stderr and "fix:" in r.stderr
    r = run_cli(
        "datasets", "tokenize", DEFAULT_DATASET_NAME, "--model", "no-such-model", env_home=default_ws.root
    )
    assert r.returncode == 2 and "No model called 'no-such-model'" in r.stderr


@pytest.mark.model
def test_demo_runs_the_whole_main_job(tmp_path):
    """`mistudio demo` (what `make demo` runs), shortened: train, extract, find, label, steer, export."""
    env = {**os.environ, "MISTUDIO_HOME": str(tmp_path / "ws"), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "mistudio_widgets.cli",
            "--json",
            "demo",
            "--tokens",
            "1024",
            "--train-steps",
            "4",
            "--extract-tokens",
            "2048",
            "--steer-tokens",
            "6",
            "--expansion",
            "4",
        ],
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [json.loads(x) for x in proc.stdout.splitlines() if x.startswith("{")]
    steps = [x["step"] for x in lines if "step" in x]
    assert steps == [
        "model",
        "dataset",
        "tokenize",
        "capture",
        "train",
        "quality",
        "extract",
        "find",
        "label",
        "strength",
        "steer",
        "export",
    ]
    s = lines[-1]
    assert s["summary"] and s["label"] and isinstance(s["feature"], int)
    find = next(x for x in lines if x.get("step") == "find")
    assert find["feature"] in [f["index"] for f in find["features"]] and find["examples"]
    # four steps learn no shouting feature: the strength sweep says whether any strength stayed fluent, and
    # without one the unsteered text is kept
    assert (s["strength"] is None and s["steered"] == s["unsteered"]) or s["strength"] > 0
    lens, npx = s["exports"]["saelens"], s["exports"]["neuronpedia"]
    assert sorted(os.listdir(lens)) == [
        ".mistudio-export.json",
        "cfg.json",
        "pretrained_saes.yaml",
        "sae_weights.safetensors",
        "sparsity.safetensors",
    ]
    assert json.load(open(os.path.join(npx, "manifest.json")))["features"] == 4 * 576
