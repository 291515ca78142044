"""The per-feature figures an extraction computes at its end, from its streaming statistics and the
weights: linear histograms, quantiles and equal-share intervals from the log-spaced counting bins, the
logit lens through the unembedding, and each feature's nearest neighbours by decoder cosine."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..core.progress import ProgressCallback, emit
from ..data.models import LoadedModel
from .store import HIST_BINS, LOGIT_HIST_BINS

LOG_LO, LOG_HI, LOG_BINS = -3.0, 3.0, 1536  # counting bins: 10^-3 .. 10^3, 0.9% wide each


def _unembedding(lm: LoadedModel) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(W_U [vocab, d], the final norm's scale [d] or None)."""
    model = lm.model
    W_U = model.get_output_embeddings().weight.detach().float()
    for path in ("model.norm", "model.language_model.norm", "transformer.ln_f", "gpt_neox.final_layer_norm"):
        mod = model
        try:
            for part in path.split("."):
                mod = getattr(mod, part)
        except AttributeError:
            continue
        w = getattr(mod, "weight", None)
        if w is None:
            return W_U, None
        w = w.detach().float()
        return W_U, (1 + w) if "gemma" in type(model).__name__.lower() else w
    return W_U, None


def _linear_hist(loghist: torch.Tensor, maxv: torch.Tensor) -> torch.Tensor:
    centres = 10 ** (LOG_LO + (torch.arange(LOG_BINS) + 0.5) * (LOG_HI - LOG_LO) / LOG_BINS)
    idx = (centres.view(1, -1) / maxv.clamp_min(1e-12).view(-1, 1) * HIST_BINS).long().clamp(0, HIST_BINS - 1)
    return torch.zeros(loghist.shape[0], HIST_BINS, dtype=torch.long).scatter_add_(1, idx, loghist.long())


def _quantiles(loghist: torch.Tensor, maxv: torch.Tensor, qs=(0.5, 0.9, 0.99)) -> torch.Tensor:
    cdf = loghist.cumsum(1).double()
    total = cdf[:, -1:].clamp_min(1)
    out = []
    for q in qs:
        j = (cdf / total < q).sum(1).clamp(max=LOG_BINS - 1)
        v = 10 ** (LOG_LO + (j.double() + 0.5) * (LOG_HI - LOG_LO) / LOG_BINS)
        out.append(torch.minimum(v.float(), maxv))
    q = torch.stack(out, 1)
    return torch.where(loghist.sum(1, keepdim=True) > 0, q, torch.zeros_like(q))


