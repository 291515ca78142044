"""Hostile and broken input, table-driven: every case must end in a clear MistudioError (naming the
problem and the fix) and leave the workspace consistent: the catalog passes SQLite's integrity check,
every registered folder exists, and no temporary folder is left behind."""

from __future__ import annotations

import json
import pickle
import sqlite3
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from mistudio_widgets import Workspace
from mistudio_widgets.core.configs import (
    DatasetConfig,
    ExtractConfig,
    ModelConfig,
    SteerConfig,
    TokenizeConfig,
    TrainConfig,
)
from mistudio_widgets.core.errors import MistudioError
from mistudio_widgets.data.datasets import add_dataset, tokenize_dataset
from mistudio_widgets.data.models import add_model
from mistudio_widgets.features import extract, feature_detail, fire
from mistudio_widgets.sae import SAESpec, make_sae
from mistudio_widgets.sae.io import save_sae
from mistudio_widgets.share.bundles import pack, unpack
from mistudio_widgets.share.exporting import export_saelens
from mistudio_widgets.share.importing import import_sae
from mistudio_widgets.share.neuronpedia import export_neuronpedia
from mistudio_widgets.steering import steer
from mistudio_widgets.train.training import train

D = 576


def _sae_folder(root: Path, name: str = "sae", **meta: Any) -> Path:
    sae = make_sae(SAESpec("topk", D, 64, k=4))
    return save_sae(
        sae,
        root / name,
        metadata={"hook_name": "blocks.3.hook_resid_post", "model_name": "SmolLM2-135M-Instruct", **meta},
    )


def _edit_cfg(folder: Path, **changes: Any) -> Path:
    cfg = json.loads((folder / "cfg.json").read_text())
    for k, v in changes.items():
        if v is ...:
            cfg.pop(k, None)
        else:
            cfg[k] = v
    (folder / "cfg.json").write_text(json.dumps(cfg))
    return folder


def _write(root: Path, name: str, data: bytes | str) -> Path:
    p = root / name
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data if isinstance(data, bytes) else data.encode())
    return p


class Ctx:
    def __init__(self, ws: Workspace, tmp: Path, sae: str):
        self.ws, self.tmp, self.sae = ws, tmp, sae


