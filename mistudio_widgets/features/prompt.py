"""The prompt tester: which features fire on a text, and which fire on some texts and not on others.

Raw activations are not comparable across features (one feature's typical peak is 0.5, another's 15),
so both rankings divide each feature's activation by its own maximum over the SAE's latest extraction.
Without an extraction they fall back to raw values and say so in ``note``.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import torch

from ..core.workspace import Artifact, Workspace
from .library import FeatureError, feature_acts, load_library_sae, model_for_sae, sae_hook
from .schema import FEATURES
from .store import (
    _token_text,
    check_feature_index,
    latest_extraction,
    read_parquet,
    shown_labels,
    shown_vocab,
)

DENSE_THRESHOLD = 0.1  # features firing on more than this share of extraction tokens are left out
STEER_CANDIDATES = 10  # contrast: the best-aligned of this many top features is proposed for steering
NO_EXTRACTION_NOTE = (
    "This SAE has no finished extraction, so features are ranked by raw activation (not "
    "relative to each feature's own maximum) and dense features cannot be told apart; run "
    "an extraction for relative ranking."
)


def ordinary_case(text: str) -> str:
    """``text`` as it would usually be written: lower case, with capitals starting sentences and for 'I'."""
    low = text.lower()
    out = re.sub(r"(^\s*|[.!?]\s+)([a-z])", lambda m: m.group(1) + m.group(2).upper(), low)
    return re.sub(r"\bi\b", "I", out)


def _as_texts(value: str | list[str] | tuple[str, ...] | None, side: str) -> list[str]:
    texts = [value] if isinstance(value, str) else list(value or [])
    if not texts or not all(isinstance(t, str) and t.strip() for t in texts):
        raise FeatureError(
            f"The {side} is empty." if len(texts) <= 1 else f"One of the {side}s is empty.",
            f"type some text for the {side}.",
        )
    return texts


def _reference(ws: Workspace, sae_art: Artifact) -> tuple[np.ndarray | None, np.ndarray | None, str | None]:
    """(each feature's maximum, its firing frequency, the extraction id) from the latest extraction."""

    from .store import FEATURES_FILE

    ext = latest_extraction(ws, sae_art)
    if ext is None:
        return None, None, None
    t = read_parquet(ext.folder / FEATURES_FILE, columns=FEATURES.cols("max", "frequency"))
    return (
        t.column("max").to_numpy().astype(np.float32),
        t.column("frequency").to_numpy().astype(np.float32),
        ext.id,
    )


class _Tester:
    """An SAE, its model and its reference statistics, ready to encode texts."""

    def __init__(self, ws: Workspace, sae: str | Artifact, model: str | None):
        self.art, self.sae, _ = load_library_sae(ws, sae)
        self.lm = model_for_sae(ws, self.art, self.sae, model)
        self.hook = sae_hook(self.art, self.sae)
        self.maxv, self.freq, self.extraction = _reference(ws, self.art)
        self.labels = {f: r["label"] for f, r in shown_labels(ws, self.art).items()}
        self.vocab = shown_vocab(self.lm.tokenizer)
        self.bos = self.lm.tokenizer.bos_token_id

    def encode(self, text: str) -> list[int]:
        limit = self.lm.context_length
        if len(text) > 64 * limit:  # surely longer than the context: refused before tokenizing it
            raise FeatureError(
                f"The text is {len(text):,} characters; the model reads at most {limit} tokens.",
                "shorten the text or split it into several.",
            )
        ids = ([self.bos] if self.bos is not None else []) + list(
            self.lm.tokenizer(text, add_special_tokens=False)["input_ids"]
        )
        if len(ids) > limit:
            raise FeatureError(
                f"The text is {len(ids)} tokens long; the model reads at most {limit}.",
                "shorten the text or split it into several.",
            )
        return ids

    def acts(self, text: str, with_input: bool = False):
        """Token ids and activations [T, F] of ``text`` without the BOS position (and the hook's
        activations [T, d] at those positions with ``with_input``)."""
        ids = self.encode(text)
        A, x = feature_acts(self.lm, self.sae, self.hook, torch.tensor([ids]), with_input=True)
        start = 1 if self.bos is not None else 0
        if with_input:
            return ids[start:], A[0, start:].cpu(), x[0, start:].cpu()
        return ids[start:], A[0, start:].cpu()

    def relative(self, A: torch.Tensor) -> torch.Tensor:
        """Activations divided by each feature's extraction maximum (capped at 1); raw without one."""
        if self.maxv is None:
            return A
        return (A / torch.from_numpy(self.maxv).clamp_min(1e-6)).clamp(max=1.0)

    def dense(self, threshold: float) -> torch.Tensor:
        if self.freq is None:
            return torch.zeros(self.sae.spec.d_sae, dtype=torch.bool)
        return torch.from_numpy(self.freq) > threshold


def try_feature(
    ws: Workspace, sae: str | Artifact, index: int, text: str, *, model: str | None = None
) -> dict[str, Any]:
    """One feature on a text the user types (the feature page's test box): its activation at each token,
    its peak, and the peak relative to the feature's maximum over the extraction (None without one)."""
    if not isinstance(text, str) or not text.strip():
        raise FeatureError("The text is empty.", "type some text to test the feature on.")
    t = _Tester(ws, sae, model)
    index = check_feature_index(ws, t.art, index)
    ids, A = t.acts(text)
    values = A[:, index].tolist()
    peak = max(values, default=0.0)
    mx = float(t.maxv[index]) if t.maxv is not None else None
    return {
        "index": index,
        "text": text,
        "tokens": _token_text(t.vocab, ids),
        "values": values,
        "peak": peak,
        "max": mx,
        "relative_peak": peak / mx if mx else None,
    }


def fire(
    ws: Workspace,
    sae: str | Artifact,
    text: str,
    *,
    top: int = 10,
    model: str | None = None,
    dense_threshold: float = DENSE_THRESHOLD,
) -> dict[str, Any]:
    """Which features fire on ``text``: per token the ``top`` strongest, and over the whole text the
    features ranked by their peak activation relative to their own maximum (dense features, firing on
    more than ``dense_threshold`` of extraction tokens, are left out and counted)."""
    if not isinstance(text, str) or not text.strip():
        raise FeatureError("The text is empty.", "type some text to test.")
    t = _Tester(ws, sae, model)
    ids, A = t.acts(text)
    R = t.relative(A)
    dense = t.dense(dense_threshold)
    k = min(top, A.shape[1])
    per_token = []
    for i in range(len(ids)):
        v, j = R[i].topk(k)
        per_token.append(
            [
                {"index": int(a), "activation": float(A[i, a]), "relative": float(b)}
                for a, b in zip(j, v)
                if b > 0
            ]
        )
    peak, where = (
        R.max(0) if len(ids) else (torch.zeros(A.shape[1]), torch.zeros(A.shape[1], dtype=torch.long))
    )
    peak = torch.where(dense, torch.zeros_like(peak), peak)
    order = torch.argsort(peak, descending=True)
    feats = [
        {
            "index": int(f),
            "activation": float(A[where[f], f]),
            "relative": float(peak[f]),
            "token": int(where[f]),
            "label": t.labels.get(int(f)),
        }
        for f in order[: max(top, 1) * 3]
        if peak[f] > 0
    ]
    return {
        "sae": t.art.id,
        "tokens": _token_text(t.vocab, ids),
        "token_ids": ids,
        "per_token": per_token,
        "features": feats,
        "values": {f["index"]: A[:, f["index"]].tolist() for f in feats[:top]},
        "ranking": "relative" if t.maxv is not None else "raw",
        "extraction": t.extraction,
        "dense_threshold": dense_threshold,
        "left_out_dense": int((dense & (A.max(0).values > 0)).sum()) if len(ids) else 0,
        "note": None if t.maxv is not None else NO_EXTRACTION_NOTE,
    }


def _contrast_texts(texts: str | list[str], against: str | list[str] | None) -> tuple[list[str], list[str]]:
    """The texts and their contrast (by default the texts in ordinary case), checked to differ."""
    texts = _as_texts(texts, "text")
    against = [ordinary_case(x) for x in texts] if against is None else _as_texts(against, "contrast text")
    if sorted(x.strip() for x in texts) == sorted(x.strip() for x in against):
        hint = (
            (
                "the text is already in its ordinary case: give a contrast text (e.g. the same text written "
                "another way)"
            )
            if len(texts) == 1
            else "give contrast texts that differ from the texts."
        )
        raise FeatureError(
            "The contrast texts are the same as the texts, so no feature can separate them.", hint
        )
    return texts, against


def _side_stats(t: "_Tester", side: str, runs: list) -> dict[str, torch.Tensor]:
    """One side's per-feature firing rate, mean relative activation and peak, and its mean hook input."""
    A = torch.cat([a for _, a, _ in runs])
    if not len(A):
        raise FeatureError(f"The {side} has no tokens.", f"type some text for the {side}.")
    return {
        "rate": (A > 0).float().mean(0),
        "act": t.relative(A).mean(0),
        "peak": A.max(0).values,
        "mean_input": torch.cat([x for _, _, x in runs]).mean(0),
    }


def contrast(
    ws: Workspace,
    sae: str | Artifact,
    texts: str | list[str],
    against: str | list[str] | None = None,
    *,
    top: int = 10,
    model: str | None = None,
    dense_threshold: float = DENSE_THRESHOLD,
) -> dict[str, Any]:
    """Which features fire on ``texts`` and not on ``against`` (by default the same texts in their
    ordinary case, see :func:`ordinary_case`). Per feature, over each side's tokens: the firing rate and
    the mean activation relative to the feature's own maximum; the score is the mean of the two
    differences (1: fires at full strength on every token of the texts and never on the others). Dense
    features are left out and counted; per-token values of the best features are kept for both sides.
    ``alignment`` is the cosine between a feature's decoder row and the mean shift of the hook's
    activations from the contrast to the texts; ``steer_with`` is the best aligned of the top
    ``STEER_CANDIDATES`` features, the one whose direction writes what the texts have."""
    texts, against = _contrast_texts(texts, against)
    t = _Tester(ws, sae, model)
    sides = {"text": [t.acts(x, True) for x in texts], "contrast": [t.acts(x, True) for x in against]}
    stats = {side: _side_stats(t, side, runs) for side, runs in sides.items()}
    # the direction from the contrast to the text in the hook's space; a feature whose decoder row points
    # along it is the one to steer with (detecting a difference and writing it are not always one feature)
    shift = stats["text"]["mean_input"] - stats["contrast"]["mean_input"]
    W = t.sae.W_dec.detach().float().cpu()
    alignment = (W @ shift) / (W.norm(dim=1) * shift.norm()).clamp_min(1e-12)
    a, b = stats["text"], stats["contrast"]
    if t.maxv is None:  # raw values: scale the activation term by the larger side's peak
        scale = torch.maximum(a["peak"], b["peak"]).clamp_min(1e-6)
        a["act"], b["act"] = a["act"] / scale, b["act"] / scale
    score = 0.5 * (a["rate"] - b["rate"]) + 0.5 * (a["act"] - b["act"])
    dense = t.dense(dense_threshold)
    fired = (a["peak"] > 0) | (b["peak"] > 0)
    score = torch.where(dense | ~fired, torch.full_like(score, -2.0), score)
    order = torch.argsort(score, descending=True)[:top]
    feats = []
    for f in order.tolist():
        if score[f] <= 0:
            break
        feats.append(
            {
                "index": f,
                "score": float(score[f]),
                "rate": float(a["rate"][f]),
                "rate_contrast": float(b["rate"][f]),
                "relative": float(a["act"][f]),
                "relative_contrast": float(b["act"][f]),
                "peak": float(a["peak"][f]),
                "peak_contrast": float(b["peak"][f]),
                "label": t.labels.get(f),
                "alignment": float(alignment[f]),
                "max": float(t.maxv[f]) if t.maxv is not None else None,
            }
        )

    def side_rows(runs):
        return [
            {
                "tokens": _token_text(t.vocab, ids),
                "token_ids": ids,
                "values": {f["index"]: A[:, f["index"]].tolist() for f in feats},
            }
            for ids, A, _ in runs
        ]

    steer = max(feats[:STEER_CANDIDATES], key=lambda f: f["alignment"])["index"] if feats else None
    return {
        "sae": t.art.id,
        "features": feats,
        "steer_with": steer,
        "shift_norm": float(shift.norm()),
        "texts": side_rows(sides["text"]),
        "contrast": side_rows(sides["contrast"]),
        "ranking": "relative" if t.maxv is not None else "raw",
        "extraction": t.extraction,
        "dense_threshold": dense_threshold,
        "left_out_dense": int((dense & fired).sum()),
        "note": None if t.maxv is not None else NO_EXTRACTION_NOTE,
    }
