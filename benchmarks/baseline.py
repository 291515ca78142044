"""The baseline every benchmark here compares with: the default model's bare forward pass, truncated
after the hooked layer (embedding + layers 0..L + final norm), with no hooks and no post-processing.

Also the helpers the benchmarks share: the base model (the embedded default, or ``--model``, any source
``ModelConfig`` takes) registered again per dtype and quantization, and a clock that waits for the GPU."""

from __future__ import annotations

import time

import torch
from torch import nn

SHORT = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}


def synchronize(device) -> None:
    """Wait for queued GPU work, so that a clock read after it counts that work."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def truncated_forward_seconds(lm, tokens, layer: int, batch_size: int = 16) -> float:
    inner = lm.model.model
    full = inner.layers
    inner.layers = nn.ModuleList(list(full)[: layer + 1])
    device = lm.model.device
    try:
        synchronize(device)
        t0 = time.perf_counter()
        with torch.inference_mode():
            for s in range(0, len(tokens), batch_size):
                ids = torch.tensor(tokens[s : s + batch_size], dtype=torch.long).to(device)
                inner(input_ids=ids, use_cache=False)
        synchronize(device)
        return time.perf_counter() - t0
    finally:
        inner.layers = full


def base_model(ws, source: str | None = None):
    """The model the benchmarks run: the embedded default, or ``source`` (a local folder or hub id)."""
    from mistudio_widgets.core.configs import ModelConfig
    from mistudio_widgets.data.models import add_model, resolve_model

    return resolve_model(ws) if source is None else add_model(ws, ModelConfig(source=source))


def model_in(ws, dtype: str, quantization: str = "none", device: str = "auto", source: str | None = None):
    """The base model (:func:`base_model`) registered a second time to run in ``dtype`` ('float32',
    'bfloat16' or 'float16'), with ``quantization`` (none, 8bit or 4bit) on ``device``: its folder is
    referenced, not copied. The benchmarks compare these in one run."""
    from mistudio_widgets.core.configs import ModelConfig
    from mistudio_widgets.data.models import add_model, model_location

    base = base_model(ws, source)
    name = f"{base.name}-{SHORT[dtype]}" + ("" if quantization == "none" else f"-{quantization}")
    name += "" if device == "auto" else f"-{device}"
    return ws.find(name, "model") or add_model(
        ws,
        ModelConfig(
            source=model_location(base)[0], name=name, dtype=dtype, quantization=quantization, device=device
        ),
    )
