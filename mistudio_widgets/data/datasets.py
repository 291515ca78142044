"""Datasets: documents from the embedded corpus, local files or the Hugging Face hub, stored as Arrow
in the workspace; tokenized into packed sequences with a model's tokenizer, with statistics."""

from __future__ import annotations

import collections
import contextlib
import os
import re
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from ..core.configs import DEFAULT, DatasetConfig, TokenizeConfig, to_dict
from ..core.errors import DatasetError, HubError, TokenizerMismatch
from ..core.progress import ProgressCallback, emit
from ..core.sources import refuse_links_out
from ..core.workspace import Artifact, Workspace
from .corpora import chat_texts, embedded_corpus
from .packing import (  # noqa: F401 (PIECE_CHARS, pieces, tokenizer_fingerprint: importable from here as before)
    PIECE_CHARS,
    check_tokenize_config,
    pack,
    packing_stats,
    pieces,
    tokenizer_fingerprint,
)

LOCAL_FORMATS = {
    ".txt": "text",
    ".text": "text",
    ".md": "text",
    ".jsonl": "json",
    ".json": "json",
    ".csv": "csv",
    ".parquet": "parquet",
}
TEXT_FIELDS = ("text", "content", "document", "body", "sentence", "story", "article")


@contextlib.contextmanager
def _quiet_saving() -> Iterator[None]:
    """Hide datasets' own save/load bars: our progress events already report the work."""
    import datasets as hf_tqdm

    was_disabled = hf_tqdm.are_progress_bars_disabled()
    hf_tqdm.disable_progress_bars()
    try:
        yield
    finally:
        if not was_disabled:
            hf_tqdm.enable_progress_bars()


# ---------------------------------------------------------------------------------------------
# Reading documents
def _local_files(path: Path) -> tuple[str, list[str]]:
    if not path.exists():
        raise DatasetError(
            f"No file or folder at {path}.",
            "check the path (relative paths start at the kernel's working folder).",
        )
    refuse_links_out(path, "dataset folder", DatasetError)
    files = (
        [path]
        if path.is_file()
        else sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in LOCAL_FORMATS)
    )
    if not files:
        raise DatasetError(
            f"{path} holds no readable files.", f"use files ending in {', '.join(sorted(LOCAL_FORMATS))}."
        )
    kinds = {LOCAL_FORMATS.get(p.suffix.lower()) for p in files}
    if None in kinds:
        raise DatasetError(
            f"{files[0].name} is not a supported format.",
            f"use files ending in {', '.join(sorted(LOCAL_FORMATS))}.",
        )
    if len(kinds) > 1:
        raise DatasetError(
            f"{path} mixes file formats ({', '.join(sorted(k for k in kinds if k))}).",
            "put files of one format in the folder, or add each format as its own dataset.",
        )
    return str(kinds.pop()), [str(p) for p in files]


def _pick_text_field(columns: Iterable[str], wanted: str | None, first: dict[str, Any] | None) -> str:
    columns = list(columns)
    if wanted:
        if wanted not in columns:
            raise DatasetError(
                f"The dataset has no column {wanted!r}.", f"choose one of: {', '.join(columns)}."
            )
        return wanted
    for name in TEXT_FIELDS:
        if name in columns:
            return name
    if first:
        for name in columns:
            if isinstance(first.get(name), str):
                return name
    raise DatasetError(
        f"No text column found among {', '.join(columns) or 'no columns'}.",
        "set text_field (--text-field) to the column holding the text.",
    )


def _hub_dataset(cfg: DatasetConfig):
    import datasets as hfd

    try:
        return hfd.load_dataset(
            cfg.source,
            cfg.config_name,
            split=cfg.split,
            streaming=cfg.streaming,
            revision=cfg.revision,
            token=cfg.token,
        )
    except FileNotFoundError as exc:  # includes DatasetNotFoundError
        offline = os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("HF_DATASETS_OFFLINE") == "1"
        raise HubError(
            f"Dataset {cfg.source!r} was not found on the Hugging Face hub"
            + (" (the hub is offline here)" if offline else "")
            + f": {exc}",
            "check the id and split, connect to the internet, or add the data from local files.",
        ) from exc
    except (ConnectionError, OSError) as exc:
        raise HubError(
            f"Could not reach the Hugging Face hub for dataset {cfg.source!r}: {exc}",
            "connect to the internet, or download the data elsewhere and add it as local files.",
        ) from exc
    except ValueError as exc:  # unknown split or config
        raise DatasetError(
            f"The hub dataset {cfg.source!r} could not be read as asked: {exc}",
            "check the config name and split.",
        ) from exc


