"""matryoshka_batchtopk: a BatchTopK SAE whose nested prefixes of the dictionary (latents [0, w) for
each width w in ``matryoshka_widths``) are each trained to reconstruct the input on their own
(Bussmann et al. 2025, "Learning Multi-Level Features with Matryoshka SAEs"; Nabeshima's variant).
The first latents learn the broad, frequent features, the later ones refine them, which counters
feature absorption. Inference is the BatchTopK JumpReLU (one global threshold); saved as ``jumprelu``
as SAELens saves it."""

from __future__ import annotations

import torch

from .base import SAESpec, StepOut
from .batchtopk import BatchTopKSAE
from .topk import sparse_decode


def default_widths(d_sae: int, levels: int = 5) -> list[int]:
    """Prefix widths doubling up to ``d_sae``: d/16, d/8, d/4, d/2, d."""
    return sorted({max(d_sae >> i, 1) for i in range(levels)})


class MatryoshkaSAE(BatchTopKSAE):
    architecture = "matryoshka_batchtopk"

    def __init__(self, spec: SAESpec):
        super().__init__(spec)
        self.widths = list(spec.matryoshka_widths or default_widths(spec.d_sae))

    def inner_loss(self, out: StepOut, target: torch.Tensor) -> torch.Tensor:
        """Sum over the inner prefixes (every width but the full one) of the reconstruction error using
        only that prefix's latents (the full dictionary's error is the main MSE)."""
        loss = out.recon.new_zeros(())
        zero = torch.zeros_like(self.b_dec)
        for w in self.widths[:-1]:
            # the full reconstruction less the latents beyond the prefix (keeps b_dec and any skip term)
            recon = out.recon - sparse_decode(self.W_dec, zero, out.picked, out.vals * (out.picked.idx >= w))
            loss = loss + (recon - target).pow(2).sum(-1).mean()
        return loss
