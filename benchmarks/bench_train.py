"""SAE training side by side: this project, sparsify and SAELens on the same activations, the same batch
sequence and the same held-out set, in one run.

The activations are the default model's at blocks.15.hook_resid_post over the default dataset (special
positions dropped), scaled once to an average norm of sqrt(d_model) for everyone; they are cached under
the workspace (``bench/``), so a second run starts at once. Every trainer sees the same ``--steps``
batches of ``--batch`` activations, drawn in the same order (epochs of one seeded permutation), with
d_sae 4608 and k 32 where the architecture has a k. Each library runs at its own defaults, plus one
row with shared settings (Adam, lr 1e-3 constant, no warm-up, decoder bias at the data mean, no
auxiliary loss). Reported: training tokens/s (the training loop only), held-out MSE and explained
variance, held-out L0, and the dead fraction (latents that fire on none of the training activations
after training); ratios are to the fastest peer row.

Targets: ours >= 3x the fastest peer's tokens/s, with explained variance >= sparsify's at equal L0 and
no more dead latents. A peer library that is missing, or of a version whose internals this file does
not drive, is skipped with a line saying so.

Then the end-to-end path (text to trained SAE, harvesting included) against the bare forward truncated
at the hook over the same tokens (target >= 0.85), with the model in float32 and in bfloat16: the
bf16 run's time from text to saved SAE against the fp32 run's (target >= 2x on a CPU with native bf16).

On a CUDA GPU (``--device cuda``) the SAEs train there (ours under its default bf16 autocast, sparsify
as its Trainer runs it, with its Triton decoder) and the model harvests there; SAELens rows run on
CPUs only.

    python benchmarks/bench_train.py [--train-tokens 262144] [--steps 200] [--e2e-steps 16] [--rounds 3]
        [--device cuda] [--model SOURCE]
"""

from __future__ import annotations

import argparse
import importlib.metadata
import math
import statistics
import time
from typing import Callable

import torch
from baseline import base_model, model_in, synchronize, truncated_forward_seconds
from safetensors.torch import load_file, save_file

from mistudio_widgets import TokenizeConfig, Workspace
from mistudio_widgets.core.configs import TrainConfig
from mistudio_widgets.data.activations import harvest
from mistudio_widgets.data.datasets import ensure_tokenization, load_tokens, resolve_dataset
from mistudio_widgets.data.models import load_model
from mistudio_widgets.train.evaluation import explained_variance
from mistudio_widgets.train.heap import keep_freed_memory
from mistudio_widgets.train.optim import averaged, make_optimizer
from mistudio_widgets.train.prepare import new_sae, sae_spec
from mistudio_widgets.train.step import optimizer_step, sparsity_coefficient
from mistudio_widgets.train.training import train

HOOK, LAYER, D_SAE, K, CTX = "blocks.15.hook_resid_post", 15, 4608, 32, 128
PEERS = {"eai-sparsify": "1.3.", "sae-lens": "6."}  # the versions whose internals are driven below
SHARED = dict(lr=1e-3, b_dec="mean", aux=False)  # the shared-settings rows (with Adam, constant lr)
# this project's defaults before this benchmark chose the current ones
PREVIOUS = dict(optimizer="adam", lr=1e-3, aux_dead_tokens=200_000, aux_tokens=0)


