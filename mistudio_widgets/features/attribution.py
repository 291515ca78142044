"""Which features make the model say this: attribution of a target token's logit to the SAE's features
at its hook, by activation x gradient in one backward pass (the SAE's error term as its own row), then
exact ablation of the top rows to check the approximation.

The forward pass runs with the hook's value replaced by ``decode(f) + err`` (``f`` the SAE's features,
``err`` what the SAE misses), which equals the model's own value; the gradient of the target's logit
with respect to ``f`` and ``err`` at every position then says how much each feature pushes the logit
(summed over positions). The model runs in float32 here whatever it runs in elsewhere: gradients in
bfloat16 are too coarse to rank small contributions.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch

from ..core.workspace import Artifact, Workspace
from ..data.hooks import intervene
from ..data.models import LoadedModel, load_model
from .library import FeatureError, _special, load_library_sae, model_for_sae, sae_hook
from .store import shown_labels, shown_vocab

ERROR_ROW = -1  # the index of the SAE's error term among the rows


@dataclass
class AttributionRow:
    """One feature's (or the error term's, index -1) push on the target's logit."""

    index: int
    attribution: float  # activation x gradient, summed over positions: the logit change it predicts
    activation: float  # the feature's largest activation over the prompt (0 for the error row)
    position: int  # where its attribution is largest (a token index into ``tokens``)
    exact: float | None = None  # what it really adds: the logit minus the logit with it zeroed everywhere
    label: str | None = None


@dataclass
class Attribution:
    """Attribution of one target token's logit at the prompt's last position."""

    sae: str
    hook: str
    prompt: str
    tokens: list[str]
    target: str
    target_id: int
    target_note: str | None  # e.g. which token of a several-token target was used
    logit: float  # the target's logit on the unedited forward pass
    rows: list[AttributionRow]  # the strongest by |attribution|, the error term among them wherever it ranks
    firing: int  # features that fired anywhere in the prompt
    total: float  # the summed attribution of every feature and the error term
    correlation: float | None  # Pearson r of the attribution against the exact effect over the ablated rows

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def attribute(
    ws: Workspace,
    sae: str | Artifact,
    prompt: str,
    target: str | None = None,
    *,
    top: int = 10,
    ablate: int = 10,
    model: str | None = None,
) -> Attribution:
    """Which of ``sae``'s features push the logit of ``target`` (default: the model's most likely next
    token) at the end of ``prompt`` up or down: the ``top`` rows by |activation x gradient|, the
    error term as its own row, and for the ``ablate`` strongest features the exact change of the logit
    when each is zeroed at every position."""
    art, model_sae, _ = load_library_sae(ws, sae)
    if model_sae.spec.is_transcoder:
        raise FeatureError(
            f"{art.name!r} is a transcoder: it reconstructs another hook than it reads, so its features "
            "cannot stand in for the activations they were read from.",
            "attribute with an SAE that reconstructs its own hook.",
        )
    own = model_for_sae(ws, art, model_sae, model)
    lm = load_model(ws, own.artifact, dtype="float32", device=own.device)  # gradients want float32
    hook = sae_hook(art, model_sae)
    ids = _prompt_ids(lm, prompt)
    target_id, target_text, note = _target(lm, ids, target)
    grads = _gradients(lm, model_sae, hook, ids, target_id)
    f, gf, err, gerr, logit = grads["f"], grads["gf"], grads["err"], grads["gerr"], grads["logit"]
    per_pos = f * gf  # [T, F]
    attr = per_pos.sum(0)
    err_attr = float((err * gerr).sum())
    fired = (f > 0).any(0)
    order = torch.argsort(attr.abs(), descending=True)
    order = order[fired[order]][:top]  # a feature that never fired contributes nothing
    labels = {i: r["label"] for i, r in shown_labels(ws, art).items()}
    rows = [
        AttributionRow(
            int(i),
            float(attr[i]),
            float(f[:, i].max()),
            int(per_pos[:, i].abs().argmax()),
            label=labels.get(int(i)),
        )
        for i in order.tolist()
    ]
    for r in rows[:ablate]:
        r.exact = logit - _ablated_logit(lm, model_sae, hook, ids, target_id, r.index)
    rows.append(
        AttributionRow(ERROR_ROW, err_attr, 0.0, int((err * gerr).sum(-1).abs().argmax()), label="SAE error")
    )
    rows.sort(key=lambda r: -abs(r.attribution))
    vocab = shown_vocab(lm.tokenizer)
    return Attribution(
        sae=art.id,
        hook=hook,
        prompt=prompt,
        tokens=[vocab[i] for i in ids[0].tolist()],
        target=target_text,
        target_id=target_id,
        target_note=note,
        logit=logit,
        rows=rows,
        firing=int(fired.sum()),
        total=float(attr.sum()) + err_attr,
        correlation=_correlation([(r.attribution, r.exact) for r in rows if r.exact is not None]),
    )


