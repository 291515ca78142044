"""Feature extraction: run N tokens through the model (stopped at the SAE's hook) and the SAE, and keep
per feature, in memory that does not grow with N: firing frequency, mean and max activation, a
histogram (log-spaced counting bins, re-binned into 50 linear bins at the end) and quantiles, the top-k
sequences by peak activation with a context window of per-token values, a random reservoir of firing
sequences for quantile-sampled examples, and a sparse sample of activations for co-activation
correlations. At the end: logit lens through the unembedding, nearest features by decoder cosine, and
columnar files (Parquet, schema in ``store``) per SAE and extraction, plus SAELens's ``sparsity.safetensors``.

An extraction is a workspace artifact (kind ``extraction``, child of the SAE) that checkpoints its state
every few batches and resumes where it stopped.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..core.configs import ExtractConfig, to_dict
from ..core.disk import disk_error
from ..core.jobs import JobControl, Status, claim, lifecycle, owner_stamp
from ..core.progress import ProgressCallback, emit
from ..core.workspace import Artifact, Workspace
from ..data.datasets import check_tokenization_fits, load_tokens, tokens_for
from ..data.models import LoadedModel
from ..sae import SAE
from .feature_stats import (
    LOG_BINS,
    LOG_HI,
    LOG_LO,
    _linear_hist,
    _quantile_edges,
    _quantiles,
    decoder_neighbours,
    logit_lens,
)
from .library import FeatureError, _special, feature_acts, load_library_sae, model_for_sae, sae_hook
from .schema import EXAMPLES, FEATURES
from .store import (
    COACT_FILE,
    EXAMPLES_FILE,
    FEATURES_FILE,
    KIND,
    SPARSITY_FILE,
    STATE_FILE,
    shown_vocab,
)


# ---------------------------------------------------------------------------------------------
# Streaming statistics
class Accumulator:
    """Everything an extraction keeps while it streams: sizes depend on d_sae and the settings, never
    on the number of tokens."""

    def __init__(self, d_sae: int, ctx: int, cfg: ExtractConfig):
        self.cfg, self.F = cfg, d_sae
        self.W = min(cfg.window_left + cfg.window_right + 1, ctx)
        self.R = cfg.quantile_groups * cfg.quantile_examples * 4
        K, R, W, F = cfg.top_k, self.R, self.W, d_sae
        self.s: dict[str, torch.Tensor] = {
            "tokens": torch.zeros((), dtype=torch.long),
            "positions": torch.zeros((), dtype=torch.long),
            "batches": torch.zeros((), dtype=torch.long),
            "count": torch.zeros(F, dtype=torch.long),
            "sum": torch.zeros(F, dtype=torch.float64),
            "max": torch.zeros(F),
            "hist": torch.zeros(F, LOG_BINS, dtype=torch.int32),
            "top_val": torch.full((K, F), -1.0),
            "top_seq": torch.zeros((K, F), dtype=torch.int32),
            "top_start": torch.zeros((K, F), dtype=torch.int16),
            "top_pos": torch.zeros((K, F), dtype=torch.int16),
            "top_win": torch.zeros((K, F, W), dtype=torch.float16),
            "res_key": torch.full((R, F), -1.0),
            "res_val": torch.zeros((R, F)),
            "res_seq": torch.zeros((R, F), dtype=torch.int32),
            "res_start": torch.zeros((R, F), dtype=torch.int16),
            "res_pos": torch.zeros((R, F), dtype=torch.int16),
            "res_win": torch.zeros((R, F, W), dtype=torch.float16),
            "co_row": torch.zeros(0, dtype=torch.int32),
            "co_col": torch.zeros(0, dtype=torch.int32),
            "co_val": torch.zeros(0, dtype=torch.float16),
        }

    def _admit(
        self,
        prefix: str,
        key_new: torch.Tensor,
        cols: torch.Tensor,
        A: torch.Tensor,
        smax: torch.Tensor,
        spos: torch.Tensor,
        seq0: int,
    ) -> None:
        """Keep the best (by key) of the stored entries and the batch's candidates for features ``cols``:
        the candidates that make it overwrite the entries that drop out (the stores are unordered), and
        only they get their window of values cut out of A."""
        s, T = self.s, A.shape[1]
        kname = "top_val" if prefix == "top" else "res_key"
        store = s[kname]
        n, B, C = store.shape[0], key_new.shape[0], cols.numel()
        sel = torch.cat([store[:, cols], key_new]).topk(n, dim=0, sorted=False).indices
        chosen = torch.zeros(n + B, C, dtype=torch.bool).scatter_(0, sel, True)
        m = min(n, B)
        free = torch.argsort(chosen[:n].to(torch.int8), dim=0, stable=True)[
            :m
        ]  # slots that drop out come first
        src = torch.argsort((~chosen[n:]).to(torch.int8), dim=0, stable=True)[
            :m
        ]  # admitted candidates come first
        valid = torch.arange(m).view(-1, 1) < chosen[n:].sum(0).view(1, -1)
        if not valid.any():
            return
        slot, b = free[valid], src[valid]
        cpos = torch.arange(C).view(1, -1).expand(m, C)[valid]
        f = cols[cpos]
        pos = spos[b, f]
        start = (pos - self.cfg.window_left).clamp(0, T - self.W)
        store[slot, f] = key_new[b, cpos]
        if prefix == "res":
            s["res_val"][slot, f] = smax[b, f]
        s[f"{prefix}_seq"][slot, f] = (seq0 + b).int()
        s[f"{prefix}_pos"][slot, f] = pos.to(torch.int16)
        s[f"{prefix}_start"][slot, f] = start.to(torch.int16)
        s[f"{prefix}_win"][slot, f] = A[
            b.view(-1, 1), start.view(-1, 1) + torch.arange(self.W), f.view(-1, 1)
        ].half()

    def sorted_top(self) -> dict[str, torch.Tensor]:
        """The top-k stores ordered by value, high to low, per feature."""
        order = self.s["top_val"].argsort(dim=0, descending=True, stable=True)
        out = {}
        for name in ("val", "seq", "start", "pos", "win"):
            t = self.s[f"top_{name}"]
            out[name] = t.gather(0, order if t.dim() == 2 else order.unsqueeze(-1).expand_as(t))
        return out

    def update(self, A: torch.Tensor, seq0: int, valid_tokens: int) -> None:
        """Fold in feature activations A [B, T, F] of sequences seq0.. (special positions already zero)."""
        cfg, s = self.cfg, self.s
        B, T, F = A.shape
        flat = A.reshape(-1, F)
        r, c = (flat > cfg.threshold).nonzero(as_tuple=True)
        v = flat[r, c]
        s["count"] += torch.bincount(c, minlength=F)
        s["sum"].index_add_(0, c, v.double())
        b = (
            ((v.clamp_min(1e-30).log10() - LOG_LO) * (LOG_BINS / (LOG_HI - LOG_LO)))
            .long()
            .clamp_(0, LOG_BINS - 1)
        )
        s["hist"].view(-1).index_put_(
            (c * LOG_BINS + b,), torch.ones(len(b), dtype=torch.int32), accumulate=True
        )
        room = cfg.coactivation_tokens - int(s["positions"])
        if room > 0:  # the first positions' sparse activations, for correlations
            take = r < room
            s["co_row"] = torch.cat([s["co_row"], (r[take] + int(s["positions"])).int()])
            s["co_col"] = torch.cat([s["co_col"], c[take].int()])
            s["co_val"] = torch.cat([s["co_val"], v[take].half()])
        # per sequence: the peak of each feature; only (sequence, feature) pairs that can enter the top-k or
        # the reservoir get their window of values cut out and merged
        smax, spos = A.max(1)  # [B, F]
        s["max"] = torch.maximum(s["max"], smax.max(0).values)
        fired = smax > cfg.threshold
        g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + int(s["batches"]))
        rkey = torch.where(fired, torch.rand(B, F, generator=g), -1.0)
        tkey = torch.where(fired, smax, -1.0)
        top_cols = (tkey > s["top_val"].min(0).values).any(0).nonzero().squeeze(1)
        res_cols = (rkey > s["res_key"].min(0).values).any(0).nonzero().squeeze(1)
        if top_cols.numel():
            self._admit("top", tkey[:, top_cols], top_cols, A, smax, spos, seq0)
        if res_cols.numel():
            self._admit("res", rkey[:, res_cols], res_cols, A, smax, spos, seq0)
        s["tokens"] += valid_tokens
        s["positions"] += B * T
        s["batches"] += 1


# ---------------------------------------------------------------------------------------------
# The job
def _checkpoint(folder: Path, acc: Accumulator) -> None:
    tmp = folder / (STATE_FILE + ".tmp")
    try:
        torch.save(acc.s, tmp)
        os.replace(tmp, folder / STATE_FILE)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise disk_error(exc, "the extraction checkpoint", writing="checkpoint") from exc


def extract(
    ws: Workspace,
    sae: str | Artifact | None,
    cfg: ExtractConfig | None = None,
    *,
    resume: str | None = None,
    progress: ProgressCallback | None = None,
    control: JobControl | None = None,
    stop_after: int | None = None,
) -> Artifact:
    """Extract feature statistics and examples for an SAE of the library (or resume extraction
    ``resume``). ``stop_after`` ends the session after that many batches with a checkpoint, as an
    interruption would. Returns the extraction artifact."""
    control = control or JobControl()
    if resume:
        ext = ws.get(resume, KIND)
        claim(ws, ext, "extraction")
        if not (ext.folder / STATE_FILE).is_file() and ext.meta.get("status") != Status.DONE:
            raise FeatureError(
                f"Extraction {ext.name!r} has no checkpoint to resume from.", "start a new extraction."
            )
        if ext.meta.get("status") == Status.DONE:
            return ext
        cfg = ExtractConfig(**ext.meta["config"])
        sae = ext.parent_id
    if sae is None:
        raise FeatureError("Name the SAE to extract features of.", "pass an SAE id or name (or resume=...).")
    cfg = cfg or ExtractConfig()
    if not isinstance(cfg.tokens, int) or cfg.tokens < 1:
        raise FeatureError(
            f"tokens must be a positive number (got {cfg.tokens!r}).", "ask for e.g. 65536 tokens."
        )
    sae_art, model_sae, _ = load_library_sae(ws, sae)
    lm = model_for_sae(ws, sae_art, model_sae, cfg.model, progress)
    hook = sae_hook(sae_art, model_sae)
    tok = tokens_for(ws, cfg.dataset, lm.artifact, cfg.context_size, progress=progress)
    check_tokenization_fits(ws, tok, lm.artifact, lm.tokenizer)
    tokens = load_tokens(ws, tok)
    ctx = tokens.shape[1]
    n_seq = min(len(tokens), -(-cfg.tokens // ctx))
    if n_seq == 0:
        raise FeatureError("The dataset has no token sequences.", "use a dataset with text in it.")
    if not resume:
        ext = _new_extraction(ws, cfg, sae_art, lm, hook, tok, n_seq, ctx)
    acc = Accumulator(model_sae.spec.d_sae, ctx, cfg)
    if resume and (ext.folder / STATE_FILE).is_file():
        acc.s = torch.load(ext.folder / STATE_FILE, weights_only=True)
    special = _special(lm)
    done_here = 0
    running: dict[str, Any] = {"resumed": time.time()} if resume else {}
    with lifecycle(ws, [ext], **running):
        for start in range(int(acc.s["batches"]) * cfg.batch_size, n_seq, cfg.batch_size):
            control.check()
            ids = torch.tensor(tokens[start : min(start + cfg.batch_size, n_seq)], dtype=torch.long)
            A = feature_acts(lm, model_sae, hook, ids).cpu()
            acc.update(A, start, int((~torch.isin(ids, special)).sum()))
            done_here += 1
            emit(progress, "extract", min(start + cfg.batch_size, n_seq) * ctx, n_seq * ctx, unit="tok")
            last = start + cfg.batch_size >= n_seq
            stop = (stop_after is not None and done_here >= stop_after) or control.cancelled
            if not last and (
                (cfg.checkpoint_every and int(acc.s["batches"]) % cfg.checkpoint_every == 0) or stop
            ):
                _checkpoint(ext.folder, acc)
                if stop:
                    control.check()  # cancelled: interrupted by the lifecycle
                    return ws.update_meta(ext.id, status=Status.INTERRUPTED, batches=int(acc.s["batches"]))
        emit(progress, "extract", n_seq * ctx, n_seq * ctx, unit="tok", finished=True)
        summary = finalise(ext.folder, acc, model_sae, lm, tokens, cfg, progress)
        (ext.folder / STATE_FILE).unlink(missing_ok=True)
        return ws.update_meta(ext.id, status=Status.DONE, finished=time.time(), summary=summary)


def _new_extraction(
    ws: Workspace,
    cfg: ExtractConfig,
    sae: Artifact,
    lm: LoadedModel,
    hook: str,
    tok: Artifact,
    n_seq: int,
    ctx: int,
) -> Artifact:
    """The extraction's artifact folder, registered as running with what it reads."""
    return ws.create_folder(
        KIND,
        cfg.name or ws.unique_name(KIND, f"{sae.name}@{tok.name}"),
        parent=sae.id,
        meta={
            "config": to_dict(cfg),
            "status": Status.RUNNING,
            "owner": owner_stamp(),
            "sae": sae.id,
            "model": lm.artifact.id,
            "hook": hook,
            "tokenization": tok.id,
            "sequences": n_seq,
            "context_size": ctx,
            "started": time.time(),
        },
    )