class Batches:
    """The batch sequence every trainer sees: ``steps`` batches of ``size`` rows of ``x``, epochs of
    one seeded permutation."""

    def __init__(self, x: torch.Tensor, steps: int, size: int, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        epochs = math.ceil(steps * size / x.shape[0]) + 1
        self.x, self.steps, self.size = x, steps, size
        self.order = torch.cat([torch.randperm(x.shape[0], generator=g) for _ in range(epochs)]).to(x.device)

    def __iter__(self):
        for s in range(self.steps):
            yield self.x[self.order[s * self.size : (s + 1) * self.size]]

    @property
    def tokens(self) -> int:
        return self.steps * self.size


def measure(forward: Callable, encode: Callable, train_x, test_x, seconds: float, tokens: int) -> dict:
    """Held-out MSE / explained variance / L0, and the dead fraction over all training activations."""
    with torch.no_grad():
        recon, f = forward(test_x), encode(test_x)
        fired = torch.zeros(f.shape[1], dtype=torch.bool, device=f.device)
        for i in range(0, train_x.shape[0], 8192):
            fired |= (encode(train_x[i : i + 8192]) > 0).any(0)
    return {
        "tokens_per_s": tokens / seconds,
        "mse": float((recon - test_x).pow(2).mean()),
        "ev": explained_variance(recon, test_x),
        "l0": float((f > 0).float().sum(-1).mean()),
        "dead": float((~fired).float().mean()),
    }


# ---------------------------------------------------------------------------------------------
# This project: the trainer's own set-up and step (new_sae, make_optimizer, optimizer_step, dead tracking)
def bench_ours(batches: Batches, train_x, test_x, **overrides) -> dict:
    device = train_x.device.type
    cfg = TrainConfig(
        d_sae=D_SAE, k=K, batch_tokens=batches.size, steps=batches.steps, device=device, **overrides
    )
    spec = sae_spec(cfg, train_x.shape[1], train_x.shape[1], {})
    sae = new_sae(cfg, spec, test_x, device)  # as the trainer: the decoder bias from held-out activations
    opt, sched = make_optimizer(sae.parameters(), cfg, spec.d_sae)
    since = torch.zeros(spec.d_sae, dtype=torch.long)  # on the CPU, as the trainer keeps it
    aux_k = cfg.aux_k or train_x.shape[1] // 2
    synchronize(device)
    t0 = time.perf_counter()
    for s, x in enumerate(batches):
        coef = sparsity_coefficient(cfg, s)
        _, counts, _, _ = optimizer_step(
            sae, opt, sched, cfg, x, x, since >= cfg.aux_dead_tokens, coef, aux_k, device
        )
        fired = counts > 0
        since += x.shape[0]
        since[fired] = 0
    synchronize(device)
    secs = time.perf_counter() - t0
    with averaged(opt):
        return measure(sae, sae.encode, train_x, test_x, secs, batches.tokens)


# ---------------------------------------------------------------------------------------------
# sparsify: its SparseCoder, optimiser choice, learning-rate rule and step, as its Trainer runs them
def bench_sparsify(batches: Batches, train_x, test_x, optimizer: str, shared: bool = False) -> dict:
    from sparsify import SparseCoder, SparseCoderConfig
    from sparsify.sign_sgd import SignSGD
    from transformers import get_linear_schedule_with_warmup

    torch.manual_seed(0)
    device = train_x.device
    sae = SparseCoder(
        train_x.shape[1], SparseCoderConfig(num_latents=D_SAE, k=K), device=device, dtype=torch.float32
    )
    wrapper, sched = None, None
    if optimizer == "signum":  # sparsify's default: ScheduleFreeWrapper(SignSGD), lr 5e-3 / sqrt(n / 2^14)
        from schedulefree import ScheduleFreeWrapper

        lr = 5e-3 / (D_SAE / 2**14) ** 0.5
        opt = wrapper = ScheduleFreeWrapper(SignSGD(sae.parameters(), lr=lr), momentum=0.95)
        wrapper.train()
    else:  # its Adam: lr 2e-4 / sqrt(n / 2^14), 1000 warm-up steps, linear decay over the run
        lr = SHARED["lr"] if shared else 2e-4 / (D_SAE / 2**14) ** 0.5
        opt = torch.optim.Adam(sae.parameters(), lr=lr)
        if not shared:
            sched = get_linear_schedule_with_warmup(opt, 1000, batches.steps)
    since = torch.zeros(D_SAE, dtype=torch.long, device=device)
    synchronize(device)
    t0 = time.perf_counter()
    for s, x in enumerate(batches):
        if s == 0:
            sae.b_dec.data = x.mean(0)  # its Trainer's first-step initialisation
        sae.set_decoder_norm_to_unit_norm()
        # its forward carries its own bf16 autocast on CUDA (and its Triton decoder where Triton is)
        out = sae(x, dead_mask=None, total_variance=(x - x.mean(0)).pow(2).sum())  # auxk_alpha is 0
        out.fvu.backward()
        sae.remove_gradient_parallel_to_decoder_directions()
        opt.step()
        opt.zero_grad()
        if sched is not None:
            sched.step()
        fired = torch.zeros(D_SAE, dtype=torch.bool, device=device)
        fired[out.latent_indices.flatten()] = True
        since += x.shape[0]
        since[fired] = 0
    synchronize(device)
    secs = time.perf_counter() - t0
    if wrapper is not None:
        wrapper.eval()  # the averaged weights, as its Trainer saves them

    def encode(x):
        e = sae.encode(x)
        return torch.zeros(x.shape[0], D_SAE, device=x.device).scatter_(1, e.top_indices, e.top_acts.float())

    return measure(lambda x: sae(x).sae_out, encode, train_x, test_x, secs, batches.tokens)


# ---------------------------------------------------------------------------------------------
# SAELens: its training SAE classes and its own SAETrainer, fed our batches as its data provider
def bench_saelens(batches: Batches, train_x, test_x, arch: str, shared: bool = False) -> dict:
    import contextlib
    import io

    from sae_lens.config import SAETrainerConfig
    from sae_lens.saes.standard_sae import StandardTrainingSAE, StandardTrainingSAEConfig
    from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.training.sae_trainer import SAETrainer

    torch.manual_seed(0)
    d_in = train_x.shape[1]
    if arch == "topk":
        extra = {"aux_loss_coefficient": 0.0} if shared else {}
        sae = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=d_in, d_sae=D_SAE, k=K, **extra))
    else:
        sae = StandardTrainingSAE(StandardTrainingSAEConfig(d_in=d_in, d_sae=D_SAE))
    if shared:
        with torch.no_grad():
            sae.b_dec.copy_(test_x.mean(0))
    lr = SHARED["lr"] if shared else SAETrainerConfig.lr  # its default, 3e-4
    cfg = SAETrainerConfig(
        total_training_samples=batches.tokens,
        train_batch_size_samples=batches.size,
        lr=lr,
        lr_end=lr / 10,  # what its runner config sets (unused by the constant schedule)
    )
    trainer = SAETrainer(cfg, sae, iter(batches))
    t0 = time.perf_counter()
    with contextlib.redirect_stderr(io.StringIO()):  # its tqdm bar
        trainer.fit()
    secs = time.perf_counter() - t0
    return measure(sae, sae.encode, train_x, test_x, secs, batches.tokens)


