"""Held-out evaluation during and after training: reconstruction metrics and the model's CE loss with
the SAE spliced in (CE recovered against zero-ablation)."""

from __future__ import annotations

import numpy as np
import torch

from ..data.hooks import intervene
from ..data.models import LoadedModel
from ..sae import SAE


def explained_variance(recon: torch.Tensor, target: torch.Tensor) -> float:
    resid = (target - recon).pow(2).sum()
    total = (target - target.mean(0)).pow(2).sum().clamp_min(1e-12)
    return float(1 - resid / total)


def process_memory_mib() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    import psutil

    return psutil.Process().memory_info().rss / 2**20


class Evaluator:
    """Held-out evaluation: reconstruction metrics and the model's CE loss with the SAE spliced in."""

    def __init__(
        self,
        lm: LoadedModel,
        tokens: np.ndarray,
        hook: str,
        hook_out: str | None,
        acts: dict[str, torch.Tensor],
    ):
        self.lm, self.acts = lm, acts
        self.ids = torch.tensor(tokens, dtype=torch.long)
        special = torch.tensor(lm.special_ids())
        self.keep = ~torch.isin(self.ids, special)  # splice only where the SAE was trained
        self.hook_in, self.hook_out = hook, hook_out or hook
        self.ce_clean = self._ce(None)
        self.ce_zero = self._ce(lambda x_in, y: torch.zeros_like(y))

    @torch.no_grad()
    def _ce(self, replace) -> float:
        from ..data.hooks import capture

        model = self.lm.model
        ids = self.ids.to(self.lm.device)
        if replace is None:
            return float(model(input_ids=ids, labels=ids, use_cache=False).loss)
        keep = self.keep.to(self.lm.device).unsqueeze(-1)
        with capture(model, self.hook_in, stop=False) as got:

            def edit(y):
                new = replace(got[self.hook_in], y).to(y.dtype)
                return torch.where(keep, new, y)

            with intervene(model, {self.hook_out: edit}):
                return float(model(input_ids=ids, labels=ids, use_cache=False).loss)

    @torch.no_grad()
    def run(self, sae: SAE, scale_in: float, scale_out: float) -> dict[str, float]:
        x = self.acts[self.hook_in].to(sae.W_enc.device)
        target = self.acts[self.hook_out].to(sae.W_enc.device)
        recon = sae(x * scale_in) / scale_out
        f = sae.encode(x * scale_in)
        ce = self._ce(
            lambda x_in, y: (sae(x_in.float().to(sae.W_enc.device) * scale_in) / scale_out).to(y.device)
        )
        denom = self.ce_zero - self.ce_clean
        return {
            "mse": float((recon - target).pow(2).mean()),
            "explained_variance": explained_variance(recon, target),
            "l0": float((f > 0).float().sum(-1).mean()),
            "ce_clean": self.ce_clean,
            "ce_zero_ablated": self.ce_zero,
            "ce_spliced": ce,
            "delta_loss": ce - self.ce_clean,
            "ce_recovered": (self.ce_zero - ce) / denom if abs(denom) > 1e-9 else float("nan"),
        }
