"""How much each feature matters to the model: the change in next-token loss on held-out text when the
feature is zeroed wherever it fires, for the whole dictionary at once by attribution patching
(``-sum_t f_t * dLoss/df_t``, one forward and backward pass per batch, the hook's value written as
``decode(f) + err``), then measured exactly for the strongest few (each zeroed, the loss read again), with
the Pearson r between the two reported. "Critical" features raise the loss most when removed;
"redundant" ones barely move it although they fire.

The held-out text is the tokenization's sequences after the extraction's (as for label scoring). The
model runs in float32. The result is kept in the extraction's folder (``impact.npz``) and read by the
feature list, the CLI and the Neuronpedia export.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..core.jobs import JobControl
from ..core.progress import ProgressCallback, emit
from ..core.workspace import Artifact, Workspace
from ..data.datasets import load_tokens
from ..data.hooks import intervene
from ..data.models import load_model
from .library import FeatureError, _special, load_library_sae, model_for_sae, sae_hook
from .store import require_extraction

IMPACT_FILE = "impact.npz"


@dataclass
class Impact:
    """Each feature's estimated loss change when zeroed where it fires [d_sae] (nats per token; positive:
    the model does worse without it), the exact change for the ``exact`` strongest, and their agreement."""

    extraction: str
    tokens: int
    loss: float  # the model's own next-token loss on the held-out tokens
    estimate: np.ndarray  # [d_sae]
    fired: np.ndarray  # [d_sae] tokens it fired on in the held-out text
    exact_index: np.ndarray  # the features measured exactly
    exact: np.ndarray  # their loss change
    correlation: float | None

    def summary(self) -> dict[str, Any]:
        return {
            "extraction": self.extraction,
            "tokens": self.tokens,
            "loss": self.loss,
            "exact": [
                {"index": int(i), "estimate": float(self.estimate[i]), "exact": float(e)}
                for i, e in zip(self.exact_index, self.exact)
            ],
            "correlation": self.correlation,
            "critical": [int(i) for i in np.argsort(-self.estimate)[:10]],
        }


def ablation_impact(
    ws: Workspace,
    sae: str | Artifact,
    *,
    tokens: int = 32768,
    exact: int = 20,
    exact_tokens: int = 4096,
    batch_size: int = 8,
    progress: ProgressCallback | None = None,
    control: JobControl | None = None,
) -> Impact:
    """Estimate every feature's loss change when zeroed over ``tokens`` held-out tokens, and measure the
    ``exact`` strongest exactly over the first ``exact_tokens`` of them."""
    control = control or JobControl()
    ext = require_extraction(ws, sae)
    art, model_sae, _ = load_library_sae(ws, ext.parent_id)
    if model_sae.spec.is_transcoder:
        raise FeatureError(
            f"{art.name!r} is a transcoder; zeroing its features does not remove them from the model.",
            "measure the impact of an SAE that reconstructs its own hook.",
        )
    own = model_for_sae(ws, art, model_sae)
    lm = load_model(ws, own.artifact, dtype="float32", device=own.device)
    hook = sae_hook(art, model_sae)
    seqs = _held_out(ws, ext, tokens)
    F = model_sae.spec.d_sae
    estimate, fired = np.zeros(F), np.zeros(F, dtype=np.int64)
    total_loss, n_tok = 0.0, 0
    for a in range(0, len(seqs), batch_size):
        control.check()
        ids = torch.tensor(seqs[a : a + batch_size], dtype=torch.long)
        loss, n, est, fires = _patched(lm, model_sae, hook, ids)
        estimate += est
        fired += fires
        total_loss += loss * n
        n_tok += n
        emit(progress, "impact", min(a + batch_size, len(seqs)), len(seqs), unit="seq")
    estimate /= max(n_tok, 1)
    top = np.argsort(-np.abs(estimate))[:exact]
    few = seqs[: max(1, -(-exact_tokens // seqs.shape[1]))]
    base = _loss(lm, model_sae, hook, few, None)
    measured = []
    for k, i in enumerate(top):
        control.check()
        measured.append(_loss(lm, model_sae, hook, few, int(i)) - base)
        emit(progress, "impact: exact", k + 1, len(top), unit="feature", finished=k + 1 == len(top))
    measured_arr = np.asarray(measured)
    r = (
        float(np.corrcoef(estimate[top], measured_arr)[0, 1])
        if len(top) >= 3 and estimate[top].std() > 0 and measured_arr.std() > 0
        else None
    )
    res = Impact(ext.id, n_tok, total_loss / max(n_tok, 1), estimate, fired, top, measured_arr, r)
    _save(ext.folder / IMPACT_FILE, res)
    return res


def read_impact(ext: Artifact) -> Impact | None:
    """The impact kept in an extraction's folder, or None when it was not measured."""
    path = ext.folder / IMPACT_FILE
    if not path.is_file():
        return None
    z = np.load(path)
    return Impact(
        ext.id,
        int(z["tokens"]),
        float(z["loss"]),
        z["estimate"],
        z["fired"],
        z["exact_index"],
        z["exact"],
        float(z["correlation"]) if np.isfinite(z["correlation"]) else None,
    )


