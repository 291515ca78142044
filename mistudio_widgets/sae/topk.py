"""topk: keep the k largest pre-activations of each token (ReLU'd); trained with AuxK for dead latents.

Training runs the dense encoder once without building a graph, keeps the k largest pre-activations,
and differentiates through the selected entries only: the encoder's backward pass is two sparse x
dense products (B x k non-zeros) instead of two dense [B, d_sae] x [d_sae, d_in] products, and the
decoder is an ``embedding_bag`` over the k selected rows."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .base import SAE, StepOut


@dataclass
class Picked:
    """The latents a training batch selected, as a ragged list per token (CSR): ``idx`` [N] the latent
    of each entry, grouped by token; ``rows`` [N] its token; ``crow`` [B + 1] where each token's entries
    start. top-k picks k per token; BatchTopK keeps a varying number."""

    idx: torch.Tensor
    rows: torch.Tensor
    crow: torch.Tensor

    @classmethod
    def per_token(cls, idx: torch.Tensor) -> "Picked":
        """All of ``idx`` [B, k]."""
        B, k = idx.shape
        ar = torch.arange(B, device=idx.device)
        return cls(idx.reshape(-1), ar.repeat_interleave(k), torch.arange(0, B * k + 1, k, device=idx.device))

    @classmethod
    def kept(cls, idx: torch.Tensor, keep: torch.Tensor) -> "Picked":
        """The entries of ``idx`` [B, w] where ``keep`` [B, w] is true (order within a token kept)."""
        rows, cols = keep.nonzero(as_tuple=True)
        crow = torch.zeros(idx.shape[0] + 1, dtype=torch.long, device=idx.device)
        crow[1:] = torch.bincount(rows, minlength=idx.shape[0]).cumsum(0)
        return cls(idx[rows, cols], rows, crow)

    @property
    def tokens(self) -> int:
        return self.crow.numel() - 1


def sparse_decode(
    W_dec: torch.Tensor, b_dec: torch.Tensor, picked: Picked, vals: torch.Tensor
) -> torch.Tensor:
    """sum over each token's picked latents of vals x W_dec[latent], + b_dec, without materialising
    [B, d_sae]."""
    out = F.embedding_bag(
        picked.idx, W_dec, picked.crow, per_sample_weights=vals, mode="sum", include_last_offset=True
    )
    return out + b_dec


class _SelectedPre(torch.autograd.Function):
    """The pre-activations ``values`` [N] at the picked entries (from a dense pass without grad);
    gradients reach x_c, W_enc and b_enc through sparse products over the picked entries only."""

    @staticmethod
    def forward(ctx, x_c, W_enc, b_enc, values, idx, rows, crow):
        ctx.save_for_backward(x_c, W_enc, idx, rows, crow)
        return values

    @staticmethod
    def backward(ctx, g):
        x_c, W_enc, idx, rows, crow = ctx.saved_tensors
        B, d_sae = x_c.shape[0], W_enc.shape[1]
        g = g.to(x_c.dtype)
        grad_x = grad_W = grad_b = None
        if ctx.needs_input_grad[0]:
            with warnings.catch_warnings():
                warnings.simplefilter(
                    "ignore", UserWarning
                )  # "CSR support is in beta": this product is stable
                S = torch.sparse_csr_tensor(crow, idx, g, (B, d_sae), check_invariants=False)
            grad_x = S @ W_enc.T  # [B, d_in]
        if ctx.needs_input_grad[1]:
            St = torch.sparse_coo_tensor(torch.stack([idx, rows]), g, (d_sae, B), check_invariants=False)
            grad_W = torch.sparse.mm(St, x_c).T  # [d_in, d_sae]
        if ctx.needs_input_grad[2]:
            grad_b = torch.zeros(d_sae, dtype=g.dtype, device=g.device).index_add_(0, idx, g)
        return grad_x, grad_W, grad_b, None, None, None, None


def exact_pre_at(sae: SAE, x_c: torch.Tensor, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """fp32 pre-activations at ``idx`` [B, k], computed at those positions only (a sampled
    dense-dense product). Returns (idx sorted within each row, values in that order)."""
    B, k = idx.shape
    idx = idx.sort(dim=1).values
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        pattern = torch.sparse_csr_tensor(
            torch.arange(0, B * k + 1, k, device=idx.device),
            idx.reshape(-1),
            torch.zeros(B * k, dtype=x_c.dtype, device=x_c.device),
            (B, sae.W_enc.shape[1]),
            check_invariants=False,
        )
        vals = torch.sparse.sampled_addmm(pattern, x_c, sae.W_enc).values().reshape(B, k)
    return idx, vals + sae.b_enc.detach()[idx]


def choose(sae: SAE, x_c: torch.Tensor, width: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(idx [B, width] of the largest pre-activations, their exact fp32 values, the dense pre-activations
    [B, d_sae] without grad). With ``sae.select_dtype`` (e.g. bfloat16 on CPUs) the dense pass, which
    only chooses, runs in that dtype."""
    with torch.no_grad():
        dt = getattr(sae, "select_dtype", None)
        if dt is not None and dt != x_c.dtype:
            pre = torch.addmm(sae.b_enc.to(dt), x_c.to(dt), sae.W_enc.to(dt))
            idx, vals = exact_pre_at(sae, x_c, pre.topk(width, dim=-1, sorted=False).indices)
            return idx, vals, pre
        pre = torch.addmm(sae.b_enc, x_c, sae.W_enc)
        top = pre.topk(width, dim=-1, sorted=False)
        return top.indices, top.values, pre


