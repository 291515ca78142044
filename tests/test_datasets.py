"""Datasets from local files of every format, the embedded corpus, packing with the real tokenizer."""

from __future__ import annotations

import json

import pytest

from mistudio_widgets import DatasetConfig, TokenizeConfig, Workspace
from mistudio_widgets.core.errors import DatasetError, HubError, TokenizerMismatch
from mistudio_widgets.data.datasets import (
    add_dataset,
    find_tokenization,
    load_documents,
    load_tokens,
    preview_tokens,
    resolve_dataset,
    tokenize_dataset,
)
from mistudio_widgets.data.models import load_tokenizer

DOCS = [
    "The quick brown fox jumps over the lazy dog.",
    "WHY ARE YOU SHOUTING AT ME?",
    "A third document, with some more words in it than the others have.",
]


def make_files(d):
    (d / "txt").mkdir()
    for i, t in enumerate(DOCS):
        (d / "txt" / f"{i}.txt").write_text(t)
    (d / "docs.jsonl").write_text("\n".join(json.dumps({"content": t, "id": i}) for i, t in enumerate(DOCS)))
    (d / "docs.json").write_text(json.dumps([{"text": t} for t in DOCS]))
    (d / "docs.csv").write_text("id,body\n" + "\n".join(f'{i},"{t}"' for i, t in enumerate(DOCS)))
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": DOCS}), d / "docs.parquet")


@pytest.mark.parametrize("src", ["txt", "docs.jsonl", "docs.json", "docs.csv", "docs.parquet"])
def test_local_formats(tmp_path, src):
    make_files(tmp_path)
    ws = Workspace(tmp_path / "ws")
    art = add_dataset(ws, DatasetConfig(source=str(tmp_path / src)))
    assert sorted(load_documents(ws, art)["text"]) == sorted(DOCS)
    assert art.meta["stats"]["documents"] == 3
    assert art.meta["provenance"]["kind"] == "local"


def test_samples_and_bad_inputs(tmp_path):
    make_files(tmp_path)
    ws = Workspace(tmp_path / "ws")
    art = add_dataset(ws, DatasetConfig(source=str(tmp_path / "docs.jsonl"), samples=2, name="two"))
    assert art.meta["stats"]["documents"] == 2 and art.name == "two"
    with pytest.raises(DatasetError, match="No file or folder"):
        add_dataset(ws, DatasetConfig(source=str(tmp_path / "missing.txt")))
    (tmp_path / "empty.jsonl").write_text(json.dumps({"text": "   "}) + "\n")
    with pytest.raises(DatasetError, match="no documents with text"):
        add_dataset(ws, DatasetConfig(source=str(tmp_path / "empty.jsonl")))
    with pytest.raises(DatasetError, match="no column 'nope'.*content"):
        add_dataset(ws, DatasetConfig(source=str(tmp_path / "docs.jsonl"), text_field="nope"))
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    (mixed / "a.txt").write_text("x")
    (mixed / "b.csv").write_text("text\ny")
    with pytest.raises(DatasetError, match="mixes file formats"):
        add_dataset(ws, DatasetConfig(source=str(mixed)))
    assert [a.name for a in ws.list("dataset")] == ["two"]


def test_unknown_hub_id_offline(tmp_path):
    ws = Workspace(tmp_path)
    with pytest.raises(HubError, match="hub"):
        add_dataset(ws, DatasetConfig(source="nobody-here/no-such-dataset"))
    assert ws.list() == []


def test_default_corpus_is_real_and_idempotent(default_ws):
    art = add_dataset(default_ws)
    assert art.name == "modern-english" and art.meta["licence"] == "BSD-3-Clause"
    assert art.meta["stats"]["documents"] > 15_000
    docs = load_documents(default_ws, art)
    texts = list(docs["text"])
    assert any("Murphy" in t for t in texts)  # a fortune-file quote
    chats = [(t, m) for t, m in zip(texts, docs["messages"]) if m]
    assert len(chats) > 1_500 and all(t.startswith("User: ") for t, _ in chats)
    assert json.loads(chats[0][1])[1]["role"] == "assistant"
    # shuffled together: the first 500 documents (what a short run reads) hold both kinds
    assert 0 < sum(bool(m) for m in list(docs["messages"])[:500]) < 500
    assert add_dataset(default_ws).id == art.id
    plays = resolve_dataset(default_ws, "shakespeare")  # Shakespeare stays one name away
    assert plays.meta["licence"] == "CC-BY-2.5" and plays.meta["stats"]["documents"] > 700


def test_conversations_are_tokenized_in_the_models_own_chat_template(default_ws):
    """A conversation of the default corpus becomes the token ids of the tokenizer's chat template, its
    markers real special tokens (never the text '<|im_start|>' cut into pieces); other documents stay text."""
    ws = default_ws
    model = ws.get("SmolLM2-135M-Instruct", "model")
    tokenizer = load_tokenizer(ws, model)
    tok = find_tokenization(ws, "modern-english", model, 128)
    arr = load_tokens(ws, tok)[:200]
    start = tokenizer.convert_tokens_to_ids("<|im_start|>")
    assert (arr == start).sum() > 20
    text = tokenizer.decode(arr.reshape(-1))
    assert "<|im_start|>assistant\n" in text and "<|im_start|>user\n" in text
    pieces = tokenizer("<|im_start|>", add_special_tokens=False, split_special_tokens=True)["input_ids"]
    flat = arr.reshape(-1).tolist()
    assert not any(flat[i : i + len(pieces)] == pieces for i in range(len(flat)))


