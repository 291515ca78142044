"""What an extraction leaves on disk (the file names; the Parquet columns are declared in ``schema``)
and every reader of it: feature columns for browsing, one feature's detail, co-activation, labels,
search and the feature map."""

from __future__ import annotations

from contextlib import contextmanager
from functools import lru_cache
from typing import Any

import numpy as np
import torch

from ..core.errors import ArtifactNotFound
from ..core.jobs import Status
from ..core.workspace import Artifact, Workspace
from .library import FeatureError, load_library_sae
from .schema import EXAMPLES, FEATURES

KIND = "extraction"
JUDGE_NOTE = (
    "Scores 'by P(yes)' come from the in-kernel model judging its own labels, which cannot tell a feature's "
    "label from another feature's (benchmarks/bench_insight.py: it prefers the right label in 51% of 50 "
    "features, 95% interval 44-58%, chance 50%); "
    "read them as noise, or score by simulation or with a bigger model through an endpoint."
)
HIST_BINS, LOGIT_HIST_BINS = 50, 30
FEATURES_FILE, EXAMPLES_FILE = FEATURES.file, EXAMPLES.file  # their columns: schema.py
COACT_FILE, SPARSITY_FILE, STATE_FILE = (
    "coactivation.npz",
    "sparsity.safetensors",
    "state.pt",
)


@lru_cache(maxsize=4)
def _vocab_strings(tokenizer) -> tuple[str, ...]:
    return tuple(tokenizer.batch_decode([[i] for i in range(len(tokenizer))]))


def vocab_strings(tokenizer) -> tuple[str, ...]:
    """Each token id's text as the tokenizer decodes it alone (what the label explainer reads)."""
    return _vocab_strings(tokenizer)


@lru_cache(maxsize=4)
def shown_vocab(tokenizer) -> tuple[str, ...]:
    """Each token id's text as a page shows it: a token holding part of a character (which decodes alone
    to the replacement character "\ufffd") is shown as its bytes, e.g. "\\xe2\\x80", so that two such
    tokens read as the different tokens they are."""
    texts = list(_vocab_strings(tokenizer))
    decode = _byte_decoder()
    for i, text in enumerate(texts):
        if "\ufffd" not in text:
            continue
        raw = str(tokenizer.convert_ids_to_tokens(i))
        if raw and all(c in decode for c in raw):  # byte-level BPE (GPT-2, SmolLM, Llama 3, ...)
            texts[i] = bytes(decode[c] for c in raw).decode("utf-8", "backslashreplace")
        else:  # sentencepiece byte tokens read "<0xE2>" already
            texts[i] = raw or text
    return tuple(texts)


@lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    """Byte-level BPE's printable character for each byte, reversed (GPT-2's bytes_to_unicode)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = list(keep), 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(keep, chars)}


# ---------------------------------------------------------------------------------------------
# Reading
@contextmanager
def reading_extraction_file(path):
    """Around a read of an extraction file: a damaged, truncated, missing or unreadable file becomes a
    clear error naming it and the fix, never a traceback or a permission error."""
    import pyarrow as pa

    try:
        yield
    except (pa.ArrowInvalid, OSError) as exc:  # pyarrow's IO errors are OSErrors
        if isinstance(exc, FileNotFoundError) or "No such file" in str(exc):
            why = "is missing"
        elif isinstance(exc, PermissionError):
            why = "cannot be read (permission denied)"
        else:
            why = f"is damaged ({str(exc).splitlines()[0][:160]})"
        raise FeatureError(
            f"The extraction file {path} {why}.",
            "extract again (mistudio extract SAE, or Extract in the feature browser); labels are kept.",
        ) from None


def read_parquet(path, *, schema_only: bool = False, **kw):
    """A table (or with ``schema_only`` its schema) of an extraction file (errors as above)."""
    import pyarrow.parquet as pq

    with reading_extraction_file(path):
        return pq.read_schema(path) if schema_only else pq.read_table(path, **kw)


def check_feature_index(ws: Workspace, sae: str | Artifact, index: int) -> int:
    """``index`` when the SAE has such a feature, else a clear error."""
    art = ws.get(sae, "sae")
    d_sae = art.meta.get("d_sae")
    if d_sae is None:
        import json

        d_sae = json.loads((art.folder / "cfg.json").read_text())["d_sae"]
    if (
        isinstance(index, bool)
        or not isinstance(index, (int, np.integer))
        or not 0 <= int(index) < int(d_sae)
    ):
        raise FeatureError(
            f"Feature {index!r} is out of range: {art.name!r} has features 0..{int(d_sae) - 1}.",
            f"pick an index from 0 to {int(d_sae) - 1}.",
        )
    return int(index)


MAX_LABEL_CHARS = 2000


def set_label(
    ws: Workspace, sae: str | Artifact, index: int, label: str, *, method: str = "manual", **kw: Any
) -> int:
    """Add a label to a feature (kept with its history). The label is stored as given (markup is data)."""
    label = str(label).strip()
    if not label:
        raise FeatureError("The label is empty.", "type a few words that describe the feature.")
    if len(label) > MAX_LABEL_CHARS:
        raise FeatureError(
            f"The label is {len(label):,} characters long.", f"keep it under {MAX_LABEL_CHARS:,} characters."
        )
    index = check_feature_index(ws, sae, index)
    return ws.add_label(ws.get(sae, "sae").id, index, label, method=method, **kw)


def label_verdict(row: dict[str, Any]) -> str:
    """'manual' (a person's label), or the held-out verdict of an automatic one: 'above chance',
    'at chance' or 'unscored' (labels from before held-out verdicts read as unscored)."""
    if row["method"] == "manual":
        return "manual"
    return (row["meta"].get("scoring") or {}).get("verdict") or "unscored"


def shown_labels(ws: Workspace, sae: str | Artifact, *, unscored: bool = False) -> dict[int, dict[str, Any]]:
    """The label that titles each feature: its newest manual label, else its best-scoring automatic
    label whose held-out score is above chance (the newest label of each method and model competes).
    A label at chance titles nothing. With ``unscored``, a feature with no such label shows its newest
    unscored label (marked by its verdict) rather than nothing."""
    rows = ws.labels(ws.get(sae, "sae").id, history=True)
    newest: dict[tuple[int, str, str | None], dict[str, Any]] = {}
    for r in rows:  # oldest first: later rows replace earlier ones
        newest[(r["feature"], r["method"], r["model"])] = r
    best: dict[int, tuple[tuple, dict[str, Any]]] = {}
    for r in newest.values():
        v = label_verdict(r)
        if v == "manual":
            rank = (3, r["id"])
        elif v == "above chance":
            rank = (2, r["score"] or 0.0)
        elif v == "unscored" and unscored:
            rank = (1, r["id"])
        else:
            continue
        if r["feature"] not in best or rank > best[r["feature"]][0]:
            best[r["feature"]] = (rank, r)
    return {f: {**r, "verdict": label_verdict(r)} for f, (_, r) in best.items()}


def label_summary(ws: Workspace, sae: str | Artifact) -> str:
    """One line on an SAE's labels: how many title a feature, and the held-out scores of the newest
    statistical labels (median, share >= 0.7, chance 0.5)."""
    import statistics

    rows = ws.labels(ws.get(sae, "sae").id, history=True)
    if not rows:
        return ""
    newest = {r["feature"]: r for r in rows if r["method"] == "statistical"}
    scores = [r["score"] for r in newest.values() if r["score"] is not None]
    shown = len(shown_labels(ws, sae))
    line = f"{shown:,} feature(s) titled by a label above chance or a person's"
    if scores:
        line += (
            f"; {len(newest):,} statistical labels, held-out score median {statistics.median(scores):.2f}, "
            f"{sum(s >= 0.7 for s in scores) / len(scores):.0%} >= 0.70 (chance 0.50)"
        )
    return line


def latest_extraction(ws: Workspace, sae: str | Artifact) -> Artifact | None:
    done = [a for a in ws.list(KIND, parent=ws.get(sae, "sae").id) if a.meta.get("status") == Status.DONE]
    return done[-1] if done else None


def default_sae(ws: Workspace) -> Artifact | None:
    """The SAE a browser opens first: the newest with a finished extraction, else the newest."""
    saes = ws.list("sae")
    done = [a for a in saes if latest_extraction(ws, a) is not None]
    newest = done or saes
    return newest[-1] if newest else None


def require_extraction(ws: Workspace, ref: str | Artifact) -> Artifact:
    """An extraction, or the newest finished extraction of an SAE (an SAE's name is shared with its run)."""
    if isinstance(ref, Artifact):
        ref = ref.id
    art = ws.find(ref, "sae") or ws.find(ref, KIND) or ws.find(ref)
    if art is None:
        names = [a.name for a in ws.list("sae")]
        raise ArtifactNotFound(
            f"No SAE or extraction called {ref!r} in the workspace {ws.root}.",
            f"use one of: {', '.join(names)}." if names else "train or import an SAE first.",
        )
    if art.kind == "sae":
        ext = latest_extraction(ws, art)
        if ext is None:
            raise FeatureError(
                f"The SAE {art.name!r} has no finished feature extraction yet.",
                f"run one first (mistudio extract {art.name}, or extract(ws, ...) in a notebook).",
            )
        return ext
    if art.kind != KIND:
        raise FeatureError(
            f"{art.name!r} is a {art.kind}, not an SAE or an extraction.", "pass an SAE from the library."
        )
    if art.meta.get("status") != Status.DONE:
        raise FeatureError(
            f"The extraction {art.name!r} is {art.meta.get('status')}.",
            f"resume it (mistudio extract --resume {art.id}).",
        )
    return art


def feature_columns(ws: Workspace, ext: str | Artifact) -> dict[str, np.ndarray]:
    """The browsing columns of every feature: index, frequency, mean, max (numpy arrays)."""

    ext = require_extraction(ws, ext)
    t = read_parquet(ext.folder / FEATURES_FILE, columns=FEATURES.cols("index", "frequency", "mean", "max"))
    return {k: t.column(k).to_numpy() for k in t.column_names}


def quantile_groups(row: dict[str, Any], groups: int, hist_bins: int) -> list[tuple[float, float, float]]:
    """(low, high, share of firings) of each quantile-sampled interval of a feature row: the
    equal-share intervals an extraction records (``quantile_edges``), or, for extractions made before
    them, equal-width slices of [0, max] with their share read off the histogram."""
    edges, shares = row.get("quantile_edges"), row.get("quantile_shares")
    if edges is not None and shares is not None and len(edges) == groups + 1:
        return [(float(edges[g]), float(edges[g + 1]), float(shares[g])) for g in range(groups)]
    mx = float(row["max"])
    hist = np.asarray(row["hist"], dtype=np.float64)
    total = max(hist.sum(), 1.0)
    return [
        (
            g * mx / groups,
            (g + 1) * mx / groups,
            float(hist[int(g * hist_bins / groups) : int((g + 1) * hist_bins / groups)].sum() / total),
        )
        for g in range(groups)
    ]


def _token_text(vocab: tuple[str, ...], ids) -> list[str]:
    return [vocab[i] if 0 <= i < len(vocab) else "" for i in ids]


def _example(r: dict[str, Any], vocab) -> dict[str, Any]:
    """One example row as the feature page shows it: the window's tokens with their values."""
    return {
        "value": r["value"],
        "group": r["group"],
        "sequence": r["sequence"],
        "peak": r["peak"],
        "tokens": _token_text(vocab, r["tokens"]),
        "token_ids": r["tokens"],
        "values": r["values"],
    }


def feature_detail(
    ws: Workspace, ext: str | Artifact, index: int, *, max_examples: int | None = None
) -> dict[str, Any]:
    """Everything about one feature: statistics, histogram, logit lens, neighbours, examples (tokens with
    per-token values) and labels."""

    from ..data.models import load_tokenizer

    ext = require_extraction(ws, ext)
    index = check_feature_index(ws, ext.parent_id, index)
    table = read_parquet(ext.folder / FEATURES_FILE)
    row = {k: v[0] for k, v in table.slice(index, 1).to_pydict().items()}
    ex = read_parquet(ext.folder / EXAMPLES_FILE, filters=[("feature", "=", index)])
    vocab = shown_vocab(load_tokenizer(ws, ext.meta["model"]))
    examples: dict[str, list] = {"top": [], "quantile": []}
    for r in ex.to_pylist():
        if max_examples is None or r["kind"] != "top" or r["rank"] < max_examples:
            examples[r["kind"]].append(_example(r, vocab))
    mx = float(row["max"])
    labels = ws.labels(ext.parent_id, index, history=True)
    shown = shown_labels(ws, ext.parent_id).get(index, {})  # unverified labels title nothing, here too
    out = {
        "index": index,
        "sae": ext.parent,
        "extraction": ext.id,
        "frequency": float(row["frequency"]),
        "count": int(row["count"]),
        "mean": float(row["mean"]),
        "max": mx,
        "quantiles": {"q50": float(row["q50"]), "q90": float(row["q90"]), "q99": float(row["q99"])},
        "histogram": {"edges": np.linspace(0, mx, HIST_BINS + 1).tolist(), "counts": row["hist"]},
        "neighbours": [
            {"index": int(i), "cosine": float(c)} for i, c in zip(row["neighbours"], row["neighbour_cos"])
        ],
        "examples": examples["top"],
        "quantile_examples": [
            {
                "group": g,
                "range": [lo, hi],
                "share": share,
                "examples": [e for e in examples["quantile"] if e["group"] == g],
            }
            for g, (lo, hi, share) in enumerate(
                quantile_groups(row, ext.meta["config"]["quantile_groups"], HIST_BINS)
            )
        ],
        "label": shown.get("label"),
        "label_verdict": shown.get("verdict"),
        "labels": [{**r, "verdict": label_verdict(r)} for r in labels],
        "scorer_note": JUDGE_NOTE
        if any((r["meta"].get("scoring") or {}).get("rule", "").startswith("P(yes)") for r in labels)
        else None,
    }
    if "top_logit_ids" in row:
        out["logits"] = _logit_lens(row)
    return out


def _logit_lens(row: dict[str, Any]) -> dict[str, Any]:
    """A feature row's logit lens: the tokens it promotes and suppresses most, and its logit histogram."""

    def tokens(side: str) -> list[dict[str, Any]]:
        cols = (row[f"{side}_logit_tokens"], row[f"{side}_logit_ids"], row[f"{side}_logit_values"])
        return [{"token": t, "id": int(i), "value": float(v)} for t, i, v in zip(*cols)]

    return {
        "positive": tokens("top"),
        "negative": tokens("bottom"),
        "histogram": {
            "edges": np.linspace(row["logit_min"], row["logit_max"], LOGIT_HIST_BINS + 1).tolist(),
            "counts": row["logit_hist"],
        },
    }


def coactivation(ws: Workspace, ext: str | Artifact, features: list[int]) -> dict[str, Any]:
    """Pearson correlations between the activations of ``features`` over the extraction's sample of tokens
    (high values flag redundant features), and how often each pair fires together."""
    ext = require_extraction(ws, ext)
    F = int(ext.meta["summary"]["d_sae"])
    feats = [int(f) for f in features]
    bad = [f for f in feats if not 0 <= f < F]
    if bad or not feats:
        raise FeatureError(
            f"Feature(s) {bad or features} out of range 0..{F - 1}.",
            "choose at least one valid feature index.",
        )
    z = np.load(ext.folder / COACT_FILE)
    n = int(z["tokens"])
    if n < 2:
        raise FeatureError(
            "The extraction kept no activation sample.", "extract again with coactivation_tokens > 0."
        )
    pos = {f: i for i, f in enumerate(feats)}
    M = np.zeros((n, len(feats)), dtype=np.float32)
    sel = np.isin(z["col"], feats) & (z["row"] < n)
    M[z["row"][sel], [pos[c] for c in z["col"][sel]]] = z["val"][sel]
    std = M.std(0)
    C = np.corrcoef(M, rowvar=False) if len(feats) > 1 else np.ones((1, 1))
    C = np.where(np.outer(std, std) > 0, C, 0.0)
    fired = (M > 0).astype(np.float32)
    both = fired.T @ fired
    return {
        "features": feats,
        "correlation": np.nan_to_num(C).tolist(),
        "together": both.astype(int).tolist(),
        "tokens": n,
    }


# ---------------------------------------------------------------------------------------------
# Search
def search(ws: Workspace, sae: str | Artifact, query: str, *, limit: int = 50) -> list[dict[str, Any]]:
    """Features whose label, or top logit-lens tokens, contain ``query`` (case-insensitive); an integer
    query also finds that index."""

    q = (query or "").strip().lower()
    if not q:
        raise FeatureError("The search text is empty.", "give a word to look for in labels or logit tokens.")
    sae_art = ws.get(sae, "sae")
    hits: dict[int, dict[str, Any]] = {}
    if q.isdigit() and int(q) < int(sae_art.meta.get("d_sae") or 0):
        hits[int(q)] = {"index": int(q), "match": "index"}
    labels = {f: r["label"] for f, r in shown_labels(ws, sae_art).items()}  # a label at chance finds nothing
    for f, label in labels.items():
        if q in label.lower():
            hits.setdefault(f, {"index": f, "match": "label"})
    ext = latest_extraction(ws, sae_art)
    # a transcoder writing elsewhere than the residual stream has no logit lens, and no such column
    if (
        ext is not None
        and "top_logit_tokens" in read_parquet(ext.folder / FEATURES_FILE, schema_only=True).names
    ):
        t = read_parquet(ext.folder / FEATURES_FILE, columns=FEATURES.cols("index", "top_logit_tokens"))
        for i, toks in zip(t.column("index").to_pylist(), t.column("top_logit_tokens").to_pylist()):
            if any(q == tk.strip().lower() for tk in toks[:10]):
                hits.setdefault(i, {"index": i, "match": "logits"})
    out = sorted(
        hits.values(), key=lambda h: ({"index": 0, "label": 1, "logits": 2}[h["match"]], h["index"])
    )[:limit]
    for h in out:
        h["label"] = labels.get(h["index"])
    return out


MAP_LAYOUTS = ("pca", "umap")
_maps: dict[tuple[str, str, str], dict[str, Any]] = {}  # (workspace, SAE id, layout) -> a computed map


def feature_map(ws: Workspace, sae: str | Artifact, layout: str = "pca") -> dict[str, Any]:
    """A 2-D picture of the decoder directions (unit-normalised rows): ``pca`` (their two main axes,
    instant) or ``umap`` (umap-learn on their cosine neighbourhoods: features that write alike sit
    together; measured about 25 s the first time in a process on a 2-core CPU, most of it compiling, 4 s
    after). Kept per process for each SAE."""
    if layout not in MAP_LAYOUTS:
        raise FeatureError(f"No map layout {layout!r}.", f"use one of {', '.join(MAP_LAYOUTS)}.")
    art, model_sae, _ = load_library_sae(ws, sae)
    key = (str(ws.root), art.id, layout)
    if key not in _maps:
        W = model_sae.W_dec.detach().float()
        W = W / W.norm(dim=1, keepdim=True).clamp_min(1e-12)
        xy = _umap(W.numpy()) if layout == "umap" else _pca(W)
        _maps[key] = {"x": xy[:, 0].tolist(), "y": xy[:, 1].tolist(), "layout": layout}
    return _maps[key]


def map_ready(ws: Workspace, sae: str, layout: str) -> bool:
    """Whether :func:`feature_map` has the map of ``sae`` in ``layout`` at hand (it returns at once)."""
    return layout == "pca" or (str(ws.root), ws.get(sae, "sae").id, layout) in _maps


def _pca(W: torch.Tensor) -> np.ndarray:
    W = W - W.mean(0)
    _, _, V = torch.pca_lowrank(W, q=2, center=False, niter=4)
    return (W @ V[:, :2]).numpy()


def _umap(W: np.ndarray) -> np.ndarray:
    try:
        import umap
    except ImportError:
        raise FeatureError(
            "The UMAP layout needs umap-learn, which is not installed.",
            "pip install umap-learn, or use the PCA layout.",
        ) from None
    n = len(W)
    reducer = umap.UMAP(
        n_neighbors=min(15, max(n - 1, 2)), min_dist=0.1, metric="cosine", random_state=0, n_jobs=1
    )
    return np.asarray(reducer.fit_transform(W), dtype=np.float32)


def label_groups(labels: dict[str, str], n: int, most: int = 8) -> tuple[list[str], np.ndarray]:
    """Features grouped by their shown label (the same text, case and surrounding quotes aside): the
    ``most`` commonest labels are groups of their own, the other labelled features one more group
    ("other labels"), and the unlabelled the last ("unlabelled"). Returns (group names, group of each
    feature [n])."""
    norm = {int(i): lab.strip().strip("'\"").lower() for i, lab in labels.items() if 0 <= int(i) < n}
    counts: dict[str, int] = {}
    for text in norm.values():
        counts[text] = counts.get(text, 0) + 1
    top = [t for t, c in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])) if c > 1][:most]
    names = [*top, "other labels", "unlabelled"]
    group = np.full(n, len(names) - 1, dtype=np.int32)
    for i, text in norm.items():
        group[i] = top.index(text) if text in top else len(top)
    return names, group
