"""A feature's contexts grouped by meaning: its stored examples (top and quantile-sampled) read again
by the model, each represented by the model's own hidden state at the SAE's hook at the example's peak
token, centred over the examples (what they all share, the feature itself among it, taken out), and
grouped by average-linkage clustering on their cosines. The number of groups is the one with the best
silhouette, and one group when no split is clear: a feature with two meanings shows two groups."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..core.workspace import Artifact, Workspace
from ..data.hooks import capture
from .library import FeatureError, load_library_sae, model_for_sae, sae_hook
from .store import feature_detail, require_extraction

MIN_SILHOUETTE = 0.15  # a split weaker than this is no split: one group


def context_clusters(
    ws: Workspace, ext: str | Artifact, index: int, *, max_groups: int = 4
) -> dict[str, Any]:
    """The feature's stored examples in groups of similar context: ``groups`` (each with its examples,
    strongest first, and the tokens its peaks fall on most), the silhouette of the split (None for one
    group) and how many examples were read."""
    from scipy.cluster.hierarchy import fcluster, linkage

    ext = require_extraction(ws, ext)
    d = feature_detail(ws, ext, index)
    examples = d["examples"] + [e for g in d["quantile_examples"] for e in g["examples"]]
    if not examples:
        raise FeatureError(
            f"Feature {d['index']} never fired in the extraction, so it has no contexts to group.",
            "pick a feature that fires (sort the list by frequency), or extract over more tokens.",
        )
    X = _peak_states(ws, ext, examples)
    X = X - X.mean(0, keepdims=True)
    X = X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-9)
    labels, sil = np.zeros(len(X), dtype=int), None
    if len(X) >= 6:
        tree = linkage(X, method="average", metric="cosine")
        best = max(
            (
                (k, _silhouette(X, fcluster(tree, k, criterion="maxclust") - 1))
                for k in range(2, max_groups + 1)
            ),
            key=lambda kv: kv[1],
        )
        if best[1] >= MIN_SILHOUETTE:
            labels, sil = fcluster(tree, best[0], criterion="maxclust") - 1, best[1]
    groups = []
    for g in sorted(set(labels.tolist()), key=lambda g: -int((labels == g).sum())):
        members = sorted((examples[i] for i in np.nonzero(labels == g)[0]), key=lambda e: -e["value"])
        peaks: dict[str, int] = {}
        for e in members:
            t = e["tokens"][e["peak"]]
            peaks[t] = peaks.get(t, 0) + 1
        groups.append(
            {
                "size": len(members),
                "peak_tokens": [t for t, _ in sorted(peaks.items(), key=lambda kv: -kv[1])[:5]],
                "examples": members,
            }
        )
    return {"index": d["index"], "examples": len(examples), "silhouette": sil, "groups": groups}


@torch.no_grad()
def _peak_states(ws: Workspace, ext: Artifact, examples: list[dict[str, Any]]) -> np.ndarray:
    """The model's hidden state at the SAE's hook at each example's peak token [n, d] (each window read
    after a BOS, as the model reads text)."""
    art, sae, _ = load_library_sae(ws, ext.parent_id)
    lm = model_for_sae(ws, art, sae)
    hook = sae_hook(art, sae)
    bos = lm.tokenizer.bos_token_id
    start = 1 if bos is not None else 0
    ids = torch.tensor([([bos] if bos is not None else []) + list(e["token_ids"]) for e in examples])
    out = []
    for a in range(0, len(ids), 16):
        with capture(lm.model, hook) as got:
            lm.model(input_ids=ids[a : a + 16].to(lm.device), use_cache=False)
        h = got[hook].float().cpu()
        out.append(torch.stack([h[j, start + examples[a + j]["peak"]] for j in range(h.shape[0])]))
    return torch.cat(out).numpy()


def _silhouette(X: np.ndarray, labels: np.ndarray) -> float:
    """The mean silhouette of a grouping under cosine distance (-1..1; 0 for a single group)."""
    if len(set(labels.tolist())) < 2:
        return 0.0
    D = 1.0 - X @ X.T
    s = []
    for i in range(len(X)):
        own = labels == labels[i]
        if own.sum() < 2:
            s.append(0.0)
            continue
        a = D[i, own].sum() / (own.sum() - 1)
        b = min(D[i, labels == g].mean() for g in set(labels.tolist()) if g != labels[i])
        s.append((b - a) / max(a, b, 1e-12))
    return float(np.mean(s))
