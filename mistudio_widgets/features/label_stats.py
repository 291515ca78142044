"""The statistical explainer: a short, checkable label for every live feature, read off where it fires in
the explained texts (``label_evidence``), with no language model.

In order, it says: the tokens (or whole words) the feature fires on when a few of them cover most
firings, case and leading-space variants together (``"shall" (also "Shall")``); else the form those
words share when one dominates and is rarer elsewhere (``all-capital words``); else that it found no
common token or form, with the words it fires on most. When the feature fires on only part of what the
label names, it adds the context that decides (``before "."``, ``after "of"``, ``at the start of a
line``) if one raises the share markedly; then its density when the feature is dense, and the token its
decoder direction promotes when the logit lens is clear. It never names a theme it cannot check."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

from .label_evidence import Evidence, SparseActs
from .token_forms import (
    CAPITALISED,
    CAPS,
    CONTINUATION,
    DIGIT,
    FORM_NAMES,
    LINE_BREAK_KEY,
    LINE_START,
    NEWLINE,
    PUNCT,
    shown,
)

METHOD = "statistical"
VERSION = "stats-1"
COVER, MAX_KEYS, MIN_SHARE = 0.6, 4, 0.05  # a token label: <= 4 keys, each >= 5%, covering >= 60%
FORM_SHARE, FORM_LIFT = 0.6, 2.0  # a form label: >= 60% of firings, >= 2x its share of all words
DENSE = 0.02  # said dense from this share of tokens


@dataclass
class StatLabel:
    feature: int
    label: str
    kind: str  # "tokens" | "words" | "form" | "mixed"
    fires: int  # firings in the explained texts
    precision: float  # share of what the label names (before context) on which the feature fires
    context: str | None = None


def _quote(s: str) -> str:
    return '"' + s.replace('"', "'") + '"'


def _variants(texts: list[str], limit: int = 2) -> str:
    """``"shall" (also "Shall")``: the commonest spelling, and others seen at least 10% as often."""
    c = Counter(texts)
    (top, n), rest = c.most_common(1)[0], c.most_common()[1:]
    also = [t for t, m in rest if m >= 0.1 * n][:limit]
    return _quote(top) + (f" (also {', '.join(map(_quote, also))})" if also else "")


def _ranked(keys: np.ndarray, weights: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Distinct keys, most weight first, with their shares of the total weight."""
    u, inv = np.unique(keys, return_inverse=True)
    c = np.bincount(inv, weights=weights, minlength=len(u)) if len(u) else np.zeros(0)
    order = np.argsort(-c, kind="stable")
    return u[order], c[order] / max(float(c.sum()), 1e-12)


def _pick(keys: np.ndarray, shares: np.ndarray) -> tuple[list[int], float]:
    chosen, cum = [], 0.0
    for k, s in zip(keys[:MAX_KEYS], shares[:MAX_KEYS]):
        if s < MIN_SHARE or cum >= COVER:
            break
        chosen.append(int(k))
        cum += float(s)
    return chosen, cum


class _Context:
    """The context that best decides, inside what a label names, where the feature fires."""

    def __init__(self, ex: SparseActs):
        self.at = ex.at

    def find(self, named: np.ndarray, fired: np.ndarray) -> tuple[str | None, float]:
        at = self.at
        on, off = named & fired, named & ~fired
        n_on, n_off = int(on.sum()), int(off.sum())
        if n_on < 3 or n_off < 3:
            return None, 0.0
        base = n_on / (n_on + n_off)
        best, best_p = None, base
        for arr, word in ((at.next_word, "before"), (at.prev_word, "after")):
            k, s = _ranked(arr[on])
            if not len(k) or k[0] < 0 or s[0] < 0.4:
                continue
            n_with_off = int((arr[off] == k[0]).sum())
            p = s[0] * n_on / (s[0] * n_on + n_with_off)
            if p > best_p:
                best, best_p = f"{word} {_quote(at.keys.text[k[0]])}", p
        ls_on = float((at.form[on] & LINE_START).astype(bool).mean())
        if ls_on >= 0.5:
            n_ls_off = int((at.form[off] & LINE_START).astype(bool).sum())
            p = ls_on * n_on / (ls_on * n_on + n_ls_off)
            if p > best_p:
                best, best_p = "at the start of a line", p
        if best is None or best_p < max(1.5 * base, base + 0.2):
            return None, base
        return best, best_p


def _logit_note(logits: tuple[list[str], list[float]] | None) -> str:
    """``; promotes "X"`` when the logit lens is clear: its top token well above the fifth, a whole word."""
    if not logits or len(logits[1]) < 5:
        return ""
    toks, vals = logits
    top = shown(toks[0])
    if toks[0][:1] == " " and vals[0] > 0 and vals[0] >= 1.3 * vals[4] and sum(c.isalpha() for c in top) >= 2:
        return f"; promotes {_quote(top)}"
    return ""


