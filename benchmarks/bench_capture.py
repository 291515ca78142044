"""Activation capture throughput at blocks.15.hook_resid_post of the default model, against the same
model's bare forward truncated after that layer, on the same tokens in one run. Target ratio >= 0.9.

Then the same capture with the model in bfloat16 against float32 (alternating repeats in one run),
with the cosine of the captured activations: target >= 2.5x on a CPU with native bf16.

    python benchmarks/bench_capture.py [--tokens 8192] [--repeats 3] [--batch-size 16]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from baseline import model_in, truncated_forward_seconds

from mistudio_widgets import TokenizeConfig, Workspace
from mistudio_widgets.core.system import cpu_has_fast_bf16
from mistudio_widgets.data.activations import iter_activations
from mistudio_widgets.data.datasets import ensure_tokenization, load_tokens, resolve_dataset
from mistudio_widgets.data.hooks import decoder_layers, run_with_capture
from mistudio_widgets.data.models import load_model, resolve_model

HOOK, LAYER = "blocks.15.hook_resid_post", 15


def ours(lm, tokens, batch_size: int) -> float:
    t0 = time.perf_counter()
    n = 0
    for b in iter_activations(lm, tokens, HOOK, batch_size=batch_size):
        n += b.acts.shape[0]
    assert n > 0
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=8192)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--workspace", default=None)
    a = ap.parse_args()
    torch.manual_seed(0)
    ws = Workspace(a.workspace)
    model = resolve_model(ws)
    tok = ensure_tokenization(ws, resolve_dataset(ws), model, TokenizeConfig(context_size=128))
    tokens = load_tokens(ws, tok)[: a.tokens // 128]
    lm = load_model(ws, model)
    assert len(decoder_layers(lm.model)) > LAYER
    ours(lm, tokens[: a.batch_size], a.batch_size)  # warm-up
    truncated_forward_seconds(lm, tokens[: a.batch_size], LAYER, a.batch_size)
    base_t, our_t = [], []
    for _ in range(a.repeats):  # interleaved, so drift hits both alike
        base_t.append(truncated_forward_seconds(lm, tokens, LAYER, a.batch_size))
        our_t.append(ours(lm, tokens, a.batch_size))
    n = tokens.size
    base, mine = n / statistics.median(base_t), n / statistics.median(our_t)
    print(f"threads={torch.get_num_threads()} tokens/run={n} repeats={a.repeats} batch={a.batch_size}x128")
    print(f"bare forward truncated after layer {LAYER}: {base:8.0f} tokens/s")
    print(f"mistudio capture at {HOOK}: {mine:8.0f} tokens/s")
    print(f"ratio (capture / truncated forward): {mine / base:.3f}   target >= 0.90")
    dtypes(ws, tokens, a.batch_size, a.repeats)


def dtypes(ws: Workspace, tokens, batch_size: int, repeats: int) -> None:
    """Capture with the model in float32 and in bfloat16, alternating, on the same tokens."""
    lms = {dt: load_model(ws, model_in(ws, dt)) for dt in ("float32", "bfloat16")}
    ids = torch.tensor(tokens[:batch_size], dtype=torch.long)
    got = {dt: run_with_capture(lm.model, ids, HOOK)[HOOK].float() for dt, lm in lms.items()}
    cos = torch.nn.functional.cosine_similarity(got["float32"], got["bfloat16"], dim=-1)
    times: dict[str, list[float]] = {dt: [] for dt in lms}
    for _ in range(repeats):
        for dt, lm in lms.items():
            times[dt].append(ours(lm, tokens, batch_size))
    rate = {dt: tokens.size / statistics.median(t) for dt, t in times.items()}
    print(f"\nmodel dtype (this CPU {'has' if cpu_has_fast_bf16() else 'lacks'} native bf16):")
    for dt, r in rate.items():
        print(f"  capture in {dt}: {r:8.0f} tokens/s")
    print(
        f"ratio (bfloat16 / float32): {rate['bfloat16'] / rate['float32']:.2f}   target >= 2.5 with native "
        f"bf16; activations' cosine to fp32: mean {cos.mean():.5f}, min {cos.min():.5f}"
    )


if __name__ == "__main__":
    main()
