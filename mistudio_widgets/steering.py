"""Steering: change what the model writes by editing the activations at an SAE's hook with feature
directions, on every position including the generated ones, and compare with the unsteered
generation from the same prompt, seed and sampling settings.

Methods (``d_i`` is feature i's decoder row, unit-normalised with ``normalise``; ``s_i`` its strength
times the multiplier):
  add          h + sum_i s_i d_i
  orthogonal   (I - P_i) h + s_i P_i h, P_i the projection on d_i (unit)
  cap          the projection of h on d_i (unit) capped at s_i
  clamp        feature i set to s_i through the SAE: h + (s_i - f_i(h)) W_dec[i] (reconstruction error kept)
  ablate       feature i set to 0 the same way
An empty intervention leaves the model untouched. Hooks are removed when generation ends, fails or is
interrupted.
"""

from __future__ import annotations

import difflib
import math
import re
import time
from typing import Any, Callable

import torch

from .core.configs import SteerConfig
from .core.errors import MistudioError
from .core.jobs import JobControl
from .core.workspace import Workspace
from .data.hooks import capture, intervene
from .data.models import LoadedModel
from .features import check_feature_index, load_library_sae, model_for_sae, sae_hook
from .sae import SAE

MAX_STRENGTH = 1e4


class SteeringError(MistudioError):
    pass


def parse_features(spec) -> list[tuple[int, float]]:
    """[(index, strength)] from [[i, s], ...], {i: s}, or 'I:S' strings (strength 1 when left out)."""
    items = spec.items() if isinstance(spec, dict) else spec
    out = []
    for it in items:
        if isinstance(it, str):
            idx, _, st = it.partition(":")
            try:
                it = (int(idx), float(st) if st else 1.0)
            except ValueError:
                raise SteeringError(
                    f"{it!r} is not a feature: write INDEX or INDEX:STRENGTH.", "e.g. --feature 123:40"
                ) from None
        try:
            i, s = it
            out.append((int(i), float(s)))
        except (TypeError, ValueError):
            raise SteeringError(
                f"{it!r} is not a feature and strength.", "give [[index, strength], ...], e.g. [[123, 40.0]]."
            ) from None
    return out


def _check(ws: Workspace, sae_id: str, feats: list[tuple[int, float]], cfg: SteerConfig) -> None:
    for i, s in feats:
        check_feature_index(ws, sae_id, i)
        v = s * cfg.multiplier
        if not math.isfinite(v):
            raise SteeringError(
                f"The strength of feature {i} is {v}.", "use a finite number (e.g. -300..300)."
            )
        if abs(v) > MAX_STRENGTH:
            raise SteeringError(
                f"The strength {v:g} of feature {i} is absurd (more than {MAX_STRENGTH:g}).",
                "use strengths of a few times the feature's max activation, or Neuronpedia's -300..300.",
            )


def make_edit(
    sae: SAE, feats: list[tuple[int, float]], cfg: SteerConfig
) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """The function that edits the hook's value [batch, seq, d], or None when nothing changes."""
    if not feats:
        return None
    idx = torch.tensor([i for i, _ in feats])
    s = torch.tensor([v * cfg.multiplier for _, v in feats], dtype=torch.float32)
    W = sae.W_dec.detach().float()[idx]  # [n, d]
    unit = W / W.norm(dim=1, keepdim=True).clamp_min(1e-12)
    D = unit if cfg.normalise else W
    method = cfg.method
    if method == "add":  # one fixed vector: add it in the model's own dtype and device
        vec = s @ D
        cache: dict[tuple, torch.Tensor] = {}

        def add(h: torch.Tensor) -> torch.Tensor:
            key = (h.device, h.dtype)
            if key not in cache:
                cache[key] = vec.to(device=h.device, dtype=h.dtype)
            return h + cache[key]

        return add

    def edit(h: torch.Tensor) -> torch.Tensor:
        x = h.float()
        dev = x.device
        if method in ("orthogonal", "cap"):
            for k in range(len(idx)):
                u = unit[k].to(dev)
                proj = x @ u  # [b, t]
                new = s[k].to(dev) * proj if method == "orthogonal" else torch.minimum(proj, s[k].to(dev))
                x = x + (new - proj).unsqueeze(-1) * u
        elif method in ("clamp", "ablate"):
            f = sae.encode(x.to(sae.W_enc.device))[..., idx.to(sae.W_enc.device)].to(dev)  # [b, t, n]
            target = torch.zeros_like(f) if method == "ablate" else s.to(dev).expand_as(f)
            x = x + (target - f) @ W.to(dev)
        return x.to(h.dtype)

    return edit


