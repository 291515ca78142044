"""Activations: run packed token sequences through a model up to a hook and collect the values,
dropping special-token positions (BOS and separators are attention sinks with huge norms)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np
import torch

from ..core import distributed as dist
from ..core.configs import DEFAULT, CaptureConfig
from ..core.errors import DatasetError
from ..core.progress import ProgressCallback, emit
from ..core.workspace import Artifact, Workspace
from .datasets import check_tokenization_fits, find_tokenization, load_tokens, resolve_dataset
from .hooks import capture, parse_hook
from .models import LoadedModel, load_model, resolve_model


@dataclass
class ActivationBatch:
    acts: torch.Tensor  # [kept, d_model]
    token_ids: torch.Tensor  # [kept]
    positions: torch.Tensor  # [kept] flat index into the [batch, seq] block
    seen: int  # positions run through the model
    dropped_special: int
    outliers: int


def _capture_batch(
    lm: LoadedModel,
    ids: torch.Tensor,
    hooks: list[str],
    special: torch.Tensor,
    drop_special: bool,
    outlier_factor: float,
) -> tuple[dict[str, torch.Tensor], torch.Tensor, int, int]:
    """One forward (stopped after the last hook): ({hook: kept acts [kept, d]}, kept flat positions,
    special positions dropped, outliers dropped). The same positions are kept for every hook; outliers
    are judged on the first hook."""
    with torch.inference_mode(), capture(lm.model, hooks) as store:
        lm.model(input_ids=ids.to(lm.device), use_cache=False)
    flat_ids = ids.reshape(-1)
    keep = ~torch.isin(flat_ids, special) if drop_special else torch.ones_like(flat_ids, dtype=torch.bool)
    dropped = int((~keep).sum())
    flat = {h: store[h].reshape(-1, store[h].shape[-1]).float().cpu() for h in hooks}
    outliers = 0
    if outlier_factor and keep.any():
        # judged against the median norm of the sequence's kept positions, so that a position's fate does not
        # depend on which sequences share its batch (caches and data-parallel shards agree with a plain
        # harvest)
        norms = flat[hooks[0]].norm(dim=-1).reshape(ids.shape)
        med = torch.where(keep.reshape(ids.shape), norms, torch.nan).nanmedian(dim=1, keepdim=True).values
        big = keep & (norms > outlier_factor * med).reshape(-1)
        outliers = int(big.sum())
        keep &= ~big
    idx = keep.nonzero().squeeze(1)
    return {h: a[idx] for h, a in flat.items()}, idx, dropped, outliers


def _special_ids(lm: LoadedModel) -> torch.Tensor:
    return torch.tensor(lm.special_ids(), dtype=torch.long)


def iter_activations(
    lm: LoadedModel,
    tokens: np.ndarray,
    hook: str,
    *,
    batch_size: int = 16,
    max_tokens: int | None = None,
    drop_special: bool = True,
    outlier_factor: float = 10.0,
    progress: ProgressCallback | None = None,
) -> Iterator[ActivationBatch]:
    """Yield activations at ``hook`` for consecutive batches of sequences (forward stops at the hook).

    Special-token positions are dropped when ``drop_special``; positions whose norm exceeds
    ``outlier_factor`` x their sequence's median are counted as outliers and dropped too (0 turns it off).
    """
    parse_hook(lm.model, hook)
    if tokens.ndim != 2 or tokens.shape[0] == 0:
        raise DatasetError(
            "There are no token sequences to run.", "tokenize a dataset with at least one sequence."
        )
    ctx = tokens.shape[1]
    n_seq = tokens.shape[0] if max_tokens is None else min(tokens.shape[0], -(-max_tokens // ctx))
    special = _special_ids(lm)
    done = 0
    for start in range(0, n_seq, batch_size):
        ids = torch.tensor(tokens[start : min(start + batch_size, n_seq)], dtype=torch.long)
        acts, idx, dropped, outliers = _capture_batch(lm, ids, [hook], special, drop_special, outlier_factor)
        done += ids.numel()
        emit(progress, "capture", done, n_seq * ctx, unit="tok")
        yield ActivationBatch(acts[hook], ids.reshape(-1)[idx], idx, ids.numel(), dropped, outliers)
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

    def describe(self) -> str:
        """What the capture measured, in words (``mistudio capture`` and the demo's capture step)."""
        n = self.norm
        return (
            f"captured {self.tokens_seen} tokens at {self.hook} of {self.model} from {self.tokenization} "
            f"in {self.seconds:.1f}s ({self.tokens_per_second:.0f} tokens/s)\n"
            f"  kept {self.tokens_kept} positions; dropped {self.dropped_special} special-token positions "
            f"and {self.outliers} outliers\n"
            f"  d_model {self.d_model}; norm mean {n.get('mean', 0):.1f}, median {n.get('median', 0):.1f}, "
            f"p95 {n.get('p95', 0):.1f}, max {n.get('max', 0):.1f}; norm of the mean vector "
            f"{self.mean_vector_norm:.1f}\n"
            f"  widest dimensions: " + ", ".join(f"{d['dim']} (std {d['std']:.1f})" for d in self.top_dims)
        )

    def to_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items() if k != "sample"}
        d["tokens_per_second"] = self.tokens_per_second
        return d


