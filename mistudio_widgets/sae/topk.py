"""topk: keep the k largest pre-activations of each token (ReLU'd); trained with AuxK for dead latents.

Training runs the dense encoder once without building a graph, keeps the k largest pre-activations,
and differentiates through the selected entries only: the encoder's backward pass is sparse x dense
products (B x k non-zeros) instead of two dense [B, d_sae] x [d_sae, d_in] products, and the decoder
is an ``embedding_bag`` over the k selected rows. Both weight gradients are sums over each latent's
entries, taken as one CSR product each over the entries sorted by latent (sorted once per step and
shared): measured on 2 CPU cores at B 4096, k 32, d_sae 4608, 6 ms each where a COO product took 19
and ``embedding_bag``'s own backward 26.

On GPUs the same step takes dense products instead (:data:`SPARSE_PRODUCTS`): the picked entries are
scattered into a [B, d_sae] matrix and the weight gradients are plain matrix products in the autocast
dtype, with no sort, count or cuSPARSE call, none of which waits for the GPU."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..core import distributed
from .base import SAE, StepOut

# Devices whose training step takes the sparse products above. Elsewhere (CUDA) the products are dense:
# on an H200 at B 4096, d_sae 4608, the step ran at 888k tokens/s, and at 829k with the sparse products
# (benchmarks/gpu/profile_step.py).
SPARSE_PRODUCTS = ("cpu",)


def sparse_products(t: torch.Tensor) -> bool:
    """Whether the training step takes sparse products for tensors on ``t``'s device."""
    return t.device.type in SPARSE_PRODUCTS


def cast_dtype(t: torch.Tensor) -> torch.dtype:
    """The dtype of matrix products under the caller's autocast on ``t``'s device (``t``'s own dtype
    when autocast is off): a custom backward runs outside autocast and takes it from its forward."""
    kind = t.device.type
    return torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else t.dtype


def scattered(picked: "Picked", values: torch.Tensor, d_sae: int, dtype: torch.dtype) -> torch.Tensor:
    """The picked entries' ``values`` [N] as a dense [tokens, d_sae] matrix (zeros elsewhere)."""
    dense = torch.zeros(picked.tokens, d_sae, dtype=dtype, device=values.device)
    return dense.index_put_((picked.rows, picked.idx), values.to(dtype))