class _Streamer:
    """transformers' streamer protocol: the first put() is the prompt, each later one a new token."""

    def __init__(self, on_token: Callable[[int], None] | None):
        self.on_token, self.first = on_token, True

    def put(self, value: torch.Tensor) -> None:
        if self.first:
            self.first = False
            return
        if self.on_token:
            for t in value.reshape(-1).tolist():
                self.on_token(int(t))

    def end(self) -> None:
        pass


def prompt_ids(lm: LoadedModel, prompt: str, chat_template: bool) -> torch.Tensor:
    if not isinstance(prompt, str) or not prompt.strip():
        raise SteeringError("The prompt is empty.", "type a prompt to continue.")
    limit = lm.context_length
    if len(prompt) > 64 * limit:  # surely longer than the context: refused before tokenizing it
        raise SteeringError(
            f"The prompt is {len(prompt):,} characters; the model reads at most {limit} tokens.",
            "shorten the prompt.",
        )
    tok = lm.tokenizer
    if chat_template and getattr(tok, "chat_template", None):
        enc = tok.apply_chat_template(
            [{"role": "user", "content": prompt}], add_generation_prompt=True, return_tensors="pt"
        )
        ids = enc["input_ids"] if hasattr(enc, "keys") else enc
    else:
        ids = torch.tensor([tok(prompt, add_special_tokens=False)["input_ids"]])
    return ids


def generate(
    lm: LoadedModel,
    ids: torch.Tensor,
    cfg: SteerConfig,
    *,
    hook: str | None = None,
    edit=None,
    on_token: Callable[[int], None] | None = None,
    control: JobControl | None = None,
) -> list[int]:
    """Continue ``ids`` [1, n]; with ``edit`` applied at ``hook`` on every position. Seeded."""
    from transformers import LogitsProcessor, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList

    tok = lm.tokenizer
    n0 = ids.shape[1]

    class FrequencyPenalty(LogitsProcessor):
        def __call__(self, input_ids, scores):
            gen = input_ids[:, n0:]
            if gen.numel() and cfg.frequency_penalty:
                counts = torch.zeros_like(scores).scatter_add_(
                    1, gen, torch.ones_like(gen, dtype=scores.dtype)
                )
                scores = scores - cfg.frequency_penalty * counts
            return scores

    class Interrupt(StoppingCriteria):
        def __call__(self, input_ids, scores, **kw):
            done = bool(control is not None and control.cancelled)
            return torch.full((input_ids.shape[0],), done, dtype=torch.bool, device=input_ids.device)

    kw: dict[str, Any] = {"do_sample": False}
    if cfg.temperature > 0:
        kw = {"do_sample": True, "temperature": cfg.temperature, "top_p": cfg.top_p}
    torch.manual_seed(cfg.seed)
    edits = {hook: edit} if edit is not None and hook else {}
    with torch.no_grad(), intervene(lm.model, edits):
        out = lm.model.generate(
            ids.to(lm.device),
            attention_mask=torch.ones_like(ids).to(lm.device),
            max_new_tokens=cfg.max_tokens,
            pad_token_id=tok.pad_token_id or tok.eos_token_id,
            logits_processor=LogitsProcessorList([FrequencyPenalty()]),
            stopping_criteria=StoppingCriteriaList([Interrupt()]),
            streamer=_Streamer(on_token),
            top_k=None,
            **kw,
        )
    return out[0, n0:].tolist()