def capture_stats(
    ws: Workspace,
    model: str | Artifact = DEFAULT,
    tokenization: str | Artifact | None = None,
    cfg: CaptureConfig | None = None,
    *,
    dataset: str | Artifact = DEFAULT,
    progress: ProgressCallback | None = None,
) -> CaptureResult:
    """Capture ``cfg.tokens`` tokens of activations at ``cfg.hook`` and summarise them.

    ``tokenization`` defaults to the newest tokenization of ``dataset`` made for ``model``.
    """
    cfg = cfg or CaptureConfig()
    if cfg.tokens < 1:
        raise DatasetError(
            f"tokens must be at least 1 (got {cfg.tokens}).", "ask for a positive number of tokens."
        )
    lm = load_model(ws, resolve_model(ws, model, progress=progress))
    if tokenization is None:
        ds = resolve_dataset(ws, dataset, progress=progress)
        tok_art = find_tokenization(ws, ds, lm.artifact)
        if tok_art is None:
            raise DatasetError(
                f"The dataset {ds.name!r} has not been tokenized for {lm.name!r}.",
                f"tokenize it first (mistudio datasets tokenize {ds.name} --model {lm.name}).",
            )
    else:
        tok_art = ws.get(tokenization, "tokenization")
    check_tokenization_fits(ws, tok_art, lm.artifact, lm.tokenizer)
    tokens = load_tokens(ws, tok_art)
    t0 = time.perf_counter()
    chunks, seen, dropped, outliers = [], 0, 0, 0
    for b in iter_activations(
        lm,
        tokens,
        cfg.hook,
        batch_size=cfg.batch_size,
        max_tokens=cfg.tokens,
        drop_special=cfg.drop_special,
        outlier_factor=cfg.outlier_factor,
        progress=progress,
    ):
        chunks.append(b.acts.cpu())
        seen, dropped, outliers = seen + b.seen, dropped + b.dropped_special, outliers + b.outliers
    seconds = time.perf_counter() - t0
    acts = torch.cat(chunks) if chunks else torch.zeros(0, lm.info["d_model"])
    norms = acts.norm(dim=-1)
    res = CaptureResult(
        lm.name,
        cfg.hook,
        tok_art.name,
        seen,
        int(acts.shape[0]),
        dropped,
        outliers,
        int(acts.shape[1]),
        seconds,
        sample=acts,
    )
    if acts.shape[0]:
        q = torch.quantile(norms, torch.tensor([0.05, 0.5, 0.95]))
        res.norm = {
            "mean": float(norms.mean()),
            "p05": float(q[0]),
            "median": float(q[1]),
            "p95": float(q[2]),
            "max": float(norms.max()),
        }
        counts, edges = np.histogram(norms.numpy(), bins=30)
        res.norm_histogram = {"edges": edges.tolist(), "counts": counts.tolist()}
        mean = acts.mean(0)
        res.mean_vector_norm = float(mean.norm())
        std = acts.std(0)
        top = torch.argsort(std, descending=True)[:5]
        res.top_dims = [{"dim": int(i), "std": float(std[i]), "mean": float(mean[i])} for i in top]
    return res


# ---------------------------------------------------------------------------------------------
# Training stream
def harvest(
    lm: LoadedModel,
    tokens: np.ndarray,
    hooks: list[str],
    *,
    batch_size: int = 16,
    drop_special: bool = True,
    outlier_factor: float = 10.0,
    progress: ProgressCallback | None = None,
    stage: str = "harvest",
    total: int | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, int]]:
    """Activations at every hook for ``tokens`` [n, ctx] (one forward per batch, stopped after the last
    hook), with the same positions kept for every hook. Returns ({hook: [kept, d]}, counts)."""
    for h in hooks:
        parse_hook(lm.model, h)
    special = _special_ids(lm)
    out: dict[str, list[torch.Tensor]] = {h: [] for h in hooks}
    counts = {"seen": 0, "dropped_special": 0, "outliers": 0}
    for start in range(0, len(tokens), batch_size):
        ids = torch.tensor(tokens[start : start + batch_size], dtype=torch.long)
        acts, _, dropped, outliers = _capture_batch(lm, ids, hooks, special, drop_special, outlier_factor)
        for h in hooks:
            out[h].append(acts[h])
        counts["seen"] += ids.numel()
        counts["dropped_special"] += dropped
        counts["outliers"] += outliers
        emit(progress, stage, counts["seen"], total, unit="tok")
    emit(progress, stage, counts["seen"], total or counts["seen"], unit="tok", finished=True)
    return {h: torch.cat(v) if v else torch.zeros(0) for h, v in out.items()}, counts


