"""Security regressions, second round (issue 30): the workspace's own folders are never links, housekeeping
deletes only what the tool itself made, a read-only command never turns a folder into a workspace, an
artifact's folder is exactly ``<kind>s/<id>``, and sources are read without following links out of them.
Every test works only inside its own temporary folder: the 'victim' is a folder the test made beside its
workspace."""

from __future__ import annotations

import json
import os
import sqlite3
import time

import pytest

from mistudio_widgets import Workspace
from mistudio_widgets.core.errors import MistudioError, WorkspaceError

DAY = 24 * 3600


def _cli(root, *args):
    """The command line in this process (the same ``main`` the console script runs): (rc, JSON lines,
    stderr)."""
    import contextlib
    import io

    from mistudio_widgets.cli.main import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(["--workspace", str(root), "--json", *args])
    lines = [json.loads(x) for x in out.getvalue().splitlines() if x.startswith("{")]
    return rc, lines, err.getvalue()


def _victim(tmp_path):
    """A folder outside the workspace with an old sub-folder and a file, as a user's files would be."""
    victim = tmp_path / "victim"
    (victim / "old-project").mkdir(parents=True)
    (victim / "old-project" / "notes.txt").write_text("keep me")
    old = time.time() - 5 * DAY
    os.utime(victim / "old-project", (old, old))
    return victim


def _intact(victim):
    return (victim / "old-project" / "notes.txt").read_text() == "keep me"


@pytest.mark.parametrize("own", [".tmp", ".trash", "datasets"])
def test_a_workspace_folder_that_is_a_link_is_refused_and_nothing_outside_is_touched(tmp_path, own):
    ws = Workspace(tmp_path / "ws")
    art = ws.register("dataset", "row only", meta={})
    victim = _victim(tmp_path)
    os.symlink(victim, ws.root / own)
    for args in (("list",), ("delete", art.id), ("datasets", "add", str(tmp_path / "ws"))):
        rc, lines, err = _cli(ws.root, *args)
        assert rc == 2 and "symbolic link" in lines[-1]["error"] and own in lines[-1]["error"], (args, lines)
    assert _intact(victim) and sorted(p.name for p in victim.iterdir()) == ["old-project"]
    with pytest.raises(WorkspaceError, match="never\\s+follows links"):
        Workspace(ws.root)


def test_a_read_only_command_never_makes_or_cleans_a_workspace(tmp_path):
    project = tmp_path / "project"
    (project / ".trash" / "mine").mkdir(parents=True)
    (project / ".tmp" / "build-cache").mkdir(parents=True)
    old = time.time() - 5 * DAY
    os.utime(project / ".tmp" / "build-cache", (old, old))
    for args in (("list",), ("saes", "list"), ("show", "x"), ("features", "search", "x", "y")):
        rc, lines, _ = _cli(project, *args)
        assert rc == 2 and "not a mistudio workspace" in lines[-1]["error"], (args, lines)
    assert (project / ".trash" / "mine").is_dir() and (project / ".tmp" / "build-cache").is_dir()
    assert not (project / "catalog.sqlite").exists()


def test_housekeeping_deletes_only_what_the_tool_named(tmp_path):
    ws = Workspace(tmp_path / "ws")
    old = time.time() - 5 * DAY
    ours = ws.root / ".tmp" / "sae-0123456789.4242"
    theirs = ws.root / ".tmp" / "build-cache"
    trash_ours = ws.root / ".trash" / "ds-0123456789.abcdef"
    trash_theirs = ws.root / ".trash" / "keep-me"
    for p in (ours, theirs, trash_ours, trash_theirs):
        p.mkdir(parents=True)
        os.utime(p, (old, old))
    Workspace(ws.root)  # opening an existing workspace cleans up
    assert not ours.exists() and not trash_ours.exists()
    assert theirs.is_dir() and trash_theirs.is_dir()