def _iter_records(cfg: DatasetConfig) -> tuple[Iterator[dict[str, Any]], str, dict[str, Any]]:
    """Records of the source, the name of the text column, and provenance for the catalog."""
    corpus = embedded_corpus(cfg.source)
    if corpus is not None:
        return corpus.documents(), "text", corpus.provenance()
    path = Path(cfg.source).expanduser()
    looks_local = (
        path.exists() or cfg.source.startswith((".", "/", "~")) or path.suffix.lower() in LOCAL_FORMATS
    )
    if looks_local:
        import datasets as hfd

        builder, files = _local_files(path)
        kwargs: dict[str, Any] = {}
        if builder == "text":
            kwargs["sample_by"] = "document" if len(files) > 1 else "paragraph"
        try:
            ds = hfd.load_dataset(builder, data_files=files, split="train", **kwargs)
        except Exception as exc:
            raise DatasetError(
                f"Could not read {path} as {builder}: {exc}", "check that the files are valid and UTF-8 text."
            ) from exc
        prov: dict[str, Any] = {
            "kind": "local",
            "path": str(path.resolve()),
            "files": len(files),
            "format": builder,
        }
        if builder == "csv":
            ds, prov["header"] = _csv_header(ds, cfg, files)
        first = ds[0] if len(ds) else None
        field = _pick_text_field(ds.column_names, cfg.text_field, first)
        return iter(ds), field, prov
    return _hub_records(cfg)


def _csv_header(ds, cfg: DatasetConfig, files: list[str]):
    """A CSV's first row is read as column names. When none of them names a text column and one reads
    like a sentence, the file has no header row: read it again keeping that row as a record. Returns
    the dataset and what the first row was taken as (recorded, and printed by the CLI)."""
    import datasets as hfd

    names = ds.column_names
    sentence = lambda c: not c.startswith("Unnamed:") and (" " in c.strip() or len(c) > 40)  # noqa: E731
    if cfg.text_field or any(c in TEXT_FIELDS for c in names) or not any(sentence(c) for c in names):
        return ds, names
    ds = hfd.load_dataset("csv", data_files=files, split="train", header=None)
    return ds, "none (the first row reads as text, so it was kept as a record)"


def _hub_records(cfg: DatasetConfig) -> tuple[Iterator[dict[str, Any]], str, dict[str, Any]]:
    """Records of a hub dataset (streamed when ``cfg.streaming``). ``datasets`` reads a local
    dataset-repo folder through the same code, which is how the tests exercise it offline."""
    ds = _hub_dataset(cfg)
    it = iter(ds)
    try:
        first = next(it)
    except StopIteration:
        raise DatasetError(
            f"The hub dataset {cfg.source!r} split {cfg.split!r} is empty.", "choose another split."
        ) from None
    field = _pick_text_field(first.keys(), cfg.text_field, first)

    def chained() -> Iterator[dict[str, Any]]:
        yield first
        yield from it

    return (
        chained(),
        field,
        {
            "kind": "hub",
            "hub_id": cfg.source,
            "config_name": cfg.config_name,
            "split": cfg.split,
            "revision": cfg.revision,
            "streaming": cfg.streaming,
        },
    )


def _default_name(cfg: DatasetConfig) -> str:
    corpus = embedded_corpus(cfg.source)
    if corpus is not None:
        return corpus.name
    base = (
        Path(cfg.source.rstrip("/")).name
        if Path(cfg.source).expanduser().exists()
        else cfg.source.split("/")[-1]
    )
    return re.sub(r"\.[A-Za-z0-9]+$", "", base) or "dataset"


