"""Before a run starts: run names, memory estimates, and the form's check of a config against the
workspace (problems, warnings, memory and time), without loading weights."""

from __future__ import annotations

from typing import Any

import torch

from ..core import defaults
from ..core.configs import DEFAULT, PER_SAE, TrainConfig, point_label
from ..core.errors import MistudioError
from ..core.workspace import Workspace
from ..sae import SAESpec
from .pace import estimate_seconds
from .prepare import TrainingError, sae_spec


def run_names(cfgs: list[TrainConfig]) -> list[str]:
    """Names for the runs of one group: architecture and hook, plus the settings that differ between
    the group's SAEs ('topk-blocks.15.hook_resid_post-k16')."""
    varying = [
        f
        for f in PER_SAE
        if f not in ("name", "architecture", "hook") and len({repr(getattr(c, f)) for c in cfgs}) > 1
    ]
    names = []
    for c in cfgs:
        differs = point_label({f: getattr(c, f) for f in varying})
        names.append("-".join(filter(None, [c.architecture, short_hook(c.hook), differs])))
    return names


def short_hook(hook: str) -> str:
    """A hook name short enough for a run name: 'blocks.15.hook_resid_post' -> 'L15-resid_post',
    'blocks.3.attn.hook_z' -> 'L3-attn_z'."""
    parts = hook.split(".")
    if len(parts) >= 3 and parts[0] == "blocks" and parts[1].isdigit():
        rest = "_".join(p.removeprefix("hook_") for p in parts[2:])
        return f"L{parts[1]}-{rest}"
    return hook


def sae_memory_mib(cfg: TrainConfig, d_in: int, d_sae: int) -> float:
    """What one SAE of a group holds while training: weights, gradients and two optimiser tensors per
    weight, and one batch's dense pre-activations and their selection."""
    params = 2 * d_in * d_sae + d_sae + d_in
    micro = cfg.batch_tokens // max(cfg.grad_accumulation, 1)
    return (params * 4 * 4 + micro * d_sae * 4 * 2) / 2**20


def stream_memory_mib(cfg: TrainConfig, d_in: int, hooks: int = 1) -> float:
    """The shared activation stream: one chunk of sequences at each hook, and its shuffled copy."""
    return cfg.chunk_sequences * cfg.context_size * d_in * 4 * 2 * hooks / 2**20


def free_memory_mib(device: str) -> float:
    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.mem_get_info()[0] / 2**20
    import psutil

    return psutil.virtual_memory().available / 2**20


def check_group_memory(cfgs: list[TrainConfig], specs: list[SAESpec], device: str) -> None:
    """Refuse, before anything starts, a group (a sweep) whose SAEs would not fit in free memory."""
    hooks = len({h for c in cfgs for h in (c.hook, c.hook_out) if h})
    need = sum(sae_memory_mib(c, sp.d_in, sp.d_sae) for c, sp in zip(cfgs, specs))
    need += stream_memory_mib(cfgs[0], specs[0].d_in, hooks)
    free = free_memory_mib(device)
    if need > 0.9 * free:
        raise TrainingError(
            f"Training these {len(cfgs)} SAE(s) together needs about {need / 1024:.1f} GiB "
            f"(weights, optimiser state and one batch each); {free / 1024:.1f} GiB is free on {device}.",
            "use fewer grid points, smaller widths or a smaller batch_tokens (or raise "
            "grad_accumulation), or split the sweep into several trainings.",
        )


def check_config(ws: Workspace, cfg: TrainConfig) -> dict[str, Any]:
    """Validate a config against the workspace without loading weights; returns
    ``{"problems": [...], "d_sae": ..., "memory_mib": ..., "seconds": ...}`` for forms and the CLI."""
    from ..data.hooks import hook_names_for

    problems: list[str] = []
    model = ws.find(defaults.DEFAULT_MODEL_NAME if cfg.model == DEFAULT else cfg.model, "model")
    info = model.meta.get("info", {}) if model else {}
    d_in = int(info.get("d_model") or 0)
    if model is None and cfg.model != DEFAULT:
        problems.append(f"No model called {cfg.model!r}.")
    if model is not None and info:
        names = hook_names_for(info["layers"], info.get("parallel_blocks", False))
        for h in filter(None, (cfg.hook, cfg.hook_out)):
            if h not in names:
                problems.append(f"{h!r} is not a hook of {model.name} (layers 0..{info['layers'] - 1}).")
    if cfg.dataset != DEFAULT and not (
        ws.find(cfg.dataset, "tokenization") or ws.find(cfg.dataset, "dataset")
    ):
        problems.append(f"No dataset or tokenization called {cfg.dataset!r}.")
    d = d_in or defaults.DEFAULT_MODEL_D_MODEL  # before the default model is added
    d_sae = cfg.width(d)
    try:
        members = cfg.members()
        for m in members:
            sae_spec(m, d, d, {})
    except MistudioError as exc:
        problems.append(str(exc))
        members = [cfg]
    if cfg.batch_tokens % cfg.grad_accumulation:
        problems.append("batch_tokens must be divisible by grad_accumulation.")
    warnings = []
    if cfg.optimizer == "adam" and cfg.warmup_steps > cfg.steps:
        warnings.append(
            f"The learning-rate warm-up ({cfg.warmup_steps} steps) is longer than the training "
            f"({cfg.steps} steps): the rate never reaches its peak. Shorten warmup_steps or train longer."
        )
    if cfg.architecture in ("standard", "jumprelu") and cfg.l1_warmup_steps > cfg.steps:
        warnings.append(
            f"The sparsity warm-up ({cfg.l1_warmup_steps} steps) is longer than the training "
            f"({cfg.steps} steps): the penalty never reaches its full weight. Shorten l1_warmup_steps."
        )
    params = 2 * d * d_sae + d_sae + d
    widths = [m.width(d) for m in members]
    memory = sum(sae_memory_mib(m, d, w) for m, w in zip(members, widths)) + stream_memory_mib(cfg, d)
    free = free_memory_mib("cuda" if cfg.device in ("auto", "cuda") else "cpu")
    if memory > 0.9 * free:
        problems.append(
            f"The {len(members)} SAE(s) need about {memory / 1024:.1f} GiB; {free / 1024:.1f} GiB is free. "
            "Use fewer grid points, smaller widths or a smaller batch."
        )
    tokens = cfg.steps * cfg.batch_tokens
    harvested = tokens * 1.05  # each trained token harvested once (+ dropped special positions)
    if cfg.cache_activations and cfg.train_tokens:
        harvested = min(harvested, cfg.train_tokens)
    harvested += cfg.eval_sequences * cfg.context_size
    device = "cuda" if cfg.device in ("auto", "cuda") and torch.cuda.is_available() else "cpu"
    return {
        "problems": problems,
        "warnings": warnings,
        "saes": len(members),
        "d_in": d_in,
        "d_sae": d_sae,
        "parameters": params,
        "memory_mib": memory,
        "tokens": tokens,
        "seconds": estimate_seconds(harvested, tokens * len(members), device, info.get("parameters", 0)),
    }
