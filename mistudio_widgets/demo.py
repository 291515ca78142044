"""``mistudio demo``: the whole main job on the embedded defaults, offline: model and corpus, tokens,
activations at a hook, a trained SAE, its features extracted, the feature that fires most on shouted
text found and labelled by the in-kernel explainer, a steered continuation, and the SAE exported for
SAELens and Neuronpedia. Prints one line per step and a summary."""
from __future__ import annotations

import argparse
import time
from typing import Any

from .configs import DEFAULT, ExtractConfig, LabelConfig, SteerConfig, TokenizeConfig, TrainConfig
from .workspace import Workspace

SHOUT = "WHY ARE YOU SHOUTING AT ME? STOP YELLING!"
PROMPT = "Tell me about your day."


def run_demo(ws: Workspace, a: argparse.Namespace, out, capture) -> dict[str, Any]:
    from .datasets import ensure_tokenization, resolve_dataset
    from .exporting import export_saelens
    from .features import extract, feature_columns, fire
    from .labeling import label_features
    from .models import model_info, resolve_model
    from .neuronpedia import export_neuronpedia
    from .steering import steer
    from .training import train

    t0 = time.perf_counter()
    times: dict[str, float] = {}

    def step(name: str, obj: dict[str, Any], text: str) -> None:
        times[name] = time.perf_counter() - t0 - sum(times.values())
        out.line({"step": name, "seconds": round(times[name], 1), **obj}, f"{name:<9}{text}  [{times[name]:.0f}s]")

    model = resolve_model(ws, DEFAULT, progress=out.progress)
    info = model_info(ws, model)
    step("model", {"id": model.id, "name": model.name, "info": info},
         f"{model.name}: {info['family']}, {info['layers']} layers, d_model {info['d_model']}, {info['parameters']:,} parameters")
    ds = resolve_dataset(ws, DEFAULT, progress=out.progress)
    step("dataset", {"id": ds.id, "name": ds.name, "stats": ds.meta["stats"]},
         f"{ds.name}: {ds.meta['stats']['documents']} documents ({ds.meta.get('licence', '')}, {ds.meta['provenance']['source']})")
    tok = ensure_tokenization(ws, ds, model, TokenizeConfig(context_size=a.context_size), progress=out.progress)
    st = tok.meta["stats"]
    step("tokenize", {"id": tok.id, "stats": st}, f"{tok.name}: {st['tokens']:,} tokens in {st['sequences']:,} sequences")
    a.model, a.dataset = model.id, tok.id
    capture(ws, a, out)
    times["capture"] = time.perf_counter() - t0 - sum(times.values())

    cfg = TrainConfig(dataset=tok.id, hook=a.hook, steps=a.train_steps, batch_tokens=1024, expansion_factor=4, k=32, lr=2e-3,
                      eval_every=0, log_every=10, chunk_sequences=256, eval_sequences=8, name=ws.unique_name("run", "demo-topk"))
    res = train(ws, cfg, progress=out.progress)
    m = res.metrics
    sae = ws.get(res.sae_id)
    step("train", {"run_id": res.run_id, "sae_id": res.sae_id, "path": res.path, "metrics": m},
         f"{sae.name} ({res.path}): top-k k=32, d_sae {4 * info['d_model']}, {m['tokens']:,} tokens; explained variance "
         f"{m['explained_variance']:.3f}, L0 {m['l0']:.0f}, dead {m['dead_fraction']:.1%}, CE recovered {m['ce_recovered']:.3f}")

    ext = extract(ws, sae.id, ExtractConfig(dataset=tok.id, tokens=a.extract_tokens, top_k=20, quantile_examples=3,
                                            coactivation_tokens=4096), progress=out.progress)
    cols = feature_columns(ws, ext)
    live = int((cols["frequency"] > 0).sum())
    step("extract", {"extraction": ext.id, "tokens": a.extract_tokens, "live_features": live},
         f"{a.extract_tokens:,} tokens: {live:,} of {len(cols['frequency']):,} features fired")

    hits = fire(ws, sae.id, SHOUT)
    top = hits["features"][0]
    feature = int(top["index"])
    step("find", {"text": SHOUT, "feature": feature, "activation": top["activation"], "features": hits["features"][:5]},
         f"feature {feature} fires most on {SHOUT!r} ({top['activation']:.2f} on {hits['tokens'][top['token']]!r})")

    lab = label_features(ws, sae.id, LabelConfig(examples=8, score_examples=3), features=[feature], redo=True,
                         progress=out.progress)[0]
    score = lab.get("score")
    step("label", {"feature": feature, "label": lab.get("label"), "score": score},
         f"feature {feature}: {lab.get('label')!r}" + (f", detection score {score:.2f}" if score is not None else ""))

    peak = float(cols["max"][feature])
    strength = round(2 * peak, 2) or 10.0          # twice its largest activation: visible, still fluent
    r = steer(ws, sae.id, SteerConfig(features=[[feature, strength]], prompt=PROMPT, max_tokens=a.steer_tokens))
    sm = r["metrics"]
    step("steer", {"feature": feature, "strength": strength, "prompt": PROMPT, "unsteered": r["unsteered"],
                   "steered": r["steered"], "kl_mean": sm["kl_mean"], "perplexity_unsteered": sm.get("perplexity_unsteered"),
                   "perplexity_steered": sm.get("perplexity_steered")},
         f"feature {feature} x {strength}: KL {sm['kl_mean']:.3f}\n           unsteered: {r['unsteered']!r}\n"
         f"           steered:   {r['steered']!r}")

    base = ws.root / "exports" / sae.name
    lens = export_saelens(ws, sae.id, f"{base}-saelens", overwrite=True)
    npx = export_neuronpedia(ws, sae.id, f"{base}-neuronpedia", overwrite=True, progress=out.progress)
    step("export", {"saelens": lens["path"], "neuronpedia": npx["path"], "neuronpedia_features": npx["features"]},
         f"SAELens {lens['path']}\n           Neuronpedia {npx['path']} ({npx['features']:,} features)")
    total = time.perf_counter() - t0
    summary = {"seconds": round(total, 1), "workspace": str(ws.root), "sae": sae.id, "metrics": m, "feature": feature,
               "label": lab.get("label"), "score": score, "steered": r["steered"], "unsteered": r["unsteered"],
               "exports": {"saelens": lens["path"], "neuronpedia": npx["path"]}, "step_seconds": {k: round(v, 1) for k, v in times.items()}}
    out.summary(summary, f"done in {total:.0f}s; workspace {ws.root}")
    return summary