# (id, action, regex the error message must match)
CASES: list[tuple[str, Callable[[Ctx], Any], str]] = [
    # -- SAE files --------------------------------------------------------------------------------------
    (
        "sae-truncated-safetensors",
        lambda c: import_sae(c.ws, _truncate(_sae_folder(c.tmp)), name="x"),
        "truncated",
    ),
    ("sae-wrong-shape", lambda c: import_sae(c.ws, _reshape(_sae_folder(c.tmp)), name="x"), "shape"),
    (
        "sae-cfg-missing-d_sae",
        lambda c: import_sae(c.ws, _edit_cfg(_sae_folder(c.tmp), d_sae=...)),
        "d_in/d_sae",
    ),
    (
        "sae-cfg-d_in-text",
        lambda c: import_sae(c.ws, _edit_cfg(_sae_folder(c.tmp), d_in="abc")),
        "d_in/d_sae",
    ),
    (
        "sae-cfg-not-json",
        lambda c: import_sae(c.ws, _garble_cfg(_sae_folder(c.tmp), "{not json")),
        "not valid JSON",
    ),
    (
        "sae-cfg-array",
        lambda c: import_sae(c.ws, _garble_cfg(_sae_folder(c.tmp), "[1, 2, 3]")),
        "JSON object",
    ),
    (
        "sae-cfg-binary",
        lambda c: import_sae(c.ws, _garble_cfg(_sae_folder(c.tmp), b"\xff\xfe\x00\x01")),
        "not valid JSON",
    ),
    (
        "sae-unknown-architecture",
        lambda c: import_sae(c.ws, _edit_cfg(_sae_folder(c.tmp), architecture="gated")),
        "not supported",
    ),
    (
        "sae-normalised-inputs",
        lambda c: import_sae(c.ws, _edit_cfg(_sae_folder(c.tmp), normalize_activations="layer_norm")),
        "normalised inputs",
    ),
    (
        "sae-absurd-d_sae",
        lambda c: import_sae(c.ws, _edit_cfg(_sae_folder(c.tmp), d_sae=10**9)),
        "too large|shape",
    ),
    (
        "sae-pickle-as-safetensors",
        lambda c: import_sae(c.ws, _pickle_weights(_sae_folder(c.tmp))),
        "truncated or not safetensors",
    ),
    ("sae-only-pickle-weights", lambda c: import_sae(c.ws, _pt_only(c.tmp)), "not an SAE folder"),
    (
        "sae-missing-tensor",
        lambda c: import_sae(c.ws, _drop_tensor(_sae_folder(c.tmp), "b_dec")),
        "lacks the tensor b_dec",
    ),
    (
        "sae-bad-hook-name",
        lambda c: import_sae(c.ws, _sae_folder(c.tmp, hook_name="model.layers.3")),
        "not a hook name",
    ),
    ("sae-no-hook", lambda c: import_sae(c.ws, _sae_folder(c.tmp, hook_name=None)), "which hook"),
    ("sae-path-missing", lambda c: import_sae(c.ws, c.tmp / "nowhere"), "does not exist"),
    ("sae-empty-folder", lambda c: import_sae(c.ws, _mkdir(c.tmp / "empty")), "not an SAE folder"),
    (
        "npz-pickled-object",
        lambda c: import_sae(c.ws, _npz_object(c.tmp), hook="blocks.3.hook_resid_post"),
        "Could not read",
    ),
    (
        "npz-missing-threshold",
        lambda c: import_sae(c.ws, _npz_missing(c.tmp), hook="blocks.3.hook_resid_post"),
        "lacks threshold",
    ),
    (
        "npz-garbage",
        lambda c: import_sae(
            c.ws, _write(c.tmp, "params.npz", b"PK\x03\x04garbage"), hook="blocks.3.hook_resid_post"
        ),
        "Could not read",
    ),
    ("sparsify-groupmax", lambda c: import_sae(c.ws, _sparsify(c.tmp, activation="groupmax")), "groupmax"),
    ("sparsify-no-decoder", lambda c: import_sae(c.ws, _sparsify(c.tmp, decoder=False)), "without a decoder"),
    ("hub-ref-malformed", lambda c: import_sae(c.ws, "hf://only-one-part"), "does not name a hub repository"),
    (
        "sae-hook-beyond-model",
        lambda c: fire(
            c.ws, import_sae(c.ws, _sae_folder(c.tmp, hook_name="blocks.99.hook_resid_post")).id, "hi"
        ),
        "out of range",
    ),
    ("sae-width-mismatch", lambda c: fire(c.ws, import_sae(c.ws, _narrow(c.tmp)).id, "hi"), "d_model 576"),
    # -- training and extraction settings ----------------------------------------------------------------
    ("train-steps-zero", lambda c: train(c.ws, TrainConfig(steps=0)), "steps must be at least 1"),
    ("train-k-above-d_sae", lambda c: train(c.ws, TrainConfig(k=10**6, steps=1)), "larger than d_sae"),
    ("train-absurd-d_sae", lambda c: train(c.ws, TrainConfig(d_sae=10**9, steps=1)), "too large"),
    ("train-lr-nan", lambda c: train(c.ws, TrainConfig(lr=float("nan"))), "finite"),
    ("train-lr-text", lambda c: train(c.ws, TrainConfig(lr="fast")), "must be a number"),
    ("train-architecture-unknown", lambda c: train(c.ws, TrainConfig(architecture="gated")), "one of"),
    ("train-hook-nonsense", lambda c: train(c.ws, TrainConfig(hook="<script>", steps=1)), "not a hook"),
    (
        "train-model-unknown",
        lambda c: train(c.ws, TrainConfig(model="no-such-model", steps=1)),
        "no-such-model",
    ),
    (
        "train-dataset-unknown",
        lambda c: train(c.ws, TrainConfig(dataset="no-such-data", steps=1)),
        "no-such-data",
    ),
    ("train-batch-negative", lambda c: train(c.ws, TrainConfig(batch_tokens=-5)), "at least 1"),
    ("extract-tokens-zero", lambda c: extract(c.ws, c.sae, ExtractConfig(tokens=0)), "at least 1"),
    (
        "extract-tokens-10e12",
        lambda c: extract(c.ws, c.sae, ExtractConfig(tokens=10**12, dataset="yell-data")),
        "tokens",
    ),
    (
        "extract-unknown-sae",
        lambda c: extract(c.ws, "no-such-sae", ExtractConfig(tokens=16)),
        "No sae called",
    ),
    # -- datasets and models ------------------------------------------------------------------------------
    (
        "dataset-empty-file",
        lambda c: add_dataset(c.ws, DatasetConfig(source=str(_write(c.tmp, "empty.txt", "")))),
        "empty|no documents",
    ),
    (
        "dataset-binary",
        lambda c: add_dataset(
            c.ws, DatasetConfig(source=str(_write(c.tmp, "bin.txt", bytes(range(256)) * 40)))
        ),
        "text|binary|UTF-8",
    ),
    (
        "dataset-jsonl-no-text",
        lambda c: add_dataset(
            c.ws, DatasetConfig(source=str(_write(c.tmp, "n.jsonl", '{"id": 1}\n{"id": 2}\n')))
        ),
        "text field|column",
    ),
    (
        "dataset-jsonl-broken",
        lambda c: add_dataset(
            c.ws, DatasetConfig(source=str(_write(c.tmp, "b.jsonl", '{"text": "a"}\n{broken\n')))
        ),
        "JSON|read",
    ),
    (
        "dataset-parquet-corrupt",
        lambda c: add_dataset(
            c.ws, DatasetConfig(source=str(_write(c.tmp, "c.parquet", b"PAR1garbagePAR1")))
        ),
        "read|parquet|Parquet",
    ),
    (
        "dataset-missing",
        lambda c: add_dataset(c.ws, DatasetConfig(source=str(c.tmp / "nope.txt"))),
        "No file or folder",
    ),
    (
        "dataset-samples-negative",
        lambda c: add_dataset(c.ws, DatasetConfig(source="default", samples=-1)),
        "at least",
    ),
    (
        "tokenize-context-one",
        lambda c: tokenize_dataset(c.ws, "yell-data", "default", TokenizeConfig(context_size=1)),
        "at least 2",
    ),
    (
        "model-remote-code",
        lambda c: add_model(c.ws, ModelConfig(source=str(_remote_code_model(c.tmp)))),
        "remote code|trust_remote_code",
    ),
    (
        "model-truncated-gguf",
        lambda c: add_model(c.ws, ModelConfig(source=str(_write(c.tmp, "m.gguf", b"GGUF\x03\x00")))),
        "GGUF|gguf",
    ),
    (
        "model-folder-without-weights",
        lambda c: add_model(c.ws, ModelConfig(source=str(_config_only_model(c.tmp)))),
        "weights|load",
    ),
    (
        "model-quantization-unknown",
        lambda c: add_model(c.ws, ModelConfig(source="default", quantization="2bit")),
        "one of",
    ),
    # -- prompts, strengths, labels -----------------------------------------------------------------------
    (
        "steer-empty-prompt",
        lambda c: steer(c.ws, c.sae, SteerConfig(features=[[1, 5.0]], prompt="   ")),
        "prompt",
    ),
    (
        "steer-nan-strength",
        lambda c: steer(c.ws, c.sae, SteerConfig(features=[[1, float("nan")]], prompt="hi")),
        "finite",
    ),
    (
        "steer-inf-strength",
        lambda c: steer(c.ws, c.sae, SteerConfig(features=[[1, float("inf")]], prompt="hi")),
        "finite",
    ),
    (
        "steer-absurd-strength",
        lambda c: steer(c.ws, c.sae, SteerConfig(features=[[1, 1e12]], prompt="hi")),
        "strength|absurd|large",
    ),
    (
        "steer-index-out-of-range",
        lambda c: steer(c.ws, c.sae, SteerConfig(features=[[10**6, 1.0]], prompt="hi")),
        "out of range",
    ),
    (
        "steer-negative-index",
        lambda c: steer(c.ws, c.sae, SteerConfig(features=[[-1, 1.0]], prompt="hi")),
        "out of range|index",
    ),
    (
        "steer-features-garbage",
        lambda c: steer(c.ws, c.sae, SteerConfig(features=[["a", "b"]], prompt="hi")),
        "feature",
    ),
    (
        "steer-prompt-too-long",
        lambda c: steer(c.ws, c.sae, SteerConfig(features=[[1, 1.0]], prompt="word " * 9000, max_tokens=4)),
        "context",
    ),
    (
        "steer-max-tokens-zero",
        lambda c: steer(c.ws, c.sae, SteerConfig(features=[[1, 1.0]], prompt="hi", max_tokens=0)),
        "at least 1",
    ),
    ("feature-index-out-of-range", lambda c: feature_detail(c.ws, c.sae, 10**6), "out of range"),
    ("fire-empty-text", lambda c: fire(c.ws, c.sae, ""), "empty"),
    ("label-index-out-of-range", lambda c: _label_via_cli_api(c, 10**6, "x"), "out of range"),
    ("label-empty", lambda c: _label_via_cli_api(c, 1, "   "), "empty"),
    # -- exports and bundles ------------------------------------------------------------------------------
    (
        "export-onto-a-file",
        lambda c: export_saelens(c.ws, c.sae, _write(c.tmp, "afile", "x")),
        "already exists",
    ),
    (
        "export-np-without-extraction",
        lambda c: export_neuronpedia(c.ws, import_sae(c.ws, _sae_folder(c.tmp)).id, c.tmp / "np"),
        "no finished feature extraction",
    ),
    ("bundle-empty", lambda c: pack(c.ws, [], c.tmp / "b.tar.gz"), "Nothing to pack"),
    (
        "bundle-of-a-model",
        lambda c: pack(c.ws, ["SmolLM2-135M-Instruct"], c.tmp / "b.tar.gz"),
        "bundles hold",
    ),
    (
        "bundle-garbage",
        lambda c: unpack(c.ws, _write(c.tmp, "g.tar.gz", b"\x1f\x8bnot really")),
        "not a readable bundle",
    ),
    (
        "bundle-newer-version",
        lambda c: unpack(c.ws, _bundle(c.tmp, {"format": "mistudio-bundle", "version": 99, "artifacts": []})),
        "newer mistudio",
    ),
    ("bundle-foreign-tar", lambda c: unpack(c.ws, _bundle(c.tmp, None)), "not a mistudio bundle"),
]


