"""Where a training step's time goes on a GPU: this project's top-k step (its defaults, and the variants
the defaults were chosen over) against sparsify's, on the same synthetic activations and batch order,
then torch.profiler's tables for one of ours and sparsify's. Speed does not depend on the data, so no
model is needed; ``bench_train.py --device cuda`` gives the quality on real activations.

    python benchmarks/gpu/profile_step.py [--steps 300] [--profile-steps 20]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import bench_train as bt  # noqa: E402

from mistudio_widgets.sae import topk  # noqa: E402


def timed(label: str, run) -> None:
    t0 = time.perf_counter()
    r = run()
    print(
        f"  {label:48s} {r['tokens_per_s']:10.0f} tokens/s  ({time.perf_counter() - t0:.1f}s with the "
        f"held-out measures)  EV {r['ev']:.3f}  dead {r['dead']:.1%}",
        flush=True,
    )


def profiled(label: str, run, rows: int) -> None:
    acts = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    with torch.profiler.profile(activities=acts) as prof:
        run()
    events = prof.key_averages()
    waits = {
        e.key: e.count
        for e in events
        if e.key in ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaMemcpyAsync", "cudaLaunchKernel")
    }
    print(f"\n== {label}: calls {waits}")
    print(events.table(sort_by="self_cpu_time_total", row_limit=rows, max_name_column_width=48))
    print(events.table(sort_by="self_device_time_total", row_limit=rows // 2, max_name_column_width=48))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--profile-steps", type=int, default=20)
    ap.add_argument("--rows", type=int, default=30)
    ap.add_argument("--device", default="cuda", help="cpu: a quick check of this script itself")
    ap.add_argument("--tokens", type=int, default=262144)
    a = ap.parse_args()
    torch.manual_seed(0)
    dev, n = a.device, a.tokens
    # activations with a few strong directions, scaled as bench_train scales real ones
    basis = torch.randn(64, 576, device=dev)
    x = torch.randn(n + 16384, 64, device=dev).pow(3) @ basis + 0.3 * torch.randn(n + 16384, 576, device=dev)
    x = x * (576**0.5 / x.norm(dim=1).mean())
    train_x, test_x = x[:n], x[n:]
    batches = bt.Batches(train_x, a.steps, 4096)
    where = torch.cuda.get_device_name() if dev == "cuda" else dev
    print(f"{where}  d_sae={bt.D_SAE} k={bt.K} batch=4096 steps={a.steps}")
    sparse_old = ("cpu", dev)
    rows = {
        "mistudio topk (defaults)": lambda: bt.bench_ours(batches, train_x, test_x),
        "mistudio topk (bf16 choosing pass)": lambda: bt.bench_ours(
            batches, train_x, test_x, select_precision="bfloat16"
        ),
        "sparsify topk (defaults: signum)": lambda: bt.bench_sparsify(batches, train_x, test_x, "signum"),
    }
    bt.bench_ours(bt.Batches(train_x, 30, 4096), train_x, test_x)  # warm-up (allocator, kernels)
    bt.bench_sparsify(bt.Batches(train_x, 30, 4096), train_x, test_x, "signum")
    for label, run in rows.items():
        timed(label, run)
    was = topk.SPARSE_PRODUCTS
    topk.SPARSE_PRODUCTS = sparse_old
    try:
        timed(
            "mistudio topk (CPU's sparse products, bf16 pass)",
            lambda: bt.bench_ours(batches, train_x, test_x, select_precision="bfloat16"),
        )
    finally:
        topk.SPARSE_PRODUCTS = was
    few = bt.Batches(train_x, a.profile_steps, 4096)
    profiled("mistudio topk (defaults)", lambda: bt.bench_ours(few, train_x, test_x), a.rows)
    profiled("sparsify topk", lambda: bt.bench_sparsify(few, train_x, test_x, "signum"), a.rows)


if __name__ == "__main__":
    main()
