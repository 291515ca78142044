"""Steer: unsteered and steered continuations of one prompt, and what the steer changed (KL, the
reference text's perplexity, the features' activations, fluency by the one rule); sweeps over
strengths."""

from __future__ import annotations

import dataclasses
import difflib
import time
from typing import Any, Callable

import torch

from ..core.configs import SteerConfig
from ..core.jobs import JobControl
from ..core.workspace import Artifact, Workspace
from ..data.models import LoadedModel
from ..features import load_library_sae, model_for_sae, sae_hook
from ..sae import SAE
from .downstream import downstream_change, later_sae
from .edit import (
    SteeringError,
    _check,
    forward,
    generate,
    make_edit,
    parse_features,
    prompt_ids,
    relative_strength,
    residual_norm,
)
from .fluency import baseline_fluency, fluency, fluency_rule, is_fluent
from .results import ActivationChange, FluencyVerdict, SteerMetrics, SteerResult, SweepRow


def token_diff(a: list[str], b: list[str]) -> list[dict[str, Any]]:
    ops = []
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(a=a, b=b, autojunk=False).get_opcodes():
        ops.append({"op": op, "unsteered": a[i1:i2], "steered": b[j1:j2]})
    return ops


def similarity(lm: LoadedModel, ids: torch.Tensor, a: list[int], b: list[int]) -> float | None:
    """How alike two continuations of the prompt ``ids`` are in meaning: the cosine of their mean-pooled
    last hidden states, each read by the unsteered model after the prompt (1: the same text; None when
    either is empty)."""
    if not a or not b:
        return None

    @torch.no_grad()
    def pooled(cont: list[int]) -> torch.Tensor:
        seq = torch.cat([ids, torch.tensor([cont], dtype=torch.long)], 1).to(lm.device)
        out = lm.model(input_ids=seq, use_cache=False, output_hidden_states=True)
        return out.hidden_states[-1][0, ids.shape[1] :].float().mean(0)

    return float(torch.cosine_similarity(pooled(a), pooled(b), dim=0))


def _metrics(
    lm: LoadedModel,
    ids: torch.Tensor,
    base: list[int],
    steered: list[int],
    texts: tuple[str, str],
    hook: str,
    edit,
    model_sae: SAE,
    feats: list[tuple[int, float]],
    cfg: SteerConfig,
    reference: str | None,
    downstream: tuple[Artifact, SAE, str] | None = None,
) -> SteerMetrics:
    """What a steer changed, measured on one shared text (the prompt and the unsteered continuation
    ``base``): KL per position, the reference text's perplexity under both models, the features'
    activations, both continuations' fluency by the one rule, and the strengths relative to the
    residual norm; and, with a ``downstream`` SAE at a later hook, the change the steer makes there."""
    tok = lm.tokenizer
    text0, text1 = texts
    seq = torch.cat([ids, torch.tensor([base], dtype=torch.long)], 1) if base else ids
    idx = [i for i, _ in feats]
    later = downstream[2] if downstream else None
    before = forward(lm, seq, hook, None, model_sae, idx, later)
    after = forward(lm, seq, hook, edit, model_sae, idx, later)
    lp0, lp1 = before.logprobs, after.logprobs
    norm = residual_norm(lm, seq, before.residual)
    n0 = ids.shape[1]
    span = slice(n0 - 1, seq.shape[1] - 1)  # predictions of the continuation's tokens
    kl = (lp1[span].exp() * (lp1[span] - lp0[span])).sum(-1)  # KL(steered || unsteered) per position
    f0, f1 = baseline_fluency(lm, ids, text0), fluency(lm, ids, text1)
    metrics = SteerMetrics(
        kl_per_position=kl.tolist(),
        kl_mean=float(kl.mean()) if kl.numel() else 0.0,
        fluency=FluencyVerdict(unsteered=f0, steered=f1, fluent=is_fluent(f1, f0), rule=fluency_rule()),
        residual_norm=norm,
        similarity=similarity(lm, ids, base, steered),
        relative_strength={
            str(i): relative_strength(model_sae, i, v * cfg.multiplier, cfg.normalise, norm) for i, v in feats
        },
    )
    ref_ids = torch.tensor([tok(reference, add_special_tokens=False)["input_ids"]]) if reference else seq
    if ref_ids.shape[1] >= 2:
        r0 = forward(lm, ref_ids, hook, None, model_sae, []).logprobs
        r1 = forward(lm, ref_ids, hook, edit, model_sae, []).logprobs
        tgt = ref_ids[0, 1:]
        metrics.perplexity_unsteered = float(torch.exp(-r0[:-1].gather(1, tgt[:, None]).mean()))
        metrics.perplexity_steered = float(torch.exp(-r1[:-1].gather(1, tgt[:, None]).mean()))
        metrics.reference = "given" if reference else "prompt + unsteered continuation"
    if before.acts is not None and after.acts is not None:
        sl = slice(n0, None) if seq.shape[1] > n0 else slice(None)
        metrics.feature_activation = {
            str(i): ActivationChange(float(before.acts[sl, k].mean()), float(after.acts[sl, k].mean()))
            for k, i in enumerate(idx)
        }
    if downstream and before.later is not None and after.later is not None:
        sl = slice(n0, None) if seq.shape[1] > n0 else slice(None)
        art, sae, later_hook = downstream
        metrics.downstream = downstream_change(
            art, sae, later_hook, model_sae, idx, before.later, after.later, sl
        )
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
) -> SteerResult:
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
    edit = make_edit(model_sae, feats, cfg, ids.shape[1])
    down = later_sae(ws, art, lm.model, hook, model_sae.spec.d_in, cfg.downstream) if feats else None
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
    metrics = _metrics(
        lm, ids, base, steered, (text0, text1), hook, edit, model_sae, feats, cfg, reference, down
    )
    metrics.seconds = {"unsteered": t1 - t0, "steered": t2 - t1}
    return SteerResult(
        sae=art.id,
        hook=hook,
        prompt=cfg.prompt,
        features=feats,
        method=cfg.method,
        unsteered=text0,
        steered=text1,
        unsteered_tokens=pieces(base),
        steered_tokens=pieces(steered),
        diff=token_diff(pieces(base), pieces(steered)),
        metrics=metrics,
        interrupted=bool(control.cancelled),
    )


def sweep(
    ws: Workspace, sae: str, cfg: SteerConfig, strengths: list[float], *, control: JobControl | None = None
) -> list[SweepRow]:
    """Steered generation for each strength (every feature's strength set to it); one row per strength."""
    feats = parse_features(cfg.features)
    if not feats:
        raise SteeringError("A sweep needs at least one feature.", "add a feature to steer with.")
    rows = []
    for s in strengths:
        r = steer(
            ws, sae, dataclasses.replace(cfg, features=[[i, float(s)] for i, _ in feats]), control=control
        )
        rows.append(
            SweepRow(
                strength=float(s),
                steered=r.steered,
                kl_mean=r.metrics.kl_mean,
                perplexity=r.metrics.perplexity_steered,
                activation={k: v.after for k, v in r.metrics.feature_activation.items()},
            )
        )
    return rows