# -- helpers that build broken things --------------------------------------------------------------------
def _truncate(folder: Path) -> Path:
    w = folder / "sae_weights.safetensors"
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    return folder


def _reshape(folder: Path) -> Path:
    save_file(
        {
            "W_enc": torch.zeros(D, 64),
            "b_enc": torch.zeros(64),
            "W_dec": torch.zeros(32, D),
            "b_dec": torch.zeros(D),
        },
        str(folder / "sae_weights.safetensors"),
    )
    return folder


def _garble_cfg(folder: Path, text: str | bytes) -> Path:
    (folder / "cfg.json").write_bytes(text if isinstance(text, bytes) else text.encode())
    return folder


class _Boom:
    def __reduce__(self):
        return (print, ("pickle payload ran",))


def _pickle_weights(folder: Path) -> Path:
    (folder / "sae_weights.safetensors").write_bytes(pickle.dumps({"W_enc": _Boom()}))
    return folder


def _pt_only(root: Path) -> Path:
    folder = _sae_folder(root, "pt")
    (folder / "sae_weights.safetensors").unlink()
    torch.save({"W_enc": torch.zeros(2)}, folder / "sae_weights.pt")
    return folder


def _drop_tensor(folder: Path, name: str) -> Path:
    from safetensors.torch import load_file

    state = load_file(str(folder / "sae_weights.safetensors"))
    state.pop(name)
    save_file(state, str(folder / "sae_weights.safetensors"))
    return folder


