"""Feature extraction: run N tokens through the model (stopped at the SAE's hook) and the SAE, and keep
per feature, in memory that does not grow with N: firing frequency, mean and max activation, a
histogram (log-spaced counting bins, re-binned into 50 linear bins at the end) and quantiles, the top-k
sequences by peak activation with a context window of per-token values, a random reservoir of firing
sequences for quantile-sampled examples, and a sparse sample of activations for co-activation
correlations. At the end: logit lens through the unembedding, nearest features by decoder cosine, and
columnar files (Parquet) per SAE and extraction, plus SAELens's ``sparsity.safetensors``.

An extraction is a workspace artifact (kind ``extraction``, child of the SAE) that checkpoints its state
every few batches and resumes where it stopped.
"""
from __future__ import annotations

import os
import time
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .configs import DEFAULT, ExtractConfig, TokenizeConfig, to_dict
from .datasets import check_tokenization_fits, ensure_tokenization, load_tokens, resolve_dataset
from .errors import MistudioError
from .hooks import capture, parse_hook
from .jobs import JobCancelled, JobControl, claim, owner_stamp
from .models import LoadedModel, load_model, resolve_model
from .progress import ProgressCallback, emit
from .sae import SAE
from .workspace import Artifact, Workspace, disk_error

KIND = "extraction"
LOG_LO, LOG_HI, LOG_BINS = -3.0, 3.0, 1536    # counting bins: 10^-3 .. 10^3, 0.9% wide each
HIST_BINS, LOGIT_HIST_BINS = 50, 30
FEATURES_FILE, EXAMPLES_FILE, COACT_FILE, SPARSITY_FILE, STATE_FILE = (
    "features.parquet", "examples.parquet", "coactivation.npz", "sparsity.safetensors", "state.pt")


class FeatureError(MistudioError):
    pass


# ---------------------------------------------------------------------------------------------
# What to run
def load_library_sae(ws: Workspace, ref: str | Artifact, device: str = "cpu") -> tuple[Artifact, SAE, dict[str, Any]]:
    from .sae.io import load_sae

    art = ws.get(ref, "sae")
    sae, cfg = load_sae(art.path, device)
    sae.eval()
    return art, sae, cfg


def model_for_sae(ws: Workspace, sae_art: Artifact, sae: SAE, model: str | None = None,
                  progress: ProgressCallback | None = None) -> LoadedModel:
    """The model an SAE reads: ``model`` when given, else the one it was trained on, else the default;
    checked against the SAE's hook and width."""
    ref = model or sae_art.meta.get("model") or DEFAULT
    if ref != DEFAULT and ws.find(ref, "model") is None:
        ref = DEFAULT if not model else ref
    lm = load_model(ws, resolve_model(ws, ref, progress=progress))
    hook = sae.spec.metadata.get("hook_name") or sae_art.meta.get("hook")
    if not hook:
        raise FeatureError(f"The SAE {sae_art.name!r} does not say which hook it reads.", "add metadata.hook_name to its cfg.json.")
    parse_hook(lm.model, hook)
    d_model = int(lm.info["d_model"])
    if sae.spec.d_in != d_model:
        raise FeatureError(f"The SAE {sae_art.name!r} reads {sae.spec.d_in}-wide activations but {lm.name!r} has d_model {d_model}.",
                           "pick the model the SAE was trained on (model=...).")
    return lm


def sae_hook(sae_art: Artifact, sae: SAE) -> str:
    return sae.spec.metadata.get("hook_name") or sae_art.meta["hook"]


def _special(lm: LoadedModel) -> torch.Tensor:
    return torch.tensor(sorted(set(lm.tokenizer.all_special_ids)), dtype=torch.long)