@torch.no_grad()
def _logprobs_and_acts(
    lm: LoadedModel, ids: torch.Tensor, hook: str, edit, sae: SAE, feats: list[int], residual: bool = False
):
    edits = {hook: edit} if edit is not None else {}
    with intervene(lm.model, edits), capture(lm.model, hook, stop=False) as got:
        logits = lm.model(input_ids=ids.to(lm.device), use_cache=False).logits[0].float()
    acts = sae.encode(got[hook].float().to(sae.W_enc.device))[0][:, feats] if feats else None
    if residual:
        return torch.log_softmax(logits, -1).cpu(), acts, got[hook][0].float().cpu()
    return torch.log_softmax(logits, -1).cpu(), acts


def residual_norm(lm: LoadedModel, ids: torch.Tensor, h: torch.Tensor) -> float:
    """The median norm of the hook's activations ``h`` [T, d] over the non-special tokens of ``ids``."""
    keep = ~torch.isin(ids[0].cpu(), torch.tensor(lm.special_ids(), dtype=torch.long))
    norms = h[keep].norm(dim=-1) if keep.any() else h.norm(dim=-1)
    return float(norms.median())


def relative_strength(sae: SAE, index: int, strength: float, normalise: bool, norm: float) -> float:
    """The length of the vector a strength adds, as a share of the hook's typical residual norm."""
    d = 1.0 if normalise else float(sae.W_dec[index].detach().float().norm())
    return abs(strength) * d / max(norm, 1e-12)


def token_diff(a: list[str], b: list[str]) -> list[dict[str, Any]]:
    ops = []
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(a=a, b=b, autojunk=False).get_opcodes():
        ops.append({"op": op, "unsteered": a[i1:i2], "steered": b[j1:j2]})
    return ops


def _metrics(
    lm: LoadedModel,
    ids: torch.Tensor,
    base: list[int],
    texts: tuple[str, str],
    hook: str,
    edit,
    model_sae: SAE,
    feats: list[tuple[int, float]],
    cfg: SteerConfig,
    reference: str | None,
) -> dict[str, Any]:
    """What a steer changed, measured on one shared text (the prompt and the unsteered continuation
    ``base``): KL per position, the reference text's perplexity under both models, the features'
    activations, both continuations' fluency by the one rule, and the strengths relative to the
    residual norm."""
    tok = lm.tokenizer
    text0, text1 = texts
    # metrics on one shared text: the prompt and the unsteered continuation
    seq = torch.cat([ids, torch.tensor([base], dtype=torch.long)], 1) if base else ids
    idx = [i for i, _ in feats]
    lp0, a0, h0 = _logprobs_and_acts(lm, seq, hook, None, model_sae, idx, residual=True)
    lp1, a1 = _logprobs_and_acts(lm, seq, hook, edit, model_sae, idx)
    norm = residual_norm(lm, seq, h0)
    n0 = ids.shape[1]
    span = slice(n0 - 1, seq.shape[1] - 1)  # predictions of the continuation's tokens
    kl = (lp1[span].exp() * (lp1[span] - lp0[span])).sum(-1)  # KL(steered || unsteered) per position
    metrics: dict[str, Any] = {
        "kl_per_position": kl.tolist(),
        "kl_mean": float(kl.mean()) if kl.numel() else 0.0,
    }
    ref_ids = torch.tensor([tok(reference, add_special_tokens=False)["input_ids"]]) if reference else seq
    if ref_ids.shape[1] >= 2:
        r0, _ = _logprobs_and_acts(lm, ref_ids, hook, None, model_sae, [])
        r1, _ = _logprobs_and_acts(lm, ref_ids, hook, edit, model_sae, [])
        tgt = ref_ids[0, 1:]
        metrics["perplexity_unsteered"] = float(torch.exp(-r0[:-1].gather(1, tgt[:, None]).mean()))
        metrics["perplexity_steered"] = float(torch.exp(-r1[:-1].gather(1, tgt[:, None]).mean()))
        metrics["reference"] = "given" if reference else "prompt + unsteered continuation"
    if idx:
        sl = slice(n0, None) if seq.shape[1] > n0 else slice(None)
        metrics["feature_activation"] = {
            str(i): {"before": float(a0[sl, k].mean()), "after": float(a1[sl, k].mean())}
            for k, i in enumerate(idx)
        }
    f0, f1 = baseline_fluency(lm, ids, text0), fluency(lm, ids, text1)
    metrics["fluency"] = {
        "unsteered": f0,
        "steered": f1,
        "fluent": is_fluent(f1, f0),
        "rule": fluency_rule(),
    }
    metrics["residual_norm"] = norm
    metrics["relative_strength"] = {
        str(i): relative_strength(model_sae, i, v * cfg.multiplier, cfg.normalise, norm) for i, v in feats
    }
    return metrics