def selected_pre_acts(sae: SAE, x_c: torch.Tensor, picked: Picked, values: torch.Tensor) -> torch.Tensor:
    """The pre-activations ``values`` [N] at the ``picked`` entries, made differentiable w.r.t. x_c, W_enc
    and b_enc through sparse products over those entries only."""
    return _SelectedPre.apply(x_c, sae.W_enc, sae.b_enc, values, picked.idx, picked.rows, picked.crow)


def auxk_loss(
    sae: SAE,
    x: torch.Tensor,
    out: StepOut,
    err: torch.Tensor,
    dead: torch.Tensor,
    k: int,
    coefficient: float,
    tokens: int = 0,
) -> torch.Tensor:
    """AuxK (Gao et al.): the ``k`` strongest dead latents of each token learn to explain the
    reconstruction's residual, normalised by the residual's variance; over the first ``tokens`` of the
    batch (0: all). Dense over the dead latents only (few once training settles; a sparse path over
    B x k entries measured far slower on CPUs)."""
    dead_idx = dead.nonzero().squeeze(1)
    if dead_idx.numel() == 0:
        return err.new_zeros(())
    if tokens and tokens < x.shape[0]:  # the batch is shuffled: its first tokens are a random sample
        x, err = x[:tokens], err[:tokens]
    e = -err.detach()
    x_c = x - sae.b_dec if sae.spec.apply_b_dec_to_input else x
    pre_dead = x_c @ sae.W_enc[:, dead_idx] + sae.b_enc[dead_idx]  # [B, n_dead]
    top = pre_dead.topk(min(k, dead_idx.numel()), dim=-1, sorted=False)
    acts = torch.zeros_like(pre_dead).scatter(-1, top.indices, torch.relu(top.values))
    e_hat = acts @ sae.W_dec[dead_idx]
    denom = (e - e.mean(0)).pow(2).sum(-1).mean().clamp_min(1e-8)
    return coefficient * (e_hat - e).pow(2).sum(-1).mean() / denom


class TopKSAE(SAE):
    architecture = "topk"

    def activation(self, pre: torch.Tensor) -> torch.Tensor:
        vals, idx = pre.topk(self.spec.k, dim=-1, sorted=False)
        return torch.zeros_like(pre).scatter_(-1, idx, torch.relu(vals))

    def aux_loss(self, x, out, err, dead, k, coefficient, tokens=0):
        return auxk_loss(self, x, out, err, dead, k, coefficient, tokens)

    def _centred(self, x: torch.Tensor) -> torch.Tensor:
        return x - self.b_dec if self.spec.apply_b_dec_to_input else x

    def train_step(self, x: torch.Tensor, target: torch.Tensor | None = None) -> StepOut:
        x_c = self._centred(x)
        idx, values, pre = choose(self, x_c, self.spec.k)
        picked = Picked.per_token(idx)
        vals = torch.relu(selected_pre_acts(self, x_c, picked, values.reshape(-1)))
        recon = sparse_decode(self.W_dec, self.b_dec, picked, vals)
        if self.spec.skip:
            recon = recon + x @ self.W_skip.T
        return StepOut(recon=recon, acts=None, pre=pre, picked=picked, vals=vals, d_sae=self.spec.d_sae)