def explain_all(
    ev: Evidence,
    features: list[int] | None = None,
    logits: dict[int, tuple[list[str], list[float]]] | None = None,
) -> dict[int, StatLabel]:
    """A label for each of ``features`` (default: every feature that fires in the explained texts)."""
    ex, at = ev.explain, ev.explain.at
    counts = ex.count()
    feats = [int(f) for f in (features if features is not None else np.nonzero(counts)[0])]
    valid = ~np.isin(at.ids, list(ev.special)) if ev.special else np.ones(len(at), bool)
    base = {bit: float(((at.form & bit) != 0)[valid].mean()) for bit in FORM_NAMES}
    ctx = _Context(ex)
    out: dict[int, StatLabel] = {}
    for f in feats:
        pos, val = ex.of(f)
        if not len(pos):
            continue
        out[f] = _explain_one(f, pos, val, ex, base, ctx, valid, logits.get(f) if logits else None)
    return out


def _explain_one(f, pos, val, ex: SparseActs, base, ctx: _Context, valid, logits) -> StatLabel:
    """Shares are of the feature's activation mass, so a few strong firings outweigh many faint ones."""
    at = ex.at
    n = len(pos)
    w = val.astype(np.float64) / max(float(val.sum()), 1e-12)
    tk, wk, fm = at.token[pos], at.word[pos], at.form[pos]
    t_keys, t_shares = _ranked(tk, w)
    w_keys, w_shares = _ranked(wk, w)
    t_pick, t_cum = _pick(t_keys, t_shares)
    w_pick, w_cum = _pick(w_keys, w_shares)
    forms = [
        (float(w[(fm & bit) != 0].sum()), bit)
        for bit in (NEWLINE, PUNCT, DIGIT, CAPS, CAPITALISED, CONTINUATION)
    ]
    lifts = [(s / max(base[b], 1e-6), b) for s, b in forms if s >= FORM_SHARE and s >= FORM_LIFT * base[b]]
    form = max(lifts)[1] if lifts else None  # the most telling form: the largest lift over its base rate
    fired = np.zeros(len(at), bool)
    fired[pos] = True
    if w_cum >= COVER and w_cum > t_cum + 0.1 and len(w_pick) <= len(t_pick or w_pick):
        kind, keys, arr = "words", w_pick, at.word
    elif t_cum >= COVER and (form is None or len(t_pick) <= 2 or form == NEWLINE):
        kind, keys, arr = "tokens", t_pick, at.token
    elif form is not None:
        kind, keys, arr = "form", [], None
    else:
        kind, keys, arr = "mixed", [], None
    if kind in ("tokens", "words"):
        assert arr is not None
        named = np.isin(arr, keys) & valid
        parts = []
        for k in keys:
            if at.keys.text[k] == LINE_BREAK_KEY:
                parts.append("line breaks")
                continue
            sel = pos[arr[pos] == k]
            texts = (
                [at.keys.text[i] for i in at.word_text[sel]]
                if kind == "words"
                else [shown(at.vocab[int(at.ids[i])]) for i in sel]
            )
            parts.append(_variants(texts))
        head = ", ".join(parts)
    elif kind == "form":
        assert form is not None
        named = ((at.form & form) != 0) & valid
        has = (fm & form) != 0
        examples = [at.keys.text[i] for i in _ranked(at.word_text[pos[has]], w[has])[0][:3]]
        head = FORM_NAMES[form]
        tail = f" (e.g. {', '.join(map(_quote, examples))})" if form not in (NEWLINE,) else ""
    else:
        named = np.zeros(len(at), bool)
        top = [at.keys.text[i] for i in _ranked(at.word_text[pos], w)[0][:3]]
        head = f"no common token or form; fires most on {', '.join(map(_quote, top))}"
    precision = float((named & fired).sum() / max(named.sum(), 1)) if kind != "mixed" else 0.0
    context = None
    if kind != "mixed" and precision < 0.6:
        context, _ = ctx.find(named, fired)
    label = head + (f" {context}" if context else "")
    if kind == "form":
        label += tail
    density = n / max(int(valid.sum()), 1)
    if density >= DENSE:
        label += f" (dense: {density:.0%} of tokens)"
    label += _logit_note(logits)
    return StatLabel(f, label, kind, n, precision, context)


def fired_keys(ex: SparseActs, f: int, n: int = 5) -> list[str]:
    """The token keys a feature fires on most in the explained texts (its hard negatives hold them)."""
    pos, val = ex.of(f)
    keys, _ = _ranked(ex.at.token[pos], val.astype(np.float64))
    return [ex.at.keys.text[k] for k in keys[:n]]
