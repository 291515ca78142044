"""``mistudio demo``: the whole main job on the embedded defaults, offline: model and corpus, tokens,
activations at a hook, a trained SAE, its features extracted, a SHOUTING feature found by contrast
(shouted sentences against the same sentences in ordinary case), every live feature labelled by the
statistical explainer and scored on held-out texts,
used to steer a chat answer at an automatically chosen strength, and the SAE exported for SAELens and
Neuronpedia. Prints one line per step and a summary."""

from __future__ import annotations

import argparse
import dataclasses
import time
from typing import TYPE_CHECKING, Any

from ..core.configs import (
    DEFAULT,
    CaptureConfig,
    ExtractConfig,
    LabelConfig,
    SteerConfig,
    TokenizeConfig,
)
from ..core.errors import MistudioError
from ..core.recipes import (  # noqa: F401 (the recipe, importable from here as before)
    DEMO_HOOK,
    PROMPT,
    SHOUTS,
    demo_steer_config,
    demo_train_config,
    uppercase_share,
)
from ..core.workspace import Artifact, Workspace
from .config_flags import config_from_args

if TYPE_CHECKING:  # the command line imports the engine's heavy parts only when a command runs
    from ..evaluate import QualityRow
    from ..features.labeling import LabelResult
    from ..steering.results import SteerResult


class _Steps:
    """The demo's step lines: each prints its name, its text and the seconds since the last one (as
    JSON fields with --json)."""

    def __init__(self, out: Any):
        self.out, self.t0 = out, time.perf_counter()
        self.times: dict[str, float] = {}

    def __call__(self, name: str, obj: dict[str, Any], text: str) -> None:
        self.times[name] = time.perf_counter() - self.t0 - sum(self.times.values())
        self.out.line(
            {"step": name, "seconds": round(self.times[name], 1), **obj},
            f"{name:<9}{text}  [{self.times[name]:.0f}s]",
        )


def run_demo(ws: Workspace, a: argparse.Namespace, out) -> dict[str, Any]:
    """The whole main job, step by step (see the module's docstring); returns the summary printed last."""
    step = _Steps(out)
    model, info, tok = _inputs(ws, a, out, step)
    sae, m = _train(ws, a, tok, info, out, step)
    quality = _quality(ws, sae, out, step)
    ext = _extract(ws, a, sae, tok, out, step)
    feature = _find(ws, sae, ext, step)
    if feature is None:
        return {"feature": None}
    lab = _label(ws, sae, feature, out, step)
    strength = _strength(ws, a, sae, feature, step)
    r = _steer(ws, a, sae, feature, strength, step)
    lens, npx = _export(ws, sae, out, step)
    total = time.perf_counter() - step.t0
    sc = lab.score
    up0, up1 = uppercase_share(r.unsteered), uppercase_share(r.steered)
    summary = {
        "seconds": round(total, 1),
        "workspace": str(ws.root),
        "sae": sae.id,
        "metrics": m,
        "quality": [dataclasses.asdict(q) for q in quality],
        "feature": feature,
        "label": lab.label,
        "score": sc.score if sc else None,
        "strength": strength,
        "steered": r.steered,
        "unsteered": r.unsteered,
        "uppercase_steered": up1,
        "uppercase_unsteered": up0,
        "exports": {"saelens": lens["path"], "neuronpedia": npx["path"]},
        "step_seconds": {k: round(v, 1) for k, v in step.times.items()},
    }
    out.summary(summary, f"done in {total:.0f}s; workspace {ws.root}")
    return summary


def _inputs(
    ws: Workspace, a: argparse.Namespace, out, step: _Steps
) -> tuple[Artifact, dict[str, Any], Artifact]:
    """The embedded model and corpus, the corpus tokenized, and the activations' statistics at the hook."""
    from ..data.activations import capture_stats
    from ..data.datasets import ensure_tokenization, resolve_dataset
    from ..data.models import model_info, resolve_model

    model = resolve_model(ws, DEFAULT, progress=out.progress)
    info = model_info(ws, model)
    step(
        "model",
        {"id": model.id, "name": model.name, "info": info},
        f"{model.name}: {info['family']}, {info['layers']} layers, d_model {info['d_model']}, "
        f"{info['parameters']:,} parameters",
    )
    ds = resolve_dataset(ws, DEFAULT, progress=out.progress)
    step(
        "dataset",
        {"id": ds.id, "name": ds.name, "stats": ds.meta["stats"]},
        f"{ds.name}: {ds.meta['stats']['documents']} documents ({ds.meta.get('licence', '')}, "
        f"{ds.meta['provenance']['source']})",
    )
    tok = ensure_tokenization(
        ws, ds, model, TokenizeConfig(context_size=a.context_size), progress=out.progress
    )
    st = tok.meta["stats"]
    step(
        "tokenize",
        {"id": tok.id, "stats": st},
        f"{tok.name}: {st['tokens']:,} tokens in {st['sequences']:,} sequences",
    )
    res = capture_stats(ws, model, tok, config_from_args(CaptureConfig, a), progress=out.progress)
    step("capture", res.to_dict(), res.describe())
    return model, info, tok


