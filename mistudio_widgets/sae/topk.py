"""topk: keep the k largest pre-activations of each token (ReLU'd); trained with AuxK for dead latents.

Training runs the dense encoder once without building a graph, keeps the k largest pre-activations,
and differentiates through the selected entries only: the encoder's backward pass is two sparse x
dense products (B x k non-zeros) instead of two dense [B, d_sae] x [d_sae, d_in] products, and the
decoder is an ``embedding_bag`` over the k selected rows."""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F

from .base import SAE, StepOut


def sparse_decode(
    W_dec: torch.Tensor, b_dec: torch.Tensor, idx: torch.Tensor, vals: torch.Tensor
) -> torch.Tensor:
    """sum_j vals[:, j] * W_dec[idx[:, j]] + b_dec, without materialising [B, d_sae]."""
    return F.embedding_bag(idx, W_dec, per_sample_weights=vals, mode="sum") + b_dec


class _SelectedPre(torch.autograd.Function):
    """pre[b, idx[b, j]] for a dense ``pre`` computed without grad; gradients reach x_c, W_enc and b_enc
    through sparse products over the selected entries only."""

    @staticmethod
    def forward(ctx, x_c, W_enc, b_enc, values, idx):
        ctx.save_for_backward(x_c, W_enc, idx)
        return values

    @staticmethod
    def backward(ctx, g):
        x_c, W_enc, idx = ctx.saved_tensors
        B, k = idx.shape
        d_sae = W_enc.shape[1]
        rows = torch.arange(B, device=idx.device).repeat_interleave(k)
        flat_idx, flat_g = idx.reshape(-1), g.reshape(-1).to(x_c.dtype)
        grad_x = grad_W = grad_b = None
        if ctx.needs_input_grad[0]:
            with warnings.catch_warnings():
                warnings.simplefilter(
                    "ignore", UserWarning
                )  # "CSR support is in beta": the product used here is stable
                S = torch.sparse_csr_tensor(
                    torch.arange(0, B * k + 1, k, device=idx.device),
                    flat_idx,
                    flat_g,
                    (B, d_sae),
                    check_invariants=False,
                )
            grad_x = S @ W_enc.T  # [B, d_in]
        if ctx.needs_input_grad[1]:
            St = torch.sparse_coo_tensor(
                torch.stack([flat_idx, rows]), flat_g, (d_sae, B), check_invariants=False
            )
            grad_W = torch.sparse.mm(St, x_c).T  # [d_in, d_sae]
        if ctx.needs_input_grad[2]:
            grad_b = torch.zeros(d_sae, dtype=flat_g.dtype, device=flat_g.device).index_add_(
                0, flat_idx, flat_g
            )
        return grad_x, grad_W, grad_b, None, None


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


def choose(sae: SAE, x_c: torch.Tensor, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(idx [B, width] of the largest pre-activations, their exact fp32 values). With
    ``sae.select_dtype`` (e.g. bfloat16 on CPUs) the dense pass that only chooses runs in that dtype."""
    with torch.no_grad():
        dt = getattr(sae, "select_dtype", None)
        if dt is not None and dt != x_c.dtype:
            pre = x_c.to(dt) @ sae.W_enc.to(dt) + sae.b_enc.to(dt)
            return exact_pre_at(sae, x_c, pre.topk(width, dim=-1, sorted=False).indices)
        pre = x_c @ sae.W_enc + sae.b_enc
        top = pre.topk(width, dim=-1, sorted=False)
        return top.indices, top.values


def selected_pre_acts(sae: SAE, x_c: torch.Tensor, idx: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """The pre-activations ``values`` at ``idx`` [B, k], made differentiable w.r.t. x_c, W_enc and b_enc
    through sparse products over the selected entries only."""
    return _SelectedPre.apply(x_c, sae.W_enc, sae.b_enc, values, idx)


def auxk_loss(
    sae: SAE, x: torch.Tensor, err: torch.Tensor, dead: torch.Tensor, k: int, coefficient: float
) -> torch.Tensor:
    """AuxK (Gao et al.): the ``k`` strongest dead latents learn to explain the reconstruction's
    residual, normalised by the residual's variance."""
    e = -err.detach()
    dead_idx = dead.nonzero().squeeze(1)
    x_c = x - sae.b_dec if sae.spec.apply_b_dec_to_input else x
    pre_dead = x_c @ sae.W_enc[:, dead_idx] + sae.b_enc[dead_idx]  # [B, n_dead], dense over the dead only
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

    def aux_loss(self, x, err, dead, k, coefficient):
        return auxk_loss(self, x, err, dead, k, coefficient)

    def _centred(self, x: torch.Tensor) -> torch.Tensor:
        return x - self.b_dec if self.spec.apply_b_dec_to_input else x

    def train_step(self, x: torch.Tensor, target: torch.Tensor | None = None) -> StepOut:
        x_c = self._centred(x)
        idx, values = choose(self, x_c, self.spec.k)
        vals = torch.relu(selected_pre_acts(self, x_c, idx, values))
        recon = sparse_decode(self.W_dec, self.b_dec, idx, vals)
        if self.spec.skip:
            recon = recon + x @ self.W_skip.T
        return StepOut(recon=recon, acts=None, pre=None, idx=idx, vals=vals, d_sae=self.spec.d_sae)