def steer(
    ws: Workspace,
    sae: str,
    cfg: SteerConfig,
    *,
    reference: str | None = None,
    on_token: Callable[[str, int], None] | None = None,
    control: JobControl | None = None,
    model: str | None = None,
) -> dict[str, Any]:
    """Generate unsteered and steered continuations of ``cfg.prompt`` and measure the difference.
    ``on_token(which, token_id)`` streams tokens ('unsteered' or 'steered') as they come. ``model``: a
    registered model to steer instead of the SAE's own (it must have the SAE's hook and width; e.g. the
    same model registered with another dtype)."""
    control = control or JobControl()
    art, model_sae, _ = load_library_sae(ws, sae)
    feats = parse_features(cfg.features)
    _check(ws, art.id, feats, cfg)
    lm = model_for_sae(ws, art, model_sae, model)
    hook = sae_hook(art, model_sae)
    ids = prompt_ids(lm, cfg.prompt, cfg.chat_template)
    limit = lm.context_length
    if ids.shape[1] + cfg.max_tokens > limit:
        raise SteeringError(
            f"The prompt is {ids.shape[1]} tokens; with {cfg.max_tokens} more it exceeds the model's "
            f"context of {limit}.",
            "shorten the prompt or generate fewer tokens.",
        )
    edit = make_edit(model_sae, feats, cfg)
    t0 = time.perf_counter()
    base = generate(
        lm, ids, cfg, on_token=(lambda t: on_token("unsteered", t)) if on_token else None, control=control
    )
    t1 = time.perf_counter()
    steered = generate(
        lm,
        ids,
        cfg,
        hook=hook,
        edit=edit,
        on_token=(lambda t: on_token("steered", t)) if on_token else None,
        control=control,
    )
    t2 = time.perf_counter()
    tok = lm.tokenizer
    pieces = lambda xs: [tok.decode([t]) for t in xs]  # noqa: E731
    text0, text1 = tok.decode(base, skip_special_tokens=True), tok.decode(steered, skip_special_tokens=True)
    metrics = _metrics(lm, ids, base, (text0, text1), hook, edit, model_sae, feats, cfg, reference)
    metrics["seconds"] = {"unsteered": t1 - t0, "steered": t2 - t1}
    return {
        "sae": art.id,
        "hook": hook,
        "prompt": cfg.prompt,
        "features": feats,
        "method": cfg.method,
        "unsteered": text0,
        "steered": text1,
        "unsteered_tokens": pieces(base),
        "steered_tokens": pieces(steered),
        "diff": token_diff(pieces(base), pieces(steered)),
        "metrics": metrics,
        "interrupted": bool(control.cancelled),
    }


