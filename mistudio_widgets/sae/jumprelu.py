"""jumprelu: f = pre * [pre > threshold], one learned threshold per latent, trained with a
straight-through estimator (rectangle kernel of width ``bandwidth``) and an L0 penalty."""

from __future__ import annotations

import torch
from torch import nn

from .base import SAE, SAESpec, StepOut


def _rect(z: torch.Tensor) -> torch.Tensor:
    return ((z > -0.5) & (z < 0.5)).to(z.dtype)


class _JumpReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, pre, threshold, bandwidth):
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth = bandwidth
        return pre * (pre > threshold)

    @staticmethod
    def backward(ctx, grad):
        pre, threshold = ctx.saved_tensors
        bw = ctx.bandwidth
        d_pre = grad * (pre > threshold)
        d_t = -(threshold / bw) * _rect((pre - threshold) / bw) * grad
        return d_pre, d_t.sum(dim=tuple(range(d_t.dim() - 1))), None


class _Step(torch.autograd.Function):
    @staticmethod
    def forward(ctx, pre, threshold, bandwidth):
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth = bandwidth
        return (pre > threshold).to(pre.dtype)

    @staticmethod
    def backward(ctx, grad):
        pre, threshold = ctx.saved_tensors
        bw = ctx.bandwidth
        d_t = -(1.0 / bw) * _rect((pre - threshold) / bw) * grad
        return None, d_t.sum(dim=tuple(range(d_t.dim() - 1))), None


class JumpReLUSAE(SAE):
    architecture = "jumprelu"
    loaded_threshold: torch.Tensor | None  # a buffer (declared for the type checker)

    def __init__(self, spec: SAESpec):
        super().__init__(spec)
        # The threshold itself is the parameter (kept >= 0): with Adam it then moves by about lr per step
        # in activation units; a log-parametrised threshold starting near 0 would barely move.
        self.jump_threshold = nn.Parameter(torch.full((spec.d_sae,), float(spec.jumprelu_init_threshold)))
        self.register_buffer("loaded_threshold", None)  # exact thresholds of a loaded SAE

    @torch.no_grad()
    def load_threshold(self, threshold: torch.Tensor) -> None:
        """Keep a loaded SAE's exact thresholds (and start the trainable one there)."""
        self.loaded_threshold = threshold.clone()
        self.jump_threshold.copy_(threshold)

    @property
    def threshold(self) -> torch.Tensor:
        return (
            self.loaded_threshold if self.loaded_threshold is not None else self.jump_threshold.clamp_min(0.0)
        )

    def activation(self, pre: torch.Tensor) -> torch.Tensor:
        return pre.clamp_min(0) * (pre > self.threshold)  # as SAELens: ReLU(pre) where pre > threshold

    def train_step(self, x: torch.Tensor, target: torch.Tensor | None = None) -> StepOut:
        pre = self.pre_acts(x)
        f = _JumpReLU.apply(pre, self.threshold, self.spec.jumprelu_bandwidth)
        recon = self.decode(f)
        if self.spec.skip:
            recon = recon + x @ self.W_skip.T
        return StepOut(recon=recon, acts=f, pre=pre)

    def l0_penalty(self, pre: torch.Tensor) -> torch.Tensor:
        return _Step.apply(pre, self.threshold, self.spec.jumprelu_bandwidth).sum(-1).mean()

    def sparsity_loss(self, out: StepOut, coefficient: float) -> torch.Tensor:
        """L0 through the straight-through estimator of the thresholds."""
        assert out.pre is not None, "a JumpReLU step keeps its pre-activations"
        return coefficient * self.l0_penalty(out.pre)
