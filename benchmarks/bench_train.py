"""SAE training speed and quality at d_in 576, d_sae 4608, batch 4096 on the same pre-harvested
activations of the default model (blocks.15.hook_resid_post), side by side in one run:

  ours topk (k=32), ours standard (L1), a plain dense PyTorch top-k loop (the baseline), and SAELens /
  sparsify when they are installed (optional, benchmark-only; never imported by the package).

Then the end-to-end path (text to trained SAE, harvesting included) against the bare forward truncated
at the hook over the same tokens. Targets: ours >= 2x the fastest peer's tokens/s at equal or better
MSE/EV and equal L0; end-to-end >= 0.85x the truncated forward.

    python benchmarks/bench_train.py [--tokens 131072] [--steps 40] [--e2e-steps 16]
"""

from __future__ import annotations

import argparse
import importlib.util
import time

import torch
from baseline import truncated_forward_seconds
from torch import nn

from mistudio_widgets import TokenizeConfig, Workspace
from mistudio_widgets.core.configs import TrainConfig
from mistudio_widgets.data.activations import harvest
from mistudio_widgets.data.datasets import ensure_tokenization, load_tokens, resolve_dataset
from mistudio_widgets.data.models import load_model, resolve_model
from mistudio_widgets.sae import SAESpec, make_sae
from mistudio_widgets.train.training import (
    explained_variance,
    geometric_median,
    lr_lambda,
    optimizer_step,
    train,
)

HOOK, LAYER, D_SAE, BATCH, K = "blocks.15.hook_resid_post", 15, 4608, 4096, 32


def evaluate(forward, x: torch.Tensor, encode) -> dict[str, float]:
    with torch.no_grad():
        recon, f = forward(x), encode(x)
    return {
        "mse": float((recon - x).pow(2).mean()),
        "ev": explained_variance(recon, x),
        "l0": float((f > 0).float().sum(-1).mean()),
        "dead": float(((f > 0).sum(0) == 0).float().mean()),
    }


def bench_ours(arch: str, train_x, test_x, steps: int, select: str = "auto") -> dict[str, float]:
    torch.manual_seed(0)
    cfg = TrainConfig(
        architecture=arch,
        k=K,
        d_sae=D_SAE,
        batch_tokens=BATCH,
        steps=steps,
        lr=2e-3,
        warmup_steps=0,
        lr_schedule="constant",
        l1_coefficient=5.0,
        l1_warmup_steps=10,
        select_precision=select,
    )
    sae = make_sae(
        SAESpec(architecture=arch, d_in=train_x.shape[1], d_sae=D_SAE, k=K if arch == "topk" else None)
    )
    sae.select_dtype = None if select == "float32" else torch.bfloat16
    with torch.no_grad():
        sae.b_dec.copy_(geometric_median(train_x[:8192]))
    opt = torch.optim.AdamW(sae.parameters(), lr=cfg.lr, betas=cfg.adam_betas)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg))
    since = torch.zeros(D_SAE, dtype=torch.long)
    t0 = time.perf_counter()
    for s in range(steps):
        i = (s * BATCH) % (train_x.shape[0] - BATCH)
        x = train_x[i : i + BATCH]
        coef = cfg.l1_coefficient * min(1.0, (s + 1) / cfg.l1_warmup_steps)
        _, _, _, fired = optimizer_step(
            sae, opt, sched, cfg, x, x, since >= cfg.dead_tokens, coef, train_x.shape[1] // 2
        )
        since += BATCH
        since[fired] = 0
    secs = time.perf_counter() - t0
    return {"tokens_per_s": steps * BATCH / secs, **evaluate(sae, test_x, sae.encode)}


class DenseTopK(nn.Module):
    """The plain PyTorch baseline: dense encoder, top-k, dense decoder, MSE, Adam."""

    def __init__(self, d_in: int):
        super().__init__()
        w = torch.randn(D_SAE, d_in)
        w = w / w.norm(dim=1, keepdim=True) * 0.1
        self.W_dec, self.W_enc = nn.Parameter(w), nn.Parameter(w.T.clone())
        self.b_enc, self.b_dec = nn.Parameter(torch.zeros(D_SAE)), nn.Parameter(torch.zeros(d_in))

    def encode(self, x):
        pre = (x - self.b_dec) @ self.W_enc + self.b_enc
        v, i = pre.topk(K, dim=-1)
        return torch.zeros_like(pre).scatter_(-1, i, torch.relu(v))

    def forward(self, x):
        return self.encode(x) @ self.W_dec + self.b_dec