@dataclass
class Picked:
    """The latents a training batch selected, as a ragged list per token (CSR): ``idx`` [N] the latent
    of each entry, grouped by token; ``rows`` [N] its token; ``crow`` [B + 1] where each token's entries
    start. top-k picks k per token; BatchTopK keeps a varying number."""

    idx: torch.Tensor
    rows: torch.Tensor
    crow: torch.Tensor
    _by_latent: tuple[torch.Tensor, ...] | None = field(default=None, repr=False, compare=False)

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
        return cls.grouped(idx[rows, cols], rows, idx.shape[0])

    @classmethod
    def grouped(cls, idx: torch.Tensor, rows: torch.Tensor, tokens: int) -> "Picked":
        """Entries ``idx`` [N] of tokens ``rows`` [N] (sorted by token) over a batch of ``tokens``."""
        crow = torch.zeros(tokens + 1, dtype=torch.long, device=idx.device)
        crow[1:] = torch.bincount(rows, minlength=tokens).cumsum(0)
        return cls(idx, rows, crow)

    def where(self, on: torch.Tensor) -> "Picked":
        """The entries where ``on`` [N] is true (each token's entries stay together)."""
        return Picked.grouped(self.idx[on], self.rows[on], self.tokens)

    @property
    def tokens(self) -> int:
        return self.crow.numel() - 1

    def latent_sum(self, weights: torch.Tensor, dense: torch.Tensor, d_sae: int) -> torch.Tensor:
        """[d_sae, d]: for each latent, the sum over its entries n of ``weights[n] * dense[rows[n]]``
        (a weight gradient), as one CSR product over the entries sorted by latent. The sort is made
        once per selection and kept for the next call."""
        if self._by_latent is None:
            order = torch.argsort(self.idx, stable=True)
            crow = torch.zeros(d_sae + 1, dtype=torch.long, device=self.idx.device)
            crow[1:] = torch.bincount(self.idx, minlength=d_sae).cumsum(0)
            self._by_latent = (order, crow, self.rows[order])
        order, crow, rows = self._by_latent
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "CSR support is in beta": this product is stable
            S = torch.sparse_csr_tensor(
                crow, rows, weights[order].to(dense.dtype), (d_sae, self.tokens), check_invariants=False
            )
        return S @ dense

    def pattern(self, d_sae: int, dtype: torch.dtype) -> torch.Tensor:
        """The entries as a [tokens, d_sae] CSR tensor of zeros (the pattern of a sampled product)."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return torch.sparse_csr_tensor(
                self.crow,
                self.idx,
                torch.zeros(self.idx.numel(), dtype=dtype, device=self.idx.device),
                (self.tokens, d_sae),
                check_invariants=False,
            )


def sparse_decode(
    W_dec: torch.Tensor, b_dec: torch.Tensor, picked: Picked, vals: torch.Tensor
) -> torch.Tensor:
    """sum over each token's picked latents of vals x W_dec[latent], + b_dec, without materialising
    [B, d_sae]."""
    return _SparseDecode.apply(W_dec, vals, picked) + b_dec


class _SparseDecode(torch.autograd.Function):
    """The decoder over the picked entries: ``embedding_bag`` forward; backward, W_dec's gradient as a
    sum over each latent's entries (:meth:`Picked.latent_sum`) and the values' gradient as a sampled
    product at the entries."""

    @staticmethod
    def forward(ctx, W_dec, vals, picked):
        ctx.save_for_backward(W_dec, vals)
        ctx.picked, ctx.cast = picked, cast_dtype(W_dec)
        return F.embedding_bag(
            picked.idx, W_dec, picked.crow, per_sample_weights=vals, mode="sum", include_last_offset=True
        )

    @staticmethod
    def backward(ctx, g):
        W_dec, vals = ctx.saved_tensors
        picked = ctx.picked
        grad_W = grad_v = None
        if not sparse_products(g):  # GPUs: dense products in the forward's autocast dtype
            dt = ctx.cast
            if ctx.needs_input_grad[0]:
                grad_W = (scattered(picked, vals, W_dec.shape[0], dt).T @ g.to(dt)).to(W_dec.dtype)
            if ctx.needs_input_grad[1]:
                grad_v = (g.to(dt) @ W_dec.to(dt).T)[picked.rows, picked.idx].to(vals.dtype)
            return grad_W, grad_v, None
        if ctx.needs_input_grad[0]:
            grad_W = picked.latent_sum(vals, g, W_dec.shape[0])
        if ctx.needs_input_grad[1]:
            pattern = picked.pattern(W_dec.shape[0], g.dtype)
            grad_v = torch.sparse.sampled_addmm(pattern, g, W_dec.T).values().to(vals.dtype)
        return grad_W, grad_v, None


class _SelectedPre(torch.autograd.Function):
    """The pre-activations ``values`` [N] at the picked entries (from a dense pass without grad), made
    differentiable w.r.t. x, W_enc, b_enc and b_dec (pre = (x - b_dec) W_enc + b_enc) through sparse
    products over the picked entries only.

    b_dec's gradient needs no per-token product: it is -W_enc @ (b_enc's gradient). The [B, d_in]
    gradient of x is made only when x itself requires one (never while training on data)."""

    @staticmethod
    def forward(ctx, x, x_c, W_enc, b_enc, b_dec, values, picked):
        # x_c: x less b_dec (or x when b_dec is None), computed by the caller without grad
        ctx.save_for_backward(x_c, W_enc)
        ctx.picked, ctx.cast = picked, cast_dtype(x_c)
        return values

    @staticmethod
    def backward(ctx, g):
        x_c, W_enc = ctx.saved_tensors
        picked = ctx.picked
        d_sae = W_enc.shape[1]
        g = g.to(x_c.dtype)
        grad_x = grad_W = grad_b = grad_b_dec = None
        if not sparse_products(g):  # GPUs: dense products in the forward's autocast dtype
            dt = ctx.cast
            G = scattered(picked, g, d_sae, dt)
            if ctx.needs_input_grad[0]:
                grad_x = (G @ W_enc.to(dt).T).to(x_c.dtype)
            if ctx.needs_input_grad[2]:  # [d_sae, d_in] transposed: W_enc's own layout
                grad_W = (G.T @ x_c.to(dt)).to(W_enc.dtype).T
        else:
            grad_x, grad_W = _sparse_encoder_grads(ctx, g, x_c, W_enc, picked)
        if ctx.needs_input_grad[3] or ctx.needs_input_grad[4]:
            summed = torch.zeros(d_sae, dtype=g.dtype, device=g.device).index_add_(0, picked.idx, g)
            grad_b = summed if ctx.needs_input_grad[3] else None
            grad_b_dec = -(W_enc @ summed) if ctx.needs_input_grad[4] else None
        return grad_x, None, grad_W, grad_b, grad_b_dec, None, None


def _sparse_encoder_grads(ctx, g, x_c, W_enc, picked):
    """(grad x or None, grad W_enc or None) as sparse x dense products over the picked entries."""
    B, d_sae = x_c.shape[0], W_enc.shape[1]
    grad_x = grad_W = None
    if ctx.needs_input_grad[0]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "CSR support is in beta": this product is stable
            S = torch.sparse_csr_tensor(picked.crow, picked.idx, g, (B, d_sae), check_invariants=False)
        grad_x = S @ W_enc.T  # [B, d_in]
    if ctx.needs_input_grad[2]:
        grad_W = picked.latent_sum(g, x_c, d_sae).T  # [d_in, d_sae]
    return grad_x, grad_W


def largest(pre: torch.Tensor, width: int) -> torch.Tensor:
    """Indices [B, width] of each row's ``width`` largest entries of ``pre`` [B, n], unordered; the
    same choice as ``pre.topk(width)`` wherever the chosen entries are positive (the only ones that
    fire after the ReLU).

    On CPUs in two stages, 2-3x faster than ``topk`` over whole rows: the maxima of blocks of 16 (or
    8, 4, 2: at most n / (4 width)) entries, the ``width`` blocks with the largest maxima (they hold
    every one of the row's ``width`` largest entries), and ``topk`` over those blocks only. A block is
    strided, entries j, j + n / block, j + 2 n / block, ...: any partition holds the answer, and the
    maxima of strided blocks are an elementwise maximum of contiguous rows (1.3 ms at 4096 x 4608,
    where contiguous blocks of 16 took 3.6). bfloat16
    and float16 are compared through their bits as int16 (integer maxima and ``topk`` run ~5x and
    ~1.5x faster than bfloat16 ones there): the same order for positive values, every negative one
    below every positive one."""
    B, n = pre.shape
    if pre.device.type != "cpu":
        return pre.topk(width, dim=-1, sorted=False).indices
    keys = pre.view(torch.int16) if pre.dtype in (torch.bfloat16, torch.float16) else pre
    block = next((b for b in (16, 8, 4, 2) if n % b == 0 and width * b * 4 <= n), 0)
    if not block:
        return keys.topk(width, dim=-1, sorted=False).indices
    nb = n // block
    blocks = keys.view(B, block, nb)  # block j: entries j + t nb, t < block
    best = blocks.amax(1).topk(width, dim=-1, sorted=False).indices  # [B, width]
    cand = blocks.gather(2, best.unsqueeze(1).expand(B, block, width)).reshape(B, block * width)
    j = cand.topk(width, dim=-1, sorted=False).indices  # t * width + (which chosen block)
    return (j // width) * nb + best.gather(1, j % width)


def exact_values(sae: SAE, x_c: torch.Tensor, picked: Picked) -> torch.Tensor:
    """fp32 pre-activations [N] at the ``picked`` entries, computed at those entries only (a sampled
    dense-dense product; the entries of a token need not be in order)."""
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        pattern = torch.sparse_csr_tensor(
            picked.crow,
            picked.idx,
            torch.zeros(picked.idx.numel(), dtype=x_c.dtype, device=x_c.device),
            (picked.tokens, sae.W_enc.shape[1]),
            check_invariants=False,
        )
        vals = torch.sparse.sampled_addmm(pattern, x_c, sae.W_enc).values()
        return vals + sae.b_enc.detach()[picked.idx]


def scratch(
    sae: SAE, shape: tuple[int, ...], dtype: torch.dtype, device, name: str = "_scratch"
) -> torch.Tensor:
    """A buffer of ``shape`` kept on ``sae`` between training steps under ``name`` (not saved; dropped
    by :func:`drop_scratch`). The dense pass writes into it: a fresh [B, d_sae] tensor each step is
    larger than glibc's largest heap allocation (32 MiB), so it would be mapped and page-faulted
    anew every step (~10 ms of a ~150 ms step on 2 CPU cores)."""
    buf = sae.__dict__.get(name)
    if buf is None or buf.shape != shape or buf.dtype != dtype or buf.device != torch.device(device):
        buf = torch.empty(shape, dtype=dtype, device=device)
        sae.__dict__[name] = buf
    return buf


def drop_scratch(sae: SAE) -> None:
    """Free the buffers :func:`scratch` keeps (after training)."""
    for name in [k for k in sae.__dict__ if k.startswith("_scratch")]:
        sae.__dict__.pop(name)


@torch.no_grad()
def dense_pass(sae: SAE, x_c: torch.Tensor, dt: torch.dtype) -> torch.Tensor:
    """The pre-activations x_c W_enc + b_enc [B, d_sae] in ``dt``, in a buffer the next step
    overwrites. On CPUs the bias rides in the product, as a column of ones in x and a row of W_enc (the
    inner size padded with zeros to a multiple of 16): addmm's copy of the bias into its output took 5
    of its 14 ms at 4096 x 576 x 4608 in bfloat16 on 2 cores."""
    B, d = x_c.shape
    pre = scratch(sae, (B, sae.spec.d_sae), dt, x_c.device)
    if x_c.device.type != "cpu":
        return torch.addmm(sae.b_enc.to(dt), x_c.to(dt), sae.W_enc.to(dt), out=pre)
    K = (d + 1 + 15) // 16 * 16
    xa = scratch(sae, (B, K), dt, x_c.device, "_scratch_x")
    Wa = scratch(sae, (sae.spec.d_sae, K), dt, x_c.device, "_scratch_w")  # latent by latent, as W_enc
    xa[:, :d] = x_c
    xa[:, d] = 1
    xa[:, d + 1 :] = 0
    Wa[:, :d] = sae.W_enc.T
    Wa[:, d] = sae.b_enc
    Wa[:, d + 1 :] = 0
    return torch.mm(xa, Wa.T, out=pre)


def choose(sae: SAE, x_c: torch.Tensor, width: int, exact: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """(idx [B, width] of the largest pre-activations, their values), without grad. The dense pass
    [B, d_sae] goes into a buffer the next step overwrites (:func:`dense_pass`). With
    ``sae.select_dtype`` (e.g. bfloat16 on CPUs) that pass, which only chooses, runs in that dtype; the
    values are then recomputed in fp32 at the chosen entries, unless ``exact`` is False (the caller
    keeps only some of them and recomputes those)."""
    with torch.no_grad():
        dt = sae.select_dtype or x_c.dtype
        pre = dense_pass(sae, x_c, dt)
        idx = largest(pre, width)
        if exact and dt != x_c.dtype:
            return idx, exact_values(sae, x_c, Picked.per_token(idx)).view(idx.shape)
        return idx, pre.gather(1, idx)


def centred(sae: SAE, x: torch.Tensor) -> torch.Tensor:
    """What the encoder reads: x less the decoder bias (when the SAE subtracts it), without grad."""
    with torch.no_grad():
        return x - sae.b_dec if sae.spec.apply_b_dec_to_input else x


def selected_pre_acts(
    sae: SAE, x: torch.Tensor, x_c: torch.Tensor, picked: Picked, values: torch.Tensor
) -> torch.Tensor:
    """The pre-activations ``values`` [N] at the ``picked`` entries, made differentiable w.r.t. W_enc,
    b_enc and b_dec (and x, if it requires grad) through sparse products over those entries only.
    ``x_c``: :func:`centred` of ``x``."""
    b_dec = sae.b_dec if sae.spec.apply_b_dec_to_input else None
    return _SelectedPre.apply(x, x_c, sae.W_enc, sae.b_enc, b_dec, values, picked)


def dead_weights(sae: SAE, dead_idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(W_enc's columns, W_dec's rows) of the dead latents, for AuxK. Differentiating a gather of a
    parameter makes autograd build a zero gradient of the parameter's full size, write the few columns
    into it and add it to the main gradient: two 10 MB buffers and three passes over them, most of
    AuxK's ~30 ms of a ~120 ms step (2 CPU cores, d_sae 4608). Here the gathers are leaves of their own
    instead, whose small gradients are added into the parameters' gradients at the end of the backward
    pass (``index_add_``). Under data parallelism, where gradients are averaged as they become ready,
    the plain gathers are kept."""
    if not (torch.is_grad_enabled() and sae.W_enc.requires_grad) or distributed.active():
        return sae.W_enc[:, dead_idx], sae.W_dec[dead_idx]
    return _folded(sae.W_enc, 1, dead_idx), _folded(sae.W_dec, 0, dead_idx)


def _folded(param: torch.Tensor, dim: int, idx: torch.Tensor) -> torch.Tensor:
    """``param.index_select(dim, idx)`` as a leaf whose gradient, once the backward pass has taken it,
    is added into ``param.grad`` at ``idx``."""
    # gathered along the first dimension of the layout (a gather across it copies the whole parameter)
    leaf = param.detach().movedim(dim, 0).index_select(0, idx).movedim(0, dim).requires_grad_()

    def fold() -> None:
        g = leaf.grad
        leaf.grad = None
        if g is None:
            return
        if param.grad is None:
            param.grad = torch.zeros_like(param)
        # along the first dimension of the layout (W_enc's gradient is stored latent by latent)
        param.grad.movedim(dim, 0).index_add_(0, idx, g.to(param.grad.dtype).movedim(dim, 0))

    def taken(_leaf: torch.Tensor) -> None:
        torch.autograd.Variable._execution_engine.queue_callback(fold)  # at the end of this backward

    leaf.register_post_accumulate_grad_hook(taken)
    return leaf


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
    B x k entries measured far slower on CPUs); its two products run in ``sae.select_dtype`` where set
    (bfloat16 on CPUs: ~1.4x faster, and an auxiliary gradient needs no more precision)."""
    dead_idx = dead.nonzero().squeeze(1)  # ``dead`` lives on the CPU: no wait for a GPU
    if dead_idx.numel() == 0:
        return err.new_zeros(())
    dead_idx = dead_idx.to(x.device, non_blocking=True)
    if tokens and tokens < x.shape[0]:  # the batch is shuffled: its first tokens are a random sample
        x, err = x[:tokens], err[:tokens]
    e = -err.detach()
    x_c = x - sae.b_dec if sae.spec.apply_b_dec_to_input else x
    dt = sae.select_dtype or x.dtype  # its products in bfloat16 where selection is
    W_enc_dead, W_dec_dead = dead_weights(sae, dead_idx)
    pre_dead = (x_c.to(dt) @ W_enc_dead.to(dt)).to(x.dtype) + sae.b_enc[dead_idx]  # [B, n_dead]
    if k < dead_idx.numel():
        top = pre_dead.topk(k, dim=-1, sorted=False)
        acts = torch.zeros_like(pre_dead).scatter(-1, top.indices, torch.relu(top.values))
    else:  # every dead latent is among the k strongest
        acts = torch.relu(pre_dead)
    e_hat = (acts.to(dt) @ W_dec_dead.to(dt)).to(x.dtype)
    denom = (e - e.mean(0)).pow(2).sum(-1).mean().clamp_min(1e-8)
    return coefficient * (e_hat - e).pow(2).sum(-1).mean() / denom


class TopKSAE(SAE):
    architecture = "topk"

    def activation(self, pre: torch.Tensor) -> torch.Tensor:
        vals, idx = pre.topk(self.spec.top_k, dim=-1, sorted=False)
        return torch.zeros_like(pre).scatter_(-1, idx, torch.relu(vals))

    def aux_loss(self, x, out, err, dead, k, coefficient, tokens=0):
        return auxk_loss(self, x, out, err, dead, k, coefficient, tokens)

    def train_step(self, x: torch.Tensor, target: torch.Tensor | None = None) -> StepOut:
        x_c = centred(self, x)
        idx, values = choose(self, x_c, self.spec.top_k)
        picked = Picked.per_token(idx)
        vals = torch.relu(selected_pre_acts(self, x, x_c, picked, values.reshape(-1)))
        recon = sparse_decode(self.W_dec, self.b_dec, picked, vals)
        if self.spec.skip:
            recon = recon + x @ self.W_skip.T
        return StepOut(recon=recon, acts=None, pre=None, picked=picked, vals=vals, d_sae=self.spec.d_sae)
