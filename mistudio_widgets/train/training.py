"""SAE training on a model's activations: one run = one ``run`` artifact (config, status, checkpoints,
metric history in the catalog) that produces one ``sae`` artifact (a SAELens folder)."""

from __future__ import annotations

import dataclasses
import json
import math
import re
import shutil
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from safetensors.torch import load_file

from ..core import defaults
from ..core import distributed as dist
from ..core.configs import DEFAULT, PER_SAE, SHARED, TrainConfig, from_dict, point_label, to_dict
from ..core.errors import MistudioError
from ..core.jobs import JobCancelled, JobControl, Status, claim, effective_status, lifecycle, owner_stamp
from ..core.progress import ProgressCallback, emit
from ..core.workspace import Artifact, Workspace, atomic_folder
from ..data.activation_cache import ActivationCache
from ..data.activations import ActivationStream, harvest_shared
from ..data.datasets import check_tokenization_fits, ensure_tokenization, load_tokens, resolve_dataset
from ..data.hooks import intervene, parse_hook
from ..data.models import LoadedModel, load_model, resolve_model
from ..sae import K_ARCHITECTURES, SAE, SAESpec, make_sae
from ..sae.io import save_sae, write_safetensors
from ..sae.topk import drop_scratch
from .heap import keep_freed_memory
from .optim import averaged, make_optimizer
from .pace import Pace, PaceWriter, estimate_seconds, planned_harvest_tokens

CKPT_PREFIX = "checkpoint-"
KEEP_CHECKPOINTS = 2
GROUP_STATE = ("weight_sum",)  # optimiser scalars kept per parameter group (schedule-free averaging)


class TrainingError(MistudioError):
    """A training run cannot start, continue or resume as asked."""


# ---------------------------------------------------------------------------------------------
# Set-up
def sae_spec(cfg: TrainConfig, d_in: int, d_out: int, metadata: dict[str, Any]) -> SAESpec:
    d_sae = cfg.d_sae if cfg.d_sae is not None else cfg.expansion_factor * d_in
    spec = SAESpec(
        architecture=cfg.architecture,
        d_in=d_in,
        d_sae=d_sae,
        k=cfg.k if cfg.architecture in K_ARCHITECTURES else None,
        d_out=d_out if (cfg.hook_out or d_out != d_in) else None,
        skip=cfg.skip,
        matryoshka_widths=list(cfg.matryoshka_widths) or None,
        metadata=metadata,
    )
    return spec.validate()


def _resolve_tokens(
    ws: Workspace, cfg: TrainConfig, lm: LoadedModel, progress: ProgressCallback | None
) -> Artifact:
    tok = ws.find(cfg.dataset, "tokenization")
    if tok is None:
        ds = resolve_dataset(ws, cfg.dataset, progress=progress)
        from ..core.configs import TokenizeConfig

        tok = ensure_tokenization(
            ws, ds, lm.artifact, TokenizeConfig(context_size=cfg.context_size), progress=progress
        )
    check_tokenization_fits(ws, tok, lm.artifact, lm.tokenizer)
    return tok


def geometric_median(x: torch.Tensor, iters: int = 30) -> torch.Tensor:
    """Weiszfeld's algorithm."""
    y = x.mean(0)
    for _ in range(iters):
        w = 1.0 / (x - y).norm(dim=1).clamp_min(1e-6)
        y_new = (w[:, None] * x).sum(0) / w.sum()
        if (y_new - y).norm() < 1e-5 * y.norm().clamp_min(1e-6):
            return y_new
        y = y_new
    return y


def new_sae(cfg: TrainConfig, spec: SAESpec, sample_target: torch.Tensor, device: str = "cpu") -> SAE:
    """A freshly initialised SAE for ``cfg`` (seeded), its decoder bias set from ``sample_target``
    (normalised target activations) as ``cfg.b_dec_init`` says."""
    torch.manual_seed(cfg.seed)
    sae = make_sae(spec).to(device)
    sae.select_dtype = None if cfg.select_precision == "float32" else torch.bfloat16
    with torch.no_grad():
        if cfg.b_dec_init != "zeros":
            tgt = sample_target.to(device)
            sae.b_dec.copy_(geometric_median(tgt) if cfg.b_dec_init == "geometric_median" else tgt.mean(0))
    return sae


def sparsity_coefficient(cfg: TrainConfig, step: int) -> float:
    """The sparsity penalty's weight at ``step``: linear warm-up over ``l1_warmup_steps``."""
    if not cfg.l1_warmup_steps:
        return cfg.l1_coefficient
    return cfg.l1_coefficient * min(1.0, (step + 1) / cfg.l1_warmup_steps)


# ---------------------------------------------------------------------------------------------
# Losses
@dataclass
class Losses:
    total: torch.Tensor
    mse: torch.Tensor
    sparsity: torch.Tensor
    aux: torch.Tensor
    inner: torch.Tensor  # Matryoshka: the nested prefixes' reconstruction losses


def compute_losses(
    sae: SAE,
    cfg: TrainConfig,
    x: torch.Tensor,
    target: torch.Tensor,
    dead: torch.Tensor,
    sparsity_coef: float,
    aux_k: int,
):
    """Reconstruction MSE plus the SAE's own sparsity penalty and, while latents are dead, its own
    auxiliary loss (each architecture defines both: :meth:`SAE.sparsity_loss`, :meth:`SAE.aux_loss`)."""
    out = sae.train_step(x, target)
    err = out.recon - target
    mse = err.pow(2).sum(-1).mean()
    inner = sae.inner_loss(out, target)
    sparsity = sae.sparsity_loss(out, sparsity_coef)
    aux = (
        sae.aux_loss(x, out, err, dead, aux_k, cfg.aux_coefficient, cfg.aux_tokens)
        if dead.any() and cfg.aux_coefficient > 0
        else mse.new_zeros(())
    )
    return Losses(mse + inner + sparsity + aux, mse, sparsity, aux, inner), out


