"""Setting up a training: the SAE's shape from a config, the tokens it reads, a freshly initialised
SAE, and the error a run raises when it cannot start, continue or resume."""

from __future__ import annotations

from typing import Any

import torch

from ..core.configs import TrainConfig
from ..core.errors import MistudioError
from ..core.progress import ProgressCallback
from ..core.workspace import Artifact, Workspace
from ..data.datasets import check_tokenization_fits, tokens_for
from ..data.models import LoadedModel
from ..sae import K_ARCHITECTURES, SAE, SAESpec, make_sae


class TrainingError(MistudioError):
    """A training run cannot start, continue or resume as asked."""


def sae_spec(cfg: TrainConfig, d_in: int, d_out: int, metadata: dict[str, Any]) -> SAESpec:
    spec = SAESpec(
        architecture=cfg.architecture,
        d_in=d_in,
        d_sae=cfg.width(d_in),
        k=cfg.k if cfg.architecture in K_ARCHITECTURES else None,
        d_out=d_out if (cfg.hook_out or d_out != d_in) else None,
        skip=cfg.skip,
        matryoshka_widths=list(cfg.matryoshka_widths) or None,
        metadata=metadata,
    )
    return spec.validate()


def resolve_tokens(
    ws: Workspace, cfg: TrainConfig, lm: LoadedModel, progress: ProgressCallback | None
) -> Artifact:
    """The tokenization the config's dataset names, made for the model if missing, checked to fit it."""
    tok = tokens_for(ws, cfg.dataset, lm.artifact, cfg.context_size, progress=progress)
    check_tokenization_fits(ws, tok, lm.artifact, lm.tokenizer)
    return tok


def geometric_median(x: torch.Tensor, iters: int = 30) -> torch.Tensor:
    """Weiszfeld's algorithm."""
    y = x.mean(0)
    for _ in range(iters):
        w = 1.0 / (x - y).norm(dim=1).clamp_min(1e-6)
        y_new = (w[:, None] * x).sum(0) / w.sum()
        if (y_new - y).norm() < 1e-5 * y.norm().clamp_min(1e-6):
            return y_new
        y = y_new
    return y


def new_sae(cfg: TrainConfig, spec: SAESpec, sample_target: torch.Tensor, device: str = "cpu") -> SAE:
    """A freshly initialised SAE for ``cfg`` (seeded), its decoder bias set from ``sample_target``
    (normalised target activations) as ``cfg.b_dec_init`` says."""
    torch.manual_seed(cfg.seed)
    sae = make_sae(spec).to(device)
    sae.select_dtype = None if cfg.select_precision == "float32" else torch.bfloat16
    with torch.no_grad():
        if cfg.b_dec_init != "zeros":
            tgt = sample_target.to(device)
            sae.b_dec.copy_(geometric_median(tgt) if cfg.b_dec_init == "geometric_median" else tgt.mean(0))
    return sae