def _quality(ws: Workspace, sae: Artifact, out, step: _Steps) -> list[QualityRow]:
    """The SAE's figures on its own held-out rows and on text of another kind it never saw."""
    from ..evaluate import describe_quality, sae_quality

    rows = sae_quality(ws, sae.id, progress=out.progress)
    step(
        "quality",
        {"rows": [dataclasses.asdict(r) for r in rows]},
        "how well the SAE stands in for the model's activations:\n"
        + "\n".join("           " + line for line in describe_quality(rows).splitlines()),
    )
    return rows


def _extract(
    ws: Workspace, a: argparse.Namespace, sae: Artifact, tok: Artifact, out, step: _Steps
) -> Artifact:
    """The SAE's features over the corpus, every firing kept (the statistical explainer reads them)."""
    from ..features import extract, feature_columns

    cfg = ExtractConfig(
        dataset=tok.id,
        tokens=a.extract_tokens,
        top_k=20,
        quantile_examples=3,
        coactivation_tokens=a.extract_tokens,
    )
    ext = extract(ws, sae.id, cfg, progress=out.progress)
    cols = feature_columns(ws, ext)
    live = int((cols["frequency"] > 0).sum())
    step(
        "extract",
        {"extraction": ext.id, "tokens": a.extract_tokens, "live_features": live},
        f"{a.extract_tokens:,} tokens: {live:,} of {len(cols['frequency']):,} features fired",
    )
    return ext


def _find(ws: Workspace, sae: Artifact, ext: Artifact, step: _Steps) -> int | None:
    """The shouting feature: the contrast of shouted sentences against the same in ordinary case, and
    the row whose decoder direction is best aligned with the shift (None when nothing fires more)."""
    from ..features import contrast, feature_detail, ordinary_case
    from ..features.labeling import mark_strong

    found = contrast(ws, sae.id, SHOUTS, [ordinary_case(x) for x in SHOUTS], top=10)
    feature = found["steer_with"]
    if feature is None:
        step(
            "find",
            {"features": []},
            "no feature fires more on shouted text than on the same text in ordinary case",
        )
        return None
    rows = "\n".join(
        f"           {f['index']:>5}  score {f['score']:.2f}  fires on {f['rate']:.0%} of shouted tokens, "
        f"{f['rate_contrast']:.0%} of ordinary ones; aligned {f['alignment']:+.2f}"
        for f in found["features"][:5]
    )
    detail = feature_detail(ws, ext, feature, max_examples=5)
    examples = "\n".join(
        f"             {e['value']:6.2f}  {mark_strong(e['tokens'], e['values'], e['value'], '[', ']')!r}"
        for e in detail["examples"][:5]
    )
    step(
        "find",
        {
            "texts": SHOUTS,
            "feature": feature,
            "features": found["features"][:5],
            "examples": [{"tokens": e["tokens"], "values": e["values"]} for e in detail["examples"][:5]],
        },
        f"features that fire on {len(SHOUTS)} shouted sentences and not on the same sentences in "
        f"ordinary case:\n{rows}\n"
        f"         feature {feature} is the one to steer with (its decoder row is the best aligned "
        "with the shift from "
        f"ordinary to shouted text); it fires on {detail['frequency']:.2%} of corpus tokens, max "
        f"{detail['max']:.2f}; "
        f"its top examples ([strong tokens]):\n{examples}",
    )
    return int(feature)


def _label(ws: Workspace, sae: Artifact, feature: int, out, step: _Steps) -> LabelResult:
    """Every live feature labelled by the statistical explainer and scored on held-out texts."""
    from ..features.labeling import label_features

    run = label_features(ws, sae.id, LabelConfig(), all_features=True, redo=True, progress=out.progress)
    lab = next(r for r in run.results if r.feature == feature)
    sc = lab.score
    step(
        "label",
        {
            "feature": feature,
            "label": lab.label,
            "scoring": sc.as_dict() if sc else None,
            "distribution": run.distribution(),
            "labelled": len(run.of("statistical")),
        },
        f"{run.describe()}; in {run.seconds:.0f}s\n"
        f"         feature {feature}: {lab.label!r}; "
        + (
            f"held-out score {sc.score:.2f} ± {sc.se:.2f} (AUC, chance 0.50): {sc.verdict}"
            if sc and sc.score is not None
            else f"not scored ({sc.reason if sc else 'scoring off'})"
        ),
    )
    return lab


