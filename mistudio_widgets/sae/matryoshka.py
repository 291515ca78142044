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
from .topk import Picked, sparse_decode


def default_widths(d_sae: int, levels: int = 5) -> list[int]:
    """Prefix widths doubling up to ``d_sae``: d/16, d/8, d/4, d/2, d."""
    return sorted({max(d_sae >> i, 1) for i in range(levels)})


class MatryoshkaSAE(BatchTopKSAE):
    architecture = "matryoshka_batchtopk"

    def __init__(self, spec: SAESpec):
        super().__init__(spec)
        self.widths = list(spec.matryoshka_widths or default_widths(spec.d_sae))

    def _decode(self, picked: Picked, vals: torch.Tensor, skip: torch.Tensor | None) -> StepOut:
        """The reconstruction decoded band by band (latents [w_i-1, w_i) between consecutive widths),
        each entry once: the prefixes' reconstructions are running sums of the bands, kept on the
        step's output for :meth:`inner_loss` (5 prefixes cost one decode, not five). A skip term is
        part of every prefix's reconstruction."""
        inner = torch.tensor(self.widths[:-1], device=picked.idx.device)
        band = torch.bucketize(picked.idx, inner, right=True)  # the band of each entry's latent
        zero = torch.zeros_like(self.b_dec)
        parts = []
        for i in range(len(self.widths)):
            on = band == i
            parts.append(sparse_decode(self.W_dec, zero, picked.where(on), vals[on]))
        prefixes, total = [], self.b_dec if skip is None else skip + self.b_dec
        for p in parts:
            total = total + p
            prefixes.append(total)
        return StepOut(
            recon=total,
            acts=None,
            pre=None,
            picked=picked,
            vals=vals,
            d_sae=self.spec.d_sae,
            prefixes=prefixes[:-1],
        )

    def inner_loss(self, out: StepOut, target: torch.Tensor) -> torch.Tensor:
        """Sum over the inner prefixes (every width but the full one) of the reconstruction error using
        only that prefix's latents (the full dictionary's error is the main MSE)."""
        loss = out.recon.new_zeros(())
        for recon in out.prefixes or ():
            loss = loss + (recon - target).pow(2).sum(-1).mean()
        return loss