def harvest_shared(
    lm: LoadedModel,
    tokens: np.ndarray,
    hooks: list[str],
    *,
    batch_size: int = 16,
    progress: ProgressCallback | None = None,
    stage: str = "harvest",
) -> tuple[dict[str, torch.Tensor], dict[str, int]]:
    """:func:`harvest`, with the sequences shared out between data-parallel processes (each runs the model
    on its contiguous share) and the results gathered back in order: every process gets the same
    activations a single process would have harvested."""
    if not dist.active():
        return harvest(
            lm,
            tokens,
            hooks,
            batch_size=batch_size,
            progress=progress,
            stage=stage,
            total=len(tokens) * tokens.shape[1],
        )
    mine = tokens[dist.shard(len(tokens))]
    acts, counts = harvest(
        lm,
        mine,
        hooks,
        batch_size=batch_size,
        progress=progress,
        stage=stage,
        total=len(mine) * tokens.shape[1],
    )
    acts = {h: dist.gather_rows(a) for h, a in acts.items()}
    summed = dist.all_sum(torch.tensor([counts[k] for k in sorted(counts)], dtype=torch.long))
    return acts, dict(zip(sorted(counts), (int(v) for v in summed)))


class ActivationStream:
    """Shuffled training batches, reproducible from (seed, position) so that a resumed run sees
    exactly the batches the uninterrupted run would have seen.

    The training sequences are visited in a seeded random order, ``chunk_sequences`` at a time; each
    chunk is harvested, its activations shuffled together (mixing tokens across many sequences) and
    cut into batches of ``batch_tokens`` (a chunk's remainder smaller than a batch is dropped).
    The position is (epoch, chunk, batch within chunk).

    Under data parallelism every process holds the whole chunk (harvested in shares and gathered) and
    takes its contiguous share of each batch, so the processes together see exactly the batches a
    single process would."""

    def __init__(
        self,
        lm: LoadedModel,
        tokens: np.ndarray,
        hooks: list[str],
        *,
        batch_tokens: int,
        chunk_sequences: int,
        seed: int,
        harvest_batch_size: int = 16,
        progress: ProgressCallback | None = None,
        cache=None,
    ):
        if len(tokens) == 0:
            raise DatasetError(
                "There are no training sequences.",
                "use a dataset with more text, or fewer held-out sequences.",
            )
        self.lm, self.tokens, self.hooks = lm, tokens, hooks
        self.batch_tokens, self.chunk_sequences, self.seed = (
            batch_tokens,
            min(chunk_sequences, len(tokens)),
            seed,
        )
        self.harvest_batch_size, self.progress, self.cache = harvest_batch_size, progress, cache
        self.position = (0, 0, 0)
        self.counts = {"seen": 0, "dropped_special": 0, "outliers": 0}

    def _order(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.tokens))

    def chunk(self, epoch: int, c: int) -> dict[str, torch.Tensor]:
        order = self._order(epoch)
        n_chunks = -(-len(order) // self.chunk_sequences)
        seqs = np.sort(order[c * self.chunk_sequences : (c + 1) * self.chunk_sequences])
        if self.cache is not None:  # an ActivationCache over a token array whose first rows are self.tokens
            acts, counts = self.cache.gather(seqs, self.lm, self.progress)
        else:
            acts, counts = harvest_shared(
                self.lm,
                self.tokens[seqs],
                self.hooks,
                batch_size=self.harvest_batch_size,
                progress=self.progress,
                stage=f"harvest chunk {c + 1}/{n_chunks}",
            )
        for k, v in counts.items():
            self.counts[k] += v
        g = torch.Generator().manual_seed(int(np.random.default_rng([self.seed, epoch, c]).integers(2**62)))
        perm = torch.randperm(acts[self.hooks[0]].shape[0], generator=g)
        return {h: a[perm] for h, a in acts.items()}

    def n_chunks(self) -> int:
        return -(-len(self.tokens) // self.chunk_sequences)

    def batches(self, position: tuple[int, int, int] = (0, 0, 0)) -> Iterator[dict[str, torch.Tensor]]:
        """Endless batches from ``position`` on; ``self.position`` is the position of the *next* batch
        (``position`` itself until the first batch, so a checkpoint during the first harvest is right)."""
        epoch, c, b = position
        self.position = (epoch, c, b)
        while True:
            data = self.chunk(epoch, c)
            n = data[self.hooks[0]].shape[0] // self.batch_tokens
            if n == 0 and c == 0 and b == 0:
                raise DatasetError(
                    f"A chunk of {self.chunk_sequences} sequences gives fewer than "
                    f"batch_tokens={self.batch_tokens} activations.",
                    "raise chunk_sequences or lower batch_tokens.",
                )
            share = dist.shard(self.batch_tokens)
            for i in range(b, n):
                nxt = (
                    (epoch, c, i + 1)
                    if i + 1 < n
                    else ((epoch, c + 1, 0) if c + 1 < self.n_chunks() else (epoch + 1, 0, 0))
                )
                self.position = nxt
                yield {
                    h: a[i * self.batch_tokens : (i + 1) * self.batch_tokens][share] for h, a in data.items()
                }
            epoch, c, b = (epoch, c + 1, 0) if c + 1 < self.n_chunks() else (epoch + 1, 0, 0)
