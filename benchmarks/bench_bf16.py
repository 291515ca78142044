"""The model in bfloat16 against float32, for quality, in one run: the demo's SAE recipe trained twice
with the same seed and batch order, once on activations harvested with the model in float32 and once
in bfloat16 (what 'auto' picks on a CPU with native bf16), then the same shouting feature steered on
both models.

Reported: explained variance, L0, dead fraction and CE recovered of each SAE (target: within 0.005 of
fp32 for EV and CE recovered), the seconds from text to saved SAE, and for the steering: the feature the
contrast picks on each SAE, then on held-out prompts, steering the bf16-trained SAE's feature at the
same strength on each model: uppercase share, KL(steered || unsteered) and the perplexity of the
unsteered text (fp32 log-probabilities either way).

    python benchmarks/bench_bf16.py [--steps 100] [--prompts 4]
"""

from __future__ import annotations

import argparse
import time

from baseline import model_in

from mistudio_widgets import Workspace
from mistudio_widgets.cli.demo import SHOUTS, demo_train_config, uppercase_share
from mistudio_widgets.core.configs import SteerConfig
from mistudio_widgets.core.system import cpu_has_fast_bf16
from mistudio_widgets.data.datasets import resolve_dataset
from mistudio_widgets.features import contrast, ordinary_case
from mistudio_widgets.steering import auto_strength, steer
from mistudio_widgets.train.training import train

DTYPES = ("float32", "bfloat16")
# prompts the demo and the auto-strength rule were never tuned on
PROMPTS = (
    "Describe your favourite place to walk.",
    "Explain how a bicycle works.",
    "Write a note to a friend about a film you saw.",
    "What should I cook for dinner tonight?",
    "Tell me about the sea.",
    "Give me advice for a job interview.",
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=100, help="optimiser steps of each SAE")
    ap.add_argument("--prompts", type=int, default=4, help="held-out prompts steered on each model")
    ap.add_argument("--tokens", type=int, default=40, help="tokens generated per continuation")
    ap.add_argument("--workspace", default=None)
    a = ap.parse_args()
    ws = Workspace(a.workspace)
    dataset = resolve_dataset(ws).name
    print(f"this CPU {'has' if cpu_has_fast_bf16() else 'lacks'} native bf16; demo recipe, {a.steps} steps")
    runs = {}
    for dt in DTYPES:
        model = model_in(ws, dt)
        name = ws.unique_name("run", f"bench-bf16-{dt}")
        cfg = demo_train_config(ws, dataset, model=model.name, steps=a.steps, eval_sequences=32, name=name)
        t0 = time.perf_counter()
        res = train(ws, cfg)
        runs[dt] = dict(res.metrics, seconds=time.perf_counter() - t0, sae=res.sae_id, model=model.name)
    print(f"\n{'':28}{'float32':>10}{'bfloat16':>10}{'difference':>12}")
    for key, fmt in (
        ("explained_variance", ".4f"),
        ("ce_recovered", ".4f"),
        ("l0", ".2f"),
        ("dead_fraction", ".4f"),
        ("seconds", ".0f"),
    ):
        f, b = runs["float32"][key], runs["bfloat16"][key]
        print(f"  {key:26}{f:>10{fmt}}{b:>10{fmt}}{b - f:>+12{fmt}}")
    print("  target: explained variance and CE recovered within 0.005 of float32")
    print(
        "  text to saved SAE: bfloat16 "
        f"{runs['float32']['seconds'] / runs['bfloat16']['seconds']:.2f}x faster"
    )

    picked = {}
    for dt in DTYPES:
        found = contrast(
            ws, runs[dt]["sae"], SHOUTS, [ordinary_case(x) for x in SHOUTS], model=runs[dt]["model"]
        )
        picked[dt] = found["steer_with"]
        top = next((f for f in found["features"] if f["index"] == picked[dt]), None)
        print(
            f"\nSAE trained in {dt}: contrast picks feature {picked[dt]}"
            + (
                f" (fires on {top['rate']:.0%} of shouted tokens, {top['rate_contrast']:.0%} of ordinary)"
                if top
                else ""
            )
        )
    feature, sae = picked["bfloat16"], runs["bfloat16"]["sae"]
    if feature is None:
        print("no shouting feature found: steering skipped")
        return
    auto = auto_strength(
        ws, sae, SteerConfig(features=[[feature, 0.0]], prompt=PROMPTS[0], max_tokens=a.tokens)
    )
    strength = auto.strength or 0.0
    print(
        f"\nsteering feature {feature} at {strength:.2f} (auto strength on {PROMPTS[0]!r}), "
        f"{a.tokens} tokens:"
    )
    print(f"  {'prompt':46}{'dtype':>10}{'upper 0->1':>14}{'KL':>8}{'ppl':>8}")
    for prompt in PROMPTS[1 : 1 + a.prompts]:
        for dt in DTYPES:
            r = steer(
                ws,
                sae,
                SteerConfig(features=[[feature, strength]], prompt=prompt, max_tokens=a.tokens),
                model=runs[dt]["model"],
            )
            m = r.metrics
            print(
                f"  {prompt[:44]:46}{dt:>10}{uppercase_share(r.unsteered):>7.0%}->"
                f"{uppercase_share(r.steered):<5.0%}{m.kl_mean:>8.2f}{m.perplexity_unsteered or 0:>8.2f}"
            )


if __name__ == "__main__":
    main()
