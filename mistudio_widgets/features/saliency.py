"""Which input tokens make a feature fire: integrated gradients from the feature's activation at one
token back to the input token embeddings.

The path runs from a baseline (every token's embedding zeroed, the BOS kept so the attention sink stays)
to the text's own embeddings in ``steps`` equal parts (midpoints), all in one batched forward and backward
pass in float32. A token's saliency is its share of the activation: the integrated gradient summed over
the embedding. By the completeness of integrated gradients the saliencies add up to the activation minus
the baseline's; the gap between the two, reported, says how well ``steps`` approximated the integral.
What is integrated is the feature's encoder response (ReLU of its pre-activation): its activation wherever
it fires, but continuous, where the top-k selection and JumpReLU thresholds are steps.

Own code rather than captum: the integral over a transformer's input embeddings is a dozen lines, and
captum's layer wrappers would still need a forward written for the SAE's hook; captum also brings
matplotlib into the kernel.
"""

from __future__ import annotations

from typing import Any

import torch

from ..core.workspace import Artifact, Workspace
from ..data.hooks import intervene
from ..data.models import load_model
from .library import FeatureError, load_library_sae, model_for_sae, sae_hook
from .store import check_feature_index, shown_vocab


class _Reached(Exception):
    """Stops a forward pass once the SAE's hook has been read (the layers after it are not needed)."""


def token_saliency(
    ws: Workspace,
    sae: str | Artifact,
    index: int,
    text: str,
    *,
    position: int | None = None,
    steps: int = 32,
    model: str | None = None,
) -> dict[str, Any]:
    """Integrated gradients of feature ``index``'s activation at token ``position`` of ``text`` (default:
    where it fires most) with respect to each input token: ``saliency`` per token (adding up, within
    ``completeness_gap``, to ``activation`` minus ``baseline_activation``)."""
    art, model_sae, _ = load_library_sae(ws, sae)
    index = check_feature_index(ws, art, index)
    if not isinstance(text, str) or not text.strip():
        raise FeatureError("The text is empty.", "type the text whose tokens to weigh.")
    own = model_for_sae(ws, art, model_sae, model)
    lm = load_model(ws, own.artifact, dtype="float32", device=own.device)
    hook = sae_hook(art, model_sae)
    tok = lm.tokenizer
    bos = [tok.bos_token_id] if tok.bos_token_id is not None else []
    ids = torch.tensor([bos + tok(text, add_special_tokens=False)["input_ids"]])
    if ids.shape[1] > min(lm.context_length, 512):
        raise FeatureError(
            f"The text is {ids.shape[1]} tokens; saliency reads at most {min(lm.context_length, 512)}.",
            "shorten the text to the part around the token.",
        )
    emb = lm.model.get_input_embeddings()(ids.to(lm.device)).detach().float()  # [1, T, d]
    base = torch.zeros_like(emb)
    if bos:
        base[:, 0] = emb[:, 0]
    acts = _activation(lm, model_sae, hook, torch.cat([emb, base]), index)  # the encoder's response
    fires = _activation(lm, model_sae, hook, emb, index, response=False)[0]  # the activation itself
    start = len(bos)
    asked = position is not None
    if position is None:
        position = int(fires[start:].argmax()) + start if ids.shape[1] > start else 0
    elif not start <= position < ids.shape[1]:
        raise FeatureError(
            f"Position {position} is not a token of the text.", f"use {start}..{ids.shape[1] - 1}."
        )
    if float(fires[position].detach()) <= 0:
        raise FeatureError(
            f"Feature {index} does not fire on this text"
            + (" at that token" if asked else "")
            + ", so no token makes it fire.",
            "type a text it fires on (see its top examples), or pick another feature.",
        )
    alphas = (torch.arange(steps, dtype=torch.float32, device=emb.device) + 0.5) / steps
    path = (base + alphas[:, None, None] * (emb - base)).requires_grad_(True)  # [steps, T, d]
    with torch.enable_grad():
        _activation(lm, model_sae, hook, path, index)[:, position].sum().backward()
    assert path.grad is not None
    ig = ((emb - base) * path.grad.mean(0, keepdim=True)).sum(-1)[0]  # [T]
    saliency = ig[start:].tolist()
    target, baseline = float(acts[0, position].detach()), float(acts[1, position].detach())
    vocab = shown_vocab(lm.tokenizer)
    return {
        "index": index,
        "text": text,
        "tokens": [vocab[i] for i in ids[0, start:].tolist()],
        "position": position - start,
        "saliency": saliency,
        "activation": target,
        "baseline_activation": baseline,
        "completeness_gap": abs(sum(saliency) + float(ig[:start].sum()) - (target - baseline))
        / max(abs(target - baseline), 1e-9),
        "steps": steps,
    }


def _activation(lm, sae, hook: str, embeds: torch.Tensor, index: int, response: bool = True) -> torch.Tensor:
    """Feature ``index``'s encoder response at every token [batch, T] for input embeddings [batch, T, d]:
    ReLU of its pre-activation, its activation wherever it fires, but continuous (the top-k selection
    and a JumpReLU threshold are steps, across which no gradient says anything); with ``response``
    False, the activation itself."""
    got: dict[str, torch.Tensor] = {}

    def keep(h: torch.Tensor) -> torch.Tensor:
        got["h"] = h
        raise _Reached

    with intervene(lm.model, {hook: keep}):
        try:
            lm.model(inputs_embeds=embeds.to(lm.model.dtype), use_cache=False)
        except _Reached:
            pass
    h = got["h"].float().to(sae.W_enc.device)
    return torch.relu(sae.pre_acts(h)[..., index]) if response else sae.encode(h)[..., index]
