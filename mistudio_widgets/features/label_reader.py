"""Scoring a label on held-out texts. A reader turns the label's words, and nothing else, into a
prediction for every token of a text; a text's prediction is its highest. The score is how well those
predictions separate held-out texts where the feature fires from texts where it stays silent (AUC,
chance 0.5), half of the silent ones holding the tokens the feature fires on most (hard negatives).

The reader understands: quoted tokens or words (``"shall"``; inside ``(e.g. ...)`` or after "such as",
"fires most on" they count half), forms named in words (capital letters, capitalised words, digits,
punctuation, named punctuation marks, line breaks, word continuations) and contexts (``before "."``,
``after "of"``, ``at the start of a line``). A label naming none of these is read for its content words
(each counts half). Which texts it is scored on depends only on the feature, never on the label, so
every explainer's label of a feature is scored on the same texts."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .label_evidence import SparseActs
from .token_forms import (
    CAPITALISED,
    CAPS,
    CONTINUATION,
    DIGIT,
    LINE_BREAK_KEY,
    LINE_START,
    NEWLINE,
    PUNCT,
    Positions,
)

WINDOW_BEFORE, WINDOW_AFTER = 8, 3  # a held-out text: 8 tokens before a firing token, 3 after
CONTEXT_MISS = 0.3  # the prediction where the label's target holds but its context does not
CHANCE = 0.5
MIN_TEXTS = 3

_QUOTE = re.compile(r"\"([^\"]+)\"|\u201c([^\u201d]+)\u201d|(?<![A-Za-z])'([^']+)'(?![A-Za-z])")
_ROLE_WORDS = (  # (pattern in the text before a quote, the role of the quotes after it)
    (r"\be\.g\.|such as|for example|fires most on|\blike\b|strongest on", "weak"),
    (r"\bbefore\b|followed by|preceding", "before"),
    (r"\bafter\b|preceded by|\bfollowing\b", "after"),
    (r"\balso\b|\bor\b|\band\b|^|,|:", None),  # keeps the role
)
_FORMS = (
    (r"line break|newline|new line", NEWLINE),
    (r"punctuation", PUNCT),
    (r"digit|number|numeral|\byears?\b", DIGIT),
    (r"all[- ]capital|capital letters|upper[- ]?case|all caps|\bcaps\b|shout", CAPS),
    (r"capitali[sz]ed|capital initial|initial capital", CAPITALISED),
    (r"continuation|inside (?:a |of )?words?|middle of (?:a )?words?|word piece|subword", CONTINUATION),
)
_PUNCT_NAMES = {
    "comma": ",",
    "period": ".",
    "full stop": ".",
    "question mark": "?",
    "exclamation": "!",
    "colon": ":",
    "semicolon": ";",
    "apostrophe": "'",
    "hyphen": "-",
    "quotation mark": '"',
}
_STOP = set(
    "the a an of to in on and or for with by at from as is are was be this that these those it its "
    "token tokens word words text feature fires fire firing when where which about some any other "
    "various mostly often used use like".split()
)


@dataclass
class Reading:
    """What a label claims, as strings (resolved against a text's keys by :func:`predict`)."""

    targets: list[str] = field(default_factory=list)
    weak: list[str] = field(default_factory=list)
    forms: int = 0
    before: list[str] = field(default_factory=list)
    after: list[str] = field(default_factory=list)
    line_start: bool = False

    @property
    def checkable(self) -> bool:
        return bool(self.targets or self.weak or self.forms or self.before or self.after or self.line_start)


def _norm(s: str) -> str:
    s = s.replace("\\n", "\n")
    return LINE_BREAK_KEY if "\n" in s else (s.strip().lower() or " ")


def read(label: str) -> Reading:
    """The label's claims (only its own words are read)."""
    text = re.split(r"[;,]?\s*(?:\u2192\s*)?\bpromotes\b", label, maxsplit=1)[0]
    text = re.sub(r"\(dense:[^)]*\)", " ", text)
    r, role, last = Reading(), "target", 0
    for m in _QUOTE.finditer(text):
        before_text = text[last : m.start()].lower()
        hits = [
            (mm.end(), name)
            for pat, name in _ROLE_WORDS
            for mm in re.finditer(pat, before_text)
            if name is not None
        ]
        if hits:
            role = max(hits)[1]
        elif ")" in before_text:
            role = "target"
        q = _norm(next(g for g in m.groups() if g is not None))
        {"target": r.targets, "weak": r.weak, "before": r.before, "after": r.after}[role].append(q)
        last = m.end()
    bare = _QUOTE.sub(" ", text).lower()
    for pat, bit in _FORMS:
        if re.search(pat, bare):
            r.forms |= bit
    if r.forms & CAPS and re.search(r"capitali[sz]ed", bare) and not re.search(r"all[- ]capital", bare):
        r.forms &= ~CAPS
    r.targets += [ch for name, ch in _PUNCT_NAMES.items() if name in bare]
    if re.search(r"(?:start|beginning) of (?:a |the )?lines?|line start", bare):
        r.line_start = True
    if not r.checkable:
        r.weak = [w for w in re.findall(r"[a-z][a-z'-]{2,}", bare) if w not in _STOP]
    return r


def predict(r: Reading, at: Positions, positions: np.ndarray) -> np.ndarray:
    """The reader's prediction (0..1) at each of ``positions`` of ``at``."""

    def ids(words: list[str]) -> np.ndarray:
        return np.array([at.keys.get(w) for w in words if at.keys.get(w) >= 0], dtype=np.int32)

    tok, word = at.token[positions], at.word[positions]
    tgt, weak = ids(r.targets), ids(r.weak)
    if r.targets or r.weak or r.forms:
        hit = np.isin(tok, tgt) | np.isin(word, tgt) | ((at.form[positions] & r.forms) != 0)
        t = np.where(hit, 1.0, np.where(np.isin(tok, weak) | np.isin(word, weak), 0.5, 0.0))
    else:
        t = np.ones(len(positions))
    ok = np.ones(len(positions), bool)
    if r.before:
        ok &= np.isin(at.next_word[positions], ids(r.before))
    if r.after:
        ok &= np.isin(at.prev_word[positions], ids(r.after))
    if r.line_start:
        ok &= (at.form[positions] & LINE_START) != 0
    return t * np.where(ok, 1.0, CONTEXT_MISS)


# ---------------------------------------------------------------------------------------------
# The held-out texts of a feature
@dataclass
class Texts:
    """Held-out windows of a feature: start positions of the activating ones and the silent ones."""

    at: Positions
    positive: np.ndarray
    negative: np.ndarray
    hard: int  # how many of the negatives hold a token the feature fires on most
    fired: int  # held-out tokens the feature fires on

    @property
    def width(self) -> int:
        return WINDOW_BEFORE + WINDOW_AFTER + 1

    def text(self, start: int) -> str:
        return "".join(self.at.vocab[int(i)] for i in self.at.ids[start : start + self.width])


def held_out_texts(ho: SparseActs, f: int, hard_texts: list[str], n: int, seed: int) -> Texts:
    """Up to ``n`` activating windows (half around the strongest firings, half around others) and as many
    silent ones (half holding a token of ``hard_texts``, the keys the feature fires on most where it was
    explained, the rest anywhere), drawn with a seed of the feature's own."""
    at = ho.at
    W, T, N = WINDOW_BEFORE + WINDOW_AFTER + 1, at.length, len(at)
    rng = np.random.default_rng([seed, f])
    pos, val = ho.of(f)
    seq_start = (pos // T) * T
    starts = np.clip(pos - WINDOW_BEFORE, seq_start, seq_start + T - W)
    order = np.argsort(-val, kind="stable")
    strong, rest = order[: n // 2], order[n // 2 :]
    rest = rng.permutation(rest)[: n - len(strong)]
    positive = np.unique(starts[np.concatenate([strong, rest])])
    fired = np.zeros(N + 1, np.int64)
    fired[pos + 1] = 1
    cs = np.cumsum(fired)
    cand = np.arange(N - W + 1)
    cand = cand[(cand % T) <= T - W]
    silent = cand[cs[cand + W] - cs[cand] == 0]
    hard_ids = np.array([at.keys.get(k) for k in hard_texts if at.keys.get(k) >= 0], dtype=np.int32)
    has = np.zeros(N + 1, np.int64)
    if len(hard_ids):
        has[1:] = np.isin(at.token, hard_ids)
    hs = np.cumsum(has)
    is_hard = hs[silent + W] - hs[silent] > 0
    n_neg = max(len(positive), MIN_TEXTS)
    hard = rng.permutation(silent[is_hard])[: n_neg // 2]
    easy = rng.permutation(silent[~is_hard])[: n_neg - len(hard)]
    negative = np.concatenate([hard, easy])
    return Texts(at, positive, negative, len(hard), len(pos))


@dataclass
class Score:
    """A label's held-out score: AUC with its standard error (Hanley-McNeil), chance 0.5."""

    score: float | None
    se: float | None
    positives: int
    negatives: int
    hard_negatives: int
    fired: int
    reason: str | None = None
    chance: float = CHANCE
    rule: str = "reader AUC on held-out texts"

    @property
    def verdict(self) -> str:
        """'above chance' (score minus two standard errors above 0.5), 'at chance' or 'unscored'."""
        if self.score is None:
            return "unscored"
        return "above chance" if self.score - 2 * (self.se or 0.0) > CHANCE else "at chance"

    def as_dict(self) -> dict:
        return {
            "score": self.score,
            "se": self.se,
            "chance": self.chance,
            "rule": self.rule,
            "verdict": self.verdict,
            "positives": self.positives,
            "negatives": self.negatives,
            "hard_negatives": self.hard_negatives,
            "held_out_firings": self.fired,
            **({"reason": self.reason} if self.reason else {}),
        }


def auc(pos: np.ndarray, neg: np.ndarray) -> float:
    """P(a random activating text scores above a random silent one), ties half."""
    pos, neg = np.asarray(pos, float), np.asarray(neg, float)
    gt = (pos[:, None] > neg[None, :]).mean()
    eq = (pos[:, None] == neg[None, :]).mean()
    return float(gt + 0.5 * eq)


def auc_se(a: float, n_pos: int, n_neg: int) -> float:
    q1, q2 = a / (2 - a), 2 * a * a / (1 + a)
    var = (a * (1 - a) + (n_pos - 1) * (q1 - a * a) + (n_neg - 1) * (q2 - a * a)) / (n_pos * n_neg)
    return float(math.sqrt(max(var, 0.0)))


def window_predictions(r: Reading, texts: Texts, starts: np.ndarray) -> np.ndarray:
    if not len(starts):
        return np.zeros(0)
    grid = starts[:, None] + np.arange(texts.width)[None, :]
    return predict(r, texts.at, grid.reshape(-1)).reshape(grid.shape).max(1)


def score_reading(r: Reading, texts: Texts) -> Score:
    n_pos, n_neg = len(texts.positive), len(texts.negative)
    base: dict[str, Any] = dict(
        positives=n_pos, negatives=n_neg, hard_negatives=texts.hard, fired=texts.fired
    )
    if n_pos < MIN_TEXTS or n_neg < MIN_TEXTS:
        why = (
            f"the feature fired on {texts.fired} held-out token(s); {MIN_TEXTS} are needed"
            if n_pos < MIN_TEXTS
            else "too few held-out texts where the feature is silent"
        )
        return Score(None, None, reason=why, **base)
    if not r.checkable:
        return Score(None, None, reason="the label names nothing the reader can check", **base)
    a = auc(window_predictions(r, texts, texts.positive), window_predictions(r, texts, texts.negative))
    return Score(a, auc_se(a, n_pos, n_neg), **base)


def score_label(label: str, texts: Texts) -> Score:
    return score_reading(read(label), texts)