@torch.no_grad()
def resample_dead(
    sae: SAE, opt: torch.optim.Optimizer, dead: torch.Tensor, x: torch.Tensor, target: torch.Tensor
) -> int:
    """standard SAEs: point dead latents at badly reconstructed inputs and reset their Adam state."""
    idx = dead.nonzero().squeeze(1)
    if idx.numel() == 0:
        return 0
    err = (sae(x) - target).pow(2).sum(-1)
    pick = torch.multinomial(err / err.sum(), idx.numel(), replacement=idx.numel() > err.numel())
    dirs = target[pick] - sae.b_dec
    dirs = dirs / dirs.norm(dim=1, keepdim=True).clamp_min(1e-8)
    alive = ~dead
    enc_norm = sae.W_enc[:, alive].norm(dim=0).mean() if alive.any() else torch.tensor(1.0)
    sae.W_dec[idx] = dirs
    if sae.spec.out_dim == sae.spec.d_in:
        sae.W_enc[:, idx] = dirs.T * enc_norm * 0.2
    sae.b_enc[idx] = 0.0
    for p, sl in ((sae.W_dec, (idx,)), (sae.W_enc, (slice(None), idx)), (sae.b_enc, (idx,))):
        st = opt.state.get(p, {})
        for key in ("exp_avg", "exp_avg_sq"):
            if key in st:
                st[key][sl] = 0.0
        if "z" in st:  # schedule-free: the iterate and its average restart at the new weights
            st["z"][sl] = p[sl]
    return int(idx.numel())


class LossModule(torch.nn.Module):
    """The losses as a module, so that DistributedDataParallel can wrap them and average the gradients."""

    def __init__(self, sae: SAE, cfg: TrainConfig):
        super().__init__()
        self.sae, self.cfg = sae, cfg

    def forward(self, x, target, dead, coef, aux_k):
        return compute_losses(self.sae, self.cfg, x, target, dead, coef, aux_k)


def optimizer_step(
    sae: SAE,
    opt: torch.optim.Optimizer,
    sched,
    cfg: TrainConfig,
    x: torch.Tensor,
    target: torch.Tensor,
    dead: torch.Tensor,
    coef: float,
    aux_k: int,
    device: str = "cpu",
    ddp=None,
):
    """One optimiser step over a batch (split into ``cfg.grad_accumulation`` micro-batches).
    Returns (loss parts, firing counts per latent [d_sae], active latents per token [B], reconstruction),
    the counts on the CPU. The weights are
    not updated when the loss is not finite (the caller decides what to do). ``ddp``: the
    DistributedDataParallel-wrapped :class:`LossModule` under data parallelism (gradients are averaged
    over the processes on the last micro-batch)."""
    import contextlib

    unit_norm = sae.spec.architecture != "standard"
    opt.zero_grad(set_to_none=True)
    parts = {"loss": 0.0, "mse_loss": 0.0, "sparsity_loss": 0.0, "aux_loss": 0.0, "inner_loss": 0.0}
    counts, per_token, recons = [], [], []
    micro = list(zip(x.chunk(cfg.grad_accumulation), target.chunk(cfg.grad_accumulation)))
    for i, (xm, tm) in enumerate(micro):
        sync = contextlib.nullcontext() if ddp is None or i == len(micro) - 1 else ddp.no_sync()
        with sync:
            with _autocast(cfg, device):
                losses, out = (ddp or compute_losses)(*(() if ddp else (sae, cfg)), xm, tm, dead, coef, aux_k)
            (losses.total / cfg.grad_accumulation).backward()
        for key, v in (
            ("loss", losses.total),
            ("mse_loss", losses.mse),
            ("sparsity_loss", losses.sparsity),
            ("aux_loss", losses.aux),
            ("inner_loss", losses.inner),
        ):
            parts[key] += float(v.detach()) / cfg.grad_accumulation
        with torch.no_grad():
            c, t = out.firing()
            counts.append(c)
            per_token.append(t)
            recons.append(out.recon.detach().float())
    finite = dist.all_sum(torch.tensor([0.0 if math.isfinite(parts["loss"]) else 1.0]))[0] == 0
    if finite:
        if unit_norm:
            sae.remove_parallel_grad()
        if cfg.grad_clip and cfg.optimizer != "signsgd":  # sign descent ignores the gradient's scale
            torch.nn.utils.clip_grad_norm_(sae.parameters(), cfg.grad_clip)
        opt.step()
        sched.step()
        if unit_norm:
            sae.normalise_decoder()
    return parts, torch.stack(counts).sum(0), torch.cat(per_token), torch.cat(recons)


# ---------------------------------------------------------------------------------------------
# Metrics and evaluation
def explained_variance(recon: torch.Tensor, target: torch.Tensor) -> float:
    resid = (target - recon).pow(2).sum()
    total = (target - target.mean(0)).pow(2).sum().clamp_min(1e-12)
    return float(1 - resid / total)


def _memory() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    import psutil

    return psutil.Process().memory_info().rss / 2**20


class Evaluator:
    """Held-out evaluation: reconstruction metrics and the model's CE loss with the SAE spliced in."""

    def __init__(self, lm: LoadedModel, tokens: np.ndarray, cfg: TrainConfig, acts: dict[str, torch.Tensor]):
        self.lm, self.cfg, self.acts = lm, cfg, acts
        self.ids = torch.tensor(tokens, dtype=torch.long)
        special = torch.tensor(sorted(set(lm.tokenizer.all_special_ids)))
        self.keep = ~torch.isin(self.ids, special)  # splice only where the SAE was trained
        self.hook_in, self.hook_out = cfg.hook, cfg.hook_out or cfg.hook
        self.ce_clean = self._ce(None)
        self.ce_zero = self._ce(lambda x_in, y: torch.zeros_like(y))

    @torch.no_grad()
    def _ce(self, replace) -> float:
        from ..data.hooks import capture

        model = self.lm.model
        ids = self.ids.to(self.lm.device)
        if replace is None:
            return float(model(input_ids=ids, labels=ids, use_cache=False).loss)
        keep = self.keep.to(self.lm.device).unsqueeze(-1)
        with capture(model, self.hook_in, stop=False) as got:

            def edit(y):
                new = replace(got[self.hook_in], y).to(y.dtype)
                return torch.where(keep, new, y)

            with intervene(model, {self.hook_out: edit}):
                return float(model(input_ids=ids, labels=ids, use_cache=False).loss)

    @torch.no_grad()
    def run(self, sae: SAE, scale_in: float, scale_out: float) -> dict[str, float]:
        x = self.acts[self.hook_in].to(sae.W_enc.device)
        target = self.acts[self.hook_out].to(sae.W_enc.device)
        recon = sae(x * scale_in) / scale_out
        f = sae.encode(x * scale_in)
        ce = self._ce(
            lambda x_in, y: (sae(x_in.float().to(sae.W_enc.device) * scale_in) / scale_out).to(y.device)
        )
        denom = self.ce_zero - self.ce_clean
        return {
            "mse": float((recon - target).pow(2).mean()),
            "explained_variance": explained_variance(recon, target),
            "l0": float((f > 0).float().sum(-1).mean()),
            "ce_clean": self.ce_clean,
            "ce_zero_ablated": self.ce_zero,
            "ce_spliced": ce,
            "delta_loss": ce - self.ce_clean,
            "ce_recovered": (self.ce_zero - ce) / denom if abs(denom) > 1e-9 else float("nan"),
        }


