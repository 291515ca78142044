"""Automatic labelling, offline: the in-kernel explainer, and the HTTP path against a real
OpenAI-compatible server (``mistudio serve-chat``, backed by the embedded model) started here; a
hanging endpoint; the API key reaches the server but never the workspace."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import pytest
from browser import free_port
from waiting import wait_for

from mistudio_widgets.core.configs import LabelConfig
from mistudio_widgets.features.labeling import LabelError, OpenAIChat, clean_label, label_features

SECRET = "sk-test-" + "5ecret-never-stored-0042"


@pytest.fixture(scope="module")
def chat_server(default_ws):
    port = free_port()
    env = {**os.environ, "MISTUDIO_TEST_KEY": SECRET, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mistudio_widgets.cli",
            "--workspace",
            str(default_ws.root),
            "serve-chat",
            "--port",
            str(port),
            "--require-key-env",
            "MISTUDIO_TEST_KEY",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}/v1"

    def models():
        try:
            req = urllib.request.Request(url + "/models", headers={"Authorization": f"Bearer {SECRET}"})
            with urllib.request.urlopen(req, timeout=2) as r:
                return json.load(r)["data"]
        except OSError:
            return None

    served = wait_for(
        models,
        "the chat server to answer",
        timeout=180,
        interval=0.5,
        gone=lambda: proc.poll() is not None and f"it exited: {proc.stdout.read()[-2000:]}",
    )
    assert served[0]["id"] == "SmolLM2-135M-Instruct"
    yield url
    proc.terminate()
    log, _ = proc.communicate(timeout=20)
    assert "POST /v1/chat/completions" in log and SECRET not in log  # the server's log never holds the key


def test_http_labelling_against_a_real_chat_server(
    default_ws, small_sae, extraction, chat_server, monkeypatch
):
    cfg = LabelConfig(
        backend="openai",
        base_url=chat_server,
        model="SmolLM2-135M-Instruct",
        api_key_env="MISTUDIO_TEST_KEY",
        examples=4,
        max_tokens=16,
        timeout=120,
        holdout_tokens=4096,
    )
    with pytest.raises(LabelError, match="refused the API key"):
        label_features(
            default_ws, small_sae, cfg, top=1, api_key="wrong-key", redo=True
        )  # (redo: earlier tests may have labelled it)
    monkeypatch.setenv("MISTUDIO_TEST_KEY", SECRET)
    run = label_features(default_ws, small_sae, cfg, top=1, redo=True)
    res = run.of("auto")
    assert len(res) == 1 and res[0].label, run.results
    row = default_ws.labels(small_sae, res[0].feature)[0]
    assert (row["method"], row["model"], row["label"]) == ("auto", "SmolLM2-135M-Instruct", res[0].label)
    scoring = row["meta"]["scoring"]
    assert scoring["chance"] == 0.5 and scoring["held_out"] == run.held_out
    assert scoring["score"] is None or (
        0.0 <= row["score"] <= 1.0 and scoring["positives"] >= 3 and scoring["negatives"] >= 3
    )
    # the same explainer and template again: nothing to do (a stopped batch resumes where it stopped)
    assert label_features(default_ws, small_sae, cfg, features=[res[0].feature]).results == []
    # the key went to the server but is nowhere in the workspace
    for path in default_ws.root.rglob("*"):
        if path.is_file() and path.stat().st_size < 50_000_000:
            assert SECRET.encode() not in path.read_bytes(), path


def test_local_explainer_competes_with_the_statistical_label(default_ws, small_sae, extraction):
    """The in-kernel explainer labels a feature too; both labels are scored on the same held-out texts and
    kept; the feature is titled by the better one only if it is above chance."""
    import numpy as np

    from mistudio_widgets.features import feature_columns, shown_labels

    busiest = int(np.argmax(feature_columns(default_ws, extraction)["frequency"]))
    run = label_features(
        default_ws,
        small_sae,
        LabelConfig(backend="local", examples=3, max_tokens=12, holdout_tokens=4096),
        features=[busiest],
        redo=True,
    )
    (stat,), (lm,) = run.of("statistical"), run.of("auto")
    assert lm.model == "SmolLM2-135M-Instruct" and lm.label and stat.label
    rows = default_ws.labels(small_sae, busiest, history=True)[-2:]
    assert {r["method"] for r in rows} == {"statistical", "auto"}
    held = {r["meta"]["scoring"]["held_out"] for r in rows}
    assert held == {run.held_out}  # the same held-out texts for both explainers
    contenders = [r for r in (stat, lm) if r.verdict == "above chance"]
    shown = shown_labels(default_ws, small_sae).get(busiest)
    if contenders:
        assert shown["label"] == max(contenders, key=lambda r: r.score.score).label
    else:
        assert shown is None or shown["method"] == "manual"
    from mistudio_widgets.features.labeling import LocalChat

    p = LocalChat(default_ws).yes_probability([{"role": "user", "content": "Is fire hot? Answer yes or no."}])
    assert 0.0 < p < 1.0


def test_the_reader_reads_only_the_label_and_checks_it_on_real_tokens(default_ws):
    """The reader's claims come from the label's words; its predictions on real tokenized text follow
    them (quoted words in any case or leading space, forms, contexts, half weight for examples)."""
    import numpy as np

    from mistudio_widgets.data.models import load_tokenizer, resolve_model
    from mistudio_widgets.features import vocab_strings
    from mistudio_widgets.features.label_reader import predict, read
    from mistudio_widgets.features.token_forms import CAPS, analyse

    r = read('all-capital words before "." (e.g. "WIDOW", "BOTH") (dense: 3% of tokens); promotes "lord"')
    assert (r.forms, r.before, r.weak, r.targets) == (CAPS, ["."], ["widow", "both"], [])
    assert read('"shall" (also "Shall")').targets == ["shall", "shall"]
    assert read('"the" after "of"').after == ["of"] and read('"the" after "of"').targets == ["the"]
    assert read("the theme of kings").weak == ["theme", "kings"]  # content words, half weight
    assert read("line breaks").forms and read("capitalised words").forms != CAPS
    tok = load_tokenizer(default_ws, resolve_model(default_ws))
    text = "WIDOW. I shall go.\nShall we? BOTH. Yes"
    ids = np.array([tok(text, add_special_tokens=False)["input_ids"]])
    vocab = vocab_strings(tok)
    at = analyse(ids, vocab, set(tok.all_special_ids))
    pieces = [vocab[i] for i in ids[0]]
    every = np.arange(ids.shape[1])

    def on(label):
        return {pieces[i]: float(p) for i, p in zip(every, predict(read(label), at, every)) if p > 0}

    # case and leading-space variants; "Shall" after the line break is Sh|all, matched as a whole word
    assert set(on('"shall"')) == {" shall", "Sh", "all"}
    caps = on('all-capital words before "."')
    assert caps and all(p == 1.0 for p in caps.values()) and all(t.strip().isupper() for t in caps)
    assert on('"shall" after "I"') == {" shall": 1.0, "Sh": 0.3, "all": 0.3}  # the context decides


def test_a_hanging_endpoint_fails_clearly_and_labels_nothing(default_ws, small_sae, extraction):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    held = []
    stop = threading.Event()

    def accept_and_hang():
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])  # read nothing, answer nothing
            except OSError:
                pass

    t = threading.Thread(target=accept_and_hang, daemon=True)
    t.start()
    before = [r for r in default_ws.labels(small_sae, history=True) if r["method"] == "auto"]
    try:
        cfg = LabelConfig(
            backend="openai",
            base_url=f"http://127.0.0.1:{listener.getsockname()[1]}/v1",
            model="x",
            timeout=0.5,
            retries=1,
            score=False,
            holdout_tokens=4096,
        )
        with pytest.raises(LabelError, match="did not answer after 2 tries"):
            label_features(default_ws, small_sae, cfg, top=1, redo=True)
        assert len(held) == 2  # one try and one retry, each given up after the timeout
    finally:
        stop.set()
        t.join()
        for c in held:
            c.close()
        listener.close()
    # the explainer added nothing; the statistical label made first stays
    assert [r for r in default_ws.labels(small_sae, history=True) if r["method"] == "auto"] == before
    assert default_ws.labels(small_sae, history=True)[-1]["method"] == "statistical"


def test_endpoint_errors_and_label_cleaning():
    with pytest.raises(LabelError, match="not an http"):
        OpenAIChat("ftp://x", "m")
    with pytest.raises(LabelError, match="did not answer"):
        OpenAIChat(f"http://127.0.0.1:{free_port()}/v1", "m", timeout=0.5, retries=0).chat(
            [{"role": "user", "content": "hi"}], 4, 0
        )
    assert clean_label('The feature responds to "all-caps shouting."\nExtra') == "all-caps shouting"


def test_cli_extract_and_label(default_ws, small_sae):
    def cli(*args):
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "mistudio_widgets.cli",
                "--workspace",
                str(default_ws.root),
                "--json",
                *args,
            ],
            capture_output=True,
            text=True,
            timeout=600,
            env={**os.environ, "HF_HUB_OFFLINE": "1"},
        )
        lines = [json.loads(x) for x in proc.stdout.splitlines() if x.startswith("{")]
        return proc.returncode, lines

    rc, lines = cli("extract", small_sae, "--tokens", "512", "--top-k", "5", "--batch-size", "4")
    assert rc == 0 and lines[-1]["status"] == "done" and lines[-1]["sae_id"] == small_sae
    assert any(x.get("event") == "progress" and x["stage"] == "extract" for x in lines)
    ext = default_ws.get(lines[-1]["extraction_id"], "extraction")
    assert ext.meta["summary"]["tokens"] > 0 and (ext.path / "sparsity.safetensors").is_file()
    rc, lines = cli("label", small_sae, "--top", "1", "--holdout-tokens", "2048", "--redo")
    assert rc == 0 and lines[-1]["labelled"] == 1, lines
    row = next(x for x in lines if "feature" in x)
    assert row["method"] == "statistical" and row["label"] and row["scoring"]["chance"] == 0.5
    rc, lines = cli("label", small_sae, "--all", "--holdout-tokens", "2048")
    dist = next(x["distribution"] for x in lines if "distribution" in x)
    assert rc == 0 and dist["labelled"] >= 1 and dist["chance"] == 0.5 and "median" in dist
    rc, lines = cli("label", small_sae, "--features", "99999")
    assert rc == 2 and "out of range" in lines[-1]["error"]


class _Scripted:
    """A real HTTP server answering chat-completions calls from a script: 'ok', 'busy' (429) or 'bad'
    (malformed)."""

    def __init__(self, script):
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.script, self.calls = list(script), 0
        outer = self

        class H(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                self.rfile.read(int(self.headers.get("Content-Length", "0")))
                step = outer.script[min(outer.calls, len(outer.script) - 1)]
                outer.calls += 1
                code, body = {
                    "ok": (
                        200,
                        {"choices": [{"message": {"role": "assistant", "content": f"label {outer.calls}"}}]},
                    ),
                    "busy": (429, {"error": "slow down"}),
                    "bad": (200, {"nope": True}),
                }[step]
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *a):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def test_rate_limits_are_retried_and_a_failure_mid_batch_keeps_earlier_labels(
    default_ws, small_sae, extraction
):
    import numpy as np

    from mistudio_widgets.features import feature_columns

    order = [int(i) for i in np.argsort(-feature_columns(default_ws, extraction)["frequency"])[:2]]
    srv = _Scripted(["busy", "ok", "bad"])
    try:
        cfg = LabelConfig(
            backend="openai",
            base_url=srv.url,
            model=f"scripted-{time.time()}",
            score=False,
            retries=2,
            timeout=5,
            holdout_tokens=4096,
        )
        with pytest.raises(
            LabelError,
            match=r"did not answer in the chat-completions format.*feature 2 of 2.*1 explainer label",
        ):
            label_features(default_ws, small_sae, cfg, features=order)
        kept = [r for r in default_ws.labels(small_sae, history=True) if r["model"] == cfg.model]
        assert [(r["feature"], r["label"]) for r in kept] == [
            (order[0], "label 2")
        ]  # 429 first, then answered
        srv.script = ["ok"]
        res = label_features(default_ws, small_sae, cfg, features=order)  # continues with the rest only
        assert [r.feature for r in res.of("auto")] == [order[1]]
    finally:
        srv.close()


def test_an_sae_that_does_not_fit_the_model_is_refused(default_ws, tmp_path):
    from mistudio_widgets.features import FeatureError, fire
    from mistudio_widgets.sae import SAESpec, make_sae
    from mistudio_widgets.sae.io import save_sae

    sae = make_sae(
        SAESpec(
            architecture="topk", d_in=64, d_sae=128, k=4, metadata={"hook_name": "blocks.1.hook_resid_post"}
        )
    )
    with default_ws.write_artifact(
        "sae", default_ws.unique_name("sae", "narrow"), meta={"d_sae": 128, "d_in": 64}
    ) as w:
        save_sae(sae, w.path)
    with pytest.raises(FeatureError, match="reads 64-wide activations but .* has d_model 576"):
        fire(default_ws, w.id, "hello")


def test_a_key_typed_in_the_widget_never_leaves_the_kernel(default_ws, small_sae, extraction, chat_server):
    """In a real kernel, the browser's auto-label panel sends the key with one request (as the page
    does): the labelling works, and nothing the kernel publishes (outputs, the widget state a saved
    notebook keeps, errors) holds the key; a refused key is not repeated in the error either."""
    import numpy as np
    from ipython_kernels import kernel

    from mistudio_widgets.features import feature_columns, latest_extraction

    freq = feature_columns(default_ws, latest_extraction(default_ws, small_sae))["frequency"]
    feature = next(
        int(i)
        for i in np.argsort(-freq)
        if not any(r["method"] == "auto" for r in default_ws.labels(small_sae, int(i), history=True))
    )
    settings = {
        "backend": "openai",
        "base_url": chat_server,
        "model": "SmolLM2-135M-Instruct",
        "api_key_env": "",
        "examples": 3,
        "score": False,
        "max_tokens": 12,
        "timeout": 120,
        "holdout_tokens": 4096,
    }
    wrong = "sk-wrong-" + "key-typed-by-mistake-77"
    with kernel(default_ws.root) as k:
        k.run(
            "import mistudio_widgets as ms\nfrom mistudio_widgets.widgets import FeatureBrowser\nfrom "
            "IPython.display import display\n"
            f"ws = ms.open_workspace()\nfb = FeatureBrowser(ws, sae={small_sae!r})\ndisplay(fb)"
        )
        for key, expected in ((wrong, "refused the API key"), (SECRET, "1 explainer label(s)")):
            k.run(
                f"fb._on_page_msg(fb, {{'action': 'autolabel', 'args': {{'features': [{feature}], "
                f"'settings': {settings!r}, 'api_key': {key!r}}}}}, [])\nfb.wait(600)"
            )
            while k.eval("fb.status") != "idle":  # the result is applied on the kernel's loop
                time.sleep(0.2)
            assert expected in k.run("print(fb.message, fb.error)")
        k.drain()
    # (execute_input only echoes this test's own cells, which hold the key the page would send in a comm
    # message)
    blob = json.dumps([m for m in k.published if m["msg_type"] != "execute_input"], default=str)
    assert "refused the API key" in blob and '"label_settings"' in blob, (
        "the kernel's messages were not all captured"
    )
    assert SECRET not in blob and wrong not in blob
    assert default_ws.labels(small_sae, feature)[0]["method"] == "auto"
    for path in default_ws.root.rglob("*"):
        if path.is_file() and path.stat().st_size < 50_000_000:
            assert SECRET.encode() not in path.read_bytes() and wrong.encode() not in path.read_bytes(), path


def test_bad_input_to_labelling_gets_clear_answers(default_ws, small_sae, extraction, tmp_path):
    """An SAE without an extraction names the command that makes one; a feature that never fired is
    reported, not labelled; a tokenization the extraction read to the end leaves nothing to score on."""
    import numpy as np

    from mistudio_widgets.features import FeatureError, feature_columns
    from mistudio_widgets.sae import SAESpec, make_sae
    from mistudio_widgets.sae.io import save_sae

    sae = make_sae(
        SAESpec(
            architecture="topk", d_in=576, d_sae=64, k=4, metadata={"hook_name": "blocks.6.hook_resid_post"}
        )
    )
    with default_ws.write_artifact(
        "sae", default_ws.unique_name("sae", "never-extracted"), meta={"d_sae": 64}
    ) as w:
        save_sae(sae, w.path)
    with pytest.raises(FeatureError, match="mistudio extract"):
        label_features(default_ws, w.id, all_features=True)
    from mistudio_widgets.features import latest_extraction

    freq = feature_columns(default_ws, latest_extraction(default_ws, small_sae))["frequency"]
    dead = [int(i) for i in np.nonzero(freq == 0)[0]]
    if dead:  # a small SAE trained briefly usually has some
        run = label_features(
            default_ws, small_sae, LabelConfig(holdout_tokens=2048), features=dead[:1], redo=True
        )
        assert run.results[0].label is None and run.results[0].skipped == "never fired"
