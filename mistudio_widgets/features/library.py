"""An SAE of the library with the model it reads: loading both, checking they fit, and the SAE's
feature activations on token ids."""

from __future__ import annotations

from typing import Any

import torch

from ..core.configs import DEFAULT
from ..core.errors import MistudioError
from ..core.progress import ProgressCallback
from ..core.workspace import Artifact, Workspace
from ..data.hooks import capture, parse_hook
from ..data.models import LoadedModel, load_model, resolve_model
from ..sae import SAE


class FeatureError(MistudioError):
    pass


# ---------------------------------------------------------------------------------------------
# What to run
def load_library_sae(
    ws: Workspace, ref: str | Artifact, device: str = "cpu"
) -> tuple[Artifact, SAE, dict[str, Any]]:
    from ..sae.io import load_sae

    art = ws.get(ref, "sae")
    sae, cfg = load_sae(art.folder, device)
    sae.eval()
    return art, sae, cfg


def model_for_sae(
    ws: Workspace,
    sae_art: Artifact,
    sae: SAE,
    model: str | None = None,
    progress: ProgressCallback | None = None,
) -> LoadedModel:
    """The model an SAE reads: ``model`` when given, else the one it was trained on, else the default;
    checked against the SAE's hook and width."""
    ref = model or sae_art.meta.get("model") or DEFAULT
    if ref != DEFAULT and ws.find(ref, "model") is None:
        ref = DEFAULT if not model else ref
    lm = load_model(ws, resolve_model(ws, ref, progress=progress))
    hook = sae.spec.metadata.get("hook_name") or sae_art.meta.get("hook")
    if not hook:
        raise FeatureError(
            f"The SAE {sae_art.name!r} does not say which hook it reads.",
            "add metadata.hook_name to its cfg.json.",
        )
    parse_hook(lm.model, hook)
    d_model = int(lm.info["d_model"])
    if sae.spec.d_in != d_model:
        raise FeatureError(
            f"The SAE {sae_art.name!r} reads {sae.spec.d_in}-wide activations but {lm.name!r} has "
            f"d_model {d_model}.",
            "pick the model the SAE was trained on (model=...).",
        )
    return lm


def sae_hook(sae_art: Artifact, sae: SAE) -> str:
    return sae.spec.metadata.get("hook_name") or sae_art.meta["hook"]


def _special(lm: LoadedModel) -> torch.Tensor:
    return torch.tensor(lm.special_ids(), dtype=torch.long)


@torch.no_grad()
def feature_acts(lm: LoadedModel, sae: SAE, hook: str, ids: torch.Tensor, *, with_input: bool = False):
    """SAE feature activations [batch, seq, d_sae] for token ids [batch, seq]; special-token positions
    (attention sinks the SAE never saw in training) are zero. With ``with_input`` also the hook's
    activations [batch, seq, d_in] the SAE read."""
    with torch.inference_mode(), capture(lm.model, hook) as store:
        lm.model(input_ids=ids.to(lm.device), use_cache=False)
    x = store[hook].float().to(sae.W_enc.device)
    acts = sae.encode(x)
    keep = ~torch.isin(ids, _special(lm)).to(acts.device)
    acts = acts * keep.unsqueeze(-1)
    return (acts, x) if with_input else acts