def _atomic_parquet(table, path: Path, **kw) -> None:
    import pyarrow.parquet as pq

    tmp = path.with_name(path.name + ".tmp")
    try:
        pq.write_table(table, tmp, **kw)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise disk_error(exc, f"the extraction file {path.name}") from exc


def finalise(
    folder: Path,
    acc: Accumulator,
    sae: SAE,
    lm: LoadedModel,
    tokens: np.ndarray,
    cfg: ExtractConfig,
    progress: ProgressCallback | None = None,
) -> dict[str, Any]:
    import pyarrow as pa

    s, F = acc.s, acc.F
    n_tok = max(int(s["tokens"]), 1)
    count, maxv = s["count"], s["max"]
    freq = count.double() / n_tok
    mean = torch.where(count > 0, s["sum"] / count.clamp_min(1), torch.zeros_like(s["sum"])).float()
    hist = _linear_hist(s["hist"], maxv)
    quant = _quantiles(s["hist"], maxv)
    q_edges, q_shares = _quantile_edges(s["hist"], maxv, cfg.quantile_groups)
    W_dec = sae.W_dec.detach().float().cpu()
    logit = logit_lens(W_dec, lm, cfg.logits, progress)
    nb_i, nb_v = decoder_neighbours(W_dec, cfg.neighbours)
    vocab = shown_vocab(lm.tokenizer)

    def lists(t: torch.Tensor, typ):
        return pa.array(t.tolist(), type=pa.list_(typ))

    cols: dict[str, Any] = {
        "index": pa.array(np.arange(F, dtype=np.int32)),
        "frequency": pa.array(freq.float().numpy()),
        "count": pa.array(count.numpy()),
        "mean": pa.array(mean.numpy()),
        "max": pa.array(maxv.numpy()),
        "q50": pa.array(quant[:, 0].numpy()),
        "q90": pa.array(quant[:, 1].numpy()),
        "q99": pa.array(quant[:, 2].numpy()),
        "hist": lists(hist.int(), pa.int32()),
        "neighbours": lists(nb_i.int(), pa.int32()),
        "neighbour_cos": lists(nb_v, pa.float32()),
        "quantile_edges": lists(q_edges, pa.float32()),
        "quantile_shares": lists(q_shares, pa.float32()),
    }
    if logit is not None:
        cols.update(
            {
                "top_logit_ids": lists(logit.top_ids.int(), pa.int32()),
                "top_logit_values": lists(logit.top_values, pa.float32()),
                "top_logit_tokens": pa.array([[vocab[i] for i in row] for row in logit.top_ids.tolist()]),
                "bottom_logit_ids": lists(logit.bottom_ids.int(), pa.int32()),
                "bottom_logit_values": lists(logit.bottom_values, pa.float32()),
                "bottom_logit_tokens": pa.array(
                    [[vocab[i] for i in row] for row in logit.bottom_ids.tolist()]
                ),
                "logit_hist": lists(logit.hist.int(), pa.int32()),
                "logit_min": pa.array(logit.low.numpy()),
                "logit_max": pa.array(logit.high.numpy()),
            }
        )
    _atomic_parquet(FEATURES.table(cols), folder / FEATURES_FILE)
    _write_examples(folder, acc, tokens, cfg, maxv, q_edges.numpy())
    _write_side_files(folder, s, cfg, freq)
    alive = int((count > 0).sum())
    return {
        "tokens": int(s["tokens"]),
        "alive": alive,
        "dead": F - alive,
        "d_sae": F,
        "mean_l0": float(count.sum()) / n_tok,
        "median_frequency": float(freq[count > 0].median()) if alive else 0.0,
    }


