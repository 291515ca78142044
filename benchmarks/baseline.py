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


def model_in(ws, dtype: str):
    """The default model registered a second time to run in ``dtype`` ('float32' or 'bfloat16'): its
    converted folder is referenced, not copied. The benchmarks compare the two in one run."""
    from mistudio_widgets.core.configs import ModelConfig
    from mistudio_widgets.data.models import add_model, resolve_model

    base = resolve_model(ws)
    name = f"{base.name}-{ {'float32': 'fp32', 'bfloat16': 'bf16'}[dtype] }"
    return ws.find(name, "model") or add_model(
        ws, ModelConfig(source=str(base.path / "hf"), name=name, dtype=dtype)
    )