@pytest.mark.parametrize("path", ["saes", "models", "catalog.sqlite", ".", "datasets/ds-0000000000"])
def test_a_catalog_row_pointing_at_a_kind_folder_or_the_catalog_deletes_only_the_row(tmp_path, path):
    ws = Workspace(tmp_path / "ws")
    with ws.write_artifact("sae", "precious", meta={}) as w:
        (w.path / "weights.bin").write_text("w")
    precious = ws.get(w.id).path
    art = ws.register("dataset", "tampered", meta={})
    with sqlite3.connect(ws.root / "catalog.sqlite") as con:
        con.execute("UPDATE artifacts SET path = ? WHERE id = ?", (path, art.id))
    got = ws.get(art.id)
    assert got.path is None and got.meta["refused_because"]
    assert ws.delete(art.id) == [art.id]
    assert (precious / "weights.bin").read_text() == "w" and (ws.root / "catalog.sqlite").is_file()
    assert ws.get("precious").path == precious  # the catalog and the other artifact are still whole


def test_an_import_folder_with_a_link_leading_outside_is_refused_by_name(tmp_path, small_sae, default_ws):
    import shutil

    from mistudio_widgets.share.importing import SAEImportError, import_sae

    secret = tmp_path / "secret.safetensors"
    secret.write_bytes(b"not for export")
    src = tmp_path / "sae"
    shutil.copytree(default_ws.get(small_sae).path, src)
    (src / "sparsity.safetensors").unlink(missing_ok=True)
    os.symlink(secret, src / "sparsity.safetensors")
    ws = Workspace(tmp_path / "ws")
    with pytest.raises(SAEImportError, match="sparsity.safetensors.*symbolic link.*outside"):
        import_sae(ws, src, name="linked")
    assert ws.list("sae") == []
    # a real file that is not a sparsity file is refused too, and nothing is added
    (src / "sparsity.safetensors").unlink()
    (src / "sparsity.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    with pytest.raises(SAEImportError, match="sparsity"):
        import_sae(ws, src, name="junk")
    assert ws.list("sae") == []


def test_a_dataset_folder_with_a_linked_file_is_refused_by_name(tmp_path):
    from mistudio_widgets import DatasetConfig
    from mistudio_widgets.data.datasets import add_dataset

    secret = tmp_path / "secret.txt"
    secret.write_text("private diary")
    folder = tmp_path / "texts"
    folder.mkdir()
    (folder / "a.txt").write_text("An ordinary text.\n")
    os.symlink(secret, folder / "b.txt")
    ws = Workspace(tmp_path / "ws")
    with pytest.raises(MistudioError, match="b.txt.*symbolic link.*outside"):
        add_dataset(ws, DatasetConfig(source=str(folder)))
    assert ws.list("dataset") == []


def _hand_bundle(path, entries, labels=None, manifest_pad=0):
    """A bundle written by hand with ``labels`` and a manifest padded by ``manifest_pad`` bytes."""
    from test_security import _bundle

    return _bundle(path, entries, labels=labels or {}, pad="x" * manifest_pad)


def _sae_entry(id="sae-0123456789"):
    return {"id": id, "kind": "sae", "name": "bundled", "parent": None, "meta": {}, "folder": False}


def test_bundle_labels_are_checked_before_anything_is_written_and_only_for_its_own_saes(tmp_path):
    from mistudio_widgets.share.bundles import BundleError, unpack

    ws = Workspace(tmp_path / "ws")
    mine = ws.register("sae", "my own", meta={})
    ws.add_label(mine.id, 3, "my careful label")
    row = {"feature": 1, "label": "fine", "method": "manual", "model": None, "template": None, "score": None}
    hostile = [
        ({mine.id: [{**row, "label": "INJECTED by bundle"}]}, "does not carry"),
        ({"sae-0123456789": [{**row, "feature": "1; DROP"}]}, "names the feature"),
        ({"sae-0123456789": [{**row, "label": "x" * 3_000_000}]}, "over 2,000 characters"),
        ({"sae-0123456789": [{**row, "extra": 1}]}, "unexpected fields"),
        ({"sae-0123456789": [{**row, "score": "high"}]}, "wrong type"),
    ]
    for i, (labels, message) in enumerate(hostile):
        with pytest.raises(BundleError, match=message):
            unpack(ws, _hand_bundle(tmp_path / f"l{i}.tar.gz", [_sae_entry()], labels))
        assert [a.id for a in ws.list()] == [mine.id]  # nothing added, not even the bundle's SAE
    assert [r["label"] for r in ws.labels(mine.id, history=True)] == ["my careful label"]
    r = unpack(ws, _hand_bundle(tmp_path / "ok.tar.gz", [_sae_entry()], {"sae-0123456789": [row]}))
    assert r["labels"] == 1 and ws.labels("sae-0123456789")[0]["label"] == "fine"


def test_bundle_sizes_are_checked_before_reading_and_unpacking_is_linear(tmp_path):
    from mistudio_widgets.share.bundles import MAX_ENTRIES, BundleError, unpack

    ws = Workspace(tmp_path / "ws")
    with pytest.raises(BundleError, match="manifest; bundles' manifests are at most"):
        unpack(ws, _hand_bundle(tmp_path / "big.tar.gz", [], manifest_pad=17 << 20))
    many = [
        {"id": f"dat-{i:010x}", "kind": "dataset", "name": "x", "parent": None, "meta": {}, "folder": False}
        for i in range(MAX_ENTRIES + 1)
    ]
    with pytest.raises(BundleError, match="at most 5,000"):  # refused from the count, before any entry
        unpack(ws, _hand_bundle(tmp_path / "many.tar.gz", many))
    assert ws.list() == []


class _Trickle:
    """A real HTTP server that answers a chat-completions call one byte every ``every`` seconds, or with
    an endless chunked body."""

    def __init__(self, mode: str, every: float = 2.0):
        import socket
        import threading

        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(4)
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}/v1"
        self.stop = threading.Event()
        self.sent: list[int] = []  # bytes sent on each connection, counted as they go

        def serve():
            self.listener.settimeout(0.2)
            while not self.stop.is_set():
                try:
                    c, _ = self.listener.accept()
                except OSError:
                    continue
                threading.Thread(target=self.answer, args=(c, mode, every), daemon=True).start()

        threading.Thread(target=serve, daemon=True).start()

    def answer(self, c, mode, every):
        self.sent.append(0)
        n = len(self.sent) - 1
        try:
            c.recv(65536)
            if mode == "trickle":
                for b in b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"x" * 100000:
                    if self.stop.is_set():
                        break
                    c.sendall(bytes([b]))
                    self.sent[n] += 1
                    time.sleep(every)
            else:
                c.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
                chunk = b"x" * 65536
                while not self.stop.is_set():
                    c.sendall(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
        except OSError:
            pass
        finally:
            c.close()

    def close(self):
        self.stop.set()
        self.listener.close()


@pytest.mark.parametrize("mode", ["trickle", "endless"])
def test_the_labelling_client_has_a_total_deadline_and_a_size_cap(mode):
    from mistudio_widgets.features.lm_explainer import LabelError, OpenAIChat

    srv = _Trickle(mode, every=0.5)
    try:
        message = "no answer within the timeout" if mode == "trickle" else "more than 1,048,576 bytes"
        with pytest.raises(LabelError, match=message):
            OpenAIChat(srv.url, "m", timeout=3, retries=1).chat([{"role": "user", "content": "hi"}], 4, 0)
        if mode == "trickle":  # one try and one retry, each cut off at its deadline: a few of 100,044 bytes
            assert len(srv.sent) == 2 and all(n < 1000 for n in srv.sent), srv.sent
        else:  # an answer over the cap is refused at once, not retried
            assert len(srv.sent) == 1
    finally:
        srv.close()


def test_config_and_texts_files_must_be_small_regular_files(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    ws = tmp_path / "ws"
    for args, what in (
        (("train", "--config", str(fifo)), "not a regular file"),
        (("train", "--config", "/dev/zero"), "not a regular file"),  # only stat'ed, never opened
        (("train", "--config", str(tmp_path)), "not a regular file"),
        (("features", "fire", "x", "--text", "A", "--contrast-file", str(fifo)), "not a regular file"),
    ):
        rc, lines, err = _cli(ws, *args)
        assert rc == 2 and what in lines[-1]["error"], (args, lines, err)


def test_serve_chat_fails_closed_and_answers_bad_requests_with_400(tmp_path, default_ws, monkeypatch):
    import http.client
    import threading

    from mistudio_widgets.cli.chat_server import MAX_BODY_BYTES, make_server

    for value in (None, ""):
        if value is None:
            monkeypatch.delenv("CLASS_KEY_UNSET", raising=False)
        else:
            monkeypatch.setenv("CLASS_KEY_UNSET", value)
        rc, lines, _ = _cli(
            default_ws.root, "serve-chat", "--port", "0", "--require-key-env", "CLASS_KEY_UNSET"
        )
        assert rc == 2 and "unset or empty" in lines[-1]["error"], lines
    srv = make_server(default_ws, port=0, require_key="k", wait_seconds=1.0)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    port = srv.server_address[1]

    def post(body: bytes, length: int | None = None):
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        headers = {"Authorization": "Bearer k", "Content-Type": "application/json"}
        headers["Content-Length"] = str(len(body) if length is None else length)
        c.request("POST", "/v1/chat/completions", body, headers)
        r = c.getresponse()
        return r.status, r.read().decode()

    msg = [{"role": "user", "content": "hi"}]
    try:
        for body, code, what in (
            ({"messages": msg, "max_tokens": -5}, 400, "max_tokens"),
            ({"messages": msg, "temperature": float("nan")}, 400, "temperature"),
            ({"messages": []}, 400, "non-empty"),
            ({"messages": [{"role": "user", "content": "x" * 200_000}]}, 400, "at most 16,000"),
            ([1, 2], 400, "JSON object"),
        ):
            status, text = post(json.dumps(body).encode())
            assert (status, what in text) == (code, True), (body if len(str(body)) < 200 else what, text)
        status, text = post(b"{}", length=MAX_BODY_BYTES + 1)
        assert status == 413
        ok = json.dumps({"messages": msg, "max_tokens": 2}).encode()
        # another request holds the model past the stated wait: this one is told to retry, not queued
        with srv.model_lock:
            status, text = post(ok)
        assert status == 503 and "busy; waited 1 s" in text, text
        assert post(ok)[0] == 200
    finally:
        srv.shutdown()
        srv.server_close()


def test_sizes_are_checked_against_the_headers_before_anything_is_allocated(tmp_path):
    """cfg.json promising 3,000,000 latents beside tiny weights, an extra huge tensor, and a GemmaScope
    params.npz whose arrays disagree: refused from the headers (a tracemalloc peak far below what the
    promises would take)."""
    import tracemalloc

    import numpy as np
    import torch
    from safetensors.torch import save_file

    from mistudio_widgets.sae.formats import read_gemmascope
    from mistudio_widgets.sae.io import SAEFormatError, load_sae

    folder = tmp_path / "sae"
    folder.mkdir()
    d_in, d_sae = 8, 16
    tensors = {
        "W_enc": torch.zeros(d_in, d_sae),
        "b_enc": torch.zeros(d_sae),
        "W_dec": torch.zeros(d_sae, d_in),
        "b_dec": torch.zeros(d_in),
    }
    save_file(tensors, str(folder / "sae_weights.safetensors"))
    cfg = {"architecture": "topk", "d_in": d_in, "d_sae": 3_000_000, "k": 4, "metadata": {}}
    (folder / "cfg.json").write_text(json.dumps(cfg))
    tracemalloc.start()
    with pytest.raises(SAEFormatError, match="W_enc has shape \\(8, 16\\) but cfg.json implies"):
        load_sae(folder)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 50 << 20  # not the 3,000,000 x 8 x 4 x 2 bytes the cfg promises
    # an extra tensor the SAE does not need is never read (it may be huge; here it is merely junk)
    cfg["d_sae"] = d_sae
    (folder / "cfg.json").write_text(json.dumps(cfg))
    save_file(
        {**tensors, "junk": torch.zeros(1000, 1000, dtype=torch.int8)},
        str(folder / "sae_weights.safetensors"),
    )
    sae, _ = load_sae(folder)
    assert sae.spec.d_sae == d_sae
    # GemmaScope arrays that disagree are refused from their headers
    arrays = {
        "W_enc": np.zeros((d_in, d_sae), np.float32),
        "W_dec": np.zeros((d_sae, d_in), np.float32),
        "b_enc": np.zeros(d_sae, np.float32),
        "b_dec": np.zeros(d_in, np.float32),
        "threshold": np.zeros(4_000_000, np.float32),
    }
    np.savez_compressed(tmp_path / "params.npz", **arrays)
    with pytest.raises(SAEFormatError, match="threshold has shape \\(4000000,\\) but W_enc"):
        read_gemmascope(tmp_path / "params.npz")


def test_minor_cases_get_clear_errors_not_tracebacks(tmp_path):
    """The minor findings: terminal-safe names, whole-string patterns, ids never shadowed by names, a
    stale running row deletable on request, hub paths that stay in their repository, a forged export
    marker, a checkpoint changed by hand."""
    from mistudio_widgets.cli.main import printable
    from mistudio_widgets.core.errors import HubError
    from mistudio_widgets.data.hooks import _HOOK_RE
    from mistudio_widgets.share.exporting import ExportError, fresh_folder
    from mistudio_widgets.share.hub import parse_hub_ref

    assert printable("a\x9b31mred\u202eevil\u2066") == "a\\x9b31mred\\u202eevil\\u2066"
    assert _HOOK_RE.match("blocks.3.hook_resid_post\n") is None
    ws = Workspace(tmp_path / "ws")
    other = ws.register("dataset", "real", meta={})
    with pytest.raises(WorkspaceError, match="form of an artifact id"):
        ws.register("dataset", other.id.replace("ds-", "tk-"), meta={})
    # a job marked running on another machine: refused, then deleted with force after the user's check
    run = ws.register(
        "run",
        "elsewhere",
        meta={"status": "running", "owner": {"host": "another-host", "pid": 1, "created": 0}},
    )
    with pytest.raises(WorkspaceError, match="--force"):
        ws.delete(run.id)
    assert ws.delete(run.id, force=True) == [run.id]
    # a feature command given a name that is no SAE lists the SAEs, not every other kind
    from mistudio_widgets.core.errors import ArtifactNotFound
    from mistudio_widgets.features.store import require_extraction

    ws.register("sae", "mine", meta={})
    with pytest.raises(ArtifactNotFound, match="No SAE or extraction called 'nosuch'.*use one of: mine\\.$"):
        require_extraction(ws, "nosuch")
    for ref in ("hf://owner/repo/../../..", "hf://owner/repo/a/..", "hf://owner/repo@../../x"):
        with pytest.raises(HubError, match="stay inside"):
            parse_hub_ref(ref)
    # a forged marker in a folder of the user's files does not let overwrite replace it
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    (mine / ".mistudio-export.json").write_text(json.dumps({"format": "saelens", "written": 0}))
    with pytest.raises(ExportError, match="changed after the export"):
        with fresh_folder(mine, overwrite=True):
            pass
    (mine / ".mistudio-export.json").write_text(json.dumps({"format": "x", "written": 0, "entries": []}))
    with pytest.raises(ExportError, match="did not write"):
        with fresh_folder(mine, overwrite=True):
            pass
    assert (mine / "thesis.tex").read_text() == "years of work"
    # an export of ours is replaced
    out = tmp_path / "out"
    with fresh_folder(out) as tmp:
        (tmp / "cfg.json").write_text("{}")
    with fresh_folder(out, overwrite=True) as tmp:
        (tmp / "cfg.json").write_text("{}")
    assert (out / "cfg.json").is_file()


def test_a_checkpoint_changed_by_hand_is_refused(default_ws, tmp_path):
    from mistudio_widgets.core.configs import TrainConfig
    from mistudio_widgets.train.prepare import TrainingError
    from mistudio_widgets.train.training import train

    cfg = TrainConfig(
        steps=6,
        batch_tokens=256,
        chunk_sequences=8,
        eval_sequences=2,
        eval_every=0,
        log_every=2,
        checkpoint_every=2,
        expansion_factor=1,
        k=4,
        hook="blocks.2.hook_resid_post",
        name=default_ws.unique_name("run", "tampered"),
    )
    res = train(default_ws, cfg, stop_after=2)
    run = default_ws.get(res.run_id)
    ckpt = run.path / "checkpoint-2"
    state = json.loads((ckpt / "state.json").read_text())
    (ckpt / "state.json").write_text(json.dumps({**state, "step": 10**18}))
    with pytest.raises(TrainingError, match="step 1000000000000000000 of a 6-step run"):
        train(default_ws, resume=run.id)
    (run.path / "checkpoint-x").mkdir()  # a folder that is not ours is ignored, not a traceback
    (ckpt / "state.json").write_text(json.dumps(state))
    assert train(default_ws, resume=run.id).status == "done"


def test_hostile_files_get_clear_errors(tmp_path):
    """A bundle version that is not a number, and a catalog row through a symbolic link loop: clear
    errors, no tracebacks; unique names for many artifacts stay cheap (only clashing names are read)."""
    from mistudio_widgets.share.bundles import BundleError, unpack

    ws = Workspace(tmp_path / "ws")
    from test_security import _bundle

    path = _bundle(tmp_path / "v.tar.gz", [], version="1; rm -rf")
    with pytest.raises(BundleError, match="bundle version"):
        unpack(ws, path)
    art = ws.register("dataset", "looped", meta={})
    with sqlite3.connect(ws.root / "catalog.sqlite") as con:
        con.execute("UPDATE artifacts SET path = ? WHERE id = ?", (f"datasets/{art.id}", art.id))
    (ws.root / "datasets").mkdir(exist_ok=True)
    os.symlink(ws.root / "datasets" / art.id, ws.root / "datasets" / art.id)  # a link to itself
    got = ws.get(art.id)
    assert got.path is None and got.meta["refused_because"]
    assert ws.delete(art.id) == [art.id]
    for _ in range(3):
        ws.register("dataset", ws.unique_name("dataset", "x_%"), meta={})
    assert sorted(a.name for a in ws.list("dataset")) == ["x_%", "x_%-2", "x_%-3"]


def test_a_damaged_extraction_file_is_named_not_a_traceback(tmp_path, default_ws, extraction):
    import shutil

    from mistudio_widgets.features import FEATURES_FILE, FeatureError
    from mistudio_widgets.features.store import read_parquet

    good = default_ws.get(extraction).path / FEATURES_FILE
    bad = tmp_path / FEATURES_FILE
    shutil.copyfile(good, bad)
    bad.write_bytes(bad.read_bytes()[:5000])  # truncated, as a full disk or a killed copy leaves it
    for schema_only in (False, True):
        with pytest.raises(FeatureError, match="is damaged.*extract again"):
            read_parquet(bad, schema_only=schema_only)
    with pytest.raises(FeatureError, match="is missing"):
        read_parquet(tmp_path / "gone.parquet")
    assert read_parquet(good, columns=["frequency"]).num_rows > 0
    # the Neuronpedia export reads the same files in batches, with the same errors
    from mistudio_widgets.features import EXAMPLES_FILE
    from mistudio_widgets.share.neuronpedia import _feature_batches

    copy = tmp_path / "extraction"
    shutil.copytree(good.parent, copy)
    assert next(_feature_batches(copy, 16))[0]
    (copy / EXAMPLES_FILE).write_bytes((copy / EXAMPLES_FILE).read_bytes()[:5000])
    with pytest.raises(FeatureError, match=f"{EXAMPLES_FILE} is damaged.*extract again"):
        next(_feature_batches(copy, 16))
    (copy / FEATURES_FILE).write_bytes(b"PAR1 not a parquet file")
    with pytest.raises(FeatureError, match=f"{FEATURES_FILE} is damaged"):
        next(_feature_batches(copy, 16))
