"""The configuration dataclasses: one source of truth for widgets, notebooks and the CLI.

Every field carries a ``help`` text in its metadata; widgets render forms from it and the CLI
reads the same field names from flags or a YAML/JSON file.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from .errors import MistudioError

DEFAULT = "default"


def opt(default: Any, help: str, **kw: Any) -> Any:
    """A dataclass field with a help text (the field's docstring)."""
    return field(default=default, metadata={"help": help, **kw})


T = TypeVar("T")


def from_dict(cls: type[T], data: dict[str, Any]) -> T:
    """Build a config from a mapping, naming unknown keys and the valid ones."""
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - names)
    if unknown:
        raise MistudioError(
            f"{cls.__name__} has no setting {', '.join(unknown)}.",
            f"use one of: {', '.join(sorted(names))}.",
        )
    return cls(**data)


def to_dict(cfg: Any, *, secret: tuple[str, ...] = ("token", "api_key")) -> dict[str, Any]:
    """A JSON-able dict of a config, without secrets (never written to the workspace)."""
    return {k: v for k, v in dataclasses.asdict(cfg).items() if k not in secret}


def field_help(cls: type) -> dict[str, str]:
    return {f.name: f.metadata.get("help", "") for f in dataclasses.fields(cls)}


@dataclass
class DatasetConfig:
    """Where a dataset's documents come from."""

    source: str = opt(DEFAULT, "'default' (the embedded Shakespeare corpus), a Hugging Face hub id, or a local file/folder (txt, jsonl, json, csv, parquet).")
    name: str | None = opt(None, "Name in the workspace; derived from the source when empty.")
    config_name: str | None = opt(None, "Hub dataset configuration (subset) name.")
    split: str = opt("train", "Split to read.")
    streaming: bool = opt(True, "Stream from the hub instead of downloading whole files (hub sources only).")
    samples: int | None = opt(None, "Keep at most this many documents (all when empty).")
    text_field: str | None = opt(None, "Column that holds the text; guessed ('text', 'content', ...) when empty.")
    revision: str | None = opt(None, "Hub revision (branch, tag or commit).")
    token: str | None = opt(None, "Hub token for gated datasets; never stored.")


@dataclass
class TokenizeConfig:
    """How documents become packed sequences of token ids."""

    context_size: int = opt(128, "Tokens per packed sequence.", minimum=2)
    prepend_bos: bool = opt(True, "Start every packed sequence with the tokenizer's BOS token.")
    separator: Literal["eos", "bos", "none"] = opt("eos", "Token placed between documents when packing.")
    min_length: int = opt(1, "Drop documents with fewer tokens than this.", minimum=0)
    special_tokens: bool = opt(False, "Parse special-token text (e.g. '<|im_end|>') inside documents as special tokens.")
    max_tokens: int | None = opt(None, "Stop after this many tokens (all when empty).")


@dataclass
class ModelConfig:
    """Which model to use and how to load it."""

    source: str = opt(DEFAULT, "'default' (embedded SmolLM2-135M-Instruct), a Hugging Face hub id, a local folder, or a .gguf file.")
    name: str | None = opt(None, "Name in the workspace; derived from the source when empty.")
    revision: str | None = opt(None, "Hub revision (branch, tag or commit).")
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = opt("auto", "Weights dtype; 'auto' is float32 on CPU, bfloat16 on CUDA when supported.")
    quantization: Literal["none", "8bit", "4bit"] = opt("none", "bitsandbytes quantization (8-bit or 4-bit NF4).")
    device: Literal["auto", "cpu", "cuda", "mps"] = opt("auto", "Where to run the model.")
    trust_remote_code: bool = opt(False, "Run the model repository's own Python code. Off unless you trust the repository.")
    token: str | None = opt(None, "Hub token for gated models; never stored.")


@dataclass
class CaptureConfig:
    """Which activations to capture and from how many tokens."""

    hook: str = opt("blocks.15.hook_resid_post", "TransformerLens-style hook name, e.g. blocks.15.hook_resid_post.")
    tokens: int = opt(16384, "Tokens to run through the model.", minimum=1)
    batch_size: int = opt(16, "Sequences per forward pass.", minimum=1)
    drop_special: bool = opt(True, "Drop BOS, separator and other special-token positions (attention sinks).")
    outlier_factor: float = opt(10.0, "Flag positions whose norm exceeds this multiple of the batch median (0 turns it off).")