def add_dataset(
    ws: Workspace, cfg: DatasetConfig | None = None, *, progress: ProgressCallback | None = None
) -> Artifact:
    """Read documents from ``cfg.source`` and store them as an Arrow dataset in the workspace.

    Adding the embedded default twice returns the existing dataset.
    """
    import datasets as hfd

    cfg = cfg or DatasetConfig()
    if cfg.samples is not None and cfg.samples < 1:
        raise DatasetError(
            f"samples must be at least 1 (got {cfg.samples}).",
            "give a positive sample count, or none for all.",
        )
    corpus = embedded_corpus(cfg.source)
    if corpus is not None and not cfg.name:
        existing = ws.find(corpus.name, "dataset")
        if existing and existing.meta.get("provenance", {}).get("kind") == "embedded":
            return existing
    name = cfg.name or ws.unique_name("dataset", _default_name(cfg))
    records, field, provenance = _iter_records(cfg)
    texts: list[str] = []
    extra: dict[str, list[str]] = collections.defaultdict(list)
    skipped: dict[str, Any] = {}
    limit = cfg.samples
    for i, rec in enumerate(records):
        text = rec.get(field)
        if not isinstance(text, str) or not text.strip():
            why = (
                "no text"
                if text is None
                else "blank text"
                if isinstance(text, str)
                else f"a value of type {type(text).__name__}, not text"
            )
            skipped.setdefault(why, {"records": 0, "first": i + 1})["records"] += 1
            continue
        texts.append(text)
        for key in ("title", "part", "messages"):
            if corpus is not None:  # every record of an embedded corpus has these keys
                extra[key].append(str(rec[key]))
        if len(texts) % 200 == 0:
            emit(progress, "read", len(texts), limit, unit="docs")
        if limit is not None and len(texts) >= limit:
            break
    emit(progress, "read", len(texts), limit or len(texts), unit="docs", finished=True)
    if not texts:
        raise DatasetError(
            f"The source {cfg.source!r} yielded no documents with text.",
            "check the file contents, the split, or the text column (text_field).",
        )
    lengths = np.fromiter((len(t) for t in texts), dtype=np.int64, count=len(texts))
    meta = {
        "config": to_dict(cfg),
        "provenance": provenance,
        "text_field": field,
        "stats": {
            "documents": len(texts),
            "characters": int(lengths.sum()),
            "mean_chars": float(lengths.mean()),
            "max_chars": int(lengths.max()),
            "skipped": skipped,
        },
    }
    if provenance.get("licence"):
        meta["licence"] = provenance["licence"]
    with ws.write_artifact("dataset", name, meta=meta) as w:
        with _quiet_saving():
            hfd.Dataset.from_dict({"text": texts, **extra}).save_to_disk(str(w.path / "data"))
    return ws.get(w.id)


def load_documents(ws: Workspace, ref: str | Artifact):
    """The stored documents as a ``datasets.Dataset`` (column ``text``)."""
    import datasets as hfd

    art = ws.get(ref, "dataset")
    return hfd.load_from_disk(str(art.folder / "data"))


def preview_documents(ws: Workspace, ref: str | Artifact, n: int = 3, chars: int = 400) -> list[str]:
    docs = load_documents(ws, ref)
    return [t[:chars] for t in list(docs.select(range(min(n, len(docs))))["text"])]


def tokenize_dataset(
    ws: Workspace,
    dataset: str | Artifact,
    model: str | Artifact,
    cfg: TokenizeConfig | None = None,
    *,
    name: str | None = None,
    progress: ProgressCallback | None = None,
) -> Artifact:
    """Tokenize a stored dataset with ``model``'s tokenizer into packed sequences of ``context_size`` tokens.

    Documents shorter than ``min_length`` tokens are dropped; the rest are joined with the separator
    token and cut into sequences (each starting with BOS when ``prepend_bos``). The trailing partial
    sequence is dropped. Returns the new ``tokenization`` artifact (its parent is the dataset).
    """
    import datasets as hfd
    import pyarrow as pa

    from .models import load_tokenizer

    cfg = check_tokenize_config(cfg or TokenizeConfig())
    ds_art = ws.get(dataset, "dataset")
    model_art = ws.get(model, "model")
    tokenizer = load_tokenizer(ws, model_art)
    bos = tokenizer.bos_token_id if cfg.prepend_bos else None
    if cfg.prepend_bos and bos is None:
        raise DatasetError(f"The tokenizer of {model_art.name!r} has no BOS token.", "set prepend_bos=False.")
    docs = load_documents(ws, ds_art)
    chats = list(docs["messages"]) if "messages" in docs.column_names else None
    packed = pack(tokenizer, chat_texts(tokenizer, list(docs["text"]), chats), cfg, bos, progress)
    if packed.sequences.shape[0] == 0:
        raise DatasetError(
            f"{ds_art.name!r} gives {packed.stream_tokens} tokens after filtering ({packed.dropped_short} of "
            f"{len(docs)} documents shorter than min_length={cfg.min_length}), less than one sequence of "
            f"{cfg.context_size}.",
            "lower min_length or context_size, or add more documents.",
        )
    seqs = packed.sequences
    stats = packing_stats(tokenizer, packed, cfg, len(docs))
    meta = {
        "dataset": ds_art.id,
        "model": model_art.id,
        "model_name": model_art.name,
        "tokenizer_fingerprint": tokenizer_fingerprint(tokenizer),
        "config": to_dict(cfg),
        "stats": stats,
    }
    name = name or ws.unique_name("tokenization", f"{ds_art.name}@{model_art.name}/ctx{cfg.context_size}")
    with ws.write_artifact("tokenization", name, meta=meta, parent=ds_art.id) as w:
        col = pa.FixedSizeListArray.from_arrays(pa.array(seqs.reshape(-1), type=pa.int32()), cfg.context_size)
        with _quiet_saving():
            hfd.Dataset(pa.table({"input_ids": col})).save_to_disk(str(w.path / "data"))
    return ws.get(w.id)


