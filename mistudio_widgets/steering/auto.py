"""The automatic strength: a short sweep that picks the largest strength of a feature whose steered
text stays fluent by the one rule (see :mod:`.fluency`)."""

from __future__ import annotations

import dataclasses
from typing import Callable

import torch

from ..core.configs import SteerConfig
from ..core.jobs import JobControl
from ..core.workspace import Workspace
from ..features import check_feature_index, load_library_sae, model_for_sae, sae_hook
from .edit import (
    SteeringError,
    _check,
    forward,
    generate,
    make_edit,
    parse_features,
    prompt_ids,
    residual_norm,
)
from .fluency import (
    AUTO_FRACTIONS,
    AUTO_MAX_PERPLEXITY,
    AUTO_MAX_REPETITION,
    baseline_fluency,
    fluency,
    fluency_rule,
    is_fluent,
)
from .results import AutoBound, AutoRow, AutoStrength

AUTO_REFINE = 3  # bisection steps above the ladder's largest fluent strength


def _ladder(trial: Callable[[float], AutoRow], fractions, control: JobControl) -> list[AutoRow]:
    """The ladder of fractions, weakest first, until two steps in a row are not fluent."""
    rows: list[AutoRow] = []
    broken = 0
    for frac in fractions:
        if control.cancelled:
            break
        rows.append(trial(frac))
        broken = 0 if rows[-1].fluent else broken + 1
        if broken >= 2:
            break
    return rows


def _refine(
    trial: Callable[[float], AutoRow], rows: list[AutoRow], steps: int, control: JobControl
) -> list[AutoRow]:
    """Bisection between the largest fluent fraction and the next one tried above it."""
    best = max((r.relative for r in rows if r.fluent), default=None)
    above = [r.relative for r in rows if best is not None and r.relative > best]
    if best is None or not above:
        return []
    lo, hi, out = best, min(above), []
    for _ in range(steps):
        if control.cancelled:
            break
        out.append(trial((lo + hi) / 2))
        lo, hi = (out[-1].relative, hi) if out[-1].fluent else (lo, out[-1].relative)
    return out


def _auto_feature(
    ws: Workspace,
    sae_id: str,
    feats: list[tuple[int, float]],
    feature: int | None,
    max_perplexity: float,
    max_repetition: float,
) -> int:
    """The one feature an automatic strength is found for, checked, and a bound that admits something."""
    if feature is None:
        if len(feats) != 1:
            raise SteeringError(
                "An automatic strength is found for one feature at a time.",
                "name the feature to tune (feature=I, or I:auto on the command line).",
            )
        feature = feats[0][0]
    feature = check_feature_index(ws, sae_id, feature)
    if not max_perplexity >= 1 or not 0 < max_repetition <= 1:
        raise SteeringError(
            f"The fluency bound (perplexity ratio {max_perplexity}, repetition {max_repetition}) "
            "admits nothing.",
            "use a perplexity ratio of 1 or more and a repetition share in (0, 1].",
        )
    return feature


def auto_strength(
    ws: Workspace,
    sae: str,
    cfg: SteerConfig,
    *,
    feature: int | None = None,
    max_perplexity: float = AUTO_MAX_PERPLEXITY,
    max_repetition: float = AUTO_MAX_REPETITION,
    fractions: tuple[float, ...] = AUTO_FRACTIONS,
    tokens: int | None = None,
    refine: int = AUTO_REFINE,
    on_row: Callable[[AutoRow], None] | None = None,
    control: JobControl | None = None,
) -> AutoStrength:
    """A short sweep that picks the largest strength of ``feature`` whose steered continuation of
    ``cfg.prompt`` stays fluent: read by the unsteered model, its perplexity is at most
    ``max_perplexity`` times the unsteered continuation's, and at most ``max_repetition`` of its
    trigrams repeat. Strengths are tried as ``fractions`` of the hook's typical residual norm (the
    median norm over the prompt and the unsteered continuation), weakest first; the sweep stops after
    two non-fluent steps in a row. The switch from fluent to not is often abrupt, so the gap above the
    largest fluent step is then halved ``refine`` times (a bisection). Other features of ``cfg.features``
    keep their strengths. Each trial generates ``cfg.max_tokens`` tokens (or ``tokens``, fewer for a quick
    look), so the text judged is the text Generate shows at that strength, and both get one verdict.
    ``strength`` is None when no strength stays fluent."""
    control = control or JobControl()
    art, model_sae, _ = load_library_sae(ws, sae)
    feats = parse_features(cfg.features)
    feature = _auto_feature(ws, art.id, feats, feature, max_perplexity, max_repetition)
    others = [[i, s] for i, s in feats if i != feature]
    _check(ws, art.id, [(int(i), float(s)) for i, s in others], cfg)
    lm = model_for_sae(ws, art, model_sae)
    hook = sae_hook(art, model_sae)
    ids = prompt_ids(lm, cfg.prompt, cfg.chat_template)
    short = dataclasses.replace(cfg, max_tokens=min(cfg.max_tokens, tokens or cfg.max_tokens))
    base = generate(lm, ids, short, control=control)
    seq = torch.cat([ids, torch.tensor([base], dtype=torch.long)], 1) if base else ids
    norm = residual_norm(lm, seq, forward(lm, seq, hook, None, model_sae, []).residual)
    dnorm = 1.0 if cfg.normalise else float(model_sae.W_dec[feature].detach().float().norm())
    base_text = lm.tokenizer.decode(base, skip_special_tokens=True)
    base_fluency = baseline_fluency(lm, ids, base_text)
    unit = norm / max(dnorm, 1e-12) / (cfg.multiplier or 1.0)  # strength per fraction of the norm

    def trial(frac: float) -> AutoRow:
        test = dataclasses.replace(short, features=others + [[feature, frac * unit]])
        edit = make_edit(model_sae, parse_features(test.features), test, ids.shape[1])
        text = lm.tokenizer.decode(
            generate(lm, ids, test, hook=hook, edit=edit, control=control), skip_special_tokens=True
        )
        f = fluency(lm, ids, text)
        row = AutoRow(frac * unit, frac, text, f, is_fluent(f, base_fluency, max_perplexity, max_repetition))
        if on_row:
            on_row(row)
        return row

    rows = _ladder(trial, fractions, control)
    rows += _refine(trial, rows, refine, control)
    rows.sort(key=lambda r: r.strength)
    chosen = next((r for r in reversed(rows) if r.fluent), None)
    rule = fluency_rule(max_perplexity, max_repetition)
    return AutoStrength(
        sae=art.id,
        feature=feature,
        strength=chosen.strength if chosen else None,
        relative=chosen.relative if chosen else None,
        rows=rows,
        unsteered=base_text,
        unsteered_fluency=base_fluency,
        text=chosen.text if chosen else None,
        rule=rule,
        bound=AutoBound(max_perplexity, max_perplexity * base_fluency.perplexity, max_repetition),
        residual_norm=norm,
        decoder_norm=dnorm,
        interrupted=bool(control.cancelled),
        note=None
        if chosen
        else (
            f"No strength kept the steered text fluent ({rule}); the unsteered text is kept. Loosen the "
            "bound or pick another feature."
        ),
    )
