"""Activation capture throughput at blocks.15.hook_resid_post of the default model, against the same
model's bare forward truncated after that layer, on the same tokens in one run. Target ratio >= 0.9.

Then the same capture with the model in bfloat16 against float32 (alternating repeats in one run),
with the cosine of the captured activations: target >= 2.5x on a CPU with native bf16. On a CUDA GPU
(``--device cuda``) also bitsandbytes 8-bit and 4-bit NF4 (bf16 compute), each against float32.

    python benchmarks/bench_capture.py [--tokens 8192] [--repeats 3] [--batch-size 16] [--device cuda]
        [--model SOURCE]   # a local folder or hub id instead of the embedded default
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from baseline import base_model, model_in, synchronize, truncated_forward_seconds

from mistudio_widgets import TokenizeConfig, Workspace
from mistudio_widgets.core.system import cpu_has_fast_bf16
from mistudio_widgets.data.activations import iter_activations
from mistudio_widgets.data.datasets import ensure_tokenization, load_tokens, resolve_dataset
from mistudio_widgets.data.hooks import decoder_layers, run_with_capture
from mistudio_widgets.data.models import load_model

HOOK, LAYER = "blocks.15.hook_resid_post", 15


def ours(lm, tokens, batch_size: int) -> float:
    synchronize(lm.device)
    t0 = time.perf_counter()
    n = 0
    for b in iter_activations(lm, tokens, HOOK, batch_size=batch_size):
        n += b.acts.shape[0]
    assert n > 0
    synchronize(lm.device)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=8192)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--workspace", default=None)
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--model", default=None, help="a local folder or hub id (default: the embedded model)")
    a = ap.parse_args()
    torch.manual_seed(0)
    ws = Workspace(a.workspace)
    model = base_model(ws, a.model)
    tok = ensure_tokenization(ws, resolve_dataset(ws), model, TokenizeConfig(context_size=128))
    tokens = load_tokens(ws, tok)[: a.tokens // 128]
    lm = load_model(ws, model, device=a.device)
    assert len(decoder_layers(lm.model)) > LAYER
    ours(lm, tokens[: a.batch_size], a.batch_size)  # warm-up
    truncated_forward_seconds(lm, tokens[: a.batch_size], LAYER, a.batch_size)
    base_t, our_t = [], []
    for _ in range(a.repeats):  # interleaved, so drift hits both alike
        base_t.append(truncated_forward_seconds(lm, tokens, LAYER, a.batch_size))
        our_t.append(ours(lm, tokens, a.batch_size))
    n = tokens.size
    base, mine = n / statistics.median(base_t), n / statistics.median(our_t)
    where = torch.cuda.get_device_name() if lm.device == "cuda" else f"threads={torch.get_num_threads()}"
    print(f"{where} tokens/run={n} repeats={a.repeats} batch={a.batch_size}x128 model {lm.dtype}")
    print(f"bare forward truncated after layer {LAYER}: {base:8.0f} tokens/s")
    print(f"mistudio capture at {HOOK}: {mine:8.0f} tokens/s")
    print(f"ratio (capture / truncated forward): {mine / base:.3f}   target >= 0.90")
    del lm
    dtypes(ws, tokens, a.batch_size, a.repeats, a.device, a.model)


# (dtype, quantization) of each variant compared; bitsandbytes' kernels are measured on CUDA only
CPU_VARIANTS = [("float32", "none"), ("bfloat16", "none")]
CUDA_VARIANTS = [*CPU_VARIANTS, ("bfloat16", "8bit"), ("bfloat16", "4bit")]


def dtypes(ws: Workspace, tokens, batch_size: int, repeats: int, device: str, source: str | None) -> None:
    """Capture with the model in float32 and in bfloat16 (and on CUDA 8-bit and 4-bit), alternating, on
    the same tokens; each variant's activations against float32's by cosine."""
    on_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    variants = CUDA_VARIANTS if on_cuda else CPU_VARIANTS
    lms = {}
    for dt, q in variants:
        try:
            lms[dt if q == "none" else f"{q} ({dt} compute)"] = load_model(
                ws, model_in(ws, dt, q, device=device, source=source)
            )
        except Exception as exc:  # bitsandbytes missing or refusing: say so, measure the rest
            print(f"  ({dt}/{q} skipped: {exc})")
    ids = torch.tensor(tokens[:batch_size], dtype=torch.long)
    got = {
        name: run_with_capture(lm.model, ids.to(lm.model.device), HOOK)[HOOK].float().cpu()
        for name, lm in lms.items()
    }
    times: dict[str, list[float]] = {name: [] for name in lms}
    for _ in range(repeats):
        for name, lm in lms.items():
            times[name].append(ours(lm, tokens, batch_size))
    rate = {name: tokens.size / statistics.median(t) for name, t in times.items()}
    if on_cuda:
        print(f"\nmodel dtype and quantization on {torch.cuda.get_device_name()}:")
    else:
        print(f"\nmodel dtype (this CPU {'has' if cpu_has_fast_bf16() else 'lacks'} native bf16):")
    for name, r in rate.items():
        cos = torch.nn.functional.cosine_similarity(got["float32"], got[name], dim=-1)
        print(
            f"  capture in {name:22s}: {r:9.0f} tokens/s  {r / rate['float32']:5.2f}x float32; "
            f"activations' cosine to fp32: mean {cos.mean():.5f}, min {cos.min():.5f}"
        )
    if "bfloat16" in rate:
        print(
            f"ratio (bfloat16 / float32): {rate['bfloat16'] / rate['float32']:.2f}   target >= 2.5 with "
            "native bf16 on a CPU"
        )


if __name__ == "__main__":
    main()
