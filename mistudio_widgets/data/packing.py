"""Packing documents into sequences of token ids: tokenizing in bounded pieces, joining documents with a
separator, cutting the stream into sequences (each with BOS where asked), and the statistics of the
result. Pure functions of a tokenizer and texts; the workspace side is :func:`datasets.tokenize_dataset`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np

from ..core.configs import TokenizeConfig
from ..core.errors import DatasetError
from ..core.progress import ProgressCallback, emit
from .tokens import special_token_ids

HIST_BINS = 30
PIECE_CHARS = 100_000  # longer documents are tokenized in pieces cut at whitespace (bounded memory)
BATCH_CHARS = 2_000_000  # characters handed to the tokenizer at once
TOP_TOKENS = 25


# ---------------------------------------------------------------------------------------------
# Tokenizing
def tokenizer_fingerprint(tokenizer) -> str:
    """A short hash of a tokenizer's vocabulary and special tokens: equal fingerprints tokenize alike."""
    import hashlib

    h = hashlib.sha256()
    for tok, idx in sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1]):
        h.update(f"{idx}\x00{tok}\x01".encode("utf-8", "surrogatepass"))
    h.update(
        repr((tokenizer.bos_token_id, tokenizer.eos_token_id, sorted(tokenizer.all_special_ids))).encode()
    )
    return h.hexdigest()[:16]


def _separator_id(tokenizer, which: str) -> int | None:
    if which == "none":
        return None
    tid = tokenizer.eos_token_id if which == "eos" else tokenizer.bos_token_id
    if tid is None:
        tid = tokenizer.bos_token_id if which == "eos" else tokenizer.eos_token_id
    return tid


def _histogram(lengths: np.ndarray, bins: int = HIST_BINS) -> dict[str, list]:
    if lengths.size == 0:
        return {"edges": [], "counts": []}
    counts, edges = np.histogram(lengths, bins=bins)
    return {"edges": [float(e) for e in edges], "counts": [int(c) for c in counts]}