def _held_out(ws: Workspace, ext: Artifact, tokens: int) -> np.ndarray:
    all_tokens = load_tokens(ws, ext.meta["tokenization"])
    first, ctx = int(ext.meta["sequences"]), all_tokens.shape[1]
    n = min(-(-tokens // ctx), len(all_tokens) - first)
    if n < 1:
        raise FeatureError(
            "The extraction read every sequence of its tokenization, so no held-out text is left to "
            "measure the features' impact on.",
            "extract over fewer tokens or on a larger dataset.",
        )
    return np.asarray(all_tokens[first : first + n])


def _targets(lm, ids: torch.Tensor) -> torch.Tensor:
    """Next-token targets, -100 where the next token is special (a separator or BOS is not text)."""
    tgt = ids[:, 1:].clone()
    tgt[torch.isin(tgt, _special(lm).cpu())] = -100
    return tgt


def _patched(lm, sae, hook: str, ids: torch.Tensor) -> tuple[float, int, np.ndarray, np.ndarray]:
    """One batch's loss, its scored tokens, each feature's attribution-patching estimate of the summed
    loss change when zeroed (``-f * dL/df``, summed over tokens, for the summed loss) and its firings."""
    keep = ~torch.isin(ids, _special(lm).cpu())
    got: dict[str, torch.Tensor] = {}

    def rewrite(h: torch.Tensor) -> torch.Tensor:
        x = h.float().to(sae.W_enc.device)
        f = (sae.encode(x).detach() * keep.to(x.device).unsqueeze(-1)).requires_grad_(True)
        err = (x - sae.decode(f)).detach()
        got["f"] = f
        return (sae.decode(f) + err).to(h.dtype)

    tgt = _targets(lm, ids)
    with torch.enable_grad(), intervene(lm.model, {hook: rewrite}):
        logits = lm.model(input_ids=ids.to(lm.device), use_cache=False).logits[:, :-1].float()
        loss = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), tgt.reshape(-1).to(logits.device), reduction="sum"
        )
        loss.backward()
    f = got["f"]
    assert f.grad is not None
    est = (-(f * f.grad)).sum((0, 1)).detach().cpu().double().numpy()
    n = int((tgt != -100).sum())
    return float(loss.detach()) / max(n, 1), n, est, (f.detach() > 0).sum((0, 1)).cpu().numpy()


@torch.no_grad()
def _loss(lm, sae, hook: str, seqs: np.ndarray, zero: int | None) -> float:
    """The mean next-token loss over ``seqs`` with feature ``zero`` removed from the hook's value where
    it fires (None: the hook's value as it is)."""
    total, n = 0.0, 0
    for a in range(0, len(seqs), 8):
        ids = torch.tensor(seqs[a : a + 8], dtype=torch.long)
        keep = (~torch.isin(ids, _special(lm).cpu())).to(sae.W_enc.device)

        edits = {hook: _zeroing(sae, zero, keep)} if zero is not None else {}
        with intervene(lm.model, edits):
            logits = lm.model(input_ids=ids.to(lm.device), use_cache=False).logits[:, :-1].float()
        tgt = _targets(lm, ids)
        total += float(
            torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), tgt.reshape(-1).to(logits.device), reduction="sum"
            )
        )
        n += int((tgt != -100).sum())
    return total / max(n, 1)


def _zeroing(sae, index: int, keep: torch.Tensor):
    """The edit that takes feature ``index`` out of the hook's value where it fires (``keep``: the
    positions the SAE reads)."""
    w = sae.W_dec[index].detach().float()

    def remove(h: torch.Tensor) -> torch.Tensor:
        x = h.float().to(sae.W_enc.device)
        act = sae.encode(x)[..., index] * keep
        return (x - act.unsqueeze(-1) * w).to(h.dtype).to(h.device)

    return remove


def _save(path, res: Impact) -> None:
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(
        tmp,
        tokens=res.tokens,
        loss=res.loss,
        estimate=res.estimate,
        fired=res.fired,
        exact_index=res.exact_index,
        exact=res.exact,
        correlation=np.nan if res.correlation is None else res.correlation,
    )
    os.replace(tmp, path)
