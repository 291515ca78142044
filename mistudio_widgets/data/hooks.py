"""TransformerLens-style hook names mapped onto Hugging Face modules, with a capture context manager
(which stops the forward pass after the last hook it needs) and an intervention context manager.

Hook names (L is a layer index):
  blocks.L.hook_resid_pre       input of decoder layer L
  blocks.L.hook_resid_mid       residual stream after attention, before the MLP (not for parallel blocks)
  blocks.L.hook_resid_post      output of decoder layer L
  blocks.L.ln2.hook_normalized  the MLP's normalised input
  blocks.L.hook_attn_out        what attention adds to the residual stream
  blocks.L.hook_mlp_out         what the MLP adds to the residual stream
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch
from torch import nn

from ..core.errors import HookError

HOOK_KINDS = (
    "hook_resid_pre",
    "hook_resid_mid",
    "hook_resid_post",
    "ln2.hook_normalized",
    "hook_attn_out",
    "hook_mlp_out",
)
_HOOK_RE = re.compile(r"^blocks\.(\d+)\.(" + "|".join(re.escape(k) for k in HOOK_KINDS) + r")\Z")


@dataclass(frozen=True)
class FamilySpec:
    """Where each hook lives inside one decoder layer of a family (attribute paths)."""

    layers: tuple[str, ...]  # candidate paths of the layer list, from the CausalLM
    attn_out: str  # module whose output is added to the residual after attention
    mlp_out: str  # module whose output is added to the residual after the MLP
    ln2: str  # the MLP's input norm: its input is resid_mid, its output ln2.hook_normalized


_LLAMA = FamilySpec(("model.layers",), "self_attn.o_proj", "mlp", "post_attention_layernorm")
_GEMMA2 = FamilySpec(
    ("model.layers", "model.language_model.layers"),
    "post_attention_layernorm",
    "post_feedforward_layernorm",
    "pre_feedforward_layernorm",
)
FAMILIES: dict[str, FamilySpec] = {
    "llama": _LLAMA,
    "mistral": _LLAMA,
    "qwen2": _LLAMA,
    "phi3": _LLAMA,
    "gemma": FamilySpec(("model.layers",), "self_attn.o_proj", "mlp", "post_attention_layernorm"),
    "gemma2": _GEMMA2,
    "gemma3": _GEMMA2,
    "gemma3_text": _GEMMA2,
    "gpt2": FamilySpec(("transformer.h",), "attn.c_proj", "mlp", "ln_2"),
    "gpt_neox": FamilySpec(("gpt_neox.layers",), "attention.dense", "mlp", "post_attention_layernorm"),
}


class StopForward(Exception):
    """Raised inside a hook to end a forward pass once everything needed is captured."""


def _get(root: nn.Module, path: str) -> Any:
    mod: Any = root
    for part in path.split("."):
        mod = getattr(mod, part)
    return mod


def family_of(model: nn.Module) -> tuple[str, FamilySpec]:
    family = str(getattr(model.config, "model_type", ""))
    spec = FAMILIES.get(family)
    if spec is None:
        raise HookError(
            f"Hook points are not mapped for the model family {family!r}.",
            f"use a model of a supported family: {', '.join(sorted(FAMILIES))}.",
        )
    return family, spec


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    _, spec = family_of(model)
    for path in spec.layers:
        with contextlib.suppress(AttributeError):
            return _get(model, path)
    raise HookError(
        f"Could not find the decoder layers of {type(model).__name__}.",
        "report this model class as unsupported.",
    )


def is_parallel(model: nn.Module) -> bool:
    """True when attention and MLP read the same input (GPT-NeoX/Pythia's parallel residual)."""
    return getattr(model.config, "model_type", None) == "gpt_neox" and bool(
        getattr(model.config, "use_parallel_residual", True)
    )


def hook_names_for(layers: int, parallel: bool = False) -> list[str]:
    """Every hook name of a model with ``layers`` decoder layers, in forward order."""
    order = [
        "hook_resid_pre",
        "hook_attn_out",
        "hook_resid_mid",
        "ln2.hook_normalized",
        "hook_mlp_out",
        "hook_resid_post",
    ]
    return [
        f"blocks.{layer}.{k}"
        for layer in range(layers)
        for k in order
        if not (parallel and k == "hook_resid_mid")
    ]


def hook_names(model: nn.Module) -> list[str]:
    """Every valid hook name of ``model``, in forward order."""
    return hook_names_for(len(decoder_layers(model)), is_parallel(model))


@dataclass(frozen=True)
class HookPoint:
    name: str
    layer: int
    kind: str


def parse_hook(model: nn.Module, name: str) -> HookPoint:
    """Validate a hook name against ``model``; errors list what is valid."""
    n = len(decoder_layers(model))
    m = _HOOK_RE.match(name or "")
    if not m:
        raise HookError(
            f"{name!r} is not a hook name.",
            f"use blocks.L.<point> with L in 0..{n - 1} and <point> one of: {', '.join(HOOK_KINDS)} "
            f"(e.g. blocks.{n // 2}.hook_resid_post).",
        )
    layer, kind = int(m.group(1)), m.group(2)
    if layer >= n:
        raise HookError(
            f"Layer {layer} of {name!r} is out of range: the model has {n} layers.",
            f"use a layer from 0 to {n - 1}.",
        )
    if kind == "hook_resid_mid" and is_parallel(model):
        raise HookError(
            f"{name!r} does not exist: this model's blocks run attention and MLP in parallel, so there "
            "is no resid_mid.",
            f"use blocks.{layer}.hook_resid_pre, hook_attn_out, hook_mlp_out or hook_resid_post.",
        )
    return HookPoint(name, layer, kind)


def _first_tensor(x: Any) -> torch.Tensor:
    return x[0] if isinstance(x, (tuple, list)) else x


def _replace_first(x: Any, new: torch.Tensor) -> Any:
    new = _like(new, _first_tensor(x))
    if isinstance(x, tuple):
        return (new, *x[1:])
    if isinstance(x, list):
        return [new, *x[1:]]
    return new


def _input_of(args: tuple, kwargs: dict) -> torch.Tensor:
    return args[0] if args else kwargs["hidden_states"]


def _like(new: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
    """An edited value in the dtype of the value it replaces (an edit computed in fp32 goes back into
    a bf16 model as bf16)."""
    return new if new.dtype == old.dtype else new.to(old.dtype)


def _with_input(args: tuple, kwargs: dict, new: torch.Tensor) -> tuple[tuple, dict]:
    new = _like(new, _input_of(args, kwargs))
    if args:
        return (new, *args[1:]), kwargs
    return args, {**kwargs, "hidden_states": new}


def _module_and_mode(model: nn.Module, point: HookPoint) -> tuple[nn.Module, str]:
    """The module to hook and whether its input ('pre') or output ('out') carries the value."""
    _, spec = family_of(model)
    layer = decoder_layers(model)[point.layer]
    return {
        "hook_resid_pre": (layer, "pre"),
        "hook_resid_post": (layer, "out"),
        "hook_attn_out": (_get(layer, spec.attn_out), "out"),
        "hook_mlp_out": (_get(layer, spec.mlp_out), "out"),
        "ln2.hook_normalized": (_get(layer, spec.ln2), "out"),
        "hook_resid_mid": (_get(layer, spec.ln2), "pre"),
    }[point.kind]


@contextlib.contextmanager
def capture(
    model: nn.Module, hooks: str | list[str], *, stop: bool = True
) -> Iterator[dict[str, torch.Tensor]]:
    """Record the values at ``hooks`` during forward passes run inside the block.

    With ``stop`` (the default) the forward pass ends as soon as every hook has fired, so the layers
    after the last hook, the final norm and the unembedding never run::

        with capture(model, "blocks.15.hook_resid_post") as acts:
            model(input_ids)
        acts["blocks.15.hook_resid_post"]   # [batch, seq, d_model]
    """
    names = list(dict.fromkeys([hooks] if isinstance(hooks, str) else hooks))
    points = [parse_hook(model, h) for h in names]
    store: dict[str, torch.Tensor] = {}
    seen: set[str] = set()
    handles = []

    def record(name: str, value: torch.Tensor) -> None:
        store[name] = value.detach()
        seen.add(name)
        if stop and len(seen) == len(points):
            seen.clear()  # re-armed for the next forward pass
            raise StopForward

    for p in points:
        module, mode = _module_and_mode(model, p)
        if mode == "pre":
            handles.append(
                module.register_forward_pre_hook(
                    lambda m, a, k, n=p.name: record(n, _input_of(a, k)), with_kwargs=True
                )
            )
        else:
            handles.append(
                module.register_forward_hook(lambda m, a, o, n=p.name: record(n, _first_tensor(o)))
            )
    try:
        yield store
    except StopForward:
        pass
    finally:
        for h in handles:
            h.remove()


Edit = Callable[[torch.Tensor], torch.Tensor]


@contextlib.contextmanager
def intervene(model: nn.Module, edits: dict[str, Edit]) -> Iterator[None]:
    """Replace the value at each hook by ``edit(value)`` during forward passes (and generation) run
    inside the block. Every hook is removed on exit, also after an error or an interrupt.

    ``hook_resid_mid`` is edited by adding ``edit(resid_mid) - resid_mid`` to the attention output,
    so that the change reaches the residual stream and not only the MLP's input.
    """
    handles = []
    try:
        for name, edit in edits.items():
            p = parse_hook(model, name)
            if p.kind == "hook_resid_mid":
                _, spec = family_of(model)
                layer = decoder_layers(model)[p.layer]
                stash: dict[str, torch.Tensor] = {}

                def keep(m, a, k, stash=stash):
                    stash["pre"] = _input_of(a, k)

                def edit_mid(m, a, o, edit=edit, stash=stash):
                    out = _first_tensor(o)
                    mid = stash.pop("pre") + out
                    return _replace_first(o, out + (edit(mid) - mid))

                handles.append(layer.register_forward_pre_hook(keep, with_kwargs=True))
                handles.append(_get(layer, spec.attn_out).register_forward_hook(edit_mid))
                continue
            module, mode = _module_and_mode(model, p)
            if mode == "pre":
                handles.append(
                    module.register_forward_pre_hook(
                        lambda m, a, k, edit=edit: _with_input(a, k, edit(_input_of(a, k))), with_kwargs=True
                    )
                )
            else:
                handles.append(
                    module.register_forward_hook(
                        lambda m, a, o, edit=edit: _replace_first(o, edit(_first_tensor(o)))
                    )
                )
        yield
    finally:
        for h in handles:
            h.remove()


def run_with_capture(
    model: nn.Module,
    input_ids: torch.Tensor,
    hooks: str | list[str],
    attention_mask: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """One forward pass (no grad), stopped after the last hook; returns the captured values."""
    with torch.inference_mode(), capture(model, hooks) as acts:
        model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    return acts
