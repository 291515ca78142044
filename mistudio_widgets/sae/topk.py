"""topk: keep the k largest pre-activations of each token (ReLU'd); trained with AuxK for dead latents.

Training selects the k latents on a dense encoder pass without gradient, then recomputes only the
selected k pre-activations with gradient and decodes them with ``embedding_bag``: the backward pass
touches k rows of W_enc/W_dec per token instead of all d_sae."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import SAE, StepOut


def sparse_decode(W_dec: torch.Tensor, b_dec: torch.Tensor, idx: torch.Tensor, vals: torch.Tensor) -> torch.Tensor:
    """sum_j vals[:, j] * W_dec[idx[:, j]] + b_dec, without materialising [B, d_sae]."""
    return F.embedding_bag(idx, W_dec, per_sample_weights=vals, mode="sum") + b_dec


def selected_pre_acts(sae: SAE, x_c: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Pre-activations of the latents ``idx`` [B, k] only, differentiable: (x_c . W_enc[:, i]) + b_enc[i]."""
    rows = F.embedding(idx, sae.W_enc.T)                 # [B, k, d_in]
    return torch.bmm(rows, x_c.unsqueeze(-1)).squeeze(-1) + sae.b_enc[idx]


class TopKSAE(SAE):
    architecture = "topk"

    def activation(self, pre: torch.Tensor) -> torch.Tensor:
        vals, idx = pre.topk(self.spec.k, dim=-1, sorted=False)
        return torch.zeros_like(pre).scatter_(-1, idx, torch.relu(vals))

    def _centred(self, x: torch.Tensor) -> torch.Tensor:
        return x - self.b_dec if self.spec.apply_b_dec_to_input else x

    def select(self, x_c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(idx [B, k], dense pre-activations without grad [B, d_sae])."""
        with torch.no_grad():
            pre = x_c @ self.W_enc + self.b_enc
            return pre.topk(self.spec.k, dim=-1, sorted=False).indices, pre

    def train_step(self, x: torch.Tensor, target: torch.Tensor | None = None) -> StepOut:
        x_c = self._centred(x)
        idx, pre = self.select(x_c)
        vals = torch.relu(selected_pre_acts(self, x_c, idx))
        recon = sparse_decode(self.W_dec, self.b_dec, idx, vals)
        if self.spec.skip:
            recon = recon + x @ self.W_skip.T
        return StepOut(recon=recon, acts=None, pre=pre, idx=idx, vals=vals)