# ---------------------------------------------------------------------------------------------
# Checkpoints
@dataclass
class TrainState:
    """Where one SAE's training stands, besides its weights, optimiser and schedule: what a checkpoint
    restores (``state.json``) so that a resumed run continues exactly where it stopped."""

    step: int = 0
    position: list[int] = field(default_factory=lambda: [0, 0, 0])  # where the activation stream stands
    scale_in: float = 1.0  # input normalisation (folded into the weights when the SAE is saved)
    scale_out: float = 1.0
    tokens_since_fired: list[int] | None = None  # per latent, for dead-latent tracking
    best_eval: float | None = None  # early stopping: the best held-out MSE so far
    bad_evals: int = 0  # and the evaluations since it
    tokens: int = 0

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "TrainState":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def _remove_stale_checkpoint_temps(run_dir: Path) -> list[str]:
    """Remove half-written checkpoint folders a killed process left (``.checkpoint-N.tmp-*``)."""
    stale = [p for p in run_dir.glob(f".{CKPT_PREFIX}*.tmp-*") if p.is_dir()]
    for p in stale:
        shutil.rmtree(p, ignore_errors=True)
    return [p.name for p in stale]


def _checkpoints(run_dir: Path) -> list[Path]:
    found = [
        p
        for p in run_dir.glob(f"{CKPT_PREFIX}*")
        if re.fullmatch(rf"{CKPT_PREFIX}\d{{1,12}}", p.name)
        and not p.is_symlink()
        and p.is_dir()
        and (p / "state.json").is_file()
    ]
    return sorted(found, key=lambda p: int(p.name[len(CKPT_PREFIX) :]))


def save_checkpoint(run_dir: Path, sae: SAE, opt: torch.optim.Optimizer, sched, state: TrainState) -> Path:
    """Write checkpoint-<step> atomically; older checkpoints beyond the newest few are removed only after."""
    tensors = {
        f"sae.{k}": v.detach().cpu().contiguous() for k, v in sae.state_dict().items() if v is not None
    }
    names = {id(p): n for n, p in sae.named_parameters()}
    for p, st in opt.state.items():
        for key, v in st.items():
            if torch.is_tensor(v):
                tensors[f"opt.{names[id(p)]}.{key}"] = v.detach().cpu().contiguous().reshape(v.shape)
    tensors["rng.torch"] = torch.get_rng_state()
    final = run_dir / f"{CKPT_PREFIX}{state.step}"
    with atomic_folder(final, writing="checkpoint") as tmp:
        write_safetensors(tensors, tmp / "state.safetensors")
        groups = [{k: g[k] for k in GROUP_STATE if k in g} for g in opt.param_groups]
        (tmp / "state.json").write_text(
            json.dumps({**asdict(state), "scheduler": sched.state_dict(), "optimizer_groups": groups})
        )
    for old in _checkpoints(run_dir)[:-KEEP_CHECKPOINTS]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(path: Path, sae: SAE, opt: torch.optim.Optimizer, sched) -> TrainState:
    tensors = load_file(str(path / "state.safetensors"))
    state = json.loads((path / "state.json").read_text())
    sae.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("sae.")}, strict=False)
    for n, p in sae.named_parameters():
        st = {key.split(".")[-1]: v for key, v in tensors.items() if key.startswith(f"opt.{n}.")}
        if st:
            opt.state[p] = st
    sched.load_state_dict(state.pop("scheduler"))
    for group, saved in zip(opt.param_groups, state.pop("optimizer_groups", [])):
        group.update(saved)
    for group, lr in zip(
        opt.param_groups, sched.get_last_lr()
    ):  # the optimiser only learns it at the next sched.step()
        group["lr"] = lr
    torch.set_rng_state(tensors["rng.torch"])
    return TrainState.from_json(state)


# ---------------------------------------------------------------------------------------------
# The run
@dataclass
class TrainResult:
    run_id: str
    sae_id: str | None
    path: str | None
    metrics: dict[str, float]
    status: str


def _autocast(cfg: TrainConfig, device: str):
    import contextlib

    if device != "cuda" or cfg.autocast == "none":
        return contextlib.nullcontext()
    dtype = torch.float16 if cfg.autocast == "fp16" else torch.bfloat16
    if cfg.autocast == "auto" and not torch.cuda.is_bf16_supported():
        dtype = torch.float16
    return torch.autocast("cuda", dtype=dtype)


def train(
    ws: Workspace,
    cfg: TrainConfig | None = None,
    *,
    resume: str | None = None,
    progress: ProgressCallback | None = None,
    control: JobControl | None = None,
    stop_after: int | None = None,
    on_start: Callable[[Artifact], None] | None = None,
) -> TrainResult:
    """Train an SAE (or resume run ``resume``); with ``cfg.saes``, the SAEs it lists, from one harvest,
    returning the first one's result (``train_many`` returns all). ``stop_after`` ends
    the session after that many steps with a checkpoint, as an interruption would (the run is then
    resumable). ``on_start(run)`` is called once each run is registered."""
    cfgs = None if resume else (cfg or TrainConfig()).members()
    return train_many(
        ws, cfgs, resume=resume, progress=progress, control=control, stop_after=stop_after, on_start=on_start
    )[0]