# ---------------------------------------------------------------------------------------------
def peer_missing(dist: str) -> str | None:
    """Why a peer library is skipped (None when it can run)."""
    try:
        version = importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return f"({dist} is not installed: skipped; `make bench` installs it)"
    if not version.startswith(PEERS[dist]):
        return f"({dist} {version} is installed; this benchmark drives {PEERS[dist]}x: skipped)"
    return None


def activations(ws: Workspace, n_train: int, n_test: int, source: str | None = None, device: str = "auto"):
    """(train, test) activations of the default model (or ``source``) at HOOK, cached under
    ``ws.root / 'bench'``; the held-out ones are the data's last sequences, as the trainer holds them
    out."""
    model = base_model(ws, source)
    tag = "" if source is None else f"{model.name}-"
    path = ws.root / "bench" / f"acts-{tag}{HOOK}-{n_train}-{n_test}.safetensors"
    if path.is_file():
        d = load_file(str(path))
        return d["train"], d["test"], None
    tok = ensure_tokenization(ws, resolve_dataset(ws), model, TokenizeConfig(context_size=CTX))
    tokens = load_tokens(ws, tok)
    lm = load_model(ws, model, device=device)
    t0 = time.perf_counter()
    test, _ = harvest(lm, tokens[-math.ceil(n_test / CTX) :], [HOOK])
    train_, _ = harvest(lm, tokens[: math.ceil(n_train / CTX)], [HOOK])
    print(
        f"harvested {train_[HOOK].shape[0]} + {test[HOOK].shape[0]} activations in "
        f"{time.perf_counter() - t0:.0f}s (cached at {path})"
    )
    path.parent.mkdir(exist_ok=True)
    save_file({"train": train_[HOOK].contiguous(), "test": test[HOOK].contiguous()}, str(path))
    return train_[HOOK], test[HOOK], (lm, tokens)


