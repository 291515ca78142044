"""Feature extraction, the prompt tester, search and labels on the real default model and a small SAE
trained here: the streamed statistics and examples are checked against a brute-force pass."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import N_TOKENS

from mistudio_widgets.core.configs import ConfigError, ExtractConfig
from mistudio_widgets.data.datasets import load_tokens
from mistudio_widgets.features import (
    FeatureError,
    coactivation,
    extract,
    feature_acts,
    feature_columns,
    feature_detail,
    fire,
    load_library_sae,
    model_for_sae,
    sae_hook,
    search,
)
from mistudio_widgets.sae.io import load_sparsity


def brute_force(ws, sae_id, ext):
    art, sae, _ = load_library_sae(ws, sae_id)
    lm = model_for_sae(ws, art, sae)
    tokens = load_tokens(ws, ext.meta["tokenization"])[: N_TOKENS // 128]
    return tokens, feature_acts(
        lm, sae, sae_hook(art, sae), torch.tensor(tokens, dtype=torch.long)
    )  # [S, T, F]


def test_streamed_statistics_and_examples_match_a_brute_force_pass(default_ws, small_sae, extraction):
    assert extraction.meta["status"] == "done" and extraction.parent == small_sae
    tokens, A = brute_force(default_ws, small_sae, extraction)
    F = A.shape[-1]
    cols = feature_columns(default_ws, extraction)
    flat = A.reshape(-1, F)
    count = (flat > 0).sum(0).numpy()
    n_valid = extraction.meta["summary"]["tokens"]
    assert n_valid == N_TOKENS - int(np.isin(tokens, [0, 1, 2]).sum())
    np.testing.assert_allclose(cols["frequency"], count / n_valid, rtol=1e-5)
    np.testing.assert_allclose(cols["max"], flat.max(0).values.numpy(), rtol=1e-5)
    busiest = int(np.argmax(count))
    d = feature_detail(default_ws, extraction, busiest)
    assert d["count"] == count[busiest] and sum(d["histogram"]["counts"]) == count[busiest]
    assert d["mean"] == pytest.approx(float(flat[:, busiest][flat[:, busiest] > 0].mean()), rel=1e-4)
    assert d["quantiles"]["q50"] <= d["quantiles"]["q90"] <= d["quantiles"]["q99"] <= d["max"]
    # top examples: one per sequence, the sequences with the highest peaks, with the model's own values
    peaks = A[:, :, busiest].max(1).values
    want = torch.argsort(peaks, descending=True)[:5]
    got = [e["sequence"] for e in d["examples"]]
    assert got == want.tolist()
    for e in d["examples"]:
        row = A[e["sequence"], :, busiest]
        start = int(row.argmax()) - e["peak"]
        np.testing.assert_allclose(
            e["values"], row[start : start + len(e["values"])].numpy(), rtol=1e-3, atol=1e-3
        )
        assert e["token_ids"] == tokens[e["sequence"], start : start + len(e["values"])].tolist()
        assert e["values"][e["peak"]] == pytest.approx(e["value"], rel=1e-3)
    values = [e["value"] for e in d["examples"]]
    assert values == sorted(values, reverse=True)
    for g in d["quantile_examples"]:
        assert all(g["range"][0] - 1e-6 <= e["value"] <= g["range"][1] + 1e-6 for e in g["examples"])
    assert sum(len(g["examples"]) for g in d["quantile_examples"]) >= 2
    # logit lens, neighbours, sparsity for SAELens
    assert (
        len(d["logits"]["positive"]) == 20
        and d["logits"]["positive"][0]["value"] >= d["logits"]["positive"][-1]["value"]
    )
    assert len(d["neighbours"]) == 10 and busiest not in [n["index"] for n in d["neighbours"]]
    sparsity = load_sparsity(extraction.path)
    np.testing.assert_allclose(sparsity.numpy(), np.log10(count / n_valid + 1e-10), rtol=1e-4, atol=1e-4)


def test_coactivation_and_interrupted_extraction_resumes_to_the_same_files(default_ws, small_sae, extraction):
    import pyarrow.parquet as pq

    top = np.argsort(-feature_columns(default_ws, extraction)["frequency"])[:3].tolist()
    co = coactivation(default_ws, extraction, top)
    C = np.array(co["correlation"])
    assert np.allclose(np.diag(C), 1.0) and np.allclose(C, C.T) and co["tokens"] == N_TOKENS
    cfg = dict(
        extraction.meta["config"], name=default_ws.unique_name("extraction", "ci-resume"), checkpoint_every=1
    )
    part = extract(default_ws, small_sae, ExtractConfig(**cfg), stop_after=2)
    assert part.meta["status"] == "interrupted" and (part.path / "state.pt").is_file()
    with pytest.raises(FeatureError, match="interrupted"):
        feature_detail(default_ws, part, 0)
    done = extract(default_ws, None, resume=part.id)
    assert done.meta["status"] == "done" and not (done.path / "state.pt").exists()
    for name in ("features.parquet", "examples.parquet"):
        assert pq.read_table(done.path / name).equals(pq.read_table(extraction.path / name)), name


def test_prompt_tester_labels_and_search(default_ws, small_sae):
    r = fire(default_ws, small_sae, "WHY ARE YOU SHOUTING")
    assert "".join(r["tokens"]) == "WHY ARE YOU SHOUTING" and len(r["per_token"]) == len(r["tokens"])
    f = r["features"][0]
    assert r["ranking"] == "relative" and f["relative"] == max(
        x["relative"] for x in r["features"]
    )  # an extraction exists
    maxes = feature_columns(default_ws, small_sae)["max"]
    assert all(
        x["relative"] == pytest.approx(min(x["activation"] / max(maxes[x["index"]], 1e-6), 1.0), rel=1e-4)
        for x in r["features"]
    )
    assert r["values"][f["index"]][f["token"]] == pytest.approx(f["activation"])
    default_ws.add_label(small_sae, f["index"], "shouting (draft)")
    default_ws.add_label(small_sae, f["index"], "UPPERCASE text", score=0.9, method="manual")
    r2 = fire(default_ws, small_sae, "WHY ARE YOU SHOUTING")
    assert next(x for x in r2["features"] if x["index"] == f["index"])["label"] == "UPPERCASE text"
    assert [h["index"] for h in search(default_ws, small_sae, "uppercase")] == [f["index"]]
    hist = default_ws.labels(small_sae, f["index"], history=True)  # other tests may have labelled it before
    assert [h["label"] for h in hist][-2:] == ["shouting (draft)", "UPPERCASE text"]
    with pytest.raises(FeatureError, match="empty"):
        fire(default_ws, small_sae, "   ")
    with pytest.raises(ConfigError, match="tokens must be at least 1"):
        extract(default_ws, small_sae, ExtractConfig(tokens=0))


def _cli(ws, *args):
    proc = subprocess.run(
        [sys.executable, "-m", "mistudio_widgets.cli", "--workspace", str(ws.root), "--json", *args],
        capture_output=True,
        text=True,
        timeout=300,
    )
    return proc.returncode, [json.loads(x) for x in proc.stdout.splitlines() if x.startswith("{")]


def test_cli_features_fire_show_and_bad_index(default_ws, small_sae, extraction):
    rc, lines = _cli(
        default_ws, "features", "fire", small_sae, "--text", "Good morrow, my lord!", "--top", "4"
    )
    assert rc == 0 and set(lines[-1]) == {"summary", "features", "tokens", "ranking", "note"}
    assert len(lines[-1]["features"]) == 4 and {"index", "activation", "relative", "label"} <= set(
        lines[-1]["features"][0]
    )
    idx = lines[-1]["features"][0]["index"]
    name = default_ws.get(small_sae).name
    assert default_ws.find(name, "run") is not None  # the SAE shares its name with its run
    rc, lines = _cli(default_ws, "features", "show", name, str(idx))
    assert rc == 0 and lines[-1]["index"] == idx and lines[-1]["examples"]
    ex = lines[-1]["examples"][0]
    assert len(ex["tokens"]) == len(ex["values"]) and max(ex["values"]) == pytest.approx(
        ex["value"], rel=1e-3
    )
    rc, lines = _cli(default_ws, "features", "show", small_sae, "100000")
    assert rc == 2 and "out of range" in lines[-1]["error"]


def test_search_works_on_an_extraction_without_the_logit_lens(default_ws, small_sae, extraction):
    """A transcoder writing elsewhere than the residual stream gets no logit-lens columns (see finalise);
    search must then match labels and indices only instead of failing on the missing column."""
    import shutil

    import pyarrow.parquet as pq

    from mistudio_widgets.features import FEATURES_FILE, latest_extraction, search

    ext = default_ws.get(extraction)
    table = pq.read_table(ext.path / FEATURES_FILE)
    with default_ws.write_artifact(
        "extraction",
        default_ws.unique_name("extraction", "no-logit-lens"),
        meta=dict(ext.meta),
        parent=small_sae,
    ) as w:
        shutil.copytree(ext.path, w.path, dirs_exist_ok=True)
        pq.write_table(
            table.select([c for c in table.column_names if "logit" not in c]), w.path / FEATURES_FILE
        )
    try:
        assert latest_extraction(default_ws, small_sae).id == w.id
        default_ws.add_label(small_sae, 3, "lens-free label")
        assert [h["index"] for h in search(default_ws, small_sae, "lens-free")] == [3]
        hit = search(default_ws, small_sae, "2")[0]
        assert (hit["index"], hit["match"]) == (2, "index")
    finally:
        default_ws.delete(w.id)


def test_a_token_holding_part_of_a_character_is_shown_as_its_bytes(lm, default_ws, small_sae, extraction):
    """Decoded alone, 314 tokens of the vocabulary read "\ufffd" (a lone byte of a longer character); the
    feature page and the logit lens show their bytes, so that an emoji's two halves read as what they are."""
    from mistudio_widgets.features.store import shown_vocab, vocab_strings

    tok = lm.tokenizer
    alone, shown = vocab_strings(tok), shown_vocab(tok)
    broken = [i for i, t in enumerate(alone) if "\ufffd" in t]
    assert len(broken) > 100 and sum("\ufffd" in shown[i] for i in broken) <= 1
    ids = tok(" 😀", add_special_tokens=False)["input_ids"]
    assert len(ids) == 2 and "".join(shown[i] for i in ids) == " \\xf0\\x9f\\x98\\x80"
    assert [shown[i] for i in tok("café", add_special_tokens=False)["input_ids"]] == ["c", "af", "é"]
    lens = [
        t
        for i in range(8)
        for side in ("positive", "negative")
        for t in (feature_detail(default_ws, extraction, i).get("logits") or {}).get(side, [])
    ]
    assert lens and not any("\ufffd" in x["token"] for x in lens)


def test_a_feature_tried_on_a_typed_text_reads_as_the_prompt_tester_does(default_ws, small_sae, extraction):
    """The feature page's test box: one feature's activation at each token of a text, the same values the
    prompt tester finds for it, with its peak relative to the feature's extraction maximum."""
    from mistudio_widgets.features import fire, try_feature

    text = "The quick brown fox jumps over the lazy dog."
    fired = fire(default_ws, small_sae, text)
    f = fired["features"][0]["index"]
    got = try_feature(default_ws, small_sae, f, text)
    assert got["tokens"] == fired["tokens"] and got["values"] == pytest.approx(fired["values"][f])
    mx = float(feature_columns(default_ws, extraction)["max"][f])
    assert got["peak"] == max(got["values"]) > 0 and got["relative_peak"] == pytest.approx(got["peak"] / mx)
    with pytest.raises(FeatureError, match="empty"):
        try_feature(default_ws, small_sae, f, "  ")
    with pytest.raises(FeatureError, match="out of range"):
        try_feature(default_ws, small_sae, 10**6, text)