def sweep(
    ws: Workspace, sae: str, cfg: SteerConfig, strengths: list[float], *, control: JobControl | None = None
) -> list[dict[str, Any]]:
    """Steered generation for each strength (every feature's strength set to it); one row per strength."""
    import dataclasses

    feats = parse_features(cfg.features)
    if not feats:
        raise SteeringError("A sweep needs at least one feature.", "add a feature to steer with.")
    rows = []
    for s in strengths:
        r = steer(
            ws, sae, dataclasses.replace(cfg, features=[[i, float(s)] for i, _ in feats]), control=control
        )
        act = r["metrics"].get("feature_activation", {})
        rows.append(
            {
                "strength": float(s),
                "steered": r["steered"],
                "kl_mean": r["metrics"]["kl_mean"],
                "perplexity": r["metrics"].get("perplexity_steered"),
                "activation": {k: v["after"] for k, v in act.items()},
            }
        )
    return rows


# One fluency rule, used by the automatic strength, by every steered generation's metrics and by the
# widget (which names it). A continuation is read lower-cased by the unsteered model after the prompt
# (so that steering towards capitals, which the model finds surprising but which stays readable, is
# judged on its words and grammar), its words are looked up in the tokenizer's vocabulary (an invented
# word such as "theirsells" is not one token; common English words, rare ones included, are), and its
# word trigrams are checked for loops.
AUTO_FRACTIONS = (0.05, 0.1, 0.15, 0.2, 0.25, 0.275, 0.3, 0.325, 0.35, 0.4, 0.45, 0.5, 0.6, 0.8)
AUTO_MAX_PERPLEXITY = 30.0  # the lower-cased steered continuation's perplexity / the unsteered one's
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
def fluency(lm: LoadedModel, ids: torch.Tensor, text: str) -> dict[str, Any]:
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
        return {"perplexity": float("inf"), "repetition": 1.0, "invented": 1.0, "unknown": []}
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
    return {
        "perplexity": float(torch.exp(-logp.mean())),
        "repetition": rep,
        "invented": len(unknown) / n_words if n_words else 0.0,
        "unknown": unknown[:8],
    }