def _prompt_ids(lm: LoadedModel, prompt: str) -> torch.Tensor:
    if not isinstance(prompt, str) or not prompt.strip():
        raise FeatureError("The prompt is empty.", "type the text whose next token to explain.")
    tok = lm.tokenizer
    ids = ([tok.bos_token_id] if tok.bos_token_id is not None else []) + tok(
        prompt, add_special_tokens=False
    )["input_ids"]
    if len(ids) > lm.context_length:
        raise FeatureError(
            f"The prompt is {len(ids)} tokens; the model reads at most {lm.context_length}.",
            "shorten the prompt to the part that leads to the token.",
        )
    return torch.tensor([ids])


def _target(lm: LoadedModel, ids: torch.Tensor, target: str | None) -> tuple[int, str, str | None]:
    """The target token: the model's most likely next token, or the first token of ``target`` (said
    when ``target`` is several tokens)."""
    tok = lm.tokenizer
    if target is None or target == "":
        with torch.no_grad():
            logits = lm.model(input_ids=ids.to(lm.device), use_cache=False).logits[0, -1]
        tid = int(logits.argmax())
        return tid, tok.decode([tid]), None
    pieces = tok(target, add_special_tokens=False)["input_ids"]
    if not pieces:
        raise FeatureError(f"The target {target!r} is no token.", "give a word, e.g. ' Paris'.")
    tid = int(pieces[0])
    note = None
    if len(pieces) > 1:
        note = (
            f"{target!r} is {len(pieces)} tokens ({', '.join(repr(tok.decode([p])) for p in pieces)}); "
            f"the first, {tok.decode([tid])!r}, is the target"
        )
    return tid, tok.decode([tid]), note


def _gradients(lm: LoadedModel, sae, hook: str, ids: torch.Tensor, target_id: int) -> dict[str, Any]:
    """One forward and backward pass with the hook's value written as ``decode(f) + err``: the features
    ``f`` [T, F], the error ``err`` [T, d], their gradients, and the target's logit."""
    keep = ~torch.isin(ids[0], _special(lm).cpu())
    got: dict[str, torch.Tensor] = {}

    def rewrite(h: torch.Tensor) -> torch.Tensor:
        x = h[0].float().to(sae.W_enc.device)
        f = (sae.encode(x).detach() * keep.to(x.device)[:, None]).requires_grad_(True)
        err = (x - sae.decode(f).detach()).requires_grad_(True)  # what the SAE misses (all of a BOS)
        got["f"], got["err"] = f, err
        return (sae.decode(f) + err).to(h.dtype).unsqueeze(0)

    with torch.enable_grad(), intervene(lm.model, {hook: rewrite}):
        logits = lm.model(input_ids=ids.to(lm.device), use_cache=False).logits[0, -1].float()
        logits[target_id].backward()
    f, err = got["f"], got["err"]
    assert f.grad is not None and err.grad is not None, "the logit depends on the hook's value"
    return {
        "f": f.detach().cpu(),
        "gf": f.grad.cpu(),
        "err": err.detach().cpu(),
        "gerr": err.grad.cpu(),
        "logit": float(logits[target_id].detach()),
    }


@torch.no_grad()
def _ablated_logit(lm: LoadedModel, sae, hook: str, ids: torch.Tensor, target_id: int, index: int) -> float:
    """The target's logit with feature ``index`` zeroed at every position (its decoder direction times its
    activation taken out of the hook's value)."""
    w = sae.W_dec[index].detach().float()
    keep = (~torch.isin(ids[0], _special(lm).cpu())).to(sae.W_enc.device)  # as in the attribution

    def remove(h: torch.Tensor) -> torch.Tensor:
        x = h.float().to(sae.W_enc.device)
        a = sae.encode(x)[..., index] * keep
        return (x - a.unsqueeze(-1) * w).to(h.dtype).to(h.device)

    with intervene(lm.model, {hook: remove}):
        return float(lm.model(input_ids=ids.to(lm.device), use_cache=False).logits[0, -1, target_id])


def _correlation(pairs: list[tuple[float, float | None]]) -> float | None:
    xs = torch.tensor([a for a, _ in pairs])
    ys = torch.tensor([b for _, b in pairs if b is not None])
    if len(xs) < 3 or float(xs.std()) == 0 or float(ys.std()) == 0:
        return None
    return float(torch.corrcoef(torch.stack([xs, ys]))[0, 1])
