"""The SAE module family: one class per architecture, all with ``encode``, ``decode`` and ``forward``,
and weights laid out as SAELens expects (W_enc [d_in, d_sae], b_enc [d_sae], W_dec [d_sae, d_out],
b_dec [d_out]; ``threshold`` [d_sae] for JumpReLU; ``W_skip`` [d_out, d_in] for skip connections).

A transcoder reads one hook and reconstructs another (``d_out`` may differ from ``d_in``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from ..core.configs import ARCHITECTURES, K_ARCHITECTURES  # noqa: F401 - re-exported by sae
from ..core.errors import MistudioError


class SAEConfigError(MistudioError):
    """An SAE's shape or settings are invalid."""


@dataclass
class SAESpec:
    """What an SAE is: architecture and sizes (saved into cfg.json)."""

    architecture: str = "topk"
    d_in: int = 576
    d_sae: int = 4608
    k: int | None = 32  # topk / batchtopk / matryoshka_batchtopk
    d_out: int | None = None  # transcoders: width of the reconstructed hook (None: same as d_in)
    skip: bool = False  # add W_skip x to the reconstruction
    apply_b_dec_to_input: bool = True  # subtract b_dec before encoding (needs d_out == d_in)
    jumprelu_bandwidth: float = 0.05  # straight-through estimator bandwidth (jumprelu training)
    jumprelu_init_threshold: float = 0.001
    matryoshka_widths: list[int] | None = None  # matryoshka_batchtopk: nested prefix widths, the last d_sae
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def top_k(self) -> int:
        """k of a top-k architecture (an error for one without)."""
        if self.k is None:
            raise SAEConfigError(f"A {self.architecture} SAE needs k.", "set k (latents kept per token).")
        return self.k

    @property
    def out_dim(self) -> int:
        return self.d_out or self.d_in

    @property
    def is_transcoder(self) -> bool:
        return self.d_out is not None and (
            self.d_out != self.d_in or bool(self.metadata.get("hook_name_out"))
        )

    def validate(self) -> "SAESpec":
        if self.architecture not in ARCHITECTURES:
            raise SAEConfigError(
                f"Unknown SAE architecture {self.architecture!r}.", f"use one of: {', '.join(ARCHITECTURES)}."
            )
        for name in ("d_in", "d_sae"):
            v = getattr(self, name)
            if not isinstance(v, int) or v <= 0:
                raise SAEConfigError(
                    f"{name} must be a positive integer (got {v!r}).", "e.g. d_sae = 8 x d_in."
                )
        if self.d_sae > 2**24 or self.d_sae * self.d_in > 2**33:
            raise SAEConfigError(
                f"d_sae={self.d_sae} x d_in={self.d_in} is too large to allocate here.",
                "use a smaller expansion factor.",
            )
        if self.architecture in K_ARCHITECTURES:
            if not isinstance(self.k, int) or self.k <= 0:
                raise SAEConfigError(
                    f"{self.architecture} needs a positive k (got {self.k!r}).", "set k, e.g. 32."
                )
            if self.k > self.d_sae:
                raise SAEConfigError(
                    f"k={self.k} is larger than d_sae={self.d_sae}.",
                    "use k <= d_sae (typically k is 16-128).",
                )
        if self.architecture == "matryoshka_batchtopk" and self.matryoshka_widths:
            w = list(self.matryoshka_widths)
            if any(not isinstance(v, int) or v < 1 for v in w) or w != sorted(set(w)) or w[-1] != self.d_sae:
                raise SAEConfigError(
                    f"matryoshka_widths {w} must be strictly increasing whole numbers ending at "
                    f"d_sae={self.d_sae}.",
                    f"e.g. {[self.d_sae // 8, self.d_sae // 4, self.d_sae // 2, self.d_sae]}, or leave it "
                    "empty for widths doubling up to d_sae.",
                )
        if self.out_dim != self.d_in and self.apply_b_dec_to_input:
            self.apply_b_dec_to_input = False  # b_dec lives in the output space of a transcoder
        return self

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class SAE(nn.Module):
    """Base class. Subclasses define ``activation(pre)`` (and, for training, ``train_acts``)."""

    architecture = "base"
    # training behaviour the trainer asks the SAE about, rather than branching on its architecture:
    unit_norm_decoder = True  # decoder rows kept at unit norm (their gradient's parallel part removed)
    resamples_dead = False  # dead latents are re-pointed at badly reconstructed inputs (resample_dead)
    select_dtype: torch.dtype | None = None  # the dtype of sparse architectures' selection pass (None: fp32)

    def __init__(self, spec: SAESpec):
        super().__init__()
        self.spec = spec.validate()
        d_in, d_sae, d_out = spec.d_in, spec.d_sae, spec.out_dim
        w = torch.empty(d_sae, d_out)
        nn.init.kaiming_uniform_(w)
        w = w / w.norm(dim=1, keepdim=True) * 0.1  # small unit-direction decoder rows
        self.W_dec = nn.Parameter(w)
        # W_enc [d_in, d_sae] is stored latent by latent (the transpose of a contiguous [d_sae, d_in]):
        # the training step's sampled product reads it so without a transposing copy (8.8 against 15.1 ms
        # at 4096 x 576 x 4608 on 2 CPU cores), and its gradient arrives in that layout, so autograd keeps
        # it instead of copying it into another. Every reader sees the same [d_in, d_sae] tensor.
        enc = w.T if d_out == d_in else torch.randn(d_in, d_sae) * (0.1 / d_in**0.5)
        self.W_enc = nn.Parameter(enc.T.clone(memory_format=torch.contiguous_format).T)  # its own memory
        self.b_enc = nn.Parameter(torch.zeros(d_sae))
        self.b_dec = nn.Parameter(torch.zeros(d_out))
        if spec.skip:
            self.W_skip = nn.Parameter(torch.zeros(d_out, d_in))

    # -- the three calls ----------------------------------------------------------------------
    def pre_acts(self, x: torch.Tensor) -> torch.Tensor:
        if self.spec.apply_b_dec_to_input:
            x = x - self.b_dec
        return x @ self.W_enc + self.b_enc

    def activation(self, pre: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Feature activations [..., d_sae]."""
        return self.activation(self.pre_acts(x))

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        """Reconstruction [..., d_out] from feature activations (without the skip term)."""
        return f @ self.W_dec + self.b_dec

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.decode(self.encode(x))
        if self.spec.skip:
            out = out + x @ self.W_skip.T
        return out

    # -- training ---------------------------------------------------------------------------
    def train_step(self, x: torch.Tensor, target: torch.Tensor | None = None) -> "StepOut":
        """Reconstruction and feature activations for one training batch (``target`` for transcoders)."""
        pre = self.pre_acts(x)
        f = self.activation(pre)
        recon = self.decode(f)
        if self.spec.skip:
            recon = recon + x @ self.W_skip.T
        return StepOut(recon=recon, acts=f, pre=pre)

    def sparsity_loss(self, out: "StepOut", coefficient: float) -> torch.Tensor:
        """The sparsity penalty of one training batch: none here (top-k SAEs are sparse by construction);
        architectures trained with a penalty override it."""
        return out.recon.new_zeros(())

    def inner_loss(self, out: "StepOut", target: torch.Tensor) -> torch.Tensor:
        """Reconstruction losses besides the main one (Matryoshka's nested prefixes): none here."""
        return out.recon.new_zeros(())

    def aux_loss(
        self,
        x: torch.Tensor,
        out: "StepOut",
        err: torch.Tensor,
        dead: torch.Tensor,
        k: int,
        coefficient: float,
        tokens: int = 0,
    ) -> torch.Tensor:
        """An auxiliary loss that gives ``dead`` latents a gradient (``err`` = reconstruction - target):
        none here; top-k architectures use AuxK."""
        return err.new_zeros(())

    @torch.no_grad()
    def normalise_decoder(self) -> None:
        """Unit-norm decoder rows (the gradient along them is dropped: ``remove_parallel_grad``)."""
        self.W_dec.data /= self.W_dec.data.norm(dim=1, keepdim=True).clamp_min(1e-8)

    @torch.no_grad()
    def remove_parallel_grad(self) -> None:
        g, W = self.W_dec.grad, self.W_dec.data
        if g is None:
            return
        # g -= (g . W / |W|^2) W row by row, in place and with no [d_sae, d] temporary (4.2 against 6.9
        # ms at 4608 x 576 on 2 CPU cores)
        dot = torch.bmm(g.unsqueeze(1), W.unsqueeze(2)).view(-1)
        sq = torch.linalg.vector_norm(W, dim=1).square().clamp_min(1e-16)
        g.addcmul_(W, (dot / sq).unsqueeze(1), value=-1)

    @torch.no_grad()
    def fold_scale(self, scale_in: float, scale_out: float | None = None) -> None:
        """Fold the training normalisation (x_n = x * scale_in, target_n = target * scale_out) into
        the weights, so the saved SAE takes and returns raw activations with identical features."""
        s_out = scale_in if scale_out is None else scale_out
        self.W_enc.data *= scale_in
        if self.spec.apply_b_dec_to_input:
            assert s_out == scale_in
        self.W_dec.data /= s_out
        self.b_dec.data /= s_out
        if self.spec.skip:
            self.W_skip.data *= scale_in / s_out


@dataclass
class StepOut:
    recon: torch.Tensor
    acts: torch.Tensor | None  # dense [B, d_sae] (None for sparse architectures)
    pre: torch.Tensor | None  # dense [B, d_sae] pre-activations (None for sparse architectures)
    picked: Any = None  # sparse architectures: the selected latents per token (topk.Picked)
    vals: torch.Tensor | None = None  # sparse: [N] their values, one per picked entry
    d_sae: int | None = None
    prefixes: list[torch.Tensor] | None = None  # matryoshka: the inner prefixes' reconstructions

    def firing(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(tokens each latent fired on [d_sae], latents each token fired [B]) on the step's device, for
        L0 and dead-latent tracking; sparse architectures count from their indices without a dense mask,
        by sums that never wait for a GPU (a count or a mask's selection would)."""
        with torch.no_grad():
            if self.acts is not None:
                on = self.acts > 0
                return on.sum(0), on.sum(1)
            assert self.vals is not None and self.d_sae is not None, "a sparse step names values and width"
            on = (self.vals > 0).long()
            idx, rows = self.picked.idx, self.picked.rows
            counts = torch.zeros(self.d_sae, dtype=torch.long, device=idx.device).index_add_(0, idx, on)
            per_token = torch.zeros(self.picked.tokens, dtype=torch.long, device=idx.device)
            return counts, per_token.index_add_(0, rows, on)