def _strength(
    ws: Workspace, a: argparse.Namespace, sae: Artifact, feature: int, step: _Steps
) -> float | None:
    """The automatic strength: the largest whose steered text stays fluent by the one rule."""
    from ..steering import auto_strength

    auto = auto_strength(ws, sae.id, demo_steer_config(feature, 0.0, max_tokens=a.steer_tokens))
    base = auto.unsteered_fluency.perplexity
    sweep = "\n".join(
        f"           {r.strength:7.2f} ({r.relative:5.1%} of the residual norm): lower-cased perplexity "
        f"{r.fluency.perplexity / base:5.1f}x the unsteered, repeated {r.fluency.repetition:.0%}, "
        f"{uppercase_share(r.text):.0%} uppercase{'' if r.fluent else '  (not fluent)'}"
        for r in auto.rows
    )
    chosen = (
        f"chosen {auto.strength:.2f} ({auto.relative or 0:.0%} of the residual norm {auto.residual_norm:.0f})"
        if auto.strength is not None
        else auto.note
    )
    d = auto.to_dict()
    step(
        "strength",
        {
            "feature": feature,
            "auto": {k: d[k] for k in ("strength", "relative", "rows", "bound", "residual_norm")},
        },
        f"the largest strength whose text stays {auto.rule}:\n{sweep}\n         {chosen}",
    )
    return auto.strength


def _steer(
    ws: Workspace, a: argparse.Namespace, sae: Artifact, feature: int, strength: float | None, step: _Steps
) -> SteerResult:
    """The chat prompt continued unsteered and steered at the chosen strength."""
    from ..steering import steer

    cfg = demo_steer_config(feature, strength or 0.0, max_tokens=a.steer_tokens)
    r = steer(ws, sae.id, cfg)
    up0, up1 = uppercase_share(r.unsteered), uppercase_share(r.steered)
    step(
        "steer",
        {
            "feature": feature,
            "strength": strength,
            "prompt": PROMPT,
            "unsteered": r.unsteered,
            "steered": r.steered,
            "uppercase_unsteered": up0,
            "uppercase_steered": up1,
            "kl_mean": r.metrics.kl_mean,
        },
        f"{PROMPT!r} with feature {feature} {'clamped to' if cfg.method == 'clamp' else 'x'} "
        f"{strength or 0:.2f} where the answer is written ({_sampling(cfg)}):\n"
        f"           unsteered ({up0:.0%} uppercase): {r.unsteered!r}\n"
        f"           steered   ({up1:.0%} uppercase): {r.steered!r}",
    )
    return r


def _sampling(cfg: SteerConfig) -> str:
    how = "greedy" if cfg.temperature == 0 else f"temperature {cfg.temperature:g}, seed {cfg.seed}"
    return f"{how}, frequency penalty {cfg.frequency_penalty:g}"


def _export(ws: Workspace, sae: Artifact, out, step: _Steps) -> tuple[dict[str, Any], dict[str, Any]]:
    """The SAE in SAELens's format and Neuronpedia's."""
    from ..share.exporting import export_saelens
    from ..share.neuronpedia import export_neuronpedia

    base = ws.root / "exports" / sae.name
    lens = export_saelens(ws, sae.id, f"{base}-saelens", overwrite=True)
    npx = export_neuronpedia(ws, sae.id, f"{base}-neuronpedia", overwrite=True, progress=out.progress)
    step(
        "export",
        {"saelens": lens["path"], "neuronpedia": npx["path"], "neuronpedia_features": npx["features"]},
        f"SAELens {lens['path']}\n           Neuronpedia {npx['path']} ({npx['features']:,} features)",
    )
    return lens, npx


def _train(
    ws: Workspace, a: argparse.Namespace, tok: Artifact, info: dict[str, Any], out, step: _Steps
) -> tuple[Artifact, dict[str, Any]]:
    """The demo's SAE (see :func:`demo_train_config`), with the command line's changes."""
    from ..train.training import train

    cfg = demo_train_config(
        ws,
        tok.id,
        hook=a.hook,
        steps=a.train_steps,
        batch_tokens=a.batch_tokens,
        train_tokens=a.train_tokens,
        expansion_factor=a.expansion,
    )
    res = train(ws, cfg, progress=out.progress)
    m = res.metrics
    if res.sae_id is None:
        raise MistudioError(f"The demo's training ended {res.status} without an SAE.", "run the demo again.")
    sae = ws.get(res.sae_id)
    step(
        "train",
        {"run_id": res.run_id, "sae_id": res.sae_id, "path": res.path, "metrics": m},
        f"{sae.name} ({res.path}): top-k k=32, d_sae {a.expansion * info['d_model']} at {a.hook}, "
        f"{m['tokens']:,} "
        f"tokens ({a.train_tokens:,} distinct, harvested once); explained variance "
        f"{m['explained_variance']:.3f}, L0 {m['l0']:.0f}, dead {m['dead_fraction']:.1%}, "
        f"CE recovered {m['ce_recovered']:.3f}",
    )
    return sae, m