def train_many(
    ws: Workspace,
    cfgs: list[TrainConfig] | None,
    *,
    resume: str | None = None,
    progress: ProgressCallback | None = None,
    control: JobControl | None = None,
    stop_after: int | None = None,
    on_start: Callable[[Artifact], None] | None = None,
) -> list[TrainResult]:
    """Train several SAEs (other layers, widths, architectures or hyper-parameters) from one pass of
    the model: every batch is harvested once, at the union of their hooks, and feeds them all. Each SAE
    gets its own run (config, metrics, checkpoints) and lands in the library on its own. The SAEs must
    agree on the settings in ``SHARED``."""
    control = control or JobControl()
    stream_hooks: list[str] | None = None
    runs: list[Artifact] = []
    if resume:
        run = ws.get(resume, "run")
        claim(ws, run, "run")
        if run.path is None or not run.path.is_dir():
            raise TrainingError(
                f"The files of run {run.name!r} are gone.", "start a new run; this one cannot resume."
            )
        _remove_stale_checkpoint_temps(run.path)
        if not _checkpoints(run.path):
            raise TrainingError(
                f"Run {run.name!r} has no checkpoint to resume from.",
                "start a new run with the same settings.",
            )
        cfgs = [from_dict(TrainConfig, run.meta["config"])]
        stream_hooks = run.meta.get("stream_hooks")
        runs = [run]
    if not cfgs:
        raise TrainingError("No SAE to train was given.", "pass at least one TrainConfig.")
    first = cfgs[0]
    dist.init_from_env(first.device)
    if not dist.is_main():
        progress = None
    mismatched = sorted({k for c in cfgs[1:] for k in SHARED if getattr(c, k) != getattr(first, k)})
    if mismatched:
        raise TrainingError(
            f"SAEs trained from one harvest must share {', '.join(mismatched)}.",
            "give them equal values, or train them separately.",
        )
    if first.batch_tokens % dist.world():
        raise TrainingError(
            f"batch_tokens={first.batch_tokens} does not split evenly over {dist.world()} processes.",
            f"choose a multiple of {dist.world()}.",
        )
    with dist.main_first():  # the main process converts the model and tokenizes; the others find the results
        lm = load_model(
            ws,
            resolve_model(ws, first.model, progress=progress),
            device=None if first.device == "auto" else first.device,
        )
        tok = _resolve_tokens(ws, first, lm, progress)
    d_model = int(lm.info["d_model"])
    specs = []
    for c in cfgs:
        parse_hook(lm.model, c.hook)
        if c.hook_out:
            parse_hook(lm.model, c.hook_out)
        if c.batch_tokens % c.grad_accumulation:
            raise TrainingError(
                f"batch_tokens={c.batch_tokens} is not divisible by grad_accumulation={c.grad_accumulation}.",
                "choose values where batch_tokens / grad_accumulation is a whole number.",
            )
        meta_sae = {
            "model_name": lm.name,
            "hook_name": c.hook,
            "context_size": tok.meta["config"]["context_size"],
            "prepend_bos": tok.meta["config"]["prepend_bos"],
            "dataset_path": ws.get(tok.parent).name if tok.parent else None,
            "exclude_special_tokens": True,
            "hook_head_index": None,
        }
        if c.hook_out:
            meta_sae["hook_name_out"] = c.hook_out
        specs.append(sae_spec(c, d_model, d_model, meta_sae))
    if not resume:
        check_group_memory(cfgs, specs, lm.device)
    if stream_hooks is None:
        stream_hooks = list(dict.fromkeys(h for c in cfgs for h in (c.hook, c.hook_out) if h))
    tokens = load_tokens(ws, tok)
    n_eval = min(first.eval_sequences, max(len(tokens) // 10, 1))
    train_tokens, eval_tokens = tokens[:-n_eval], tokens[-n_eval:]
    if first.train_tokens:
        train_tokens = train_tokens[: max(math.ceil(first.train_tokens / tokens.shape[1]), 1)]
    if not resume:
        ids = None
        if dist.is_main():
            names = [c.name or ws.unique_name("run", base) for c, base in zip(cfgs, run_names(cfgs))]
            ws.check_names_free("run", names)  # all of them, before the first run is made
            for c, spec, name in zip(cfgs, specs, names):
                runs.append(
                    ws.create_folder(
                        "run",
                        name,
                        meta={
                            "config": to_dict(c),
                            "status": Status.RUNNING,
                            "model": lm.artifact.id,
                            "tokenization": tok.id,
                            "spec": spec.to_dict(),
                            "started": time.time(),
                            "stream_hooks": stream_hooks,
                            "group": [r.id for r in runs],
                            "processes": dist.world(),
                            "owner": owner_stamp(),
                        },
                    )
                )
            ids = [r.id for r in runs]
        runs = [ws.get(i) for i in dist.broadcast(ids)]
    resumed = (
        {"resumed": time.time(), "resumed_at_step": runs[0].meta.get("step") or 0, "processes": dist.world()}
        if resume
        else {}
    )
    if on_start and dist.is_main():
        for r in runs:
            on_start(r)
    device = lm.device if lm.device != "mps" else "cpu"
    try:
        with lifecycle(ws, runs, record=dist.is_main(), **resumed):
            cache = None
            if first.cache_activations:
                key = ActivationCache.key(lm.artifact, tok, stream_hooks)
                with dist.main_first():
                    cache = ActivationCache.open(ws, key, tokens, d_model, first.harvest_batch_size)
                for r in runs if dist.is_main() else []:
                    ws.update_meta(r.id, activation_cache=cache.art.id)
            harvest = Harvest(lm, train_tokens, eval_tokens, stream_hooks, device, cache)
            trainer = Trainer(
                ws,
                runs,
                cfgs,
                specs,
                harvest,
                resuming=resume is not None,
                progress=progress,
                control=control,
            )
            return trainer.run(stop_after)
    except torch.OutOfMemoryError as exc:
        raise TrainingError(
            f"Out of memory with batch_tokens={first.batch_tokens} and "
            f"d_sae={max(sp.d_sae for sp in specs)}.",
            "lower batch_tokens, raise grad_accumulation, or use a smaller expansion factor; then "
            "resume the run.",
        ) from exc


class _Member:
    """One SAE of a (possibly one-member) training group: its weights, optimiser, schedule, dead-latent
    counts, evaluator, run artifact and checkpoints."""

    def __init__(
        self,
        ws: Workspace,
        run: Artifact,
        cfg: TrainConfig,
        spec: SAESpec,
        lm: LoadedModel,
        eval_tokens,
        eval_acts: dict[str, torch.Tensor],
        device: str,
        resuming: bool,
    ):
        self.ws, self.run, self.cfg, self.spec, self.device = ws, run, cfg, spec, device
        keep_freed_memory(device)
        x_eval = eval_acts[cfg.hook]
        if x_eval.shape[0] < 2:
            raise TrainingError(
                "The held-out sequences give too few activations to evaluate.", "use a larger dataset."
            )
        norm = lambda a: float(math.sqrt(a.shape[1]) / a.norm(dim=1).mean()) if cfg.normalize else 1.0  # noqa: E731
        self.scale_in = norm(x_eval)
        self.scale_out = norm(eval_acts[cfg.hook_out]) if cfg.hook_out else self.scale_in
        self.sae = sae = new_sae(cfg, spec, eval_acts[cfg.hook_out or cfg.hook] * self.scale_out, device)
        self.opt, self.sched = make_optimizer(sae.parameters(), cfg, spec.d_sae)
        self.state = TrainState(scale_in=self.scale_in, scale_out=self.scale_out)
        if resuming:
            ckpt = _checkpoints(run.path)[-1]
            try:
                self.state = load_checkpoint(ckpt, sae, self.opt, self.sched)
            except (OSError, ValueError, KeyError, TypeError, RuntimeError) as exc:
                raise TrainingError(
                    f"The checkpoint {ckpt.name} of run {run.name!r} cannot be read "
                    f"({exc.__class__.__name__}).",
                    "it was damaged or changed by hand: remove that folder to resume from the one before.",
                ) from None
            if f"{CKPT_PREFIX}{self.state.step}" != ckpt.name or not 0 < self.state.step <= cfg.steps:
                raise TrainingError(
                    f"The checkpoint {ckpt.name} of run {run.name!r} says it is at step {self.state.step} of "
                    f"a {cfg.steps}-step run; it was changed by hand, so nothing is resumed from it.",
                    "remove that folder to resume from the checkpoint before it.",
                )
            self.scale_in, self.scale_out = self.state.scale_in, self.state.scale_out
        tsf = self.state.tokens_since_fired
        self.since_fired = (
            torch.tensor(tsf, dtype=torch.long)
            if tsf is not None
            else torch.zeros(spec.d_sae, dtype=torch.long)
        )
        self.evaluator = Evaluator(lm, eval_tokens, cfg, eval_acts) if dist.is_main() else None
        # data parallel: DDP makes every process start from the main one's weights and averages the gradients
        self.ddp = (
            torch.nn.parallel.DistributedDataParallel(LossModule(sae, cfg), forward_sync_buffers=False)
            if dist.active()
            else None
        )
        self.aux_k = cfg.aux_k or max(spec.d_in // 2, 1)
        self.fire_counts = torch.zeros(spec.d_sae)
        self.window_tokens, self.t_log, self.last = 0, time.perf_counter(), {}
        self.stopped = False

    @property
    def done(self) -> bool:
        return self.stopped or self.state.step >= self.cfg.steps

    def step(self, batch: dict[str, torch.Tensor], position: tuple[int, int, int]) -> dict[str, Any]:
        cfg, sae, state = self.cfg, self.sae, self.state
        step = state.step
        x = batch[cfg.hook].to(self.device) * self.scale_in
        t = batch[cfg.hook_out].to(self.device) * self.scale_out if cfg.hook_out else x
        coef = sparsity_coefficient(cfg, step)
        dead = self.since_fired >= cfg.aux_dead_tokens  # the latents AuxK trains
        parts, counts, per_token, recon = optimizer_step(
            sae,
            self.opt,
            self.sched,
            cfg,
            x,
            t,
            dead.to(self.device),
            coef,
            self.aux_k,
            self.device,
            self.ddp,
        )
        counts = counts.float()
        fired = counts > 0
        n = x.shape[0]
        if (
            dist.active()
        ):  # every process's share of the batch counts: firing, L0 and losses over the whole batch
            counts = dist.all_sum(counts)
            fired = counts > 0
            n = cfg.batch_tokens
            summed = (
                dist.all_sum(torch.tensor([parts[k] for k in sorted(parts)], dtype=torch.float64))
                / dist.world()
            )
            parts = dict(zip(sorted(parts), (float(v) for v in summed)))
        if not math.isfinite(parts["loss"]):
            raise TrainingError(
                f"The loss became {parts['loss']} at step {step}; training stopped and the last good "
                f"checkpoint (step {self.ws.get(self.run.id).meta.get('last_checkpoint', 'none')}) was kept.",
                "lower the learning rate (lr) or enable gradient clipping, then resume or start again.",
            )
        self.fire_counts += counts
        l0 = float(counts.sum()) / n
        self.since_fired += n
        self.since_fired[fired] = 0
        self.window_tokens += n
        state.step, state.tokens = step + 1, state.tokens + n
        if (
            sae.spec.architecture == "standard"
            and cfg.resample_dead
            and (step + 1) % max(cfg.dead_tokens // cfg.batch_tokens, 1) == 0
        ):
            resample_dead(sae, self.opt, (self.since_fired >= cfg.dead_tokens).to(self.device), x, t)
            dist.broadcast_tensors(
                sae.parameters()
            )  # the same dead latents everywhere; the main one's new directions
        s = state.step
        if not dist.is_main():
            if cfg.eval_every and s % cfg.eval_every == 0 and s < cfg.steps and cfg.early_stop_patience:
                self.stopped = dist.broadcast(None)
            return {"loss": parts["loss"], "l0": l0, "ev": float("nan")}
        if s % cfg.log_every == 0 or s == cfg.steps:
            now = time.perf_counter()
            self.last = {
                **parts,
                "mse": float((recon - t).pow(2).mean() / self.scale_out**2),
                "explained_variance": explained_variance(recon, t),
                "l0": l0,
                "dead_fraction": float((self.since_fired >= cfg.dead_tokens).float().mean()),
                "dense_fraction": float((self.fire_counts / max(self.window_tokens, 1) > 0.1).float().mean()),
                "lr": self.sched.get_last_lr()[0],
                "sparsity_coefficient": coef,
                "tokens_per_second": self.window_tokens / max(now - self.t_log, 1e-9),
                "memory_mib": _memory(),
                "tokens": state.tokens,
            }
            self.ws.add_metrics(self.run.id, s, "train", self.last)
            per_token = per_token.float().numpy()
            counts, edges = np.histogram(
                per_token, bins=min(30, max(int(per_token.max()) - int(per_token.min()) + 1, 1))
            )
            self.ws.update_meta(
                self.run.id, step=s, l0_histogram={"edges": edges.tolist(), "counts": counts.tolist()}
            )
            self.fire_counts.zero_()
            self.window_tokens, self.t_log = 0, now
        if cfg.eval_every and s % cfg.eval_every == 0 and s < cfg.steps:
            with averaged(self.opt):
                ev = self.evaluator.run(sae, self.scale_in, self.scale_out)
            self.ws.add_metrics(self.run.id, s, "eval", ev)
            if cfg.early_stop_patience:
                if state.best_eval is None or ev["mse"] < state.best_eval:
                    state.best_eval, state.bad_evals = ev["mse"], 0
                else:
                    state.bad_evals += 1
                    if state.bad_evals >= cfg.early_stop_patience:
                        self.ws.update_meta(self.run.id, early_stopped=s)
                        self.stopped = True
                dist.broadcast(self.stopped)
        if cfg.checkpoint_every and s % cfg.checkpoint_every == 0 and s < cfg.steps:
            self.checkpoint(position)
        return {"loss": parts["loss"], "l0": l0, "ev": self.last.get("explained_variance", float("nan"))}

    def checkpoint(self, position: tuple[int, int, int]) -> None:
        if not dist.is_main():
            return
        self.state.tokens_since_fired, self.state.position = self.since_fired.tolist(), list(position)
        save_checkpoint(self.run.path, self.sae, self.opt, self.sched, self.state)
        self.ws.update_meta(self.run.id, last_checkpoint=self.state.step)

    def finish(self, position: tuple[int, int, int], harvest_counts: dict[str, int]) -> TrainResult:
        ws, cfg, spec, run = self.ws, self.cfg, self.spec, self.run
        if not dist.is_main():
            return TrainResult(run.id, None, None, {}, Status.DONE)
        self.checkpoint(position)
        drop_scratch(self.sae)
        with averaged(self.opt):
            final_eval = self.evaluator.run(self.sae, self.scale_in, self.scale_out)
            weights = {k: v.detach().cpu().clone() for k, v in self.sae.state_dict().items()}
        ws.add_metrics(run.id, self.state.step, "eval", final_eval)
        metrics = {
            "explained_variance": final_eval["explained_variance"],
            "l0": final_eval["l0"],
            "mse": final_eval["mse"],
            "dead_fraction": self.last.get("dead_fraction", float("nan")),
            "ce_recovered": final_eval["ce_recovered"],
            "delta_loss": final_eval["delta_loss"],
            "steps": self.state.step,
            "tokens": self.state.tokens,
        }
        out = make_sae(dataclasses.replace(spec)).to("cpu")
        out.load_state_dict(weights, strict=False)
        out.fold_scale(self.scale_in, self.scale_out)
        lm_name = spec.metadata.get("model_name")
        with ws.write_artifact(
            "sae",
            ws.unique_name("sae", run.name),
            parent=run.id,
            meta={
                "run": run.id,
                "model": run.meta.get("model"),
                "model_name": lm_name,
                "hook": cfg.hook,
                "hook_out": cfg.hook_out,
                "architecture": spec.architecture,
                "d_in": spec.d_in,
                "d_sae": spec.d_sae,
                "k": spec.k,
                "metrics": metrics,
                "source": "trained",
            },
        ) as w:
            save_sae(
                out, w.path, extra={"run": run.id, "scale_in": self.scale_in, "scale_out": self.scale_out}
            )
        ws.update_meta(
            run.id,
            status=Status.DONE,
            sae=w.id,
            finished=time.time(),
            metrics=metrics,
            harvest=harvest_counts,
        )
        return TrainResult(run.id, w.id, str(ws.get(w.id).path), metrics, Status.DONE)


@dataclass
class Harvest:
    """What the SAEs of one training group share: the model, the token sequences (for training and
    held out), the hooks read in one pass, the device, and the activation cache when there is one."""

    lm: LoadedModel
    train_tokens: np.ndarray
    eval_tokens: np.ndarray
    hooks: list[str]
    device: str
    cache: ActivationCache | None = None


class Trainer:
    """Trains a group of SAEs from one activation stream: each batch is harvested once, at the union
    of their hooks, and feeds every SAE of the group that has not finished. The settings of the stream
    (batch, chunks, seed) are the group's first config's; ``SHARED`` keeps the others equal."""

    def __init__(
        self,
        ws: Workspace,
        runs: list[Artifact],
        cfgs: list[TrainConfig],
        specs: list[SAESpec],
        harvest: Harvest,
        *,
        resuming: bool,
        progress: ProgressCallback | None = None,
        control: JobControl | None = None,
    ):
        self.ws, self.cfg, self.harvest = ws, cfgs[0], harvest
        self.control = control or JobControl()
        ctx = harvest.train_tokens.shape[1]
        self.pace = Pace(
            steps_total=self.cfg.steps,
            step=0,
            batch_tokens=self.cfg.batch_tokens,
            harvest_left=0 if harvest.cache is not None else len(harvest.eval_tokens) * ctx,
            device=harvest.device,
            parameters=float(harvest.lm.info.get("parameters") or 0),
        )
        record = dist.is_main()
        self.pace_writer = PaceWriter(
            lambda d: [ws.update_meta(r.id, pace=d) for r in runs] if record else None, self.pace
        )
        self.progress = self.pace_writer.progress(progress)
        t0 = time.perf_counter()
        eval_acts = self._held_out_activations()
        self.pace.harvest_time(time.perf_counter() - t0)
        self.members = [
            _Member(ws, r, c, sp, harvest.lm, harvest.eval_tokens, eval_acts, harvest.device, resuming)
            for r, c, sp in zip(runs, cfgs, specs)
        ]
        # a short run harvests only what it needs (+5% for dropped special positions); fixed by the config,
        # so resumes agree
        width = max(harvest.train_tokens.shape[1] - 1, 1)
        needed = math.ceil(self.cfg.steps * self.cfg.batch_tokens * 1.05 / width) + 1
        self.stream = ActivationStream(
            harvest.lm,
            harvest.train_tokens,
            harvest.hooks,
            batch_tokens=self.cfg.batch_tokens,
            chunk_sequences=min(self.cfg.chunk_sequences, needed),
            seed=self.cfg.seed,
            harvest_batch_size=self.cfg.harvest_batch_size,
            progress=self.progress,
            cache=harvest.cache,
        )
        self._plan_harvest()

    def _plan_harvest(self) -> None:
        """What is left to harvest for the steps still to take (the pace's ETA)."""
        h, stream = self.harvest, self.stream
        ctx = h.train_tokens.shape[1]
        self.pace.step = min(m.state.step for m in self.members)
        per_chunk = max(stream.chunk_sequences * (ctx - 1) // self.cfg.batch_tokens, 1)
        uncached = None
        if h.cache is not None:
            uncached = int((~np.asarray(h.cache.filled[: len(h.train_tokens)])).sum()) * ctx
        self.pace.harvest_left += planned_harvest_tokens(
            self.cfg.steps - self.pace.step,
            self.cfg.batch_tokens,
            stream.chunk_sequences * ctx,
            per_chunk,
            uncached,
        )
        self.pace_writer.flush(force=True)

    def _held_out_activations(self) -> dict[str, torch.Tensor]:
        h = self.harvest
        if h.cache is not None:
            n_all = len(h.cache.tokens)  # the held-out sequences are the data's last ones
            acts, _ = h.cache.gather(np.arange(n_all - len(h.eval_tokens), n_all), h.lm, self.progress)
            return acts
        acts, _ = harvest_shared(
            h.lm,
            h.eval_tokens,
            h.hooks,
            batch_size=self.cfg.harvest_batch_size,
            progress=self.progress,
            stage="harvest eval",
        )
        return acts

    def run(self, stop_after: int | None = None) -> list[TrainResult]:
        """Train until every SAE has finished; with ``stop_after``, checkpoint and stop (interrupted)
        after that many steps. Cancelling the job checkpoints, then raises :class:`JobCancelled`."""
        members, cfg, stream = self.members, self.cfg, self.stream
        it = stream.batches(tuple(members[0].state.position))
        steps_here = 0
        while not all(m.done for m in members):
            self.control.check()
            t0 = time.perf_counter()
            batch = next(it)
            t1 = time.perf_counter()
            info = {}
            for m in members:
                if not m.done:
                    info = m.step(batch, stream.position)
            steps_here += 1
            self.pace.harvest_time(t1 - t0)
            self.pace.stepped(max(m.state.step for m in members), time.perf_counter() - t1)
            self.pace_writer.flush()
            self._report(max(m.state.step for m in members), info)
            unfinished = [m for m in members if not m.done]
            if stop_after is not None and steps_here >= stop_after and unfinished:
                for m in unfinished:
                    m.checkpoint(stream.position)
                    if dist.is_main():
                        self.ws.update_meta(m.run.id, status=Status.INTERRUPTED, stopped=time.time())
                return [TrainResult(m.run.id, None, None, m.last, Status.INTERRUPTED) for m in members]
            if self.control.cancelled and unfinished:
                for m in unfinished:
                    m.checkpoint(stream.position)
                raise JobCancelled()
        self.pace.stage = "saving"
        self.pace_writer.flush(force=True)
        results = [m.finish(stream.position, stream.counts) for m in members]
        dist.barrier()  # the others end once the main process has saved the SAEs
        emit(self.progress, "train", cfg.steps, cfg.steps, unit="step", finished=True)
        return results

    def _report(self, step: int, info: dict[str, Any]) -> None:
        nan = float("nan")
        emit(
            self.progress,
            "train",
            step,
            self.cfg.steps,
            unit="step",
            message=f"loss {info.get('loss', nan):.3g} L0 {info.get('l0', nan):.1f} "
            f"EV {info.get('ev', nan):.3f}",
        )


def run_status(ws: Workspace, run: str) -> dict[str, Any]:
    art = ws.get(run, "run")
    ckpts = _checkpoints(art.path) if art.path and art.path.is_dir() else []
    return {
        "id": art.id,
        "name": art.name,
        "status": effective_status(art.meta),
        "sae": art.meta.get("sae"),
        "last_checkpoint": int(ckpts[-1].name[len(CKPT_PREFIX) :]) if ckpts else None,
        "steps": art.meta["config"]["steps"],
        "metrics": art.meta.get("metrics"),
    }


def load_trained(ws: Workspace, ref: str, device: str = "cpu"):
    """An SAE of the library as a module (and its cfg)."""
    from ..sae.io import load_sae

    art = ws.get(ref, "sae")
    return load_sae(art.path, device)


__all__ = ["train", "train_many", "TrainResult", "TrainingError", "run_status", "load_trained"]


def run_names(cfgs: list[TrainConfig]) -> list[str]:
    """Names for the runs of one group: architecture and hook, plus the settings that differ between
    the group's SAEs ('topk-blocks.15.hook_resid_post-k16')."""
    varying = [
        f
        for f in PER_SAE
        if f not in ("name", "architecture", "hook") and len({repr(getattr(c, f)) for c in cfgs}) > 1
    ]
    names = []
    for c in cfgs:
        differs = point_label({f: getattr(c, f) for f in varying})
        names.append("-".join(filter(None, [c.architecture, short_hook(c.hook), differs])))
    return names


def short_hook(hook: str) -> str:
    """A hook name short enough for a run name: 'blocks.15.hook_resid_post' -> 'L15-resid_post',
    'blocks.3.attn.hook_z' -> 'L3-attn_z'."""
    parts = hook.split(".")
    if len(parts) >= 3 and parts[0] == "blocks" and parts[1].isdigit():
        rest = "_".join(p.removeprefix("hook_") for p in parts[2:])
        return f"L{parts[1]}-{rest}"
    return hook


def sae_memory_mib(cfg: TrainConfig, d_in: int, d_sae: int) -> float:
    """What one SAE of a group holds while training: weights, gradients and two optimiser tensors per
    weight, and one batch's dense pre-activations and their selection."""
    params = 2 * d_in * d_sae + d_sae + d_in
    micro = cfg.batch_tokens // max(cfg.grad_accumulation, 1)
    return (params * 4 * 4 + micro * d_sae * 4 * 2) / 2**20


def stream_memory_mib(cfg: TrainConfig, d_in: int, hooks: int = 1) -> float:
    """The shared activation stream: one chunk of sequences at each hook, and its shuffled copy."""
    return cfg.chunk_sequences * cfg.context_size * d_in * 4 * 2 * hooks / 2**20


def free_memory_mib(device: str) -> float:
    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.mem_get_info()[0] / 2**20
    import psutil

    return psutil.virtual_memory().available / 2**20


def check_group_memory(cfgs: list[TrainConfig], specs: list[SAESpec], device: str) -> None:
    """Refuse, before anything starts, a group (a sweep) whose SAEs would not fit in free memory."""
    hooks = len({h for c in cfgs for h in (c.hook, c.hook_out) if h})
    need = sum(sae_memory_mib(c, sp.d_in, sp.d_sae) for c, sp in zip(cfgs, specs))
    need += stream_memory_mib(cfgs[0], specs[0].d_in, hooks)
    free = free_memory_mib(device)
    if need > 0.9 * free:
        raise TrainingError(
            f"Training these {len(cfgs)} SAE(s) together needs about {need / 1024:.1f} GiB "
            f"(weights, optimiser state and one batch each); {free / 1024:.1f} GiB is free on {device}.",
            "use fewer grid points, smaller widths or a smaller batch_tokens (or raise "
            "grad_accumulation), or split the sweep into several trainings.",
        )


def check_config(ws: Workspace, cfg: TrainConfig) -> dict[str, Any]:
    """Validate a config against the workspace without loading weights; returns
    ``{"problems": [...], "d_sae": ..., "memory_mib": ..., "seconds": ...}`` for forms and the CLI."""
    from ..data.hooks import hook_names_for

    problems: list[str] = []
    model = ws.find(defaults.DEFAULT_MODEL_NAME if cfg.model == DEFAULT else cfg.model, "model")
    info = model.meta.get("info", {}) if model else {}
    d_in = int(info.get("d_model") or 0)
    if model is None and cfg.model != DEFAULT:
        problems.append(f"No model called {cfg.model!r}.")
    if info:
        names = hook_names_for(info["layers"], info.get("parallel_blocks", False))
        for h in filter(None, (cfg.hook, cfg.hook_out)):
            if h not in names:
                problems.append(f"{h!r} is not a hook of {model.name} (layers 0..{info['layers'] - 1}).")
    if cfg.dataset != DEFAULT and not (
        ws.find(cfg.dataset, "tokenization") or ws.find(cfg.dataset, "dataset")
    ):
        problems.append(f"No dataset or tokenization called {cfg.dataset!r}.")
    d = d_in or defaults.DEFAULT_MODEL_D_MODEL  # before the default model is added
    d_sae = cfg.d_sae if cfg.d_sae is not None else cfg.expansion_factor * d
    try:
        members = cfg.members()
        for m in members:
            sae_spec(m, d, d, {})
    except MistudioError as exc:
        problems.append(str(exc))
        members = [cfg]
    if cfg.batch_tokens % cfg.grad_accumulation:
        problems.append("batch_tokens must be divisible by grad_accumulation.")
    warnings = []
    if cfg.optimizer == "adam" and cfg.warmup_steps > cfg.steps:
        warnings.append(
            f"The learning-rate warm-up ({cfg.warmup_steps} steps) is longer than the training "
            f"({cfg.steps} steps): the rate never reaches its peak. Shorten warmup_steps or train longer."
        )
    if cfg.architecture in ("standard", "jumprelu") and cfg.l1_warmup_steps > cfg.steps:
        warnings.append(
            f"The sparsity warm-up ({cfg.l1_warmup_steps} steps) is longer than the training "
            f"({cfg.steps} steps): the penalty never reaches its full weight. Shorten l1_warmup_steps."
        )
    params = 2 * d * d_sae + d_sae + d
    widths = [m.d_sae if m.d_sae is not None else m.expansion_factor * d for m in members]
    memory = sum(sae_memory_mib(m, d, w) for m, w in zip(members, widths)) + stream_memory_mib(cfg, d)
    free = free_memory_mib("cuda" if cfg.device in ("auto", "cuda") else "cpu")
    if memory > 0.9 * free:
        problems.append(
            f"The {len(members)} SAE(s) need about {memory / 1024:.1f} GiB; {free / 1024:.1f} GiB is free. "
            "Use fewer grid points, smaller widths or a smaller batch."
        )
    tokens = cfg.steps * cfg.batch_tokens
    harvested = tokens * 1.05  # each trained token harvested once (+ dropped special positions)
    if cfg.cache_activations and cfg.train_tokens:
        harvested = min(harvested, cfg.train_tokens)
    harvested += cfg.eval_sequences * cfg.context_size
    device = "cuda" if cfg.device in ("auto", "cuda") and torch.cuda.is_available() else "cpu"
    return {
        "problems": problems,
        "warnings": warnings,
        "saes": len(members),
        "d_in": d_in,
        "d_sae": d_sae,
        "parameters": params,
        "memory_mib": memory,
        "tokens": tokens,
        "seconds": estimate_seconds(harvested, tokens * len(members), device, info.get("parameters", 0)),
    }