def bench_dense(train_x, test_x, steps: int) -> dict[str, float]:
    torch.manual_seed(0)
    m = DenseTopK(train_x.shape[1])
    with torch.no_grad():
        m.b_dec.copy_(geometric_median(train_x[:8192]))
    opt = torch.optim.Adam(m.parameters(), lr=2e-3)
    t0 = time.perf_counter()
    for s in range(steps):
        i = (s * BATCH) % (train_x.shape[0] - BATCH)
        x = train_x[i : i + BATCH]
        loss = (m(x) - x).pow(2).sum(-1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            m.W_dec /= m.W_dec.norm(dim=1, keepdim=True)
    secs = time.perf_counter() - t0
    return {"tokens_per_s": steps * BATCH / secs, **evaluate(m, test_x, m.encode)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--tokens", type=int, default=131072, help="activations harvested for the speed/quality table"
    )
    ap.add_argument("--steps", type=int, default=40, help="optimiser steps per method")
    ap.add_argument("--e2e-steps", type=int, default=16, help="steps of the end-to-end run (0 skips it)")
    ap.add_argument("--workspace", default=None)
    a = ap.parse_args()
    ws = Workspace(a.workspace)
    model = resolve_model(ws)
    tok = ensure_tokenization(ws, resolve_dataset(ws), model, TokenizeConfig(context_size=128))
    tokens = load_tokens(ws, tok)
    lm = load_model(ws, model)
    print(f"threads={torch.get_num_threads()}  d_in=576 d_sae={D_SAE} batch={BATCH} k={K} steps={a.steps}")
    t0 = time.perf_counter()
    acts, _ = harvest(lm, tokens[: a.tokens // 128 + 64], [HOOK])
    x = acts[HOOK]
    x = x * (576**0.5 / x.norm(dim=1).mean())  # the same normalisation for everyone
    test_x, train_x = x[:8192], x[8192:]
    print(f"harvested {x.shape[0]} activations in {time.perf_counter() - t0:.0f}s")
    rows = {
        "dense PyTorch top-k (baseline)": bench_dense(train_x, test_x, a.steps),
        "mistudio topk": bench_ours("topk", train_x, test_x, a.steps),
        "mistudio topk (fp32 selection)": bench_ours("topk", train_x, test_x, a.steps, "float32"),
        "mistudio standard (L1)": bench_ours("standard", train_x, test_x, a.steps),
    }
    for peer in ("sae_lens", "sparsify"):
        if importlib.util.find_spec(peer) is None:
            print(f"({peer} is not installed: not compared)")
    base = rows["dense PyTorch top-k (baseline)"]["tokens_per_s"]
    print(f"\n{'method':34s} {'tokens/s':>9s} {'x base':>7s} {'MSE':>8s} {'EV':>6s} {'L0':>6s} {'dead':>6s}")
    for name, r in rows.items():
        print(
            f"{name:34s} {r['tokens_per_s']:9.0f} {r['tokens_per_s'] / base:7.2f} {r['mse']:8.4f} "
            f"{r['ev']:6.3f} {r['l0']:6.1f} {r['dead']:6.1%}"
        )
    if a.e2e_steps:
        cfg = TrainConfig(
            steps=a.e2e_steps,
            batch_tokens=BATCH,
            chunk_sequences=1024,
            eval_every=0,
            checkpoint_every=0,
            eval_sequences=4,
            log_every=a.e2e_steps,
            name=ws.unique_name("run", "bench-e2e"),
        )
        t0 = time.perf_counter()
        res = train(ws, cfg)
        e2e = time.perf_counter() - t0
        harvested = ws.get(res.run_id).meta["harvest"]["seen"] + cfg.eval_sequences * tokens.shape[1]
        bare = truncated_forward_seconds(lm, tokens[: harvested // tokens.shape[1]], LAYER)
        print(
            f"\nend to end: {harvested} tokens harvested (eval included), {res.metrics['tokens']} "
            "trained, to a saved SAE in "
            f"{e2e:.1f}s; bare truncated forward over the same sequences {bare:.1f}s; ratio "
            f"{bare / e2e:.3f} (target >= 0.85)"
        )


if __name__ == "__main__":
    main()