@torch.no_grad()
def feature_acts(lm: LoadedModel, sae: SAE, hook: str, ids: torch.Tensor) -> torch.Tensor:
    """SAE feature activations [batch, seq, d_sae] for token ids [batch, seq]; special-token positions
    (attention sinks the SAE never saw in training) are zero."""
    with torch.inference_mode(), capture(lm.model, hook) as store:
        lm.model(input_ids=ids.to(lm.device), use_cache=False)
    x = store[hook].float().to(sae.W_enc.device)
    acts = sae.encode(x)
    keep = ~torch.isin(ids, _special(lm)).to(acts.device)
    return acts * keep.unsqueeze(-1)


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
            "tokens": torch.zeros((), dtype=torch.long), "positions": torch.zeros((), dtype=torch.long),
            "batches": torch.zeros((), dtype=torch.long),
            "count": torch.zeros(F, dtype=torch.long), "sum": torch.zeros(F, dtype=torch.float64),
            "max": torch.zeros(F), "hist": torch.zeros(F, LOG_BINS, dtype=torch.int32),
            "top_val": torch.full((K, F), -1.0), "top_seq": torch.zeros((K, F), dtype=torch.int32),
            "top_start": torch.zeros((K, F), dtype=torch.int16), "top_pos": torch.zeros((K, F), dtype=torch.int16),
            "top_win": torch.zeros((K, F, W), dtype=torch.float16),
            "res_key": torch.full((R, F), -1.0), "res_val": torch.zeros((R, F)), "res_seq": torch.zeros((R, F), dtype=torch.int32),
            "res_start": torch.zeros((R, F), dtype=torch.int16), "res_pos": torch.zeros((R, F), dtype=torch.int16),
            "res_win": torch.zeros((R, F, W), dtype=torch.float16),
            "co_row": torch.zeros(0, dtype=torch.int32), "co_col": torch.zeros(0, dtype=torch.int32),
            "co_val": torch.zeros(0, dtype=torch.float16),
        }

    def _admit(self, prefix: str, key_new: torch.Tensor, cols: torch.Tensor, A: torch.Tensor, smax: torch.Tensor,
               spos: torch.Tensor, seq0: int) -> None:
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
        free = torch.argsort(chosen[:n].to(torch.int8), dim=0, stable=True)[:m]        # slots that drop out come first
        src = torch.argsort((~chosen[n:]).to(torch.int8), dim=0, stable=True)[:m]     # admitted candidates come first
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
        s[f"{prefix}_win"][slot, f] = A[b.view(-1, 1), start.view(-1, 1) + torch.arange(self.W), f.view(-1, 1)].half()

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
        b = ((v.clamp_min(1e-30).log10() - LOG_LO) * (LOG_BINS / (LOG_HI - LOG_LO))).long().clamp_(0, LOG_BINS - 1)
        s["hist"].view(-1).index_put_((c * LOG_BINS + b,), torch.ones(len(b), dtype=torch.int32), accumulate=True)
        room = cfg.coactivation_tokens - int(s["positions"])
        if room > 0:                                  # the first positions' sparse activations, for correlations
            take = r < room
            s["co_row"] = torch.cat([s["co_row"], (r[take] + int(s["positions"])).int()])
            s["co_col"] = torch.cat([s["co_col"], c[take].int()])
            s["co_val"] = torch.cat([s["co_val"], v[take].half()])
        # per sequence: the peak of each feature; only (sequence, feature) pairs that can enter the top-k or the
        # reservoir get their window of values cut out and merged
        smax, spos = A.max(1)                                          # [B, F]
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


