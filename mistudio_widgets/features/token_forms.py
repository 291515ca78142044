"""What each position of a token array is, as plain facts a label can name and a reader can check: the
token's key (its text without surrounding spaces, lower-cased; case and leading-space variants share a
key), the word it belongs to (tokens joined up to the next word boundary, so WID|OW reads WIDOW), the
form of that word (all capitals, capitalised, digits, punctuation, a line break, a word continuation,
the first word of a line) and the words before and after it.

Computed once per token array (tens of thousands of positions, a fraction of a second) and shared by the
statistical explainer (``label_stats``) and the label reader (``label_reader``)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# form bits of a position (word-level unless said otherwise)
CAPS, CAPITALISED, DIGIT, PUNCT, NEWLINE, CONTINUATION, LINE_START = (1 << i for i in range(7))
FORM_NAMES = {  # bit -> the words a label uses for it (the reader parses the same words)
    NEWLINE: "line breaks",
    PUNCT: "punctuation",
    DIGIT: "digits",
    CAPS: "all-capital words",
    CAPITALISED: "capitalised words",
    CONTINUATION: "word continuations (not the first token of a word)",
}
LINE_BREAK_KEY, SPACE_KEY = "\\n", " "


def token_key(text: str) -> str:
    """The group a token's text belongs to: line breaks together, spaces together, otherwise the text
    without surrounding whitespace, lower-cased ("Shall", " shall" and "shall" share one key)."""
    if "\n" in text:
        return LINE_BREAK_KEY
    s = text.strip()
    return s.lower() if s else SPACE_KEY


def shown(text: str) -> str:
    """A token's text as a label shows it (line breaks as \\n)."""
    if "\n" in text:
        return LINE_BREAK_KEY
    return text.strip() or SPACE_KEY


def _starts_word(prev: str, cur: str) -> bool:
    if not prev or not cur:
        return True
    return not cur[0].isalnum() or not prev[-1].isalnum()


def word_form(word: str) -> int:
    letters = [c for c in word if c.isalpha()]
    bits = 0
    if len(letters) >= 2 and all(c.isupper() for c in letters):
        bits |= CAPS
    elif letters and word[:1].isupper() and any(c.islower() for c in letters):
        bits |= CAPITALISED
    if any(c.isdigit() for c in word):
        bits |= DIGIT
    if word and not any(c.isalnum() for c in word):
        bits |= PUNCT
    return bits


class Keys:
    """Interned strings: each distinct key gets a small integer id."""

    def __init__(self) -> None:
        self.ids: dict[str, int] = {}
        self.text: list[str] = []

    def id(self, s: str) -> int:
        i = self.ids.get(s)
        if i is None:
            i = self.ids[s] = len(self.text)
            self.text.append(s)
        return i

    def get(self, s: str) -> int:
        return self.ids.get(s, -1)


@dataclass
class Positions:
    """Per-position facts of a token array [sequences, length], flattened (position = s * length + t).
    ``token``/``word``/``prev_word``/``next_word`` are ids in ``keys`` (-1 where there is none)."""

    length: int
    ids: np.ndarray  # token ids
    token: np.ndarray  # token key ids
    word: np.ndarray  # word key ids (the lower-cased word the token belongs to)
    word_text: np.ndarray  # ids of the word as written (case kept), for examples
    prev_word: np.ndarray
    next_word: np.ndarray
    form: np.ndarray  # form bits
    keys: Keys
    vocab: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.ids)


def analyse(tokens: np.ndarray, vocab: tuple[str, ...], special: set[int]) -> Positions:
    """The facts of every position of ``tokens`` (special tokens count as line breaks between words)."""
    S, T = tokens.shape
    flat = tokens.reshape(-1).astype(np.int64)
    keys = Keys()
    keys.id(LINE_BREAK_KEY)
    n = len(flat)
    tok = np.empty(n, np.int32)
    word = np.empty(n, np.int32)
    word_text = np.empty(n, np.int32)
    form = np.zeros(n, np.int32)
    first_of_word = np.zeros(n, bool)
    text = [vocab[i] if 0 <= i < len(vocab) and i not in special else "\n" for i in flat.tolist()]
    for s in range(S):
        a, b = s * T, (s + 1) * T
        starts = [a + t for t in range(T) if t == 0 or _starts_word(text[a + t - 1], text[a + t])]
        starts.append(b)
        line_start = True
        for w0, w1 in zip(starts[:-1], starts[1:]):
            pieces = text[w0:w1]
            joined = "".join(pieces)
            w = joined.strip()
            has_break = "\n" in joined
            if has_break or not w:
                key = LINE_BREAK_KEY if has_break else SPACE_KEY
                wid = wtid = keys.id(key)
                bits = NEWLINE if has_break else 0
            else:
                wid, wtid = keys.id(w.lower()), keys.id(w)
                bits = word_form(w) | (LINE_START if line_start else 0)
            word[w0:w1], word_text[w0:w1] = wid, wtid
            form[w0:w1] = bits
            first_of_word[w0] = True
            for p in range(w0, w1):
                tok[p] = keys.id(token_key(text[p]))
                if "\n" in text[p]:
                    form[p] |= NEWLINE
            if has_break:
                line_start = True
            elif w:
                line_start = False
    form[~first_of_word] |= CONTINUATION
    prev_word, next_word = _neighbour_words(word, first_of_word, T)
    return Positions(T, flat, tok, word, word_text, prev_word, next_word, form, keys, vocab)


def _neighbour_words(word: np.ndarray, first: np.ndarray, T: int) -> tuple[np.ndarray, np.ndarray]:
    """For each position, the key of the word before its word and after it (-1 at a sequence's ends)."""
    n = len(word)
    prev_w, next_w = np.full(n, -1, np.int32), np.full(n, -1, np.int32)
    seq = np.arange(n) // T
    starts = np.nonzero(first)[0]
    ends = np.append(starts[1:], n)
    run = np.repeat(np.arange(len(starts)), ends - starts)
    run_word, run_seq = word[starts], seq[starts]
    before = np.full(len(starts), -1, np.int32)
    before[1:] = np.where(run_seq[1:] == run_seq[:-1], run_word[:-1], -1)
    after = np.full(len(starts), -1, np.int32)
    after[:-1] = np.where(run_seq[:-1] == run_seq[1:], run_word[1:], -1)
    prev_w[:], next_w[:] = before[run], after[run]
    return prev_w, next_w