def baseline_fluency(lm: LoadedModel, ids: torch.Tensor, text: str) -> dict[str, Any]:
    """The unsteered continuation's :func:`fluency`, which a steered one is held against; when the model
    said nothing, a baseline any steered text meets on perplexity, repetition and invented words."""
    if not text:
        return {"perplexity": float("inf"), "repetition": 0.0, "invented": 0.0, "unknown": []}
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
    f: dict[str, Any],
    unsteered: dict[str, Any],
    max_perplexity: float = AUTO_MAX_PERPLEXITY,
    max_repetition: float = AUTO_MAX_REPETITION,
) -> bool:
    """The rule of :data:`FLUENCY_RULE` for a continuation's :func:`fluency` against the unsteered one's."""
    few_unknown = len(f.get("unknown", [])) < 2  # one name or rare word is not broken text
    return (
        f["perplexity"] <= max_perplexity * unsteered["perplexity"]
        and f["repetition"] <= max(max_repetition, unsteered["repetition"])
        and (few_unknown or f["invented"] <= max(AUTO_MAX_INVENTED, unsteered["invented"]))
    )


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
    tokens: int = 24,
    on_row: Callable[[dict[str, Any]], None] | None = None,
    control: JobControl | None = None,
) -> dict[str, Any]:
    """A short sweep that picks the largest strength of ``feature`` whose steered continuation of
    ``cfg.prompt`` stays fluent: read by the unsteered model, its perplexity is at most
    ``max_perplexity`` times the unsteered continuation's, and at most ``max_repetition`` of its
    trigrams repeat. Strengths are tried as ``fractions`` of the hook's typical residual norm (the
    median norm over the prompt and the unsteered continuation), weakest first; the sweep stops after
    two non-fluent steps in a row. Other features of ``cfg.features`` keep their strengths.
    ``strength`` is None when no strength stays fluent."""
    import dataclasses

    control = control or JobControl()
    art, model_sae, _ = load_library_sae(ws, sae)
    feats = parse_features(cfg.features)
    feature = _auto_feature(ws, art.id, feats, feature, max_perplexity, max_repetition)
    others = [[i, s] for i, s in feats if i != feature]
    _check(ws, art.id, [(int(i), float(s)) for i, s in others], cfg)
    lm = model_for_sae(ws, art, model_sae)
    hook = sae_hook(art, model_sae)
    ids = prompt_ids(lm, cfg.prompt, cfg.chat_template)
    short = dataclasses.replace(cfg, max_tokens=min(cfg.max_tokens, tokens))
    base = generate(lm, ids, short, control=control)
    seq = torch.cat([ids, torch.tensor([base], dtype=torch.long)], 1) if base else ids
    norm = residual_norm(lm, seq, _logprobs_and_acts(lm, seq, hook, None, model_sae, [], residual=True)[2])
    dnorm = 1.0 if cfg.normalise else float(model_sae.W_dec[feature].detach().float().norm())
    base_text = lm.tokenizer.decode(base, skip_special_tokens=True)
    base_fluency = baseline_fluency(lm, ids, base_text)
    limit = max_perplexity * base_fluency["perplexity"]
    rows: list[dict[str, Any]] = []
    broken = 0
    for frac in fractions:
        if control.cancelled:
            break
        strength = frac * norm / max(dnorm, 1e-12) / (cfg.multiplier or 1.0)
        test = dataclasses.replace(short, features=others + [[feature, strength]])
        out = generate(
            lm,
            ids,
            test,
            hook=hook,
            edit=make_edit(model_sae, parse_features(test.features), test),
            control=control,
        )
        text = lm.tokenizer.decode(out, skip_special_tokens=True)
        row = {"strength": strength, "relative": frac, "text": text, **fluency(lm, ids, text)}
        row["fluent"] = is_fluent(row, base_fluency, max_perplexity, max_repetition)
        rows.append(row)
        if on_row:
            on_row(row)
        broken = 0 if row["fluent"] else broken + 1
        if broken >= 2:
            break
    fluent = [r for r in rows if r["fluent"]]
    chosen = fluent[-1] if fluent else None
    return {
        "sae": art.id,
        "feature": feature,
        "strength": chosen["strength"] if chosen else None,
        "relative": chosen["relative"] if chosen else None,
        "rows": rows,
        "unsteered": base_text,
        "unsteered_fluency": base_fluency,
        "text": chosen["text"] if chosen else None,
        "rule": fluency_rule(max_perplexity, max_repetition),
        "bound": {
            "max_perplexity": max_perplexity,
            "perplexity_limit": limit,
            "max_repetition": max_repetition,
        },
        "residual_norm": norm,
        "decoder_norm": dnorm,
        "interrupted": bool(control.cancelled),
        "note": None
        if chosen
        else (
            "No strength kept the steered text fluent ("
            + fluency_rule(max_perplexity, max_repetition)
            + "); the unsteered text is kept. Loosen the bound or pick another feature."
        ),
    }


PRESET = "steering_preset"


def save_preset(ws: Workspace, name: str, sae: str, cfg: SteerConfig):
    """Keep features, strengths and settings under a name in the workspace."""
    from .core.configs import to_dict

    art = ws.get(sae, "sae")
    parse_features(cfg.features)
    old = ws.find(name, PRESET)
    if old is not None:
        ws.delete(old.id)
    return ws.register(PRESET, name, parent=art.id, meta={"sae": art.id, "config": to_dict(cfg)})


def load_preset(ws: Workspace, name: str) -> tuple[str, SteerConfig]:
    from .core.configs import from_dict

    art = ws.get(name, PRESET)
    return art.meta["sae"], from_dict(SteerConfig, art.meta["config"])
