"""batchtopk: keep the k x B largest activations over a batch of B tokens (so L0 varies per token and
averages k). At inference it is a JumpReLU with one global threshold, estimated during training as a
running average of the smallest kept activation; it is saved as ``jumprelu``."""

from __future__ import annotations

import torch

from .base import SAE, SAESpec, StepOut
from .topk import Picked, auxk_loss, centred, choose, selected_pre_acts, sparse_decode

THRESHOLD_HORIZON = 50


class BatchTopKSAE(SAE):
    architecture = "batchtopk"

    def __init__(self, spec: SAESpec):
        super().__init__(spec)
        self.register_buffer("threshold", torch.zeros(spec.d_sae))
        self.register_buffer("threshold_steps", torch.zeros((), dtype=torch.long))

    def activation(self, pre: torch.Tensor) -> torch.Tensor:
        return pre * (pre > self.threshold)

    def aux_loss(self, x, out, err, dead, k, coefficient, tokens=0):
        return auxk_loss(self, x, out, err, dead, k, coefficient, tokens)

    def train_step(self, x: torch.Tensor, target: torch.Tensor | None = None) -> StepOut:
        x_c = centred(self, x)
        # each token keeps at most 4k latents above the batch threshold
        idx, values, pre = choose(self, x_c, min(4 * self.spec.k, self.spec.d_sae))
        with torch.no_grad():
            pos = torch.relu(values)
            n_keep = min(self.spec.k * x.shape[0], pos.numel())
            kth = pos.reshape(-1).topk(n_keep, sorted=False).values.min()
            keep = (pos >= kth) & (pos > 0)
            if keep.any():
                self._update_threshold(float(pos[keep].min()))
        picked = Picked.kept(idx, keep)  # only the kept entries are decoded and differentiated
        vals = torch.relu(selected_pre_acts(self, x, x_c, picked, values[keep]))
        recon = sparse_decode(self.W_dec, self.b_dec, picked, vals)
        if self.spec.skip:
            recon = recon + x @ self.W_skip.T
        return StepOut(recon=recon, acts=None, pre=pre, picked=picked, vals=vals, d_sae=self.spec.d_sae)

    @torch.no_grad()
    def _update_threshold(self, smallest_kept: float) -> None:
        """The inference threshold: the mean of each step's smallest kept activation, turning into an
        exponential average over the last ~THRESHOLD_HORIZON steps (early steps, from an untrained
        encoder, fade out)."""
        n = int(self.threshold_steps)
        rate = max(1.0 / (n + 1), 1.0 / THRESHOLD_HORIZON)
        self.threshold.fill_(float(self.threshold[0]) * (1 - rate) + smallest_kept * rate)
        self.threshold_steps += 1
