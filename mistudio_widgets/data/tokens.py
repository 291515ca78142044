"""Facts about a tokenizer that several stages need, in one place."""

from __future__ import annotations

from typing import Any

DEFAULT_CONTEXT = 2048  # a model's context when its config names none


def special_token_ids(tokenizer: Any) -> list[int]:
    """The tokenizer's special-token ids (BOS, EOS, padding, chat markers), sorted, each once: the
    positions training, evaluation, steering metrics and the caches leave out."""
    return sorted({int(i) for i in tokenizer.all_special_ids})


def context_length(config: Any) -> int:
    """The longest sequence a model reads, from its config (``max_position_embeddings`` or GPT-2's
    ``n_positions``), else :data:`DEFAULT_CONTEXT`."""
    for name in ("max_position_embeddings", "n_positions"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return DEFAULT_CONTEXT