def _quantile_edges(
    loghist: torch.Tensor, maxv: torch.Tensor, groups: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Edges [F, groups + 1] of activation intervals that each hold an equal share of a feature's firings
    (its quantiles, from the log-spaced histogram; 0 and the max at the ends), and the share of firings
    each interval holds [F, groups]. Equal-width slices of [0, max] leave most intervals empty for the
    heavy-tailed densities of SAE features."""
    F = loghist.shape[0]
    inner = (
        _quantiles(loghist, maxv, [g / groups for g in range(1, groups)]) if groups > 1 else torch.zeros(F, 0)
    )
    quantile = torch.cat([torch.zeros(F, 1), inner, maxv.view(-1, 1).float()], 1).cummax(1).values
    linear = maxv.view(-1, 1).float() * torch.linspace(0, 1, groups + 1).view(1, -1)
    # a little of the equal-width slicing keeps the edges strictly increasing where quantiles tie (a
    # feature whose firings sit on one value), so every interval has a low below its high
    edges = 0.98 * quantile + 0.02 * linear
    centres = 10 ** (LOG_LO + (torch.arange(LOG_BINS) + 0.5) * (LOG_HI - LOG_LO) / LOG_BINS)
    total = loghist.sum(1, keepdim=True).clamp_min(1).double()
    below = torch.stack(
        [(loghist * (centres.view(1, -1) < edges[:, j : j + 1])).sum(1) for j in range(groups + 1)], 1
    ).double()
    below[:, -1] = loghist.sum(1)
    shares = ((below[:, 1:] - below[:, :-1]) / total).float()
    return edges, shares


@dataclass
class LogitLens:
    """Each feature's decoder row read through the unembedding (after the final norm's scale): the
    tokens it promotes most and least [F, k] with their values, and a histogram of all its logits
    [F, LOGIT_HIST_BINS] over [low, high] [F]."""

    top_ids: torch.Tensor
    top_values: torch.Tensor
    bottom_ids: torch.Tensor
    bottom_values: torch.Tensor
    hist: torch.Tensor
    low: torch.Tensor
    high: torch.Tensor


def logit_lens(
    W_dec: torch.Tensor, lm: LoadedModel, k: int, progress: ProgressCallback | None = None
) -> LogitLens | None:
    """The logit lens of every decoder row [F, d]; None when the rows do not live in the residual (a
    transcoder writing elsewhere). The full [features, vocab] product runs in bfloat16 (about 2x faster
    on CPUs) to pick the tokens; their values are then recomputed exactly in float32."""
    F = W_dec.shape[0]
    W_U, scale = _unembedding(lm)
    emit(progress, "logit lens", 0, F, unit="feature")
    if W_dec.shape[1] != W_U.shape[1]:
        emit(progress, "logit lens", F, F, unit="feature", finished=True)
        return None
    D = W_dec * scale.cpu() if scale is not None else W_dec
    parts: dict[str, list[torch.Tensor]] = {name: [] for name in LogitLens.__dataclass_fields__}
    W_Uc = W_U.cpu()
    W_Ub = W_Uc.T.contiguous().to(torch.bfloat16)
    for a in range(0, F, 512):
        Dc = D[a : a + 512]
        L = Dc.to(torch.bfloat16) @ W_Ub  # [c, vocab], bfloat16
        k2 = min(k + 8, L.shape[1])
        ti = L.topk(k2, dim=1).indices
        bi = L.topk(k2, dim=1, largest=False).indices
        t = torch.einsum("cd,ckd->ck", Dc, W_Uc[ti]).topk(k, dim=1)
        b = torch.einsum("cd,ckd->ck", Dc, W_Uc[bi]).topk(k, dim=1, largest=False)
        lo, hi = L.min(1).values.float(), L.max(1).values.float()
        L.sub_(lo[:, None].to(L.dtype)).mul_(
            (LOGIT_HIST_BINS / (hi - lo).clamp_min(1e-12))[:, None].to(L.dtype)
        )
        idx = L.clamp_(0, LOGIT_HIST_BINS - 1).to(torch.int64)
        ones = torch.ones((), dtype=torch.long).expand_as(idx)
        for name, value in (
            ("top_ids", ti.gather(1, t.indices)),
            ("top_values", t.values),
            ("bottom_ids", bi.gather(1, b.indices)),
            ("bottom_values", b.values),
            ("hist", torch.zeros(L.shape[0], LOGIT_HIST_BINS, dtype=torch.long).scatter_add_(1, idx, ones)),
            ("low", lo),
            ("high", hi),
        ):
            parts[name].append(value)
        emit(progress, "logit lens", min(a + 512, F), F, unit="feature")
    emit(progress, "logit lens", F, F, unit="feature", finished=True)
    return LogitLens(**{name: torch.cat(v) for name, v in parts.items()})


def decoder_neighbours(W_dec: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each feature's ``k`` nearest other features by decoder cosine: (indices [F, k], cosines [F, k])."""
    F = W_dec.shape[0]
    Wn = W_dec / W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12)
    k = min(k, F - 1) if F > 1 else 0
    idx: list[torch.Tensor] = []
    cos: list[torch.Tensor] = []
    for a in range(0, F, 1024):
        sim = Wn[a : a + 1024] @ Wn.T
        sim[torch.arange(sim.shape[0]), torch.arange(a, a + sim.shape[0])] = -2.0  # never itself
        t = sim.topk(k, dim=1)
        idx.append(t.indices)
        cos.append(t.values)
    return torch.cat(idx), torch.cat(cos)
