"""What labels are made from and scored on: the SAE's sparse activations over two disjoint sets of token
sequences of an extraction's tokenization.

- **explain**: the extraction's own sequences (the explainer reads them). Taken from the extraction's
  sparse sample (``coactivation.npz``) when that sample covers them, else computed here.
- **held out**: the sequences after the extraction's (nobody but the scorer reads them).

Both are cached in the extraction's folder (``label_evidence.npz``) so labelling again, or labelling with
another explainer, scores on the same held-out texts without running the model."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..core.configs import LabelConfig
from ..core.disk import disk_error
from ..core.jobs import JobControl
from ..core.progress import ProgressCallback, emit
from ..core.workspace import Artifact, Workspace
from ..data.datasets import load_tokens
from ..data.models import load_tokenizer
from ..data.tokens import special_token_ids
from .library import FeatureError, feature_acts, load_library_sae, model_for_sae, sae_hook
from .store import COACT_FILE, require_extraction, vocab_strings
from .token_forms import Positions, analyse

EVIDENCE_FILE = "label_evidence.npz"


@dataclass
class SparseActs:
    """Where features fire over a set of sequences: ``pos`` (flat positions into ``at``), ``feat``,
    ``val``, sorted by feature then position; ``start`` [d_sae + 1] indexes each feature's run."""

    at: Positions
    first_sequence: int
    pos: np.ndarray
    feat: np.ndarray
    val: np.ndarray
    start: np.ndarray
    valid: int  # positions that are not special tokens

    def of(self, f: int) -> tuple[np.ndarray, np.ndarray]:
        a, b = self.start[f], self.start[f + 1]
        return self.pos[a:b], self.val[a:b]

    def count(self) -> np.ndarray:
        return np.diff(self.start)


@dataclass
class Evidence:
    sae: str
    extraction: str
    d_sae: int
    explain: SparseActs
    held_out: SparseActs
    vocab: tuple[str, ...]
    special: frozenset[int]

    @property
    def key(self) -> str:
        """What identifies these held-out texts (kept with every score)."""
        h = self.held_out
        return f"{self.extraction}:{h.first_sequence}+{len(h.at) // h.at.length}"


def _sorted(pos: np.ndarray, feat: np.ndarray, val: np.ndarray, d_sae: int):
    order = np.lexsort((pos, feat))
    feat = feat[order]
    start = np.searchsorted(feat, np.arange(d_sae + 1)).astype(np.int64)
    return pos[order].astype(np.int64), feat.astype(np.int32), val[order].astype(np.float32), start


def _run(ws, ext, tokens, first, n, batch, progress, control, stage):
    """Sparse activations of sequences [first, first + n) (the SAE and its model, special positions 0)."""
    sae_art, sae, _ = load_library_sae(ws, ext.parent)
    lm = model_for_sae(ws, sae_art, sae, ext.meta.get("model"), progress)
    hook = sae_hook(sae_art, sae)
    thr = float(ext.meta["config"].get("threshold", 0.0))
    T = tokens.shape[1]
    pos, feat, val = [], [], []
    emit(progress, stage, 0, n * T, unit="tok")
    for a in range(0, n, batch):
        control.check()
        ids = torch.tensor(tokens[first + a : first + min(a + batch, n)], dtype=torch.long)
        A = feature_acts(lm, sae, hook, ids).float().cpu().reshape(-1, sae.spec.d_sae)
        r, c = (A > thr).nonzero(as_tuple=True)
        pos.append((r + a * T).numpy())
        feat.append(c.numpy())
        val.append(A[r, c].numpy())
        emit(progress, stage, min(a + batch, n) * T, n * T, unit="tok")
    emit(progress, stage, n * T, n * T, unit="tok", finished=True)
    cat = [np.concatenate(x) if x else np.zeros(0) for x in (pos, feat, val)]
    return cat[0].astype(np.int64), cat[1].astype(np.int32), cat[2].astype(np.float32)


def _from_sample(folder: Path, positions: int):
    """The extraction's sparse sample, when it covers the first ``positions`` positions."""
    path = folder / COACT_FILE
    if not path.is_file():
        return None
    z = np.load(path)
    if int(z["tokens"]) < positions:
        return None
    keep = z["row"] < positions
    return z["row"][keep].astype(np.int64), z["col"][keep].astype(np.int32), z["val"][keep].astype(np.float32)