def pieces(text: str, limit: int = PIECE_CHARS) -> list[str]:
    """``text`` cut into pieces of at most ``limit`` characters, each cut just before a space in the
    piece's second half (so a word-initial token keeps its leading space), else before a line break,
    else at the limit."""
    out, pos = [], 0
    while len(text) - pos > limit:
        end = pos + limit
        cut = text.rfind(" ", pos + limit // 2, end)
        cut = cut if cut > pos else text.rfind("\n", pos + limit // 2, end)
        cut = cut if cut > pos else end
        out.append(text[pos:cut])
        pos = cut
    out.append(text[pos:])
    return out


def _encode(tokenizer, texts: list, **kw) -> Iterator[np.ndarray]:
    """Token ids (int32) of each text, with at most BATCH_CHARS characters in the tokenizer at once:
    a single-line document of 50 MB costs tens of MB, not gigabytes. A document given as token ids
    (a conversation in the model's chat template) is kept as it is."""
    todo = [(i, p) for i, t in enumerate(texts) if isinstance(t, str) for p in pieces(t)]
    ids: list[list[np.ndarray]] = [[] if isinstance(t, str) else [np.asarray(t, np.int32)] for t in texts]
    start = 0
    while start < len(todo):
        end, chars = start, 0
        while end < len(todo) and (end == start or chars + len(todo[end][1]) <= BATCH_CHARS):
            chars += len(todo[end][1])
            end += 1
        enc = tokenizer([p for _, p in todo[start:end]], add_special_tokens=False, **kw)["input_ids"]
        for (i, _), got in zip(todo[start:end], enc):
            ids[i].append(np.asarray(got, dtype=np.int32))
        start = end
    return (np.concatenate(parts) if parts else np.zeros(0, np.int32) for parts in ids)


def check_tokenize_config(cfg: TokenizeConfig) -> TokenizeConfig:
    """``cfg``, or a clear error for a setting no packing can use."""
    if cfg.context_size < 2:
        raise DatasetError(f"context_size must be at least 2 (got {cfg.context_size}).", "use e.g. 128.")
    if cfg.min_length < 0:
        raise DatasetError(
            f"min_length must not be negative (got {cfg.min_length}).", "use 0 to keep every document."
        )
    if cfg.separator not in ("eos", "bos", "none"):
        raise DatasetError(
            f"separator must be 'eos', 'bos' or 'none' (got {cfg.separator!r}).", "choose one of those."
        )
    return cfg


@dataclass
class Packed:
    """Documents packed into sequences: the sequences [n, context_size] (n may be 0), each kept
    document's token count, and what was dropped or split on the way."""

    sequences: np.ndarray
    doc_lengths: np.ndarray
    dropped_short: int  # documents shorter than min_length
    split_docs: int  # documents tokenized in pieces (longer than PIECE_CHARS characters)
    stream_tokens: int  # tokens of the joined stream before it was cut into sequences


def pack(
    tokenizer, texts, cfg: TokenizeConfig, bos: int | None, progress: ProgressCallback | None = None
) -> Packed:
    """Tokenize ``texts`` (a column of documents), drop those under ``cfg.min_length`` tokens, join the
    rest with the separator and cut the stream into sequences of ``cfg.context_size`` tokens, each
    starting with ``bos`` when given; the trailing partial sequence is dropped."""
    sep = _separator_id(tokenizer, cfg.separator)
    n_docs = len(texts)
    body = cfg.context_size - (1 if bos is not None else 0)
    stream: list[np.ndarray] = []
    doc_lengths: list[int] = []
    dropped_short = split_docs = total = 0
    batch = 256
    for start in range(0, n_docs, batch):
        chunk = list(texts[start : start + batch])
        split_docs += sum(isinstance(t, str) and len(t) > PIECE_CHARS for t in chunk)
        for ids in _encode(tokenizer, chunk, split_special_tokens=not cfg.special_tokens):
            if len(ids) < max(cfg.min_length, 1):
                dropped_short += 1
                continue
            doc_lengths.append(len(ids))
            arr = np.append(ids, np.int32(sep)) if sep is not None else ids
            stream.append(arr)
            total += arr.size
        emit(progress, "tokenize", min(start + batch, n_docs), n_docs, unit="docs")
        if cfg.max_tokens is not None and total >= cfg.max_tokens:
            break
    emit(progress, "tokenize", n_docs, n_docs, unit="docs", finished=True)
    flat = np.concatenate(stream) if stream else np.zeros(0, dtype=np.int32)
    n_seq = flat.size // body
    if cfg.max_tokens is not None:
        n_seq = min(n_seq, cfg.max_tokens // cfg.context_size)
    seqs = flat[: n_seq * body].reshape(n_seq, body)
    if bos is not None:
        seqs = np.concatenate([np.full((n_seq, 1), bos, dtype=np.int32), seqs], axis=1)
    return Packed(seqs, np.asarray(doc_lengths, dtype=np.int64), dropped_short, split_docs, int(flat.size))


def packing_stats(tokenizer, packed: Packed, cfg: TokenizeConfig, n_docs: int) -> dict[str, Any]:
    """What a tokenization holds: documents kept and dropped, tokens, sequences, the most common tokens,
    special-token positions and the documents' length histogram."""
    seqs, lengths = packed.sequences, packed.doc_lengths
    special = np.asarray(special_token_ids(tokenizer), dtype=np.int32)
    ids, counts = np.unique(seqs, return_counts=True)
    top = [
        {
            "id": int(ids[i]),
            "token": tokenizer.decode([int(ids[i])]),
            "count": int(counts[i]),
            "special": bool(np.isin(ids[i], special)),
        }
        for i in np.argsort(-counts)[:TOP_TOKENS]
    ]
    return {
        "documents": n_docs,
        "documents_kept": len(lengths),
        "documents_dropped_short": packed.dropped_short,
        "documents_tokenized_in_pieces": packed.split_docs,
        "tokens": int(seqs.size),
        "sequences": int(seqs.shape[0]),
        "context_size": cfg.context_size,
        "unique_tokens": int(ids.size),
        "special_positions": int(np.isin(seqs, special).sum()),
        "mean_doc_tokens": float(lengths.mean()) if lengths.size else 0.0,
        "max_doc_tokens": int(lengths.max()) if lengths.size else 0,
        "length_histogram": _histogram(lengths),
        "top_tokens": top,
    }
