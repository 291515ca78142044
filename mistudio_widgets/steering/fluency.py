"""The one fluency rule: how readable a steered continuation is, judged against the unsteered one.
Used by the automatic strength, by every steered generation's metrics and by the widget (which names
it)."""

from __future__ import annotations

import re

import torch

from ..data.models import LoadedModel
from .results import Fluency

# One fluency rule, used by the automatic strength, by every steered generation's metrics and by the
# widget (which names it). A continuation is read lower-cased by the unsteered model after the prompt
# (so that steering towards capitals, which the model finds surprising but which stays readable, is
# judged on its words and grammar), its words are looked up in the tokenizer's vocabulary (an invented
# word such as "theirsells" is not one token; common English words, rare ones included, are), and its
# word trigrams are checked for loops.
AUTO_FRACTIONS = (0.05, 0.1, 0.15, 0.2, 0.25, 0.275, 0.3, 0.325, 0.35, 0.4, 0.45, 0.5, 0.6, 0.8)


AUTO_MAX_PERPLEXITY = 10.0  # the lower-cased steered continuation's perplexity / the unsteered one's (at
# 10-30x, steered answers read as words in nonsense: "I'm a LAD", "I'M DAYNEAZES"; bench_shout.py)


AUTO_MAX_REPETITION = 0.2  # share of the continuation's word trigrams that repeat an earlier one


AUTO_MAX_INVENTED = 0.15  # share of its words (3+ letters) that are invented (see fluency)


UNEXPECTED_PIECE = 0.05  # a word's later piece below this probability marks an unknown word as invented


FLUENCY_RULE = (
    "fluent: lower-cased and read by the unsteered model after the prompt, its perplexity is at most "
    "{max_perplexity:g}x the unsteered continuation's; at most {max_repetition:.0%} of its word (and "
    "token) trigrams repeat an earlier one; and it holds fewer than two invented words (unknown to the "
    "vocabulary and unexpected by the model), or they are at most {max_invented:.0%} of its words (or no "
    "more than in the unsteered continuation)"
)


def fluency_rule(
    max_perplexity: float = AUTO_MAX_PERPLEXITY, max_repetition: float = AUTO_MAX_REPETITION
) -> str:
    return FLUENCY_RULE.format(
        max_perplexity=max_perplexity, max_repetition=max_repetition, max_invented=AUTO_MAX_INVENTED
    )


@torch.no_grad()
def fluency(lm: LoadedModel, ids: torch.Tensor, text: str) -> Fluency:
    """How fluent a continuation ``text`` of the prompt ``ids`` reads (the one definition): the perplexity
    of the lower-cased text under the unsteered model after the prompt; the share of its word trigrams
    (or token trigrams, for loops without words) that repeat an earlier one; and the share of its words
    (3+ letters) that are invented (``unknown`` lists them): of 4+ letters, no token of the vocabulary
    in any casing, and a piece after its first that the model did not expect (below 5%): "theirsells"
    is invented; "hugging" before "face", or a film title the model knows, is not."""
    folded = text.lower()
    enc = lm.tokenizer(folded, add_special_tokens=False, return_offsets_mapping=True)
    cont, offsets = enc["input_ids"], enc["offset_mapping"]
    if not cont:
        return Fluency(perplexity=float("inf"), repetition=1.0, invented=1.0)
    seq = torch.cat([ids, torch.tensor([cont], dtype=torch.long)], 1).to(lm.device)
    logits = lm.model(input_ids=seq, use_cache=False).logits[0, ids.shape[1] - 1 : -1].float()
    logp = torch.log_softmax(logits, -1).gather(1, torch.tensor(cont, device=logits.device)[:, None])[:, 0]
    rep = max(_repeated_trigrams(folded.split()), _repeated_trigrams(cont))  # words, or tokens ("!!!!")
    probs = logp.exp().tolist()
    unknown: list[str] = []
    for m in re.finditer(r"[a-z]{4,}", folded):
        word = m.group()
        if word in unknown or _known_word(lm.tokenizer, word):
            continue
        pieces = [i for i, (a, b) in enumerate(offsets) if a < m.end() and b > m.start()]
        if len(pieces) > 1 and min(probs[i] for i in pieces[1:]) >= UNEXPECTED_PIECE:
            continue  # the model expected the whole word: a name or a rare word it knows
        unknown.append(word)
    n_words = len(re.findall(r"[a-z]{3,}", folded))
    return Fluency(
        perplexity=float(torch.exp(-logp.mean())),
        repetition=rep,
        invented=len(unknown) / n_words if n_words else 0.0,
        unknown=unknown[:8],
    )


def baseline_fluency(lm: LoadedModel, ids: torch.Tensor, text: str) -> Fluency:
    """The unsteered continuation's :func:`fluency`, which a steered one is held against; when the model
    said nothing, a baseline any steered text meets on perplexity, repetition and invented words."""
    if not text:
        return Fluency(perplexity=float("inf"), repetition=0.0, invented=0.0)
    return fluency(lm, ids, text)


def _repeated_trigrams(items: list) -> float:
    """The share of consecutive triples that repeat an earlier one."""
    grams = [tuple(items[i : i + 3]) for i in range(len(items) - 2)]
    return 1.0 - len(set(grams)) / len(grams) if grams else 0.0


def _known_word(tokenizer, word: str) -> bool:
    """Whether the vocabulary holds ``word`` as one token in some casing (with or without a leading
    space): "theirsells" is not known; "hugging" is (as " Hugging")."""
    for variant in (word, word.capitalize(), word.upper()):
        for text in (" " + variant, variant):
            if len(tokenizer(text, add_special_tokens=False)["input_ids"]) == 1:
                return True
    return False


def is_fluent(
    f: Fluency,
    unsteered: Fluency,
    max_perplexity: float = AUTO_MAX_PERPLEXITY,
    max_repetition: float = AUTO_MAX_REPETITION,
) -> bool:
    """The rule of :data:`FLUENCY_RULE` for a continuation's :func:`fluency` against the unsteered one's."""
    few_unknown = len(f.unknown) < 2  # one name or rare word is not broken text
    return (
        f.perplexity <= max_perplexity * unsteered.perplexity
        and f.repetition <= max(max_repetition, unsteered.repetition)
        and (few_unknown or f.invented <= max(AUTO_MAX_INVENTED, unsteered.invented))
    )