def table(rows: dict[str, dict], skipped: list[str]) -> None:
    peers = [r["tokens_per_s"] for n, r in rows.items() if not n.startswith("mistudio")]
    fastest = max(peers) if peers else None
    print(f"\n{'trainer':44s} {'tokens/s':>9s} {'x peer':>7s} {'MSE':>8s} {'EV':>6s} {'L0':>6s} {'dead':>6s}")
    for name, r in rows.items():
        ratio = f"{r['tokens_per_s'] / fastest:7.2f}" if fastest else f"{'-':>7s}"
        print(
            f"{name:44s} {r['tokens_per_s']:9.0f} {ratio} {r['mse']:8.4f} {r['ev']:6.3f} "
            f"{r['l0']:6.1f} {r['dead']:6.1%}"
        )
    for line in skipped:
        print(line)
    if fastest:
        print(f"(x peer: tokens/s over the fastest peer row, {fastest:.0f} tokens/s)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train-tokens", type=int, default=262144, help="distinct training activations")
    ap.add_argument("--test-tokens", type=int, default=16384, help="held-out activations")
    ap.add_argument("--steps", type=int, default=200, help="optimiser steps per trainer")
    ap.add_argument("--batch", type=int, default=4096, help="activations per step")
    ap.add_argument("--only", default="", help="comma-separated substrings: run only matching rows")
    ap.add_argument("--e2e-steps", type=int, default=16, help="steps of the end-to-end run (0 skips it)")
    ap.add_argument("--rounds", type=int, default=1, help="alternating rounds; tokens/s is their median")
    ap.add_argument("--workspace", default=None)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where the SAEs train")
    ap.add_argument("--model", default=None, help="a local folder or hub id (default: the embedded model)")
    a = ap.parse_args()
    # the heap setting our trainer makes on CPUs is process-wide: made up front, every row runs with it
    keep_freed_memory("cpu")
    ws = Workspace(a.workspace)
    train_x, test_x, _ = activations(ws, a.train_tokens, a.test_tokens, a.model, a.device)
    train_x, test_x = train_x.to(a.device), test_x.to(a.device)
    scale = train_x.shape[1] ** 0.5 / train_x.norm(dim=1).mean()  # the same normalisation for everyone
    train_x, test_x = train_x * scale, test_x * scale
    batches = Batches(train_x, a.steps, a.batch)
    where = torch.cuda.get_device_name() if a.device == "cuda" else f"threads={torch.get_num_threads()}"
    print(
        f"{where}  d_in={train_x.shape[1]} d_sae={D_SAE} k={K} "
        f"batch={a.batch} steps={a.steps} ({batches.tokens} tokens, {train_x.shape[0]} distinct; "
        f"{test_x.shape[0]} held out)"
    )
    adam_shared = dict(
        optimizer="adam",
        lr=SHARED["lr"],
        lr_schedule="constant",
        warmup_steps=0,
        b_dec_init="mean",
        aux_coefficient=0.0,
    )
    plan: dict[str, Callable[[], dict]] = {
        "mistudio topk (defaults)": lambda: bench_ours(batches, train_x, test_x),
        "mistudio batchtopk (defaults)": lambda: bench_ours(
            batches, train_x, test_x, architecture="batchtopk"
        ),
        "mistudio matryoshka_batchtopk (defaults)": lambda: bench_ours(
            batches, train_x, test_x, architecture="matryoshka_batchtopk"
        ),
        "mistudio standard L1 (defaults)": lambda: bench_ours(
            batches, train_x, test_x, architecture="standard"
        ),
        "mistudio topk (previous defaults: adam)": lambda: bench_ours(batches, train_x, test_x, **PREVIOUS),
        "mistudio topk (shared settings)": lambda: bench_ours(batches, train_x, test_x, **adam_shared),
    }
    skipped = []
    why = peer_missing("eai-sparsify")
    if why:
        skipped.append(why)
    else:
        plan["sparsify topk (defaults: signum)"] = lambda: bench_sparsify(batches, train_x, test_x, "signum")
        plan["sparsify topk (its adam)"] = lambda: bench_sparsify(batches, train_x, test_x, "adam")
        plan["sparsify topk (shared settings)"] = lambda: bench_sparsify(
            batches, train_x, test_x, "adam", shared=True
        )
    why = peer_missing("sae-lens")
    if a.device != "cpu":
        skipped.append("(SAELens rows run on the CPU only: skipped)")
    elif why:
        skipped.append(why)
    else:
        plan["SAELens topk (defaults)"] = lambda: bench_saelens(batches, train_x, test_x, "topk")
        plan["SAELens standard L1 (defaults)"] = lambda: bench_saelens(batches, train_x, test_x, "standard")
        plan["SAELens topk (shared settings)"] = lambda: bench_saelens(
            batches, train_x, test_x, "topk", shared=True
        )
    only = [s for s in a.only.split(",") if s]
    chosen = {name: run for name, run in plan.items() if not only or any(s in name for s in only)}
    rates: dict[str, list[float]] = {name: [] for name in chosen}
    rows = {}
    for rnd in range(a.rounds):  # rounds alternate the rows, so that the machine's drift hits all alike
        for name, run in chosen.items():
            rows[name] = r = run()
            rates[name].append(r["tokens_per_s"])
            print(
                f"  {name}{f' (round {rnd + 1})' if a.rounds > 1 else ''}: {r['tokens_per_s']:.0f} tokens/s, "
                f"EV {r['ev']:.3f}, L0 {r['l0']:.1f}, dead {r['dead']:.1%}"
            )
    for name, r in rows.items():  # each row's median rate (its quality is the same every round)
        r["tokens_per_s"] = statistics.median(rates[name])
    table(rows, skipped)
    if a.rounds > 1:
        print(f"(tokens/s: the median of {a.rounds} alternating rounds; each row's range: ", end="")
        print("; ".join(f"{n} {min(v):.0f}-{max(v):.0f}" for n, v in rates.items()) + ")")
    if a.e2e_steps:
        end_to_end(ws, a.e2e_steps, a.batch, a.device, a.model)