def load_tokens(ws: Workspace, ref: str | Artifact) -> np.ndarray:
    """Packed token ids of a tokenization, as an int32 array [sequences, context_size] (memory-mapped)."""
    import datasets as hfd

    art = ws.get(ref, "tokenization")
    table = hfd.load_from_disk(str(art.folder / "data")).data.table
    col = table.column("input_ids").combine_chunks()
    ctx = art.meta["config"]["context_size"]
    return col.flatten().to_numpy(zero_copy_only=False).reshape(-1, ctx)


def check_tokenization_fits(ws: Workspace, tokenization: Artifact, model: Artifact, tokenizer) -> None:
    """Raise :class:`TokenizerMismatch` when a tokenization was made with a different tokenizer."""
    if tokenization.meta.get("tokenizer_fingerprint") != tokenizer_fingerprint(tokenizer):
        raise TokenizerMismatch(
            f"The tokenized dataset {tokenization.name!r} was made with the tokenizer of "
            f"{tokenization.meta.get('model_name')!r}, "
            f"which differs from the tokenizer of {model.name!r}.",
            f"tokenize the dataset again with {model.name!r} (mistudio datasets tokenize ... --model "
            f"{model.name}).",
        )


def preview_tokens(ws: Workspace, ref: str | Artifact, n: int = 3) -> list[dict[str, Any]]:
    """The first ``n`` packed sequences, decoded, with their tokens."""
    from .models import load_tokenizer

    art = ws.get(ref, "tokenization")
    tok = load_tokenizer(ws, art.meta["model"])
    seqs = load_tokens(ws, art)[:n]
    return [{"text": tok.decode(s.tolist()), "tokens": tok.convert_ids_to_tokens(s.tolist())} for s in seqs]


def find_tokenization(
    ws: Workspace, dataset: str | Artifact, model: str | Artifact, context_size: int | None = None
) -> Artifact | None:
    """The newest tokenization of ``dataset`` made for ``model`` (and context size, when given)."""
    ds_art, model_art = ws.get(dataset, "dataset"), ws.get(model, "model")
    hits = [
        a
        for a in ws.list("tokenization", parent=ds_art.id)
        if a.meta.get("model") == model_art.id
        and (context_size is None or a.meta["config"]["context_size"] == context_size)
    ]
    return hits[-1] if hits else None


def resolve_dataset(
    ws: Workspace, ref: str | Artifact = DEFAULT, *, progress: ProgressCallback | None = None
) -> Artifact:
    """A dataset artifact; ``'default'`` or an embedded corpus's name (see :data:`.corpora.CORPORA`) adds
    that corpus on first use."""
    if isinstance(ref, Artifact):
        return ref
    if ref == DEFAULT:
        return add_dataset(ws, progress=progress)
    if ws.find(ref, "dataset") is None and embedded_corpus(ref) is not None:
        return add_dataset(ws, DatasetConfig(source=ref), progress=progress)
    return ws.get(ref, "dataset")


def tokens_for(
    ws: Workspace,
    ref: str,
    model: str | Artifact,
    context_size: int,
    *,
    progress: ProgressCallback | None = None,
) -> Artifact:
    """What a job reads for a dataset reference: the tokenization ``ref`` names, else the dataset ``ref``
    names (or the default corpus) tokenized for ``model`` at ``context_size``, made if missing."""
    tok = ws.find(ref, "tokenization")
    if tok is not None:
        return tok
    ds = resolve_dataset(ws, ref, progress=progress)
    return ensure_tokenization(ws, ds, model, TokenizeConfig(context_size=context_size), progress=progress)


def ensure_tokenization(
    ws: Workspace,
    dataset: str | Artifact,
    model: str | Artifact,
    cfg: TokenizeConfig | None = None,
    *,
    progress: ProgressCallback | None = None,
) -> Artifact:
    """The newest tokenization of ``dataset`` for ``model`` at ``cfg.context_size``, made if missing."""
    cfg = cfg or TokenizeConfig()
    found = find_tokenization(ws, dataset, model, cfg.context_size)
    return found or tokenize_dataset(ws, dataset, model, cfg, progress=progress)
