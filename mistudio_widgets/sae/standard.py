"""standard: ReLU latents trained with an L1 penalty (weighted by decoder norms)."""

from __future__ import annotations

import torch

from .base import SAE, StepOut


class StandardSAE(SAE):
    architecture = "standard"
    unit_norm_decoder = False  # the L1 penalty weighs activations by decoder norms instead
    resamples_dead = True

    def activation(self, pre: torch.Tensor) -> torch.Tensor:
        return torch.relu(pre)

    def sparsity_loss(self, out: StepOut, coefficient: float) -> torch.Tensor:
        """L1 of the activations, each weighted by its decoder row's norm (so shrinking the decoder
        cannot buy sparsity)."""
        return coefficient * (out.acts * self.W_dec.norm(dim=1)).sum(-1).mean()
