"""One optimiser step of an SAE: the losses (reconstruction, the architecture's sparsity and auxiliary
terms), the sparsity warm-up, resampling dead latents, and mixed precision on CUDA."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..core import distributed as dist
from ..core.configs import TrainConfig
from ..sae import SAE


def sparsity_coefficient(cfg: TrainConfig, step: int) -> float:
    """The sparsity penalty's weight at ``step``: linear warm-up over ``l1_warmup_steps``."""
    if not cfg.l1_warmup_steps:
        return cfg.l1_coefficient
    return cfg.l1_coefficient * min(1.0, (step + 1) / cfg.l1_warmup_steps)


@dataclass
class Losses:
    total: torch.Tensor
    mse: torch.Tensor
    sparsity: torch.Tensor
    aux: torch.Tensor
    inner: torch.Tensor  # Matryoshka: the nested prefixes' reconstruction losses


def compute_losses(
    sae: SAE,
    cfg: TrainConfig,
    x: torch.Tensor,
    target: torch.Tensor,
    dead: torch.Tensor,
    sparsity_coef: float,
    aux_k: int,
):
    """Reconstruction MSE plus the SAE's own sparsity penalty and, while latents are dead, its own
    auxiliary loss (each architecture defines both: :meth:`SAE.sparsity_loss`, :meth:`SAE.aux_loss`)."""
    out = sae.train_step(x, target)
    err = out.recon - target
    mse = err.pow(2).sum(-1).mean()
    inner = sae.inner_loss(out, target)
    sparsity = sae.sparsity_loss(out, sparsity_coef)
    aux = (
        sae.aux_loss(x, out, err, dead, aux_k, cfg.aux_coefficient, cfg.aux_tokens)
        if dead.any() and cfg.aux_coefficient > 0
        else mse.new_zeros(())
    )
    return Losses(mse + inner + sparsity + aux, mse, sparsity, aux, inner), out


@torch.no_grad()
def resample_dead(
    sae: SAE, opt: torch.optim.Optimizer, dead: torch.Tensor, x: torch.Tensor, target: torch.Tensor
) -> int:
    """standard SAEs: point dead latents at badly reconstructed inputs and reset their Adam state."""
    idx = dead.nonzero().squeeze(1)
    if idx.numel() == 0:
        return 0
    err = (sae(x) - target).pow(2).sum(-1)
    pick = torch.multinomial(err / err.sum(), idx.numel(), replacement=idx.numel() > err.numel())
    dirs = target[pick] - sae.b_dec
    dirs = dirs / dirs.norm(dim=1, keepdim=True).clamp_min(1e-8)
    alive = ~dead
    enc_norm = sae.W_enc[:, alive].norm(dim=0).mean() if alive.any() else torch.tensor(1.0)
    sae.W_dec[idx] = dirs
    if sae.spec.out_dim == sae.spec.d_in:
        sae.W_enc[:, idx] = dirs.T * enc_norm * 0.2
    sae.b_enc[idx] = 0.0
    for p, sl in ((sae.W_dec, (idx,)), (sae.W_enc, (slice(None), idx)), (sae.b_enc, (idx,))):
        st = opt.state.get(p, {})
        for key in ("exp_avg", "exp_avg_sq"):
            if key in st:
                st[key][sl] = 0.0
        if "z" in st:  # schedule-free: the iterate and its average restart at the new weights
            st["z"][sl] = p[sl]
    return int(idx.numel())


class LossModule(torch.nn.Module):
    """The losses as a module, so that DistributedDataParallel can wrap them and average the gradients."""

    def __init__(self, sae: SAE, cfg: TrainConfig):
        super().__init__()
        self.sae, self.cfg = sae, cfg

    def forward(self, x, target, dead, coef, aux_k):
        return compute_losses(self.sae, self.cfg, x, target, dead, coef, aux_k)


def optimizer_step(
    sae: SAE,
    opt: torch.optim.Optimizer,
    sched,
    cfg: TrainConfig,
    x: torch.Tensor,
    target: torch.Tensor,
    dead: torch.Tensor,
    coef: float,
    aux_k: int,
    device: str = "cpu",
    ddp=None,
):
    """One optimiser step over a batch (split into ``cfg.grad_accumulation`` micro-batches).
    Returns (loss parts, firing counts per latent [d_sae], active latents per token [B], reconstruction),
    the counts on the CPU, brought there with the losses in one transfer: on a GPU the step's only
    wait. The weights are not updated when the loss is not finite (the caller decides what to do).
    ``ddp``: the DistributedDataParallel-wrapped :class:`LossModule` under data parallelism (gradients
    are averaged over the processes on the last micro-batch)."""
    import contextlib

    unit_norm = sae.unit_norm_decoder
    opt.zero_grad(set_to_none=True)
    parts = {"loss": 0.0, "mse_loss": 0.0, "sparsity_loss": 0.0, "aux_loss": 0.0, "inner_loss": 0.0}
    counts, per_token, recons, terms = [], [], [], []
    micro = list(zip(x.chunk(cfg.grad_accumulation), target.chunk(cfg.grad_accumulation)))
    for i, (xm, tm) in enumerate(micro):
        sync = contextlib.nullcontext() if ddp is None or i == len(micro) - 1 else ddp.no_sync()
        with sync:
            with autocast(cfg, device):
                args = (xm, tm, dead, coef, aux_k)
                losses, out = ddp(*args) if ddp is not None else compute_losses(sae, cfg, *args)
            (losses.total / cfg.grad_accumulation).backward()
        with torch.no_grad():
            terms.append(torch.stack([losses.total, losses.mse, losses.sparsity, losses.aux, losses.inner]))
            c, t = out.firing()
            counts.append(c)
            per_token.append(t)
            recons.append(out.recon.detach().float())
    # one transfer to the CPU per step: the only wait for a GPU (the finite check needs the loss)
    with torch.no_grad():
        n_counts = counts[0].numel()
        summed = torch.stack(terms).double().mean(0)
        back = torch.cat([summed, torch.stack(counts).sum(0).double(), torch.cat(per_token).double()]).cpu()
    for key, v in zip(parts, back[: len(parts)].tolist()):
        parts[key] = v
    counts_cpu = back[len(parts) : len(parts) + n_counts].long()
    per_token_cpu = back[len(parts) + n_counts :].long()
    finite = dist.all_sum(torch.tensor([0.0 if math.isfinite(parts["loss"]) else 1.0]))[0] == 0
    if finite:
        if unit_norm:
            sae.remove_parallel_grad()
        if cfg.grad_clip and cfg.optimizer != "signsgd":  # sign descent ignores the gradient's scale
            torch.nn.utils.clip_grad_norm_(sae.parameters(), cfg.grad_clip)
        opt.step()
        sched.step()
        if unit_norm:
            sae.normalise_decoder()
    return parts, counts_cpu, per_token_cpu, torch.cat(recons)


def autocast(cfg: TrainConfig, device: str):
    import contextlib

    if device != "cuda" or cfg.autocast == "none":
        return contextlib.nullcontext()
    dtype = torch.float16 if cfg.autocast == "fp16" else torch.bfloat16
    if cfg.autocast == "auto" and not torch.cuda.is_bf16_supported():
        dtype = torch.float16
    return torch.autocast("cuda", dtype=dtype)
