"""Where the model looks from one token: the attention row of the last attention layer before an SAE's
hook, averaged over heads, for the feature page's attention overlay.

The model keeps its own attention implementation (SDPA does not return weights): the attention module's
input is captured with a pre-hook, the forward stops there, and a shallow copy of the module whose copied
config asks for eager attention is run on that input with an explicit causal mask. The copy shares the
weights; nothing the kernel's model holds is switched, so a training or steering run in the background
is not disturbed.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from ..data.hooks import StopForward, decoder_layers, parse_hook

_ATTENTION = ("self_attn", "attn", "attention")  # the attention module's name in a decoder layer
_CACHE_KWARGS = ("cache", "past_key_values", "past_key_value", "layer_past", "cache_position")


def attention_layer(model: nn.Module, hook: str) -> int | None:
    """The layer whose attention last wrote to the residual stream before ``hook`` (None before layer 0's)."""
    point = parse_hook(model, hook)
    layer = point.layer - 1 if point.kind == "hook_resid_pre" else point.layer
    return layer if layer >= 0 else None


def _attention_module(model: nn.Module, layer: int) -> nn.Module | None:
    block = decoder_layers(model)[layer]
    for name in _ATTENTION:
        mod = getattr(block, name, None)
        if isinstance(mod, nn.Module):
            return mod
    return None


@torch.no_grad()
def attention_row(
    lm: Any, ids: torch.Tensor, hook: str, position: int, skip: int = 0
) -> dict[str, Any] | None:
    """The attention from token ``position`` of ``ids`` [1, T] to every token up to it, in the last
    attention layer before ``hook``, averaged over heads: ``weights`` for tokens ``skip``..``position``
    (renormalised over them), ``sink`` the share that went to the first ``skip`` tokens (the BOS, which
    takes much of every row), ``layer``. None when the model has no attention there or does not say."""
    model = lm.model
    layer = attention_layer(model, hook)
    mod = _attention_module(model, layer) if layer is not None else None
    if mod is None or not hasattr(mod, "config"):
        return None
    got: dict[str, Any] = {}

    def keep(_m: nn.Module, args: tuple, kwargs: dict) -> None:
        got["args"], got["kwargs"] = args, kwargs
        raise StopForward

    handle = mod.register_forward_pre_hook(keep, with_kwargs=True)
    try:
        model(input_ids=ids.to(lm.device), use_cache=False)
    except StopForward:
        pass
    finally:
        handle.remove()
    if "args" not in got:
        return None
    eager = copy.copy(mod)  # shares parameters and buffers; only its config differs
    config: Any = copy.copy(mod.config)
    config._attn_implementation = "eager"
    eager.config = config
    args, kwargs = got["args"], {k: v for k, v in got["kwargs"].items() if k not in _CACHE_KWARGS}
    hidden = args[0] if args else kwargs["hidden_states"]
    T = hidden.shape[1]
    mask = torch.full((T, T), torch.finfo(hidden.dtype).min, dtype=hidden.dtype, device=hidden.device)
    kwargs["attention_mask"] = mask.triu(1)[None, None].expand(hidden.shape[0], 1, T, T)
    out = eager(*args, **kwargs)
    weights = out[1] if isinstance(out, tuple) and len(out) > 1 else None
    if not isinstance(weights, torch.Tensor) or weights.dim() != 4:
        return None
    row = weights[0, :, position, : position + 1].float().mean(0).cpu()  # over heads
    sink = float(row[:skip].sum())
    kept = row[skip:]
    kept = kept / kept.sum().clamp_min(1e-12)
    return {"layer": layer, "weights": kept.tolist(), "sink": sink}
