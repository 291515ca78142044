"""SAE quality at scale through the real pipeline (harvest, shuffle, train, evaluate, save): a top-k SAE
(k=32, 8x expansion, d_sae 4608) at blocks.15.hook_resid_post of the default model, trained on >= 1M
tokens of the default corpus, reporting explained variance, L0, dead latents and the model's
cross-entropy with the SAE spliced in (CE recovered against zero-ablation, delta loss).

The baseline measured in the same run is the mean-ablation reconstruction (every activation replaced
by the data mean): the SAE's MSE is printed as a ratio to it (lower is better; 0 is perfect).

    python benchmarks/bench_quality.py [--steps 256] [--batch 4096] [--arch topk]
"""

from __future__ import annotations

import argparse
import time

from mistudio_widgets import Workspace
from mistudio_widgets.core.configs import TrainConfig
from mistudio_widgets.train.training import train


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=256, help="optimiser steps (tokens = steps x batch)")
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--arch", default="topk", choices=["topk", "batchtopk", "standard", "jumprelu"])
    ap.add_argument("--cache", action="store_true", help="use (and fill) the fp16 activation cache")
    ap.add_argument("--workspace", default=None)
    a = ap.parse_args()
    ws = Workspace(a.workspace)
    cfg = TrainConfig(
        architecture=a.arch,
        k=32,
        expansion_factor=8,
        batch_tokens=a.batch,
        steps=a.steps,
        lr=2e-3,
        warmup_steps=20,
        lr_schedule="cosine",
        eval_every=max(a.steps // 4, 1),
        eval_sequences=64,
        checkpoint_every=max(a.steps // 4, 1),
        log_every=16,
        dead_tokens=500_000,
        cache_activations=a.cache,
        name=ws.unique_name("run", f"bench-quality-{a.arch}"),
    )
    t0 = time.perf_counter()
    res = train(ws, cfg)
    secs = time.perf_counter() - t0
    ev = ws.metrics(res.run_id, "eval")[-1]
    m = res.metrics
    print(
        f"{a.arch} k=32 d_sae=4608 at blocks.15.hook_resid_post: {m['tokens']:,} tokens trained in "
        f"{secs:.0f}s"
    )
    print(
        f"  explained variance {m['explained_variance']:.3f}   L0 {m['l0']:.1f}   dead "
        f"{m['dead_fraction']:.2%}"
    )
    print(
        f"  CE clean {ev['ce_clean']:.3f}  spliced {ev['ce_spliced']:.3f}  zero-ablated "
        f"{ev['ce_zero_ablated']:.3f}  "
        f"-> CE recovered {m['ce_recovered']:.3f}, delta loss {m['delta_loss']:.3f}"
    )
    print(f"  MSE / mean-ablation MSE = {1 - m['explained_variance']:.3f} (baseline 1.000)")


if __name__ == "__main__":
    main()