def _write_side_files(
    folder: Path, s: dict[str, torch.Tensor], cfg: ExtractConfig, freq: torch.Tensor
) -> None:
    """The co-activation sample (npz) and SAELens's ``sparsity.safetensors`` (log10 feature density)."""
    from ..sae.io import write_safetensors

    np.savez_compressed(
        folder / (COACT_FILE + ".tmp.npz"),
        row=s["co_row"].numpy(),
        col=s["co_col"].numpy(),
        val=s["co_val"].numpy(),
        tokens=min(cfg.coactivation_tokens, int(s["positions"])),
        d_sae=len(freq),
    )
    os.replace(folder / (COACT_FILE + ".tmp.npz"), folder / COACT_FILE)
    write_safetensors({"sparsity": torch.log10(freq.float() + 1e-10)}, folder / SPARSITY_FILE)


def _example_block(feature, kind, group, rank, val, seq, start, pos, win) -> dict[str, np.ndarray]:
    """Example rows of one kind ("top" or "quantile") as columns."""
    return {
        "feature": feature.astype(np.int32),
        "kind": np.full(len(feature), kind, dtype=object),
        "group": group.astype(np.int16),
        "rank": rank.astype(np.int16),
        "value": val.astype(np.float32),
        "sequence": seq.astype(np.int32),
        "start": start.astype(np.int16),
        "peak": (pos - start).astype(np.int16),
        "values": win.astype(np.float32),
    }


