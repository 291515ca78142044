"""Activations: run packed token sequences through a model up to a hook and collect the values,
dropping special-token positions (BOS and separators are attention sinks with huge norms)."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np
import torch

from .configs import DEFAULT, CaptureConfig
from .datasets import check_tokenization_fits, find_tokenization, load_tokens, resolve_dataset
from .errors import DatasetError
from .hooks import capture, parse_hook
from .models import LoadedModel, load_model, resolve_model
from .progress import ProgressCallback, emit
from .workspace import Artifact, Workspace


@dataclass
class ActivationBatch:
    acts: torch.Tensor          # [kept, d_model]
    token_ids: torch.Tensor     # [kept]
    positions: torch.Tensor     # [kept] flat index into the [batch, seq] block
    seen: int                   # positions run through the model
    dropped_special: int
    outliers: int


def iter_activations(lm: LoadedModel, tokens: np.ndarray, hook: str, *, batch_size: int = 16,
                     max_tokens: int | None = None, drop_special: bool = True, outlier_factor: float = 10.0,
                     progress: ProgressCallback | None = None) -> Iterator[ActivationBatch]:
    """Yield activations at ``hook`` for consecutive batches of sequences (forward stops at the hook).

    Special-token positions are dropped when ``drop_special``; positions whose norm exceeds
    ``outlier_factor`` x the batch median are counted as outliers and dropped too (0 turns it off).
    """
    parse_hook(lm.model, hook)
    if tokens.ndim != 2 or tokens.shape[0] == 0:
        raise DatasetError("There are no token sequences to run.", "tokenize a dataset with at least one sequence.")
    ctx = tokens.shape[1]
    n_seq = tokens.shape[0] if max_tokens is None else min(tokens.shape[0], -(-max_tokens // ctx))
    special = torch.tensor(sorted(set(lm.tokenizer.all_special_ids)), dtype=torch.long)
    done = 0
    for start in range(0, n_seq, batch_size):
        ids = torch.tensor(tokens[start:min(start + batch_size, n_seq)], dtype=torch.long)
        with torch.inference_mode(), capture(lm.model, hook) as store:
            lm.model(input_ids=ids.to(lm.device), use_cache=False)
        acts = store[hook].reshape(-1, store[hook].shape[-1]).float()
        flat_ids = ids.reshape(-1)
        keep = ~torch.isin(flat_ids, special) if drop_special else torch.ones_like(flat_ids, dtype=torch.bool)
        dropped_special = int((~keep).sum())
        outliers = 0
        if outlier_factor and keep.any():
            norms = acts.norm(dim=-1).cpu()
            big = keep & (norms > outlier_factor * norms[keep].median())
            outliers = int(big.sum())
            keep &= ~big
        idx = keep.nonzero().squeeze(1)
        done += ids.numel()
        emit(progress, "capture", done, n_seq * ctx, unit="tok")
        yield ActivationBatch(acts[idx.to(acts.device)], flat_ids[idx], idx, ids.numel(), dropped_special, outliers)
    emit(progress, "capture", done, n_seq * ctx, unit="tok", finished=True)


@dataclass
class CaptureResult:
    """Statistics of the activations captured at one hook (and a sample of them)."""

    model: str
    hook: str
    tokenization: str
    tokens_seen: int
    tokens_kept: int
    dropped_special: int
    outliers: int
    d_model: int
    seconds: float
    norm: dict[str, float] = field(default_factory=dict)
    norm_histogram: dict[str, list] = field(default_factory=dict)
    mean_vector_norm: float = 0.0
    top_dims: list[dict[str, float]] = field(default_factory=list)
    sample: torch.Tensor | None = None

    @property
    def tokens_per_second(self) -> float:
        return self.tokens_seen / self.seconds if self.seconds else 0.0

    def to_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items() if k != "sample"}
        d["tokens_per_second"] = self.tokens_per_second
        return d


def capture_stats(ws: Workspace, model: str | Artifact = DEFAULT, tokenization: str | Artifact | None = None,
                  cfg: CaptureConfig | None = None, *, dataset: str | Artifact = DEFAULT,
                  progress: ProgressCallback | None = None) -> CaptureResult:
    """Capture ``cfg.tokens`` tokens of activations at ``cfg.hook`` and summarise them.

    ``tokenization`` defaults to the newest tokenization of ``dataset`` made for ``model``.
    """
    cfg = cfg or CaptureConfig()
    if cfg.tokens < 1:
        raise DatasetError(f"tokens must be at least 1 (got {cfg.tokens}).", "ask for a positive number of tokens.")
    lm = load_model(ws, resolve_model(ws, model, progress=progress))
    if tokenization is None:
        ds = resolve_dataset(ws, dataset, progress=progress)
        tok_art = find_tokenization(ws, ds, lm.artifact)
        if tok_art is None:
            raise DatasetError(f"The dataset {ds.name!r} has not been tokenized for {lm.name!r}.",
                               f"tokenize it first (mistudio datasets tokenize {ds.name} --model {lm.name}).")
    else:
        tok_art = ws.get(tokenization, "tokenization")
    check_tokenization_fits(ws, tok_art, lm.artifact, lm.tokenizer)
    tokens = load_tokens(ws, tok_art)
    t0 = time.perf_counter()
    chunks, seen, dropped, outliers = [], 0, 0, 0
    for b in iter_activations(lm, tokens, cfg.hook, batch_size=cfg.batch_size, max_tokens=cfg.tokens,
                              drop_special=cfg.drop_special, outlier_factor=cfg.outlier_factor, progress=progress):
        chunks.append(b.acts.cpu())
        seen, dropped, outliers = seen + b.seen, dropped + b.dropped_special, outliers + b.outliers
    seconds = time.perf_counter() - t0
    acts = torch.cat(chunks) if chunks else torch.zeros(0, lm.info["d_model"])
    norms = acts.norm(dim=-1)
    res = CaptureResult(lm.name, cfg.hook, tok_art.name, seen, int(acts.shape[0]), dropped, outliers,
                        int(acts.shape[1]), seconds, sample=acts)
    if acts.shape[0]:
        q = torch.quantile(norms, torch.tensor([0.05, 0.5, 0.95]))
        res.norm = {"mean": float(norms.mean()), "p05": float(q[0]), "median": float(q[1]), "p95": float(q[2]),
                    "max": float(norms.max())}
        counts, edges = np.histogram(norms.numpy(), bins=30)
        res.norm_histogram = {"edges": edges.tolist(), "counts": counts.tolist()}
        mean = acts.mean(0)
        res.mean_vector_norm = float(mean.norm())
        std = acts.std(0)
        top = torch.argsort(std, descending=True)[:5]
        res.top_dims = [{"dim": int(i), "std": float(std[i]), "mean": float(mean[i])} for i in top]
    return res
