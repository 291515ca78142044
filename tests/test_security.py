"""Security regressions (issue 18): paths from the catalog never lead outside the workspace. Every test
works only inside its own temporary folder: the 'victim' is a folder beside the test's workspace."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys

import pytest

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
    proc = subprocess.run(
        [sys.executable, "-m", "mistudio_widgets.cli", "--json", "delete", art.id, "--cascade"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert (victim / "precious.txt").read_text() == "keep me"
    assert json.loads(proc.stdout.splitlines()[-1])


def _bundle(path, entries, files=None, **fields):
    """A bundle file written by hand: a manifest with ``entries`` (and ``fields`` replacing or adding
    manifest keys) and ``files`` {member name: bytes}."""
    import io
    import tarfile

    manifest = {"format": "mistudio-bundle", "version": 1, "artifacts": entries, "labels": {}, "models": {}}
    manifest.update(fields)
    with tarfile.open(path, "w:gz") as tar:
        for name, data in {"manifest.json": json.dumps(manifest).encode(), **(files or {})}.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def _entry(kind="dataset", id="dat-0123456789", folder=False, meta=None):
    return {"id": id, "kind": kind, "name": "x", "parent": None, "meta": meta or {}, "folder": folder}


def test_bundles_are_data_never_code_and_never_write_outside(tmp_path):
    import pytest

    from mistudio_widgets.share.bundles import BundleError, unpack

    ws = Workspace(tmp_path / "ws")
    before = sorted(p.name for p in tmp_path.iterdir())
    hostile = [
        ([_entry(kind="../../../../" + str(tmp_path / "escaped"))], None, "bundles hold"),
        ([_entry(kind="model", meta={"settings": {"trust_remote_code": True}})], None, "bundles hold"),
        ([_entry(id="../../etc")], None, "not an id"),
        (
            [_entry(kind="sae", id="sae-0123456789", folder=True)],
            {"artifacts/sae-0123456789/cfg.json": b"{}"},
            "lacks its sae_weights.safetensors",
        ),
        ([_entry(folder=True)], None, "holds no files"),
        ([{**_entry(), "meta": "not a mapping"}], None, "wrong type"),
    ]
    for i, (entries, files, message) in enumerate(hostile):
        with pytest.raises(BundleError, match=message):
            unpack(ws, _bundle(tmp_path / f"b{i}.tar.gz", entries, files))
        assert ws.list() == []
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".tar.gz")) == before
    # settings that would run code are stripped, at any depth, and reported
    meta = {
        "model": "mod-0123456789",
        "config": {"auto_map": {"AutoModel": "evil.Model"}, "trust_remote_code": True},
    }
    r = unpack(ws, _bundle(tmp_path / "ok.tar.gz", [_entry(meta=meta)]))
    got = ws.get("dat-0123456789").meta
    assert got == {"model": None, "config": {}}
    assert sorted(r["stripped"]) == [
        "dat-0123456789.config.auto_map",
        "dat-0123456789.config.trust_remote_code",
    ]


def test_a_truncated_bundle_is_refused_and_adds_nothing(tmp_path):
    import pytest

    from mistudio_widgets.share.bundles import BundleError, unpack

    ws = Workspace(tmp_path / "ws")
    files = {f"artifacts/dat-0123456789/part-{i}.bin": os.urandom(200_000) for i in range(3)}
    full = _bundle(tmp_path / "full.tar.gz", [_entry(folder=True)], files).read_bytes()
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(full[: len(full) // 2])
    with pytest.raises(BundleError, match="truncated or corrupted"):
        unpack(ws, cut)
    assert ws.list() == [] and not (ws.root / "datasets").exists()


def test_export_overwrite_replaces_only_an_earlier_export(tmp_path):
    import pytest

    from mistudio_widgets.share.exporting import EXPORT_MARKER, ExportError, fresh_folder

    ws = Workspace(tmp_path / "ws")
    (ws.root / "keep.txt").write_text("workspace file")
    for target in (ws.root, tmp_path):  # the workspace, or a folder holding it
        with pytest.raises(ExportError, match="holds it"):
            with fresh_folder(target, overwrite=True, workspace=ws.root):
                pass
    unrelated = tmp_path / "photos"
    unrelated.mkdir()
    (unrelated / "cat.jpg").write_bytes(b"meow")
    with pytest.raises(ExportError, match="not an earlier export"):
        with fresh_folder(unrelated, overwrite=True, workspace=ws.root):
            pass
    assert (unrelated / "cat.jpg").read_bytes() == b"meow" and (ws.root / "keep.txt").is_file()
    out = tmp_path / "export"
    for n in (1, 2):  # an export of ours is replaced when asked
        with fresh_folder(out, overwrite=True, workspace=ws.root) as tmp:
            (tmp / "cfg.json").write_text(str(n))
        assert (out / "cfg.json").read_text() == str(n) and (out / EXPORT_MARKER).is_file()


def test_model_weights_come_from_safetensors_and_must_cover_the_model(tmp_path, tiny_model_dir):
    import pytest
    import torch
    from safetensors.torch import load_file, save_file
    from transformers import AutoModelForCausalLM

    from mistudio_widgets.core.configs import ModelConfig
    from mistudio_widgets.core.errors import ModelError
    from mistudio_widgets.data.models import add_model, load_model

    ws = Workspace(tmp_path / "ws")
    # a folder holding only pickled weights is refused unless asked for, and then loads
    pickled = tmp_path / "pickled"
    shutil.copytree(tiny_model_dir, pickled)
    (pickled / "model.safetensors").unlink()
    torch.save(
        AutoModelForCausalLM.from_pretrained(tiny_model_dir).state_dict(), pickled / "pytorch_model.bin"
    )
    assert not list(pickled.glob("*.safetensors")) and list(pickled.glob("*.bin"))
    with pytest.raises(ModelError, match="pickles"):
        add_model(ws, ModelConfig(source=str(pickled), name="pickled"))
    art = add_model(ws, ModelConfig(source=str(pickled), name="pickled-ok", allow_pickle_weights=True))
    assert load_model(ws, art.id).model is not None
    # weight files that do not cover the parameters: refused, never filled with random values
    partial = tmp_path / "partial"
    shutil.copytree(tiny_model_dir, partial)
    weights = load_file(partial / "model.safetensors")
    dropped = sorted(k for k in weights if k.endswith("mlp.c_fc.weight"))[0]
    save_file(
        {k: v for k, v in weights.items() if k != dropped},
        partial / "model.safetensors",
        metadata={"format": "pt"},
    )
    art = add_model(ws, ModelConfig(source=str(partial), name="partial"))
    with pytest.raises(ModelError, match="missing from its weight files"):
        load_model(ws, art.id)
    assert torch.is_tensor(weights[dropped])


def _cli(ws_root, *args):
    env = {**os.environ, "MISTUDIO_HOME": str(ws_root), "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "mistudio_widgets.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


def test_bounded_inputs_and_clear_errors_instead_of_tracebacks(tmp_path):
    from mistudio_widgets.core.configs import ConfigError, TrainConfig
    from mistudio_widgets.sae.io import SAEFormatError, load_sae

    ws_root = tmp_path / "ws"
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(
        "a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
        "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\nsteps: *c\n"
    )
    r = _cli(ws_root, "train", "--config", str(bomb))
    assert r.returncode == 2 and "aliases" in r.stderr and len(r.stderr) < 2000, r.stderr[-2000:]
    huge = list(range(10_000))
    try:
        TrainConfig(steps=huge)
    except ConfigError as exc:
        assert "10000 items" in str(exc) and len(str(exc)) < 400
    r = _cli(ws_root, "train", "--seed", "-1", "--steps", "1")
    assert r.returncode == 2 and "seed must be at least 0" in r.stderr, r.stderr[-2000:]
    deep = tmp_path / "deep-sae"
    deep.mkdir()
    (deep / "cfg.json").write_text("[" * 100_000 + "]" * 100_000)
    (deep / "sae_weights.safetensors").write_bytes(b"")
    import pytest

    with pytest.raises(SAEFormatError, match="nested too deeply"):
        load_sae(deep)
    r = _cli(ws_root, "label", "some-sae", "--features", "1,abc")
    assert r.returncode == 2 and "not a list of feature indices" in r.stderr, r.stderr[-2000:]


def test_sae_weights_must_be_finite_floats_and_k_valid(tmp_path):
    import pytest
    import torch
    from safetensors.torch import save_file

    from mistudio_widgets.sae.io import SAEFormatError, load_sae

    def folder(name, tensors, **cfg):
        d = tmp_path / name
        d.mkdir()
        (d / "cfg.json").write_text(
            json.dumps({"architecture": "topk", "d_in": 4, "d_sae": 8, "k": 2, **cfg})
        )
        save_file(tensors, d / "sae_weights.safetensors")
        return d

    good = {
        "W_enc": torch.randn(4, 8),
        "b_enc": torch.zeros(8),
        "W_dec": torch.randn(8, 4),
        "b_dec": torch.zeros(4),
    }
    assert load_sae(folder("good", good))[0].spec.k == 2
    with pytest.raises(SAEFormatError, match="NaN or infinite"):
        load_sae(folder("nan", {**good, "W_dec": torch.full((8, 4), float("nan"))}))
    with pytest.raises(SAEFormatError, match="NaN or infinite"):
        load_sae(folder("inf", {**good, "b_enc": torch.full((8,), float("inf"))}))
    with pytest.raises(SAEFormatError, match="floating point"):
        load_sae(folder("int", {**good, "W_enc": torch.ones(4, 8, dtype=torch.int64)}))
    with pytest.raises(SAEFormatError, match="floating point"):
        load_sae(folder("bool", {**good, "b_dec": torch.ones(4, dtype=torch.bool)}))
    for k in (0, -3, True, 1.5):
        with pytest.raises(SAEFormatError, match="k must be a whole number"):
            load_sae(folder(f"k{k}", good, k=k))


@pytest.mark.model  # the CLI training it interrupts loads the model
def test_terminal_escapes_null_answers_sigint_and_stale_checkpoint_temps(tmp_path):
    import signal
    import time

    from mistudio_widgets.cli import printable
    from mistudio_widgets.train.checkpoints import remove_stale_checkpoint_temps

    assert (
        printable("label \x1b[2J\x1b]0;pwned\x07 end\nnext\tline")
        == "label \\x1b[2J\\x1b]0;pwned\\x07 end\nnext\tline"
    )
    # half-written checkpoint folders of a killed process go on the next start
    run = tmp_path / "run"
    (run / ".checkpoint-4.tmp-abc123").mkdir(parents=True)
    (run / "checkpoint-2").mkdir()
    assert remove_stale_checkpoint_temps(run) == [".checkpoint-4.tmp-abc123"]
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint-2"]
    # Ctrl-C during a CLI training: it checkpoints, exits non-zero and names the resume command
    env = {**os.environ, "MISTUDIO_HOME": str(tmp_path / "ws"), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mistudio_widgets.cli",
            "train",
            "--steps",
            "400",
            "--hook",
            "blocks.1.hook_resid_post",
            "--expansion",
            "1",
            "--batch-tokens",
            "256",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    for line in proc.stdout:  # until the run is registered and training (or the output ends)
        if line.startswith("run "):
            break
    time.sleep(5)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 130, (out[-2000:], err[-2000:])
    assert "mistudio train --resume run-" in out


def test_a_null_answer_from_an_endpoint_is_no_label(tmp_path):
    import http.server
    import threading

    from mistudio_widgets.features.labeling import OpenAIChat

    class Null(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            body = json.dumps({"choices": [{"message": {"content": None}}]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    srv = http.server.HTTPServer(("127.0.0.1", 0), Null)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        chat = OpenAIChat(f"http://127.0.0.1:{srv.server_port}/v1", "m", timeout=5, retries=0)
        assert chat.chat([{"role": "user", "content": "hi"}], 5, 0.0) == ""
    finally:
        srv.shutdown()


def test_a_lost_catalog_is_refused_and_repair_registers_the_folders_again(tmp_path):
    ws = Workspace(tmp_path / "ws")
    with ws.write_artifact("dataset", "plays", meta={"stats": {"documents": 3}}) as w:
        (w.path / "data.txt").write_text("to be")
    ds = ws.get("plays")
    with ws.write_artifact("tokenization", "plays@m", meta={"stats": {"tokens": 9}}, parent=ds.id) as w:
        (w.path / "ids.bin").write_bytes(b"\x01\x02")
    ws.rename("plays", "plays-renamed")
    before = {a.id: (a.kind, a.name, a.parent) for a in ws.list()}
    bare = ws.root / "datasets" / "ds-0000000001"  # a folder without a record: named after itself
    bare.mkdir()
    victim = tmp_path / "victim"
    victim.mkdir()
    (ws.root / "datasets" / "ds-00000000ff").symlink_to(victim)  # a link is never an artifact folder
    cat = ws.root / "catalog.sqlite"
    for lose in ("empty", "missing"):
        for p in ws.root.glob("catalog.sqlite*"):
            p.unlink()
        if lose == "empty":
            cat.write_bytes(b"")
        r = _cli(ws.root, "list")
        assert (
            r.returncode == 2 and "3 artifact folder(s)" in r.stderr and "mistudio --workspace" in r.stderr
        ), r.stderr
        assert (cat.stat().st_size == 0) if lose == "empty" else not cat.exists()  # nothing was changed
        r = _cli(ws.root, "--json", "repair")
        assert r.returncode == 0, r.stderr
        got = Workspace(ws.root)
        assert {a.id: (a.kind, a.name, a.parent) for a in got.list() if a.id in before} == before
        assert got.get("ds-0000000001").name == "ds-0000000001"
        assert got.find("ds-00000000ff") is None and list(victim.iterdir()) == []
        assert (
            got.get("plays-renamed").meta["stats"] == {"documents": 3}
            and got.get("plays-renamed").meta["repaired"]
        )
        assert (got.get("plays-renamed").path / "data.txt").read_text() == "to be"
        assert _cli(ws.root, "list").returncode == 0


def test_odd_rows_and_names_never_break_list(tmp_path):
    import pytest

    from mistudio_widgets.core.errors import WorkspaceError

    ws = Workspace(tmp_path / "ws")
    with pytest.raises(WorkspaceError, match="line breaks or other control characters"):
        ws.register("dataset", "two\nlines")
    a, b, c = (ws.register("dataset", n) for n in ("a", "b", "c"))
    sae = ws.register("sae", "s")
    with sqlite3.connect(ws.root / "catalog.sqlite") as con:
        con.execute("UPDATE artifacts SET meta = '[1, 2]' WHERE id = ?", (a.id,))
        con.execute('UPDATE artifacts SET meta = \'{"stats": "many"}\' WHERE id = ?', (b.id,))
        con.execute("UPDATE artifacts SET name = 'fake\nds-0 dataset injected' WHERE id = ?", (c.id,))
        con.execute("UPDATE artifacts SET meta = '{\"metrics\": [3]}' WHERE id = ?", (sae.id,))
    for args in (["list"], ["datasets", "list"], ["saes", "list"], ["--json", "list"]):
        r = _cli(ws.root, *args)
        assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    out = _cli(ws.root, "list").stdout
    assert "its metadata is not a JSON object" in out and "(metadata not as expected)" in out
    assert "fake\\nds-0 dataset injected" in out and len(out.strip().splitlines()) == 1 + 4


def test_pack_refuses_an_artifact_whose_folder_is_gone(tmp_path):
    import pytest

    from mistudio_widgets.share.bundles import BundleError, pack

    ws = Workspace(tmp_path / "ws")
    with ws.write_artifact("dataset", "gone") as w:
        (w.path / "data.txt").write_text("x")
    shutil.rmtree(ws.get("gone").path)
    with pytest.raises(BundleError, match="its folder .* is gone"):
        pack(ws, ["gone"], tmp_path / "b.tar.gz")
    assert list(tmp_path.iterdir()) == [tmp_path / "ws"]


def test_a_config_the_weight_files_cannot_hold_is_refused_before_allocating(tmp_path, tiny_model_dir):
    import pytest

    from mistudio_widgets.core.configs import ModelConfig
    from mistudio_widgets.core.errors import ModelError
    from mistudio_widgets.data.models import add_model, load_model

    ws = Workspace(tmp_path / "ws")
    absurd = {
        "model_type": "gpt2",
        "architectures": ["GPT2LMHeadModel"],
        "n_embd": 32768,
        "n_layer": 2000,
        "n_head": 64,
        "vocab_size": 500000,
        "n_positions": 1024,
    }
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.json").write_text(json.dumps(absurd))
    (empty / "model.safetensors").write_bytes(b"")
    with pytest.raises(ModelError, match=r"\(0 bytes\) is empty, truncated or not a safetensors file"):
        add_model(ws, ModelConfig(source=str(empty), name="empty"))
    small = tmp_path / "small"
    shutil.copytree(tiny_model_dir, small)
    (small / "config.json").write_text(json.dumps(absurd))
    with pytest.raises(ModelError, match="describes a model of at least 4,311,351,296,000 parameters"):
        add_model(ws, ModelConfig(source=str(small), name="small"))
    # the files of an added model change afterwards: loading refuses before allocating
    later = tmp_path / "later"
    shutil.copytree(tiny_model_dir, later)
    art = add_model(ws, ModelConfig(source=str(later), name="later"))
    (later / "config.json").write_text(json.dumps(absurd))
    with pytest.raises(ModelError, match="describes a model of at least"):
        load_model(ws, art.id)
    assert [a.name for a in ws.list("model")] == ["later"]


def _sparse_safetensors(path, name, shape):
    """A safetensors file holding one uint8 tensor of `shape`, written as a sparse file (its bytes are
    holes: the disk holds almost nothing)."""
    import math
    import struct

    header = json.dumps({name: {"dtype": "U8", "shape": list(shape), "data_offsets": [0, math.prod(shape)]}})
    header += " " * (-len(header) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(header)) + header.encode())
        f.truncate(8 + len(header) + math.prod(shape))


def test_a_junk_tensor_does_not_pass_for_the_parameters_a_config_needs(tmp_path, tiny_model_dir):
    import pytest

    from mistudio_widgets.core.configs import ModelConfig
    from mistudio_widgets.core.errors import ModelError
    from mistudio_widgets.data.model_files import minimum_parameters
    from mistudio_widgets.data.models import add_model

    ws = Workspace(tmp_path / "ws")
    folder = tmp_path / "padded"
    shutil.copytree(tiny_model_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    config.update(n_embd=512, n_layer=24, n_head=8)  # about 76 M parameters; the files hold the tiny model's
    (folder / "config.json").write_text(json.dumps(config))
    _sparse_safetensors(folder / "padding.safetensors", "junk", (200_000_000,))
    from transformers import AutoConfig

    # the junk tensor's 200 M values cover the lower bound the old guard counted against ...
    assert minimum_parameters(AutoConfig.from_pretrained(folder)) < 200_000_000
    # ... but none of them has the shape of a parameter the config needs
    with pytest.raises(
        ModelError, match=r"describes a model of at least 7\d,\d{3},\d{3} parameters.*of the shapes"
    ):
        add_model(ws, ModelConfig(source=str(folder), name="padded"))
    assert ws.list("model") == []
    # the untouched tiny folder still adds (its tensors match what its config needs)
    assert add_model(ws, ModelConfig(source=str(tiny_model_dir), name="tiny")).name == "tiny"


def test_a_pickle_that_holds_code_is_refused_without_advice_to_unpickle(tmp_path, capsys):
    import pickle

    import pytest
    from transformers import GPT2Config

    from mistudio_widgets.core.configs import ModelConfig
    from mistudio_widgets.core.errors import ModelError
    from mistudio_widgets.data.models import add_model, load_model

    class Call:
        def __reduce__(self):
            return (print, ("THE PICKLE RAN",))

    folder = tmp_path / "pickled"
    GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=100).save_pretrained(folder)
    (folder / "pytorch_model.bin").write_bytes(pickle.dumps({"transformer.wte.weight": Call()}))
    ws = Workspace(tmp_path / "ws")
    art = add_model(ws, ModelConfig(source=str(folder), name="pickled", allow_pickle_weights=True))
    with pytest.raises(ModelError) as err:
        load_model(ws, art.id)
    text = str(err.value)
    assert "holds more than tensors" in text and "nothing in it ran" in text
    assert "weights_only" not in text and "False" not in text
    assert "THE PICKLE RAN" not in capsys.readouterr().out


def test_datasets_say_which_records_they_skip_and_keep_a_headerless_csv_first_row(tmp_path):
    from mistudio_widgets.core.configs import DatasetConfig
    from mistudio_widgets.data.datasets import add_dataset, load_documents

    ws = Workspace(tmp_path / "ws")
    csv = tmp_path / "lines.csv"
    csv.write_text("The first line is a sentence too\nThe second line\nThe third line\n")
    art = add_dataset(ws, DatasetConfig(source=str(csv)))
    assert list(load_documents(ws, art)["text"])[0] == "The first line is a sentence too"
    assert "kept as a record" in art.meta["provenance"]["header"]
    headed = tmp_path / "headed.csv"
    headed.write_text("id,text\n1,hello there\n2,again\n")
    art = add_dataset(ws, DatasetConfig(source=str(headed)))
    assert list(load_documents(ws, art)["text"]) == ["hello there", "again"] and art.meta["provenance"][
        "header"
    ] == ["id", "text"]
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text(
        '{"text": "first doc"}\n{"text": 5}\n{"text": ["a"]}\n{"text": null}\n'
        '{"text": "  "}\n{"text": "last"}\n'
    )
    r = _cli(tmp_path / "ws", "datasets", "add", str(mixed))
    assert r.returncode == 0, r.stderr
    assert (
        "2 documents" in r.stdout
        and "skipped 1 record(s) holding a value of type int, not text (the first is record 2)" in r.stdout
    )
    skipped = Workspace(tmp_path / "ws").get("mixed").meta["stats"]["skipped"]
    assert {k: v["records"] for k, v in skipped.items()} == {
        "a value of type int, not text": 1,
        "a value of type list, not text": 1,
        "no text": 1,
        "blank text": 1,
    }


def test_a_long_single_line_document_is_tokenized_in_bounded_pieces(default_ws):
    from mistudio_widgets.core.defaults import shakespeare_files
    from mistudio_widgets.data import packing as dsm
    from mistudio_widgets.data.models import load_tokenizer

    tok = load_tokenizer(default_ws, "SmolLM2-135M-Instruct")
    text = " ".join(shakespeare_files()[0].read_text().split())  # one line
    text = " ".join([text] * (3_000_000 // len(text) + 1))  # about 3 MB
    seen: list[int] = []

    def counting(texts, **kw):
        seen.append(sum(map(len, texts)))
        return tok(texts, **kw)

    ids = next(dsm._encode(counting, [text]))
    assert max(seen) <= dsm.BATCH_CHARS and len(seen) >= 2
    assert ids.tolist() == tok(text, add_special_tokens=False)["input_ids"]
    assert all(len(p) <= dsm.PIECE_CHARS for p in dsm.pieces(text)) and "".join(dsm.pieces(text)) == text


def test_labelling_has_a_timeout_and_retries_option(tmp_path):
    import socket
    import threading

    import pytest

    from mistudio_widgets.cli import build_parser
    from mistudio_widgets.core.configs import LabelConfig
    from mistudio_widgets.features.labeling import LabelError, make_chat

    a = build_parser().parse_args(["label", "s", "--backend", "openai", "--timeout", "0.5", "--retries", "0"])
    assert (a.timeout, a.retries) == (0.5, 0)
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    accepted: list[socket.socket] = []

    def hang():  # accepts, reads, never answers
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            accepted.append(conn)

    threading.Thread(target=hang, daemon=True).start()
    cfg = LabelConfig(
        backend="openai",
        model="m",
        base_url=f"http://127.0.0.1:{srv.getsockname()[1]}/v1",
        timeout=a.timeout,
        retries=a.retries,
    )
    with pytest.raises(LabelError, match=r"after 1 tries \(no answer within the timeout\).*--timeout"):
        make_chat(Workspace(tmp_path / "ws"), cfg, api_key="k").chat(
            [{"role": "user", "content": "hi"}], 5, 0.0
        )
    assert len(accepted) == 1
    srv.close()


def test_deeply_nested_json_from_a_bundle_or_an_endpoint_is_a_clear_error(tmp_path):
    import http.server
    import threading

    import pytest

    from mistudio_widgets.core.configs import LabelConfig
    from mistudio_widgets.features.labeling import LabelError, make_chat
    from mistudio_widgets.share.bundles import BundleError, unpack

    deep = b"[" * 200_000 + b"]" * 200_000
    ws = Workspace(tmp_path / "ws")
    path = _bundle(tmp_path / "deep.tar.gz", [], {})
    import io
    import tarfile

    with tarfile.open(path, "w:gz") as tar:  # the manifest itself is the deep document
        info = tarfile.TarInfo("manifest.json")
        info.size = len(deep)
        tar.addfile(info, io.BytesIO(deep))
    with pytest.raises(BundleError, match="no readable manifest.json"):
        unpack(ws, path)

    class Deep(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(200)
            self.send_header("Content-Length", str(len(deep)))
            self.end_headers()
            self.wfile.write(deep)

        def log_message(self, *a):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Deep)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    cfg = LabelConfig(
        backend="openai", model="m", base_url=f"http://127.0.0.1:{srv.server_address[1]}/v1", retries=0
    )
    with pytest.raises(LabelError, match="did not answer in the chat-completions format"):
        make_chat(ws, cfg, api_key="k").chat([{"role": "user", "content": "hi"}], 5, 0.0)
    srv.shutdown()
    assert ws.list() == []


def test_widgets_list_around_rows_with_odd_metadata(tmp_path):
    from mistudio_widgets.widgets.dataset_picker import DatasetPicker
    from mistudio_widgets.widgets.model_picker import ModelPicker
    from mistudio_widgets.widgets.sae_library import SAELibrary

    ws = Workspace(tmp_path / "ws")
    good = ws.register("dataset", "good", meta={"stats": {"documents": 2, "characters": 9}})
    odd = [ws.register(kind, f"odd-{kind}") for kind in ("dataset", "model", "sae")]
    with sqlite3.connect(ws.root / "catalog.sqlite") as con:
        for a in odd:
            con.execute(
                'UPDATE artifacts SET meta = \'{"stats": 3, "info": [1], "metrics": "x"}\' WHERE id = ?',
                (a.id,),
            )
    picker, models, library = DatasetPicker(ws), ModelPicker(ws), SAELibrary(ws)
    assert [r["name"] for r in picker.datasets] == [good.name] and "odd-dataset" in picker.message
    assert models.models == [] and "odd-model" in models.message
    assert library.saes == [] and "odd-sae" in library.message


def test_an_unrelated_folder_beside_a_new_workspace_is_not_a_lost_catalog(tmp_path):
    (tmp_path / "project" / "datasets" / "my-csvs").mkdir(parents=True)  # a project's own data folder
    assert Workspace(tmp_path / "project").list() == []
    assert (tmp_path / "project" / "datasets" / "my-csvs").is_dir()