def _mkdir(p: Path) -> Path:
    p.mkdir(parents=True, exist_ok=True)
    return p


def _npz_object(root: Path) -> Path:
    p = root / "obj" / "params.npz"
    p.parent.mkdir(parents=True)
    np.savez(p, W_enc=np.array([_Boom()], dtype=object), W_dec=np.zeros((2, 2)))
    return p


def _npz_missing(root: Path) -> Path:
    p = root / "miss" / "params.npz"
    p.parent.mkdir(parents=True)
    np.savez(
        p,
        W_enc=np.zeros((D, 8), np.float32),
        W_dec=np.zeros((8, D), np.float32),
        b_enc=np.zeros(8, np.float32),
        b_dec=np.zeros(D, np.float32),
    )
    return p


def _sparsify(root: Path, activation: str = "topk", decoder: bool = True) -> Path:
    folder = root / "layers.2"
    folder.mkdir(parents=True)
    (folder / "cfg.json").write_text(
        json.dumps({"activation": activation, "k": 4, "d_in": D, "num_latents": 64})
    )
    state = {"encoder.weight": torch.zeros(64, D), "encoder.bias": torch.zeros(64), "b_dec": torch.zeros(D)}
    if decoder:
        state["W_dec"] = torch.zeros(64, D)
    save_file(state, str(folder / "sae.safetensors"))
    return folder