def end_to_end(ws: Workspace, steps: int, batch: int, device: str, source: str | None) -> None:
    seconds = {}
    for dtype in ("float32", "bfloat16"):
        model = model_in(ws, dtype, device=device, source=source)
        tok = ensure_tokenization(ws, resolve_dataset(ws), model, TokenizeConfig(context_size=CTX))
        tokens, lm = load_tokens(ws, tok), load_model(ws, model)  # tokenized and loaded before timing
        cfg = TrainConfig(
            model=model.name,
            steps=steps,
            batch_tokens=batch,
            chunk_sequences=1024,
            eval_every=0,
            checkpoint_every=0,
            eval_sequences=4,
            log_every=steps,
            device=device,
            name=ws.unique_name("run", f"bench-e2e-{dtype}"),
        )
        t0 = time.perf_counter()
        res = train(ws, cfg)
        seconds[dtype] = e2e = time.perf_counter() - t0
        harvested = ws.get(res.run_id).meta["harvest"]["seen"] + cfg.eval_sequences * tokens.shape[1]
        bare = truncated_forward_seconds(lm, tokens[: harvested // tokens.shape[1]], LAYER)
        print(
            f"\nend to end on {device}, model in {dtype}: {harvested} tokens harvested (eval included), "
            f"{res.metrics['tokens']} trained, to a saved SAE in {e2e:.1f}s "
            f"(EV {res.metrics['explained_variance']:.3f}); bare truncated forward over the same "
            f"sequences {bare:.1f}s; ratio {bare / e2e:.3f} (target >= 0.85)"
        )
    print(
        f"end to end, bfloat16 against float32: {seconds['float32'] / seconds['bfloat16']:.2f}x faster "
        "(target >= 2 on a CPU with native bf16)"
    )


if __name__ == "__main__":
    main()