def _write_examples(
    folder: Path,
    acc: Accumulator,
    tokens: np.ndarray,
    cfg: ExtractConfig,
    maxv: torch.Tensor,
    edges: np.ndarray,
) -> None:
    """The examples file: each feature's top examples by peak activation, then its quantile-sampled
    ones, with their windows' tokens and per-token values."""
    top = acc.sorted_top()
    top_val = top["val"].T.numpy()  # [F, K], sorted high to low
    valid = top_val > cfg.threshold
    f_idx, k_idx = np.nonzero(valid)
    parts = [
        _example_block(
            f_idx,
            "top",
            np.zeros_like(f_idx),
            k_idx,
            top_val[f_idx, k_idx],
            top["seq"].T.numpy()[f_idx, k_idx],
            top["start"].T.numpy()[f_idx, k_idx],
            top["pos"].T.numpy()[f_idx, k_idx],
            top["win"].permute(1, 0, 2).numpy()[f_idx, k_idx],
        )
    ]
    quantile = _quantile_examples(acc.s, top, valid, maxv.numpy(), edges, cfg)
    if quantile is not None:
        parts.append(quantile)
    _atomic_parquet(_examples_table(parts, tokens, acc.W), folder / EXAMPLES_FILE, row_group_size=8192)


def _quantile_examples(
    s: dict[str, torch.Tensor],
    top: dict[str, torch.Tensor],
    valid: np.ndarray,
    mx: np.ndarray,
    edges: np.ndarray,
    cfg: ExtractConfig,
) -> dict[str, np.ndarray] | None:
    """Quantile-sampled examples: up to ``cfg.quantile_examples`` per interval holding an equal share of
    the feature's firings (``edges``), one per sequence, drawn from the reservoir and the top examples."""
    rng = np.random.default_rng(cfg.seed)
    G, n = cfg.quantile_groups, cfg.quantile_examples
    top_val = top["val"].T.numpy()
    pool_val = np.concatenate([s["res_val"].T.numpy(), top_val], 1)  # [F, R + K]
    pool_ok = np.concatenate([s["res_key"].T.numpy() >= 0, valid], 1)
    pool_seq = np.concatenate([s["res_seq"].T.numpy(), top["seq"].T.numpy()], 1)
    rows: dict[str, list] = {k: [] for k in ("f", "g", "r", "j")}
    for f in np.nonzero(mx > cfg.threshold)[0]:
        ok = pool_ok[f]
        _, first = np.unique(np.where(ok, pool_seq[f], -1), return_index=True)  # one example per sequence
        cand = np.array([j for j in first if ok[j]], dtype=np.int64)
        if not len(cand):
            continue
        grp = np.clip(np.searchsorted(edges[f, 1:-1], pool_val[f, cand], side="right"), 0, G - 1)
        for g in range(G):
            js = cand[grp == g]
            if len(js) > n:
                js = rng.choice(js, n, replace=False)
            js = js[np.argsort(-pool_val[f, js])]
            rows["f"] += [f] * len(js)
            rows["g"] += [g] * len(js)
            rows["r"] += list(range(len(js)))
            rows["j"] += list(js)
    if not rows["f"]:
        return None
    f_q, j_q = np.array(rows["f"]), np.array(rows["j"])

    def pick(res: torch.Tensor, top: torch.Tensor) -> np.ndarray:
        both = np.concatenate([res.transpose(0, 1).numpy(), top.transpose(0, 1).numpy()], 1)
        return both[f_q, j_q]

    return _example_block(
        f_q,
        "quantile",
        np.array(rows["g"]),
        np.array(rows["r"]),
        pool_val[f_q, j_q],
        pick(s["res_seq"], top["seq"]),
        pick(s["res_start"], top["start"]),
        pick(s["res_pos"], top["pos"]),
        pick(s["res_win"], top["win"]),
    )


def _examples_table(parts: list[dict[str, np.ndarray]], tokens: np.ndarray, W: int):
    """The example rows as one table ordered by feature, kind, group and rank, with the window tokens."""
    import pyarrow as pa

    cols = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    order = np.lexsort((cols["rank"], cols["group"], cols["kind"] == "quantile", cols["feature"]))
    cols = {k: v[order] for k, v in cols.items()}
    tok = tokens[cols["sequence"][:, None], cols["start"][:, None].astype(np.int64) + np.arange(W)[None, :]]
    return EXAMPLES.table(
        {
            "feature": cols["feature"],
            "kind": pa.array(cols["kind"].astype(str)),
            "group": cols["group"],
            "rank": cols["rank"],
            "value": cols["value"],
            "sequence": cols["sequence"],
            "start": cols["start"],
            "peak": cols["peak"],
            "tokens": pa.FixedSizeListArray.from_arrays(pa.array(tok.reshape(-1).astype(np.int32)), W),
            "values": pa.FixedSizeListArray.from_arrays(pa.array(cols["values"].reshape(-1)), W),
        },
        width=W,
    )
