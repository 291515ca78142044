"""What a steer does further on: the change it makes at a later layer, read through an SAE of the same
model trained there. Each steered feature is matched to the later SAE's feature whose decoder direction
is nearest (cosine), and the later features the steer raised most are listed, so a steer that carries
its meaning forward shows its counterpart rising, and one the model washes out shows it flat."""

from __future__ import annotations

from typing import Any

import torch

from ..core.errors import MistudioError
from ..core.workspace import Artifact, Workspace
from ..data.hooks import hook_names
from ..features import load_library_sae, sae_hook
from ..sae import SAE
from .edit import SteeringError
from .results import DownstreamChange, DownstreamFeature

NO_MATCH = 0.3  # a nearest decoder cosine below this is no counterpart (random directions in 576-d: ~0.15)


def later_sae(
    ws: Workspace, art: Artifact, model: Any, hook: str, d_in: int, which: str
) -> tuple[Artifact, SAE, str] | None:
    """The SAE to read a steer through at a later layer: ``which`` names one (its name or id), "auto"
    picks the nearest later hook among the SAEs of the same model and width (the newest among equals;
    None when there is none), "none" reads nothing. Transcoders are never picked: they reconstruct
    another hook than they read."""
    if which == "none":
        return None
    order = {h: i for i, h in enumerate(hook_names(model))}
    here = order[hook]
    if which != "auto":
        got, sae, _ = load_library_sae(ws, which)
        later = sae_hook(got, sae)
        if later not in order or order[later] <= here:
            raise SteeringError(
                f"The SAE {got.name!r} reads {later}, which is not a later layer than the steer's {hook}.",
                "pick an SAE at a later hook of the same model, or downstream='auto'.",
            )
        if sae.spec.d_in != d_in or sae.spec.is_transcoder:
            raise SteeringError(
                f"The SAE {got.name!r} does not read {d_in}-wide activations of this model's residual.",
                "pick an SAE trained on the same model, or downstream='auto'.",
            )
        return got, sae, later
    own_model = art.meta.get("model")
    best: tuple[tuple[int, float], Artifact] | None = None
    for cand in ws.list("sae") if own_model else []:
        at = str(cand.meta.get("hook"))
        if cand.id == art.id or cand.meta.get("model") != own_model or order.get(at, -1) <= here:
            continue
        key = (order[at], -cand.created)  # the nearest later hook, then the newest
        if best is None or key < best[0]:
            best = (key, cand)
    if best is None:
        return None
    try:
        got, sae, _ = load_library_sae(ws, best[1])
    except MistudioError:  # an unreadable SAE elsewhere in the library must not fail the steer
        return None
    if sae.spec.d_in != d_in or sae.spec.is_transcoder or sae_hook(got, sae) not in order:
        return None
    return got, sae, sae_hook(got, sae)


@torch.no_grad()
def downstream_change(
    art: Artifact,
    sae: SAE,
    hook: str,
    steered_sae: SAE,
    feats: list[int],
    before: torch.Tensor,
    after: torch.Tensor,
    span: slice,
    most: int = 5,
) -> DownstreamChange:
    """The later SAE's features over the continuation ``span`` of ``before`` and ``after`` (its hook's
    activations [T, d], unsteered and steered): for each steered feature its nearest later feature by
    decoder cosine with its mean activation both ways, and the ``most`` features the steer raised most."""
    a0 = sae.encode(before.float().to(sae.W_enc.device))[span].mean(0)  # [d_sae]
    a1 = sae.encode(after.float().to(sae.W_enc.device))[span].mean(0)
    W = sae.W_dec.detach().float()
    W = W / W.norm(dim=1, keepdim=True).clamp_min(1e-12)
    matched = {}
    for i in feats:
        d = steered_sae.W_dec.detach().float()[i].to(W.device)
        cos = W @ (d / d.norm().clamp_min(1e-12))
        j = int(cos.argmax())
        matched[str(i)] = DownstreamFeature(j, float(cos[j]), float(a0[j]), float(a1[j]))
    rise = a1 - a0
    top = torch.topk(rise, min(most, rise.numel())).indices.tolist()
    raised = [DownstreamFeature(j, None, float(a0[j]), float(a1[j])) for j in top if float(rise[j]) > 0]
    return DownstreamChange(
        sae=art.id, name=art.name, hook=hook, matched=matched, most_raised=raised, no_match=NO_MATCH
    )
