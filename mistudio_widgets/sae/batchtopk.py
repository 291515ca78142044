"""batchtopk: keep the k x B largest activations over a batch of B tokens (so L0 varies per token and
averages k). At inference it is a JumpReLU with one global threshold, estimated during training as a
running average of the smallest kept activation; it is saved as ``jumprelu``."""

from __future__ import annotations

import torch

from .base import SAE, SAESpec, StepOut
from .topk import Picked, auxk_loss, centred, choose, exact_values, selected_pre_acts, sparse_decode

THRESHOLD_HORIZON = 50


class BatchTopKSAE(SAE):
    architecture = "batchtopk"
    threshold: torch.Tensor  # buffers (declared for the type checker)
    threshold_steps: torch.Tensor

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
        picked, values = self._select(x_c, x.shape[0])
        vals = torch.relu(selected_pre_acts(self, x, x_c, picked, values))
        return self._decode(picked, vals, x @ self.W_skip.T if self.spec.skip else None)

    def _select(self, x_c: torch.Tensor, tokens: int) -> tuple[Picked, torch.Tensor]:
        """The batch's kept entries and their exact pre-activations [N]: each token's 4k largest
        pre-activations are the candidates, the k x B largest of them over the batch are kept (chosen
        by the dense pass's values; the exact values are computed for the kept entries only)."""
        idx, values = choose(self, x_c, min(4 * self.spec.top_k, self.spec.d_sae), exact=False)
        with torch.no_grad():
            pos = torch.relu(values)
            n_keep = min(self.spec.top_k * tokens, pos.numel())
            kth = pos.reshape(-1).topk(n_keep, sorted=False).values.min()
            keep = (pos >= kth) & (pos > 0)
            picked = Picked.kept(idx, keep)  # only the kept entries are decoded and differentiated
            exact = exact_values(self, x_c, picked) if values.dtype != x_c.dtype else values[keep]
            if keep.any():
                self._update_threshold(float(exact.clamp_min(0).min()))
        return picked, exact

    def _decode(self, picked: Picked, vals: torch.Tensor, skip: torch.Tensor | None) -> StepOut:
        recon = sparse_decode(self.W_dec, self.b_dec, picked, vals)
        if skip is not None:
            recon = recon + skip
        return StepOut(recon=recon, acts=None, pre=None, picked=picked, vals=vals, d_sae=self.spec.d_sae)

    @torch.no_grad()
    def _update_threshold(self, smallest_kept: float) -> None:
        """The inference threshold: the mean of each step's smallest kept activation, turning into an
        exponential average over the last ~THRESHOLD_HORIZON steps (early steps, from an untrained
        encoder, fade out)."""
        n = int(self.threshold_steps)
        rate = max(1.0 / (n + 1), 1.0 / THRESHOLD_HORIZON)
        self.threshold.fill_(float(self.threshold[0]) * (1 - rate) + smallest_kept * rate)
        self.threshold_steps += 1