def extract(ws: Workspace, sae: str | Artifact, cfg: ExtractConfig | None = None, *, resume: str | None = None,
            progress: ProgressCallback | None = None, control: JobControl | None = None,
            stop_after: int | None = None) -> Artifact:
    """Extract feature statistics and examples for an SAE of the library (or resume extraction
    ``resume``). ``stop_after`` ends the session after that many batches with a checkpoint, as an
    interruption would. Returns the extraction artifact."""
    control = control or JobControl()
    if resume:
        ext = ws.get(resume, KIND)
        claim(ws, ext, "extraction")
        if not (ext.path / STATE_FILE).is_file() and ext.meta.get("status") != "done":
            raise FeatureError(f"Extraction {ext.name!r} has no checkpoint to resume from.", "start a new extraction.")
        if ext.meta.get("status") == "done":
            return ext
        cfg = ExtractConfig(**ext.meta["config"])
        sae = ext.parent
    cfg = cfg or ExtractConfig()
    if not isinstance(cfg.tokens, int) or cfg.tokens < 1:
        raise FeatureError(f"tokens must be a positive number (got {cfg.tokens!r}).", "ask for e.g. 65536 tokens.")
    sae_art, model_sae, _ = load_library_sae(ws, sae)
    lm = model_for_sae(ws, sae_art, model_sae, cfg.model, progress)
    hook = sae_hook(sae_art, model_sae)
    ds = resolve_dataset(ws, cfg.dataset, progress=progress) if ws.find(cfg.dataset, "tokenization") is None else None
    tok = (ensure_tokenization(ws, ds, lm.artifact, TokenizeConfig(context_size=cfg.context_size), progress=progress)
           if ds is not None else ws.get(cfg.dataset, "tokenization"))
    check_tokenization_fits(ws, tok, lm.artifact, lm.tokenizer)
    tokens = load_tokens(ws, tok)
    ctx = tokens.shape[1]
    n_seq = min(len(tokens), -(-cfg.tokens // ctx))
    if n_seq == 0:
        raise FeatureError("The dataset has no token sequences.", "use a dataset with text in it.")
    if not resume:
        name = cfg.name or ws.unique_name(KIND, f"{sae_art.name}@{tok.name}")
        ext = ws.create_folder(KIND, name, parent=sae_art.id, meta={
            "config": to_dict(cfg), "status": "running", "owner": owner_stamp(), "sae": sae_art.id, "model": lm.artifact.id, "hook": hook,
            "tokenization": tok.id, "sequences": n_seq, "context_size": ctx, "started": time.time()})
    else:
        ws.update_meta(ext.id, status="running", resumed=time.time(), owner=owner_stamp())
    acc = Accumulator(model_sae.spec.d_sae, ctx, cfg)
    if resume and (ext.path / STATE_FILE).is_file():
        acc.s = torch.load(ext.path / STATE_FILE, weights_only=True)
    special = _special(lm)
    done_here = 0
    try:
        for start in range(int(acc.s["batches"]) * cfg.batch_size, n_seq, cfg.batch_size):
            control.check()
            ids = torch.tensor(tokens[start:min(start + cfg.batch_size, n_seq)], dtype=torch.long)
            A = feature_acts(lm, model_sae, hook, ids).cpu()
            acc.update(A, start, int((~torch.isin(ids, special)).sum()))
            done_here += 1
            emit(progress, "extract", min(start + cfg.batch_size, n_seq) * ctx, n_seq * ctx, unit="tok")
            last = start + cfg.batch_size >= n_seq
            if not last and ((cfg.checkpoint_every and int(acc.s["batches"]) % cfg.checkpoint_every == 0)
                             or (stop_after is not None and done_here >= stop_after) or control.cancelled):
                _checkpoint(ext.path, acc)
                if (stop_after is not None and done_here >= stop_after) or control.cancelled:
                    ws.update_meta(ext.id, status="interrupted", batches=int(acc.s["batches"]))
                    if control.cancelled:
                        raise JobCancelled()
                    return ws.get(ext.id)
        emit(progress, "extract", n_seq * ctx, n_seq * ctx, unit="tok", finished=True)
        summary = finalise(ext.path, acc, model_sae, lm, tokens, cfg, progress)
    except JobCancelled:
        ws.update_meta(ext.id, status="interrupted")
        raise
    except BaseException as exc:
        ws.update_meta(ext.id, status="interrupted" if isinstance(exc, KeyboardInterrupt) else "failed", error=repr(exc))
        raise
    (ext.path / STATE_FILE).unlink(missing_ok=True)
    return ws.update_meta(ext.id, status="done", finished=time.time(), summary=summary)


# ---------------------------------------------------------------------------------------------
# Writing the results
@lru_cache(maxsize=4)
def _vocab_strings(tokenizer) -> tuple[str, ...]:
    return tuple(tokenizer.batch_decode([[i] for i in range(len(tokenizer))]))


def vocab_strings(tokenizer) -> tuple[str, ...]:
    return _vocab_strings(tokenizer)


def _unembedding(lm: LoadedModel) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(W_U [vocab, d], the final norm's scale [d] or None)."""
    model = lm.model
    W_U = model.get_output_embeddings().weight.detach().float()
    for path in ("model.norm", "model.language_model.norm", "transformer.ln_f", "gpt_neox.final_layer_norm"):
        mod = model
        try:
            for part in path.split("."):
                mod = getattr(mod, part)
        except AttributeError:
            continue
        w = getattr(mod, "weight", None)
        if w is None:
            return W_U, None
        w = w.detach().float()
        return W_U, (1 + w) if "gemma" in type(model).__name__.lower() else w
    return W_U, None


def _linear_hist(loghist: torch.Tensor, maxv: torch.Tensor) -> torch.Tensor:
    centres = 10 ** (LOG_LO + (torch.arange(LOG_BINS) + 0.5) * (LOG_HI - LOG_LO) / LOG_BINS)
    idx = (centres.view(1, -1) / maxv.clamp_min(1e-12).view(-1, 1) * HIST_BINS).long().clamp(0, HIST_BINS - 1)
    return torch.zeros(loghist.shape[0], HIST_BINS, dtype=torch.long).scatter_add_(1, idx, loghist.long())


def _quantiles(loghist: torch.Tensor, maxv: torch.Tensor, qs=(0.5, 0.9, 0.99)) -> torch.Tensor:
    cdf = loghist.cumsum(1).double()
    total = cdf[:, -1:].clamp_min(1)
    out = []
    for q in qs:
        j = (cdf / total < q).sum(1).clamp(max=LOG_BINS - 1)
        v = 10 ** (LOG_LO + (j.double() + 0.5) * (LOG_HI - LOG_LO) / LOG_BINS)
        out.append(torch.minimum(v.float(), maxv))
    q = torch.stack(out, 1)
    return torch.where(loghist.sum(1, keepdim=True) > 0, q, torch.zeros_like(q))


def _atomic_parquet(table, path: Path, **kw) -> None:
    import pyarrow.parquet as pq

    tmp = path.with_name(path.name + ".tmp")
    try:
        pq.write_table(table, tmp, **kw)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise disk_error(exc, f"the extraction file {path.name}") from exc


def finalise(folder: Path, acc: Accumulator, sae: SAE, lm: LoadedModel, tokens: np.ndarray, cfg: ExtractConfig,
             progress: ProgressCallback | None = None) -> dict[str, Any]:
    import pyarrow as pa

    from .sae.io import write_safetensors

    s, F = acc.s, acc.F
    n_tok = max(int(s["tokens"]), 1)
    count, maxv = s["count"], s["max"]
    freq = count.double() / n_tok
    mean = torch.where(count > 0, s["sum"] / count.clamp_min(1), torch.zeros_like(s["sum"])).float()
    hist = _linear_hist(s["hist"], maxv)
    quant = _quantiles(s["hist"], maxv)
    emit(progress, "logit lens", 0, F, unit="feature")
    W_U, scale = _unembedding(lm)
    W_dec = sae.W_dec.detach().float().cpu()
    if W_dec.shape[1] == W_U.shape[1]:
        D = W_dec * scale.cpu() if scale is not None else W_dec
        top_i, top_v, bot_i, bot_v, lh, lmin, lmax = [], [], [], [], [], [], []
        W_Uc = W_U.cpu()
        W_Ub = W_Uc.T.contiguous().to(torch.bfloat16)
        for a in range(0, F, 512):
            Dc = D[a:a + 512]
            # the full [features, vocab] product in bfloat16 (about 2x faster on CPUs) picks the tokens;
            # their values are then recomputed exactly in float32
            L = Dc.to(torch.bfloat16) @ W_Ub                           # [c, vocab], bfloat16
            k2 = min(cfg.logits + 8, L.shape[1])
            ti = L.topk(k2, dim=1).indices
            bi = L.topk(k2, dim=1, largest=False).indices
            exact_t = torch.einsum("cd,ckd->ck", Dc, W_Uc[ti])
            exact_b = torch.einsum("cd,ckd->ck", Dc, W_Uc[bi])
            t = exact_t.topk(cfg.logits, dim=1)
            b = exact_b.topk(cfg.logits, dim=1, largest=False)
            lo, hi = L.min(1).values.float(), L.max(1).values.float()
            L.sub_(lo[:, None].to(L.dtype)).mul_((LOGIT_HIST_BINS / (hi - lo).clamp_min(1e-12))[:, None].to(L.dtype))
            idx = L.clamp_(0, LOGIT_HIST_BINS - 1).to(torch.int64)
            lh.append(torch.zeros(L.shape[0], LOGIT_HIST_BINS, dtype=torch.long)
                      .scatter_add_(1, idx, torch.ones((), dtype=torch.long).expand_as(idx)))
            top_i.append(ti.gather(1, t.indices)), top_v.append(t.values)
            bot_i.append(bi.gather(1, b.indices)), bot_v.append(b.values)
            lmin.append(lo), lmax.append(hi)
            emit(progress, "logit lens", min(a + 512, F), F, unit="feature")
        logit = {k: torch.cat(v) for k, v in zip(("ti", "tv", "bi", "bv", "lh", "lmin", "lmax"),
                                                 (top_i, top_v, bot_i, bot_v, lh, lmin, lmax))}
    else:
        logit = None                                          # a transcoder writing elsewhere than the residual
    emit(progress, "logit lens", F, F, unit="feature", finished=True)
    Wn = W_dec / W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12)
    nb_i, nb_v = [], []
    k_nb = min(cfg.neighbours, F - 1) if F > 1 else 0
    for a in range(0, F, 1024):
        sim = Wn[a:a + 1024] @ Wn.T
        sim[torch.arange(sim.shape[0]), torch.arange(a, a + sim.shape[0])] = -2.0
        t = sim.topk(k_nb, dim=1)
        nb_i.append(t.indices), nb_v.append(t.values)
    nb_i, nb_v = torch.cat(nb_i), torch.cat(nb_v)
    vocab = vocab_strings(lm.tokenizer)

    def lists(t: torch.Tensor, typ):
        return pa.array(t.tolist(), type=pa.list_(typ))

    cols: dict[str, Any] = {
        "index": pa.array(np.arange(F, dtype=np.int32)), "frequency": pa.array(freq.float().numpy()),
        "count": pa.array(count.numpy()), "mean": pa.array(mean.numpy()), "max": pa.array(maxv.numpy()),
        "q50": pa.array(quant[:, 0].numpy()), "q90": pa.array(quant[:, 1].numpy()), "q99": pa.array(quant[:, 2].numpy()),
        "hist": lists(hist.int(), pa.int32()), "neighbours": lists(nb_i.int(), pa.int32()),
        "neighbour_cos": lists(nb_v, pa.float32()),
    }
    if logit is not None:
        cols.update({"top_logit_ids": lists(logit["ti"].int(), pa.int32()), "top_logit_values": lists(logit["tv"], pa.float32()),
                     "top_logit_tokens": pa.array([[vocab[i] for i in row] for row in logit["ti"].tolist()]),
                     "bottom_logit_ids": lists(logit["bi"].int(), pa.int32()),
                     "bottom_logit_values": lists(logit["bv"], pa.float32()),
                     "bottom_logit_tokens": pa.array([[vocab[i] for i in row] for row in logit["bi"].tolist()]),
                     "logit_hist": lists(logit["lh"].int(), pa.int32()), "logit_min": pa.array(logit["lmin"].numpy()),
                     "logit_max": pa.array(logit["lmax"].numpy())})
    _atomic_parquet(pa.table(cols), folder / FEATURES_FILE)
    _write_examples(folder, acc, tokens, cfg, maxv)
    np.savez_compressed(folder / (COACT_FILE + ".tmp.npz"), row=s["co_row"].numpy(), col=s["co_col"].numpy(),
                        val=s["co_val"].numpy(), tokens=min(cfg.coactivation_tokens, int(s["positions"])), d_sae=F)
    os.replace(folder / (COACT_FILE + ".tmp.npz"), folder / COACT_FILE)
    # SAELens reads log10 feature density from sparsity.safetensors
    write_safetensors({"sparsity": torch.log10(freq.float() + 1e-10)}, folder / SPARSITY_FILE)
    alive = int((count > 0).sum())
    return {"tokens": int(s["tokens"]), "alive": alive, "dead": F - alive, "d_sae": F,
            "mean_l0": float(count.sum()) / n_tok, "median_frequency": float(freq[count > 0].median()) if alive else 0.0}


def _write_examples(folder: Path, acc: Accumulator, tokens: np.ndarray, cfg: ExtractConfig, maxv: torch.Tensor) -> None:
    import pyarrow as pa

    s, W = acc.s, acc.W
    rng = np.random.default_rng(cfg.seed)
    parts: list[dict[str, np.ndarray]] = []

    def block(feature, kind, group, rank, val, seq, start, pos, win):
        return {"feature": feature.astype(np.int32), "kind": np.full(len(feature), kind, dtype=object),
                "group": group.astype(np.int16), "rank": rank.astype(np.int16), "value": val.astype(np.float32),
                "sequence": seq.astype(np.int32), "start": start.astype(np.int16), "peak": (pos - start).astype(np.int16),
                "values": win.astype(np.float32)}

    top = acc.sorted_top()
    top_val = top["val"].T.numpy()                               # [F, K], sorted high to low
    valid = top_val > cfg.threshold
    f_idx, k_idx = np.nonzero(valid)
    parts.append(block(f_idx, "top", np.zeros_like(f_idx), k_idx, top_val[f_idx, k_idx],
                       top["seq"].T.numpy()[f_idx, k_idx], top["start"].T.numpy()[f_idx, k_idx],
                       top["pos"].T.numpy()[f_idx, k_idx], top["win"].permute(1, 0, 2).numpy()[f_idx, k_idx]))
    # quantile-sampled: equal-width activation intervals of [0, max], filled from the reservoir and the top examples
    G, n = cfg.quantile_groups, cfg.quantile_examples
    pool_val = np.concatenate([s["res_val"].T.numpy(), top_val], 1)                 # [F, R + K]
    pool_ok = np.concatenate([s["res_key"].T.numpy() >= 0, valid], 1)
    pool_seq = np.concatenate([s["res_seq"].T.numpy(), top["seq"].T.numpy()], 1)
    mx = maxv.numpy()
    rows: dict[str, list] = {k: [] for k in ("f", "g", "r", "j")}
    for f in np.nonzero(mx > cfg.threshold)[0]:
        ok = pool_ok[f]
        _, first = np.unique(np.where(ok, pool_seq[f], -1), return_index=True)   # one example per sequence
        cand = np.array([j for j in first if ok[j]], dtype=np.int64)
        if not len(cand):
            continue
        grp = np.minimum((pool_val[f, cand] / mx[f] * G).astype(np.int64), G - 1)
        for g in range(G):
            js = cand[grp == g]
            if len(js) > n:
                js = rng.choice(js, n, replace=False)
            js = js[np.argsort(-pool_val[f, js])]
            rows["f"] += [f] * len(js)
            rows["g"] += [g] * len(js)
            rows["r"] += list(range(len(js)))
            rows["j"] += list(js)
    if rows["f"]:
        f_q, j_q = np.array(rows["f"]), np.array(rows["j"])

        def pick(res, top):
            a, b = res.transpose(0, 1).numpy(), top.transpose(0, 1).numpy()
            both = np.concatenate([a, b], 1)
            return both[f_q, j_q]

        parts.append(block(f_q, "quantile", np.array(rows["g"]), np.array(rows["r"]), pool_val[f_q, j_q],
                           pick(s["res_seq"], top["seq"]), pick(s["res_start"], top["start"]),
                           pick(s["res_pos"], top["pos"]), pick(s["res_win"], top["win"])))
    cols = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    order = np.lexsort((cols["rank"], cols["group"], cols["kind"] == "quantile", cols["feature"]))
    cols = {k: v[order] for k, v in cols.items()}
    tok = tokens[cols["sequence"][:, None], cols["start"][:, None].astype(np.int64) + np.arange(W)[None, :]]
    table = pa.table({
        "feature": cols["feature"], "kind": pa.array(cols["kind"].astype(str)), "group": cols["group"],
        "rank": cols["rank"], "value": cols["value"], "sequence": cols["sequence"], "start": cols["start"],
        "peak": cols["peak"],
        "tokens": pa.FixedSizeListArray.from_arrays(pa.array(tok.reshape(-1).astype(np.int32)), W),
        "values": pa.FixedSizeListArray.from_arrays(pa.array(cols["values"].reshape(-1)), W)})
    _atomic_parquet(table, folder / EXAMPLES_FILE, row_group_size=8192)


# ---------------------------------------------------------------------------------------------
# Reading
def check_feature_index(ws: Workspace, sae: str | Artifact, index: int) -> int:
    """``index`` when the SAE has such a feature, else a clear error."""
    art = ws.get(sae, "sae")
    d_sae = art.meta.get("d_sae")
    if d_sae is None:
        import json

        d_sae = json.loads((art.path / "cfg.json").read_text())["d_sae"]
    if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or not 0 <= int(index) < int(d_sae):
        raise FeatureError(f"Feature {index!r} is out of range: {art.name!r} has features 0..{int(d_sae) - 1}.",
                           f"pick an index from 0 to {int(d_sae) - 1}.")
    return int(index)


MAX_LABEL_CHARS = 2000


def set_label(ws: Workspace, sae: str | Artifact, index: int, label: str, *, method: str = "manual", **kw: Any) -> int:
    """Add a label to a feature (kept with its history). The label is stored as given (markup is data)."""
    label = str(label).strip()
    if not label:
        raise FeatureError("The label is empty.", "type a few words that describe the feature.")
    if len(label) > MAX_LABEL_CHARS:
        raise FeatureError(f"The label is {len(label):,} characters long.", f"keep it under {MAX_LABEL_CHARS:,} characters.")
    index = check_feature_index(ws, sae, index)
    return ws.add_label(ws.get(sae, "sae").id, index, label, method=method, **kw)


def latest_extraction(ws: Workspace, sae: str | Artifact) -> Artifact | None:
    done = [a for a in ws.list(KIND, parent=ws.get(sae, "sae").id) if a.meta.get("status") == "done"]
    return done[-1] if done else None


def require_extraction(ws: Workspace, ref: str | Artifact) -> Artifact:
    """An extraction, or the newest finished extraction of an SAE (an SAE's name is shared with its run)."""
    if isinstance(ref, Artifact):
        ref = ref.id
    art = ws.find(ref, "sae") or ws.find(ref, KIND) or ws.get(ref)
    if art.kind == "sae":
        ext = latest_extraction(ws, art)
        if ext is None:
            raise FeatureError(f"The SAE {art.name!r} has no finished feature extraction yet.",
                               f"run one first (mistudio extract {art.name}, or extract(ws, ...) in a notebook).")
        return ext
    if art.kind != KIND:
        raise FeatureError(f"{art.name!r} is a {art.kind}, not an SAE or an extraction.", "pass an SAE from the library.")
    if art.meta.get("status") != "done":
        raise FeatureError(f"The extraction {art.name!r} is {art.meta.get('status')}.", f"resume it (mistudio extract --resume {art.id}).")
    return art


def feature_columns(ws: Workspace, ext: str | Artifact) -> dict[str, np.ndarray]:
    """The browsing columns of every feature: index, frequency, mean, max (numpy arrays)."""
    import pyarrow.parquet as pq

    ext = require_extraction(ws, ext)
    t = pq.read_table(ext.path / FEATURES_FILE, columns=["index", "frequency", "mean", "max"])
    return {k: t.column(k).to_numpy() for k in t.column_names}


def _token_text(vocab: tuple[str, ...], ids) -> list[str]:
    return [vocab[i] if 0 <= i < len(vocab) else "" for i in ids]


def feature_detail(ws: Workspace, ext: str | Artifact, index: int, *, max_examples: int | None = None) -> dict[str, Any]:
    """Everything about one feature: statistics, histogram, logit lens, neighbours, examples (tokens with
    per-token values) and labels."""
    import pyarrow.parquet as pq

    from .models import load_tokenizer

    ext = require_extraction(ws, ext)
    index = check_feature_index(ws, ext.parent, index)
    table = pq.read_table(ext.path / FEATURES_FILE)
    row = {k: v[0] for k, v in table.slice(index, 1).to_pydict().items()}
    ex = pq.read_table(ext.path / EXAMPLES_FILE, filters=[("feature", "=", index)])
    vocab = vocab_strings(load_tokenizer(ws, ext.meta["model"]))
    examples: dict[str, list] = {"top": [], "quantile": []}
    for r in ex.to_pylist():
        if max_examples is not None and r["kind"] == "top" and r["rank"] >= max_examples:
            continue
        examples[r["kind"]].append({"value": r["value"], "group": r["group"], "sequence": r["sequence"], "peak": r["peak"],
                                    "tokens": _token_text(vocab, r["tokens"]), "token_ids": r["tokens"], "values": r["values"]})
    mx = float(row["max"])
    labels = ws.labels(ext.parent, index, history=True)
    out = {"index": index, "sae": ext.parent, "extraction": ext.id, "frequency": float(row["frequency"]),
           "count": int(row["count"]), "mean": float(row["mean"]), "max": mx,
           "quantiles": {"q50": float(row["q50"]), "q90": float(row["q90"]), "q99": float(row["q99"])},
           "histogram": {"edges": np.linspace(0, mx, HIST_BINS + 1).tolist(), "counts": row["hist"]},
           "neighbours": [{"index": int(i), "cosine": float(c)} for i, c in zip(row["neighbours"], row["neighbour_cos"])],
           "examples": examples["top"],
           "quantile_examples": [{"group": g, "range": [g * mx / ext.meta["config"]["quantile_groups"],
                                                        (g + 1) * mx / ext.meta["config"]["quantile_groups"]],
                                  "examples": [e for e in examples["quantile"] if e["group"] == g]}
                                 for g in range(ext.meta["config"]["quantile_groups"])],
           "label": labels[-1]["label"] if labels else None, "labels": labels}
    if "top_logit_ids" in row:
        out["logits"] = {"positive": [{"token": t, "id": int(i), "value": float(v)} for t, i, v in
                                      zip(row["top_logit_tokens"], row["top_logit_ids"], row["top_logit_values"])],
                         "negative": [{"token": t, "id": int(i), "value": float(v)} for t, i, v in
                                      zip(row["bottom_logit_tokens"], row["bottom_logit_ids"], row["bottom_logit_values"])],
                         "histogram": {"edges": np.linspace(row["logit_min"], row["logit_max"], LOGIT_HIST_BINS + 1).tolist(),
                                       "counts": row["logit_hist"]}}
    return out


def coactivation(ws: Workspace, ext: str | Artifact, features: list[int]) -> dict[str, Any]:
    """Pearson correlations between the activations of ``features`` over the extraction's sample of tokens
    (high values flag redundant features), and how often each pair fires together."""
    ext = require_extraction(ws, ext)
    F = int(ext.meta["summary"]["d_sae"])
    feats = [int(f) for f in features]
    bad = [f for f in feats if not 0 <= f < F]
    if bad or not feats:
        raise FeatureError(f"Feature(s) {bad or features} out of range 0..{F - 1}.", "choose at least one valid feature index.")
    z = np.load(ext.path / COACT_FILE)
    n = int(z["tokens"])
    if n < 2:
        raise FeatureError("The extraction kept no activation sample.", "extract again with coactivation_tokens > 0.")
    pos = {f: i for i, f in enumerate(feats)}
    M = np.zeros((n, len(feats)), dtype=np.float32)
    sel = np.isin(z["col"], feats) & (z["row"] < n)
    M[z["row"][sel], [pos[c] for c in z["col"][sel]]] = z["val"][sel]
    std = M.std(0)
    C = np.corrcoef(M, rowvar=False) if len(feats) > 1 else np.ones((1, 1))
    C = np.where(np.outer(std, std) > 0, C, 0.0)
    fired = (M > 0).astype(np.float32)
    both = fired.T @ fired
    return {"features": feats, "correlation": np.nan_to_num(C).tolist(), "together": both.astype(int).tolist(), "tokens": n}


# ---------------------------------------------------------------------------------------------
# Prompt tester
def fire(ws: Workspace, sae: str | Artifact, text: str, *, top: int = 10, model: str | None = None) -> dict[str, Any]:
    """Which features fire on ``text``: per token the ``top`` strongest, and over the whole text the
    features ranked by their peak activation (with labels where there are some)."""
    if not isinstance(text, str) or not text.strip():
        raise FeatureError("The text is empty.", "type some text to test.")
    sae_art, model_sae, _ = load_library_sae(ws, sae)
    lm = model_for_sae(ws, sae_art, model_sae, model)
    enc = lm.tokenizer(text, add_special_tokens=False)["input_ids"]
    bos = lm.tokenizer.bos_token_id
    ids = ([bos] if bos is not None else []) + list(enc)
    limit = getattr(lm.model.config, "max_position_embeddings", None) or 4096
    if len(ids) > limit:
        raise FeatureError(f"The text is {len(ids)} tokens long; the model reads at most {limit}.", "shorten the text.")
    A = feature_acts(lm, model_sae, sae_hook(sae_art, model_sae), torch.tensor([ids]))[0].cpu()   # [T, F]
    vocab = vocab_strings(lm.tokenizer)
    labels = {r["feature"]: r["label"] for r in ws.labels(sae_art.id)}
    per_token = []
    k = min(top, A.shape[1])
    for t in range(len(ids)):
        v, i = A[t].topk(k)
        per_token.append([{"index": int(a), "activation": float(b)} for a, b in zip(i, v) if b > 0])
    peak, where = A.max(0)
    order = torch.argsort(peak, descending=True)
    start = 1 if bos is not None else 0
    feats = [{"index": int(f), "activation": float(peak[f]), "token": int(where[f]) - start, "label": labels.get(int(f))}
             for f in order[:max(top, 1) * 3] if peak[f] > 0]
    return {"sae": sae_art.id, "tokens": _token_text(vocab, ids)[start:], "token_ids": ids[start:],
            "per_token": per_token[start:], "features": feats,
            "values": {f["index"]: A[start:, f["index"]].tolist() for f in feats[:top]}}


# ---------------------------------------------------------------------------------------------
# Search
def search(ws: Workspace, sae: str | Artifact, query: str, *, limit: int = 50) -> list[dict[str, Any]]:
    """Features whose label, or top logit-lens tokens, contain ``query`` (case-insensitive); an integer
    query also finds that index."""
    import pyarrow.parquet as pq

    q = (query or "").strip().lower()
    if not q:
        raise FeatureError("The search text is empty.", "give a word to look for in labels or logit tokens.")
    sae_art = ws.get(sae, "sae")
    hits: dict[int, dict[str, Any]] = {}
    if q.isdigit() and int(q) < int(sae_art.meta.get("d_sae") or 0):
        hits[int(q)] = {"index": int(q), "match": "index"}
    for r in ws.labels(sae_art.id):
        if q in r["label"].lower():
            hits.setdefault(r["feature"], {"index": r["feature"], "match": "label"})["label"] = r["label"]
    ext = latest_extraction(ws, sae_art)
    if ext is not None:
        t = pq.read_table(ext.path / FEATURES_FILE, columns=["index", "top_logit_tokens", "frequency"])
        for i, toks in zip(t.column("index").to_pylist(), t.column("top_logit_tokens").to_pylist()):
            if any(q == tk.strip().lower() for tk in toks[:10]):
                hits.setdefault(i, {"index": i, "match": "logits"})
    labels = {r["feature"]: r["label"] for r in ws.labels(sae_art.id)}
    out = sorted(hits.values(), key=lambda h: ({"index": 0, "label": 1, "logits": 2}[h["match"]], h["index"]))[:limit]
    for h in out:
        h["label"] = labels.get(h["index"])
    return out


def feature_map(ws: Workspace, sae: str | Artifact) -> dict[str, Any]:
    """A 2-D projection of the decoder directions (PCA of the unit-normalised rows)."""
    _, model_sae, _ = load_library_sae(ws, sae)
    W = model_sae.W_dec.detach().float()
    W = W / W.norm(dim=1, keepdim=True).clamp_min(1e-12)
    W = W - W.mean(0)
    _, _, V = torch.pca_lowrank(W, q=2, center=False, niter=4)
    xy = W @ V[:, :2]
    return {"x": xy[:, 0].tolist(), "y": xy[:, 1].tolist()}


__all__ = ["extract", "feature_columns", "feature_detail", "fire", "search", "coactivation", "feature_map",
           "latest_extraction", "require_extraction", "FeatureError"]
