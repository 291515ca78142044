"""SAE training on a model's activations: one run = one ``run`` artifact (config, status, checkpoints,
metric history in the catalog) that produces one ``sae`` artifact (a SAELens folder).

The entry points (:func:`train`, :func:`train_many`) check the group, register the runs and hand them
to :class:`~.trainer.Trainer`; the step, evaluation, checkpoints and planning live in their own modules."""

from __future__ import annotations

import math
import time
from typing import Any, Callable

import torch

from ..core import distributed as dist
from ..core.configs import SHARED, TrainConfig, from_dict, to_dict
from ..core.jobs import JobControl, Status, claim, effective_status, lifecycle, owner_stamp
from ..core.progress import ProgressCallback
from ..core.workspace import Artifact, Workspace
from ..data.activation_cache import ActivationCache
from ..data.datasets import load_tokens
from ..data.hooks import parse_hook
from ..data.models import LoadedModel, load_model, resolve_model
from ..sae import SAESpec
from .checkpoints import CKPT_PREFIX, checkpoints_of, remove_stale_checkpoint_temps
from .member import TrainResult
from .planning import check_group_memory, run_names
from .prepare import TrainingError, resolve_tokens, sae_spec
from .trainer import Harvest, Trainer


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
    runs = [_resumable(ws, resume)] if resume else []
    if resume:
        cfgs = [from_dict(TrainConfig, runs[0].meta["config"])]
    if not cfgs:
        raise TrainingError("No SAE to train was given.", "pass at least one TrainConfig.")
    first = cfgs[0]
    dist.init_from_env(first.device)
    if not dist.is_main():
        progress = None
    _check_group(cfgs)
    with dist.main_first():  # the main process converts the model and tokenizes; the others find the results
        lm = load_model(
            ws,
            resolve_model(ws, first.model, progress=progress),
            device=None if first.device == "auto" else first.device,
        )
        tok = resolve_tokens(ws, first, lm, progress)
    specs = _specs(ws, cfgs, lm, tok)
    stream_hooks = runs[0].meta.get("stream_hooks") if resume else None
    stream_hooks = stream_hooks or list(dict.fromkeys(h for c in cfgs for h in (c.hook, c.hook_out) if h))
    if not resume:
        check_group_memory(cfgs, specs, lm.device)
        runs = _register_runs(ws, cfgs, specs, lm, tok, stream_hooks)
    resumed = (
        {"resumed": time.time(), "resumed_at_step": runs[0].meta.get("step") or 0, "processes": dist.world()}
        if resume
        else {}
    )
    if on_start and dist.is_main():
        for r in runs:
            on_start(r)
    try:
        with lifecycle(ws, runs, record=dist.is_main(), **resumed):
            harvest = _harvest(ws, runs, first, lm, tok, stream_hooks)
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


def _resumable(ws: Workspace, ref: str) -> Artifact:
    """The run to resume, claimed for this process, with its files and a checkpoint to resume from."""
    run = ws.get(ref, "run")
    claim(ws, run, "run")
    if run.path is None or not run.path.is_dir():
        raise TrainingError(
            f"The files of run {run.name!r} are gone.", "start a new run; this one cannot resume."
        )
    remove_stale_checkpoint_temps(run.path)
    if not checkpoints_of(run.path):
        raise TrainingError(
            f"Run {run.name!r} has no checkpoint to resume from.", "start a new run with the same settings."
        )
    return run


def _check_group(cfgs: list[TrainConfig]) -> None:
    """The settings one harvest needs equal across the group, and a batch that splits evenly over the
    processes and the micro-batches."""
    first = cfgs[0]
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
    for c in cfgs:
        if c.batch_tokens % c.grad_accumulation:
            raise TrainingError(
                f"batch_tokens={c.batch_tokens} is not divisible by grad_accumulation={c.grad_accumulation}.",
                "choose values where batch_tokens / grad_accumulation is a whole number.",
            )


def _specs(ws: Workspace, cfgs: list[TrainConfig], lm: LoadedModel, tok: Artifact) -> list[SAESpec]:
    """Each SAE's shape and SAELens metadata, its hooks checked against the model."""
    d_model = int(lm.info["d_model"])
    specs = []
    for c in cfgs:
        parse_hook(lm.model, c.hook)
        if c.hook_out:
            parse_hook(lm.model, c.hook_out)
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
    return specs


def _register_runs(
    ws: Workspace,
    cfgs: list[TrainConfig],
    specs: list[SAESpec],
    lm: LoadedModel,
    tok: Artifact,
    stream_hooks: list[str],
) -> list[Artifact]:
    """One run artifact per SAE, made by the main process (every name checked free before the first is
    made); the other processes receive their ids."""
    ids: list[str] | None = None
    runs: list[Artifact] = []
    if dist.is_main():
        names = [c.name or ws.unique_name("run", base) for c, base in zip(cfgs, run_names(cfgs))]
        ws.check_names_free("run", names)
        for c, spec, name in zip(cfgs, specs, names):
            meta = {
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
            }
            runs.append(ws.create_folder("run", name, meta=meta))
        ids = [r.id for r in runs]
    return [ws.get(i) for i in dist.broadcast(ids)]


def held_out_rows(n_sequences: int, eval_sequences: int) -> int:
    """How many of a tokenization's last sequences a run holds out for evaluation: ``eval_sequences``,
    at most a tenth of the data, at least one."""
    return min(eval_sequences, max(n_sequences // 10, 1))


def _harvest(
    ws: Workspace, runs: list[Artifact], first: TrainConfig, lm: LoadedModel, tok: Artifact, hooks: list[str]
) -> Harvest:
    """What the group reads: the training and held-out sequences, the hooks, and the activation cache
    when the config asks for one (recorded on each run)."""
    tokens = load_tokens(ws, tok)
    n_eval = held_out_rows(len(tokens), first.eval_sequences)
    train_tokens, eval_tokens = tokens[:-n_eval], tokens[-n_eval:]
    if first.train_tokens:
        train_tokens = train_tokens[: max(math.ceil(first.train_tokens / tokens.shape[1]), 1)]
    cache = None
    if first.cache_activations:
        key = ActivationCache.key(lm.artifact, tok, hooks)
        with dist.main_first():
            cache = ActivationCache.open(ws, key, tokens, int(lm.info["d_model"]), first.harvest_batch_size)
        for r in runs if dist.is_main() else []:
            ws.update_meta(r.id, activation_cache=cache.art.id)
    device = lm.device if lm.device != "mps" else "cpu"
    return Harvest(lm, train_tokens, eval_tokens, hooks, device, cache)


def run_status(ws: Workspace, run: str) -> dict[str, Any]:
    art = ws.get(run, "run")
    ckpts = checkpoints_of(art.path) if art.path and art.path.is_dir() else []
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
    return load_sae(art.folder, device)
