"""The baseline every benchmark here compares with: the default model's bare forward pass, truncated
after the hooked layer (embedding + layers 0..L + final norm), with no hooks and no post-processing."""

from __future__ import annotations

import time

import torch
from torch import nn


def truncated_forward_seconds(lm, tokens, layer: int, batch_size: int = 16) -> float:
    inner = lm.model.model
    full = inner.layers
    inner.layers = nn.ModuleList(list(full)[: layer + 1])
    try:
        t0 = time.perf_counter()
        with torch.inference_mode():
            for s in range(0, len(tokens), batch_size):
                inner(input_ids=torch.tensor(tokens[s : s + batch_size], dtype=torch.long), use_cache=False)
        return time.perf_counter() - t0
    finally:
        inner.layers = full
