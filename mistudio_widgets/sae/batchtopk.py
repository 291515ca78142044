"""batchtopk: keep the k x B largest activations over a batch of B tokens (so L0 varies per token and
averages k). At inference it is a JumpReLU with one global threshold, estimated during training as a
running average of the smallest kept activation; it is saved as ``jumprelu``."""

from __future__ import annotations

import torch

from .base import SAE, SAESpec, StepOut
from .topk import auxk_loss, choose, selected_pre_acts, sparse_decode


class BatchTopKSAE(SAE):
    architecture = "batchtopk"

    def __init__(self, spec: SAESpec):
        super().__init__(spec)
        self.register_buffer("threshold", torch.zeros(spec.d_sae))
        self.register_buffer("threshold_steps", torch.zeros((), dtype=torch.long))

    def activation(self, pre: torch.Tensor) -> torch.Tensor:
        return pre * (pre > self.threshold)

    def aux_loss(self, x, err, dead, k, coefficient):
        return auxk_loss(self, x, err, dead, k, coefficient)

    def train_step(self, x: torch.Tensor, target: torch.Tensor | None = None) -> StepOut:
        x_c = x - self.b_dec if self.spec.apply_b_dec_to_input else x
        width = min(
            4 * self.spec.k, self.spec.d_sae
        )  # each token keeps at most 4k latents above the batch threshold
        idx, values = choose(self, x_c, width)
        with torch.no_grad():
            pos = torch.relu(values)
            n_keep = min(self.spec.k * x.shape[0], pos.numel())
            kth = pos.reshape(-1).topk(n_keep, sorted=False).values.min()
            keep = (pos >= kth) & (pos > 0)
            if keep.any():
                t = float(pos[keep].min())
                n = int(self.threshold_steps)
                self.threshold.fill_((float(self.threshold[0]) * n + t) / (n + 1) if n else t)
                self.threshold_steps += 1
        vals = torch.relu(selected_pre_acts(self, x_c, idx, values)) * keep
        recon = sparse_decode(self.W_dec, self.b_dec, idx, vals)
        if self.spec.skip:
            recon = recon + x @ self.W_skip.T
        return StepOut(recon=recon, acts=None, pre=None, idx=idx, vals=vals, d_sae=self.spec.d_sae)
