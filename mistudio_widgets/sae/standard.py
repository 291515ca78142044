"""standard: ReLU latents trained with an L1 penalty (weighted by decoder norms)."""

from __future__ import annotations

import torch

from .base import SAE


class StandardSAE(SAE):
    architecture = "standard"

    def activation(self, pre: torch.Tensor) -> torch.Tensor:
        return torch.relu(pre)
