"""Compare two SAEs on the same model and hook by the cosine similarity of their decoder directions:
each feature's nearest neighbour in the other SAE, and a one-to-one matching (optimal assignment for
up to 4096 x 4096 features, mutual-best greedy matching beyond)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..core.errors import MistudioError
from ..core.workspace import Artifact, Workspace
from ..sae.io import load_sae
from .store import shown_labels

EXACT_LIMIT = 4096 * 4096
CHUNK = 2048


class CompareError(MistudioError):
    pass


def _unit_rows(W: torch.Tensor) -> torch.Tensor:
    W = W.detach().float()
    return W / W.norm(dim=1, keepdim=True).clamp_min(1e-12)


def nearest(A: torch.Tensor, B: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """For each row of A (unit rows), the index and cosine of its nearest row of B (chunked)."""
    idx, val = np.empty(A.shape[0], dtype=np.int64), np.empty(A.shape[0], dtype=np.float32)
    for s in range(0, A.shape[0], CHUNK):
        c = A[s : s + CHUNK] @ B.T
        v, i = c.max(dim=1)
        idx[s : s + CHUNK], val[s : s + CHUNK] = i.numpy(), v.numpy()
    return idx, val


def one_to_one(A: torch.Tensor, B: torch.Tensor) -> tuple[np.ndarray, np.ndarray, str]:
    """(a indices, b indices) of a one-to-one matching maximising total cosine, and the method used."""
    if A.shape[0] * B.shape[0] <= EXACT_LIMIT:
        from scipy.optimize import linear_sum_assignment

        C = (A @ B.T).numpy()
        r, c = linear_sum_assignment(C, maximize=True)
        return r, c, "optimal assignment"
    # greedy: repeatedly take mutual best pairs among the unmatched, then the rest by best remaining cosine
    free_a, free_b = np.ones(A.shape[0], bool), np.ones(B.shape[0], bool)
    ra: list[int] = []
    rb: list[int] = []
    for _ in range(8):
        ia, ib = np.flatnonzero(free_a), np.flatnonzero(free_b)
        if not len(ia) or not len(ib):
            break
        Asub, Bsub = A[torch.from_numpy(ia)], B[torch.from_numpy(ib)]
        a2b, _ = nearest(Asub, Bsub)
        b2a, _ = nearest(Bsub, Asub)
        mutual = np.flatnonzero(b2a[a2b] == np.arange(len(ia)))
        if not len(mutual):
            break
        ra.extend(ia[mutual])
        rb.extend(ib[a2b[mutual]])
        free_a[ia[mutual]], free_b[ib[a2b[mutual]]] = False, False
    return np.asarray(ra, dtype=np.int64), np.asarray(rb, dtype=np.int64), "mutual-best greedy matching"


def _seed(ws: Workspace, sae: Artifact) -> int | None:
    """The seed an SAE of the library was trained with (None for an imported one)."""
    run = ws.find(sae.meta.get("run") or "", "run")
    return (run.meta.get("config") or {}).get("seed") if run is not None else None


def compare_saes(ws: Workspace, a: str, b: str, *, top: int = 20) -> dict[str, Any]:
    """Match the features of SAE ``a`` with those of SAE ``b``. Returns a summary, the ``top`` best
    one-to-one pairs (with labels), and per-feature nearest neighbours as arrays."""
    art_a, art_b = ws.get(a, "sae"), ws.get(b, "sae")
    sae_a, _ = load_sae(art_a.folder)
    sae_b, _ = load_sae(art_b.folder)
    if sae_a.spec.d_in != sae_b.spec.d_in or sae_a.W_dec.shape[1] != sae_b.W_dec.shape[1]:
        raise CompareError(
            f"{art_a.name!r} and {art_b.name!r} live in different spaces "
            f"({sae_a.W_dec.shape[1]} vs {sae_b.W_dec.shape[1]} dimensions).",
            "compare SAEs trained on the same model and hook.",
        )
    warnings = []
    if art_a.meta.get("hook") != art_b.meta.get("hook"):
        warnings.append(
            f"the SAEs read different hooks ({art_a.meta.get('hook')} vs {art_b.meta.get('hook')}); "
            "similar directions may still mean different things"
        )
    A, B = _unit_rows(sae_a.W_dec), _unit_rows(sae_b.W_dec)
    nn_ab, cos_ab = nearest(A, B)
    nn_ba, cos_ba = nearest(B, A)
    ra, rb, method = one_to_one(A, B)
    pair_cos = (
        (A[torch.from_numpy(ra)] * B[torch.from_numpy(rb)]).sum(1).numpy()
        if len(ra)
        else np.zeros(0, np.float32)
    )
    order = np.argsort(-pair_cos)
    same_index = float((ra == rb).mean()) if len(ra) else 0.0
    if same_index > 0.5:
        seeds = {_seed(ws, art) for art in (art_a, art_b)}
        why = (
            f"both were trained with seed {seeds.pop()}, so " if len(seeds) == 1 and None not in seeds else ""
        )
        warnings.append(
            f"{same_index:.0%} of the matched features have the same index in both SAEs: {why}they started "
            "from the same initial weights, and their agreement says how little training moved them apart, "
            "not that two independent trainings found the same features (train one with another seed)"
        )
    la = {f: r["label"] for f, r in shown_labels(ws, art_a).items()}
    lb = {f: r["label"] for f, r in shown_labels(ws, art_b).items()}
    pairs = [
        {
            "a": int(ra[k]),
            "b": int(rb[k]),
            "cosine": float(pair_cos[k]),
            "label_a": la.get(int(ra[k])),
            "label_b": lb.get(int(rb[k])),
        }
        for k in order[:top]
    ]
    summary = {
        "a": art_a.id,
        "b": art_b.id,
        "name_a": art_a.name,
        "name_b": art_b.name,
        "d_sae_a": sae_a.spec.d_sae,
        "d_sae_b": sae_b.spec.d_sae,
        "method": method,
        "matched": int(len(ra)),
        "mean_matched_cosine": float(pair_cos.mean()) if len(ra) else 0.0,
        "mean_nearest_cosine_a": float(cos_ab.mean()),
        "mean_nearest_cosine_b": float(cos_ba.mean()),
        "matched_above_0.9": int((pair_cos > 0.9).sum()),
        "matched_above_0.7": int((pair_cos > 0.7).sum()),
        "warnings": warnings,
    }
    return {
        "summary": summary,
        "pairs": pairs,
        "histogram": np.histogram(pair_cos, bins=20, range=(-1, 1))[0].tolist(),
        "nearest_a": {"index": nn_ab, "cosine": cos_ab},
        "nearest_b": {"index": nn_ba, "cosine": cos_ba},
        "assignment": {"a": ra, "b": rb, "cosine": pair_cos},
    }


def describe_pair(result: dict[str, Any], k: int = 0) -> str:
    p = result["pairs"][k]
    s = result["summary"]
    la = f" ({p['label_a']})" if p["label_a"] else ""
    lb = f" ({p['label_b']})" if p["label_b"] else ""
    return (
        f"feature {p['a']}{la} of {s['name_a']} matches feature {p['b']}{lb} of {s['name_b']} "
        f"at {p['cosine']:.2f}"
    )