def _narrow(root: Path) -> Path:
    sae = make_sae(SAESpec("topk", 64, 128, k=4))
    return save_sae(
        sae,
        root / "narrow",
        metadata={"hook_name": "blocks.3.hook_resid_post", "model_name": "SmolLM2-135M-Instruct"},
    )


def _remote_code_model(root: Path) -> Path:
    folder = root / "remote"
    folder.mkdir()
    (folder / "config.json").write_text(
        json.dumps(
            {
                "model_type": "evil_custom",
                "architectures": ["EvilForCausalLM"],
                "auto_map": {"AutoModelForCausalLM": "modeling_evil.EvilForCausalLM"},
            }
        )
    )
    (folder / "modeling_evil.py").write_text("raise SystemExit('remote code ran')\n")
    return folder


def _config_only_model(root: Path) -> Path:
    import transformers as tf

    folder = root / "noweights"
    tf.GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=100).save_pretrained(folder)
    return folder


def _label_via_cli_api(c: Ctx, index: int, text: str):
    from mistudio_widgets.features import set_label

    return set_label(c.ws, c.sae, index, text)


def _bundle(root: Path, manifest: dict | None) -> Path:
    import io
    import tarfile

    p = root / "bundle.tar.gz"
    with tarfile.open(p, "w:gz") as tar:
        name, data = (
            ("manifest.json", json.dumps(manifest).encode()) if manifest else ("readme.txt", b"hello")
        )
        info = tarfile.TarInfo(name)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return p


# -- the suite --------------------------------------------------------------------------------------------
def state(ws: Workspace) -> tuple[set[str], set[str]]:
    """(registered artifacts whose folder is missing, entries of the workspace's temporary folder)."""
    missing = {a.id for a in ws.list() if a.path is not None and not a.path.exists()}
    tmp = ws.root / ".tmp"
    return missing, {p.name for p in tmp.iterdir()} if tmp.exists() else set()