def test_packing_with_the_real_tokenizer(default_ws, tmp_path):
    ws = default_ws
    model = ws.get("SmolLM2-135M-Instruct", "model")
    src = tmp_path / "docs.jsonl"
    src.write_text("\n".join(json.dumps({"text": t}) for t in DOCS + ["hi"]))
    ds = add_dataset(ws, DatasetConfig(source=str(src), name=ws.unique_name("dataset", "packing-test")))
    tok = tokenize_dataset(ws, ds, model, TokenizeConfig(context_size=16, min_length=3))
    arr = load_tokens(ws, tok)
    tokenizer = load_tokenizer(ws, model)
    st = tok.meta["stats"]
    assert arr.shape == (st["sequences"], 16) and st["tokens"] == arr.size
    assert (arr[:, 0] == tokenizer.bos_token_id).all()
    assert st["documents_dropped_short"] == 1 and st["documents_kept"] == 4 - 1
    expected = []
    for t in DOCS:
        expected += tokenizer(t, add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
    body = arr[:, 1:].reshape(-1).tolist()
    assert body == expected[: len(body)]
    assert sum(h for h in st["length_histogram"]["counts"]) == 3
    assert st["top_tokens"][0]["count"] >= st["top_tokens"][-1]["count"]
    assert "fox" in preview_tokens(ws, tok, 1)[0]["text"]
    # several tokenizations of one dataset are kept side by side
    tok2 = tokenize_dataset(
        ws, ds, model, TokenizeConfig(context_size=8, prepend_bos=False, separator="none")
    )
    assert {t.id for t in ws.children(ds.id)} == {tok.id, tok2.id}
    assert load_tokens(ws, tok2).shape[1] == 8
    with pytest.raises(DatasetError, match="less than one sequence"):
        tokenize_dataset(ws, ds, model, TokenizeConfig(context_size=4096))
    ws.delete(ds.id, cascade=True)


def test_special_token_text_is_split_unless_asked(default_ws, tmp_path):
    ws = default_ws
    model = ws.get("SmolLM2-135M-Instruct", "model")
    src = tmp_path / "s.jsonl"
    src.write_text(json.dumps({"text": "hello <|im_end|> world " * 20}))
    ds = add_dataset(ws, DatasetConfig(source=str(src), name=ws.unique_name("dataset", "special-test")))
    eos = load_tokenizer(ws, model).eos_token_id
    plain = load_tokens(
        ws, tokenize_dataset(ws, ds, model, TokenizeConfig(context_size=32, separator="none"))
    )
    parsed = load_tokens(
        ws,
        tokenize_dataset(
            ws, ds, model, TokenizeConfig(context_size=32, separator="none", special_tokens=True)
        ),
    )
    assert (plain == eos).sum() == 0 and (parsed == eos).sum() > 5
    ws.delete(ds.id, cascade=True)


def test_tokenization_for_another_model_is_refused(default_ws, tiny_model_art, lm):
    from mistudio_widgets.core.configs import CaptureConfig
    from mistudio_widgets.data.activations import capture_stats

    ws = default_ws
    tiny = tiny_model_art
    ds = resolve_dataset(ws, "shakespeare")  # an embedded corpus other than the default, added by name
    tok = tokenize_dataset(ws, ds, tiny, TokenizeConfig(context_size=32, max_tokens=2048))
    assert load_tokens(ws, tok).max() < 300
    with pytest.raises(TokenizerMismatch, match="tokenize the dataset again"):
        capture_stats(ws, lm.artifact, tok, CaptureConfig(tokens=64))
    ws.delete(tok.id)


@pytest.mark.parametrize("streaming", [True, False])
def test_hub_code_path_on_a_local_dataset_repo(tmp_path, streaming):
    """The hub branch (load_dataset with split, streaming, sample count) run on a local repo folder."""
    import itertools

    import pyarrow as pa
    import pyarrow.parquet as pq

    from mistudio_widgets.data.datasets import _hub_records

    repo = tmp_path / "someone" / "corpus"
    (repo / "data").mkdir(parents=True)
    pq.write_table(
        pa.table({"story": [f"story number {i}" for i in range(50)], "n": list(range(50))}),
        repo / "data" / "train-00000-of-00001.parquet",
    )
    pq.write_table(pa.table({"story": ["held out"], "n": [0]}), repo / "data" / "test-00000-of-00001.parquet")
    records, field, prov = _hub_records(DatasetConfig(source=str(repo), split="train", streaming=streaming))
    assert field == "story" and prov["kind"] == "hub" and prov["streaming"] is streaming
    first = list(itertools.islice(records, 5))
    assert [r["story"] for r in first] == [f"story number {i}" for i in range(5)]
    records, *_ = _hub_records(DatasetConfig(source=str(repo), split="test", streaming=streaming))
    assert [r["story"] for r in records] == ["held out"]
    with pytest.raises(DatasetError, match="split"):
        _hub_records(DatasetConfig(source=str(repo), split="validation", streaming=streaming))