def _save(path: Path, key: dict, parts: dict[str, np.ndarray]) -> None:
    tmp = path.with_name(path.name + ".tmp.npz")
    try:
        arrays: dict[str, Any] = {"key": np.array(json.dumps(key, sort_keys=True)), **parts}
        np.savez(tmp, **arrays)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise disk_error(exc, "the labelling evidence") from exc


def _load(path: Path, key: dict) -> dict[str, np.ndarray] | None:
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            if str(z["key"]) != json.dumps(key, sort_keys=True):
                return None
            return {k: z[k] for k in z.files if k != "key"}
    except (OSError, ValueError, KeyError):
        return None  # a damaged cache is made again


def held_out_range(ext: Artifact, total: int, cfg: LabelConfig) -> tuple[int, int]:
    """(first sequence, count) of the held-out texts: the sequences after the extraction's."""
    first = int(ext.meta["sequences"])
    ctx = int(ext.meta["context_size"])
    n = min(-(-cfg.holdout_tokens // ctx), total - first)
    if n < 1:
        raise FeatureError(
            f"The tokenization holds {total:,} sequences and the extraction read all of them, so no "
            "text is left to score labels on (labels are scored on texts the explainer never saw).",
            "extract over fewer tokens (mistudio extract SAE --tokens N) or on a larger dataset, then "
            "label again.",
        )
    return first, n


def load_evidence(
    ws: Workspace,
    sae: str | Artifact,
    cfg: LabelConfig | None = None,
    *,
    progress: ProgressCallback | None = None,
    control: JobControl | None = None,
) -> Evidence:
    """The labelling evidence of an SAE's newest extraction: made once (a pass of the model over the
    held-out sequences, and over the explained ones when the extraction kept no full sample), then read
    from the extraction's folder."""
    cfg = cfg or LabelConfig()
    control = control or JobControl()
    ext = require_extraction(ws, sae)
    sae_art = ws.get(ext.parent_id, "sae")
    d_sae = int(ext.meta["summary"]["d_sae"])
    tokens = load_tokens(ws, ext.meta["tokenization"])
    T = tokens.shape[1]
    n_explain = min(int(ext.meta["sequences"]), -(-cfg.explain_tokens // T))
    h_first, n_held = held_out_range(ext, len(tokens), cfg)
    key = {
        "sae": sae_art.id,
        "extraction": ext.id,
        "explain": [0, n_explain],
        "held_out": [h_first, n_held],
    }
    path = ext.folder / EVIDENCE_FILE
    parts = _load(path, key)
    if parts is None:
        batch = int(ext.meta["config"].get("batch_size", 16))
        explain = _from_sample(ext.folder, n_explain * T) or _run(
            ws, ext, tokens, 0, n_explain, batch, progress, control, "labelling: explained texts"
        )
        held = _run(ws, ext, tokens, h_first, n_held, batch, progress, control, "labelling: held-out texts")
        parts = {
            **{f"e_{k}": v for k, v in zip(("pos", "feat", "val"), explain)},
            **{f"h_{k}": v for k, v in zip(("pos", "feat", "val"), held)},
        }
        _save(path, key, parts)
    tokenizer = load_tokenizer(ws, ext.meta["model"])
    vocab = vocab_strings(tokenizer)
    special = set(special_token_ids(tokenizer))

    def acts(prefix: str, first: int, n: int) -> SparseActs:
        block = np.asarray(tokens[first : first + n])
        at = analyse(block, vocab, special)
        pos, feat, val, start = _sorted(
            parts[f"{prefix}_pos"], parts[f"{prefix}_feat"], parts[f"{prefix}_val"], d_sae
        )
        valid = int((~np.isin(block, list(special))).sum())
        return SparseActs(at, first, pos, feat, val, start, valid)

    return Evidence(
        sae_art.id,
        ext.id,
        d_sae,
        acts("e", 0, n_explain),
        acts("h", h_first, n_held),
        vocab,
        frozenset(special),
    )