def consistent(ws: Workspace, before: tuple[set[str], set[str]] = (set(), set())) -> None:
    """The catalog passes SQLite's integrity check; no registered folder went missing and no temporary
    folder was left behind since ``before``."""
    con = sqlite3.connect(ws.root / "catalog.sqlite")
    try:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        con.close()
    missing, tmp = state(ws)
    assert missing <= before[0], f"registered but missing: {missing - before[0]}"
    assert tmp <= before[1], f"left behind: {tmp - before[1]}"


@pytest.fixture(scope="module")
def hostile(default_ws, small_sae, extraction, tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile-data")
    if default_ws.find("yell-data", "dataset") is None:
        src = root / "yell.txt"
        src.write_text("WHY ARE YOU SHOUTING?\n\nA calm sentence.\n")
        add_dataset(default_ws, DatasetConfig(source=str(src), name="yell-data"))
    return default_ws, small_sae


def test_there_are_at_least_fifty_cases():
    assert len(CASES) >= 50 and len({c[0] for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_hostile_input(hostile, tmp_path, case, capsys):
    ws, sae = hostile
    _, action, pattern = case
    before, snapshot = {a.id for a in ws.list()}, state(ws)
    with pytest.raises(MistudioError) as info:
        action(Ctx(ws, tmp_path, sae))
    err = info.value
    import re

    assert re.search(pattern, str(err)), f"{str(err)!r} does not match {pattern!r}"
    assert err.fix, "every error says how to fix it"
    consistent(ws, snapshot)
    new = [a for a in ws.list() if a.id not in before and a.kind not in ("sae",)]
    assert not [a for a in new if a.kind in ("run", "extraction") and a.meta.get("status") == "done"]
    assert "pickle payload ran" not in capsys.readouterr().out  # nothing ran that was not asked for


def test_corrupted_catalog_files(tmp_path):
    """A catalog that is not SQLite, a row whose metadata is not JSON, and a catalog from a newer version."""
    ws = Workspace(tmp_path / "a")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "catalog.sqlite").write_bytes(b"this is not a database" * 100)
    with pytest.raises(MistudioError, match="catalog"):
        Workspace(tmp_path / "b").list()
    ws.register("dataset", "fine", meta={"a": 1})
    con = sqlite3.connect(ws.root / "catalog.sqlite")
    con.execute("UPDATE artifacts SET meta = '{not json' WHERE name = 'fine'")
    con.execute("INSERT OR REPLACE INTO meta VALUES ('schema_version', '999')")
    con.commit()
    con.close()
    with pytest.raises(MistudioError, match="newer"):
        Workspace(tmp_path / "a").list()
    from mistudio_widgets.core.workspace import SCHEMA_VERSION

    con = sqlite3.connect(ws.root / "catalog.sqlite")
    con.execute("INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
    con.commit()
    con.close()
    with pytest.raises(MistudioError, match="'fine'.*unreadable metadata"):
        Workspace(tmp_path / "a").list()
    con = sqlite3.connect(ws.root / "catalog.sqlite")  # the fix it names: remove the row; the rest is intact
    con.execute("DELETE FROM artifacts WHERE name = 'fine'")
    con.commit()
    con.close()
    assert Workspace(tmp_path / "a").list() == []


def test_text_with_markup_and_control_characters_round_trips(hostile):
    """Labels and prompts are data: stored and returned exactly, never interpreted."""
    ws, sae = hostile
    snapshot = state(ws)
    for text in [
        "<script>alert(1)</script>",
        "\x00\x1b[31mred\x07",
        "ÜñíçødÉ 🙂 \u202e\u200b",
        "'; DROP TABLE labels; --",
    ]:
        ws.add_label(sae, 2, text)
        assert ws.labels(sae, 2)[-1]["label"] == text
        r = fire(ws, sae, "say " + text)
        assert r["tokens"] and all(isinstance(t, str) for t in r["tokens"])
    consistent(ws, snapshot)
