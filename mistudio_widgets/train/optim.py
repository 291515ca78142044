"""Optimisers and learning-rate schedules for SAE training.

``adam``: AdamW with linear warm-up and an optional cosine decay (SAELens's and most papers' choice).

``signsgd``: sign descent made schedule-free (Bernstein et al. 2018's signSGD, Defazio et al. 2024's
schedule-free averaging; sparsify's default). Every weight moves by ``lr`` times the sign of its
gradient; the gradient is taken at ``y``, an interpolation between the sign-descent iterate ``z`` and
its running average ``x``; ``x`` is what the SAE is evaluated and saved as. No learning-rate schedule
is needed, and its default learning rate shrinks with the square root of the width.
"""

from __future__ import annotations

import contextlib
import math
from typing import Iterator

import torch

from ..core.configs import TrainConfig


class ScheduleFreeSignSGD(torch.optim.Optimizer):
    """Schedule-free sign descent. The parameters hold ``y`` while training; :meth:`averaged` swaps in
    the averaged weights ``x`` (for evaluation and saving) and back. State per parameter: ``z``.

    One step, for each parameter with gradient g taken at y (with beta the interpolation weight):
    x = (y - (1 - beta) z) / beta;  z -= lr sign(g);  x += c (z - x), c = lr^2 / sum of lr^2 so far;
    y = beta x + (1 - beta) z."""

    def __init__(self, params, lr: float = 1e-3, beta: float = 0.95):
        if not lr > 0:
            raise ValueError(f"lr must be positive (got {lr})")
        if not 0 < beta < 1:
            raise ValueError(f"beta must be in (0, 1) (got {beta})")
        super().__init__(params, {"lr": lr, "beta": beta, "weight_sum": 0.0})

    @torch.no_grad()
    def step(self, closure=None):  # noqa: D102 - see the class docstring
        assert closure is None, "closures are not supported"
        for group in self.param_groups:
            lr, beta = group["lr"], group["beta"]
            group["weight_sum"] += lr**2
            c = lr**2 / group["weight_sum"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "z" not in state:
                    state["z"] = p.detach().clone()
                z = state["z"]
                p.lerp_(z, 1 - 1 / beta)  # p = x
                z.add_(p.grad.sign(), alpha=-lr)
                # the average takes in the new iterate (x += c (z - x)), then p = y = beta x + (1 - beta) z:
                # one pass over p, x never written
                p.lerp_(z, 1 - beta * (1 - c))

    @torch.no_grad()
    def _swap(self, to_average: bool) -> None:
        for group in self.param_groups:
            beta = group["beta"]
            for p in group["params"]:
                z = self.state[p].get("z")
                if z is not None:
                    p.lerp_(z, (1 - 1 / beta) if to_average else (1 - beta))

    @contextlib.contextmanager
    def averaged(self) -> Iterator[None]:
        """Within this block the parameters hold the averaged weights ``x``."""
        self._swap(True)
        try:
            yield
        finally:
            self._swap(False)


def default_lr(cfg: TrainConfig, d_sae: int) -> float:
    """``cfg.lr``, or when it is empty the optimiser's default for this width: sign descent
    5e-3 x sqrt(16384 / d_sae) (sparsify's rule), Adam 1e-3."""
    if cfg.lr is not None:
        return cfg.lr
    if cfg.optimizer == "signsgd":
        return 5e-3 * math.sqrt(2**14 / d_sae)
    return 1e-3


def lr_lambda(cfg: TrainConfig):
    """The schedule as a multiplier of the peak rate: linear warm-up, then constant or a cosine decay to
    10%. Schedule-free sign descent has no schedule (its averaging replaces the decay)."""

    def f(step: int) -> float:
        if cfg.optimizer == "signsgd":
            return 1.0
        if cfg.warmup_steps and step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        if cfg.lr_schedule == "constant":
            return 1.0
        t = (step - cfg.warmup_steps) / max(cfg.steps - cfg.warmup_steps, 1)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))

    return f


def make_optimizer(params, cfg: TrainConfig, d_sae: int):
    """(optimiser, scheduler) for ``cfg``."""
    lr = default_lr(cfg, d_sae)
    if cfg.optimizer == "signsgd":
        opt: torch.optim.Optimizer = ScheduleFreeSignSGD(params, lr=lr, beta=cfg.schedule_free_beta)
    else:
        opt = torch.optim.AdamW(params, lr=lr, betas=cfg.adam_betas, weight_decay=cfg.weight_decay)
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg))


def averaged(opt: torch.optim.Optimizer):
    """A block in which the SAE holds the weights to evaluate and save (the averaged ones under
    schedule-free sign descent; the current ones otherwise)."""
    return opt.averaged() if isinstance(opt, ScheduleFreeSignSGD) else contextlib.nullcontext()
