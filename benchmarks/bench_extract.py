"""Feature extraction throughput against the capture limit, in one run: the same sequences through
(a) the bare limit, the model's forward stopped at the SAE's hook plus the SAE's encode, and (b) a full
extraction (streaming statistics, top-k and reservoir examples, histograms, then logit lens,
neighbours and the Parquet files). Printed as a ratio; target >= 0.8.

    python benchmarks/bench_extract.py [--sae NAME] [--tokens 65536]
(without --sae, a top-k SAE with 4,608 features is trained first at blocks.15.hook_resid_post.)
"""

from __future__ import annotations

import argparse
import time

import torch

from mistudio_widgets import Workspace
from mistudio_widgets.core.configs import ExtractConfig, TrainConfig
from mistudio_widgets.data.datasets import load_tokens
from mistudio_widgets.features import extract, feature_acts, load_library_sae, model_for_sae, sae_hook
from mistudio_widgets.train.training import train


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sae", default=None)
    ap.add_argument("--tokens", type=int, default=65536, help="the extraction default")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--workspace", default=None)
    a = ap.parse_args()
    ws = Workspace(a.workspace)
    sae_ref = a.sae
    if sae_ref is None:
        res = train(
            ws,
            TrainConfig(
                steps=20,
                batch_tokens=2048,
                expansion_factor=8,
                eval_every=0,
                chunk_sequences=256,
                name=ws.unique_name("run", "bench-extract"),
            ),
        )
        sae_ref = res.sae_id
    art, sae, _ = load_library_sae(ws, sae_ref)
    lm = model_for_sae(ws, art, sae)
    hook = sae_hook(art, sae)
    print(
        f"SAE {art.name}: d_sae {sae.spec.d_sae} at {hook}; {a.tokens:,} tokens, batch {a.batch_size} "
        "sequences, "
        f"threads {torch.get_num_threads()}"
    )
    from mistudio_widgets.core.configs import TokenizeConfig
    from mistudio_widgets.data.datasets import ensure_tokenization, resolve_dataset

    warm = load_tokens(
        ws, ensure_tokenization(ws, resolve_dataset(ws), lm.artifact, TokenizeConfig(context_size=128))
    )
    for s in range(
        0, 6 * a.batch_size, a.batch_size
    ):  # the forward runs slower for its first batches: warm it up
        feature_acts(lm, sae, hook, torch.tensor(warm[-s - a.batch_size : len(warm) - s], dtype=torch.long))
    cfg = ExtractConfig(
        tokens=a.tokens,
        batch_size=a.batch_size,
        checkpoint_every=0,
        name=ws.unique_name("extraction", "bench"),
    )
    marks: dict[str, float] = {}

    def note(ev) -> None:
        if ev.stage == "extract" and ev.finished:
            marks["streamed"] = time.perf_counter()

    t0 = time.perf_counter()
    ext = extract(ws, art.id, cfg, progress=note)
    ours = time.perf_counter() - t0
    streamed = marks["streamed"] - t0
    tokens = load_tokens(ws, ext.meta["tokenization"])[: ext.meta["sequences"]]
    t0 = time.perf_counter()
    for s in range(0, len(tokens), a.batch_size):
        feature_acts(lm, sae, hook, torch.tensor(tokens[s : s + a.batch_size], dtype=torch.long))
    limit = time.perf_counter() - t0
    n = tokens.size
    print(f"capture limit (forward to the hook + encode): {n / limit:8.0f} tok/s  ({limit:.1f}s)")
    print(f"extraction, streaming part:                   {n / streamed:8.0f} tok/s  ({streamed:.1f}s)")
    print(
        f"full extraction (+ logit lens, neighbours, files, a fixed {ours - streamed:.1f}s): "
        f"{n / ours:8.0f} tok/s  ({ours:.1f}s)"
    )
    print(f"ratio {limit / ours:.3f} overall, {limit / streamed:.3f} while streaming (target >= 0.8)")


if __name__ == "__main__":
    main()
