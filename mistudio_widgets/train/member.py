"""One SAE of a training group: its weights, optimiser, schedule, dead-latent counts, evaluator,
run artifact and checkpoints; a step, a checkpoint, and the saved SAE at the end."""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..core import distributed as dist
from ..core.configs import TrainConfig
from ..core.jobs import Status
from ..core.workspace import Artifact, Workspace
from ..data.models import LoadedModel
from ..sae import SAESpec, make_sae
from ..sae.io import save_sae
from ..sae.topk import drop_scratch
from .checkpoints import CKPT_PREFIX, TrainState, checkpoints_of, load_checkpoint, save_checkpoint
from .evaluation import Evaluator, explained_variance, process_memory_mib
from .heap import keep_freed_memory
from .optim import averaged, make_optimizer
from .prepare import TrainingError, new_sae
from .step import LossModule, optimizer_step, resample_dead, sparsity_coefficient


@dataclass
class TrainResult:
    run_id: str
    sae_id: str | None
    path: str | None
    metrics: dict[str, float]
    status: str


class Member:
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
            ckpt = checkpoints_of(run.folder)[-1]
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
        self.evaluator = (
            Evaluator(lm, eval_tokens, cfg.hook, cfg.hook_out, eval_acts) if dist.is_main() else None
        )
        # data parallel: DDP makes every process start from the main one's weights and averages the gradients
        self.ddp = (
            torch.nn.parallel.DistributedDataParallel(LossModule(sae, cfg), forward_sync_buffers=False)
            if dist.active()
            else None
        )
        self.aux_k = cfg.aux_k or max(spec.d_in // 2, 1)
        self.fire_counts = torch.zeros(spec.d_sae)
        self.window_tokens, self.t_log = 0, time.perf_counter()
        self.t_session, self.seconds_before = self.t_log, self.state.seconds
        self.last: dict[str, float] = {}
        self.stopped = False

    @property
    def done(self) -> bool:
        return self.stopped or self.state.step >= self.cfg.steps

    def step(self, batch: dict[str, torch.Tensor], position: tuple[int, int, int]) -> dict[str, Any]:
        """One optimiser step on ``batch``; then, on their schedules, resampling, the metric log, the
        held-out evaluation (with early stopping) and a checkpoint. Returns the line the progress shows."""
        cfg, state = self.cfg, self.state
        x = batch[cfg.hook].to(self.device, non_blocking=True) * self.scale_in
        t = batch[cfg.hook_out].to(self.device, non_blocking=True) * self.scale_out if cfg.hook_out else x
        coef = sparsity_coefficient(cfg, state.step)
        dead = self.since_fired >= cfg.aux_dead_tokens  # the latents AuxK trains
        parts, counts, per_token, recon = optimizer_step(
            self.sae,
            self.opt,
            self.sched,
            cfg,
            x,
            t,
            dead,  # on the CPU: AuxK reads which latents are dead without waiting for a GPU
            coef,
            self.aux_k,
            self.device,
            self.ddp,
        )
        parts, counts, n = self._whole_batch(parts, counts.float(), x.shape[0])
        if not math.isfinite(parts["loss"]):
            raise TrainingError(
                f"The loss became {parts['loss']} at step {state.step}; training stopped and the last good "
                f"checkpoint (step {self.ws.get(self.run.id).meta.get('last_checkpoint', 'none')}) was kept.",
                "lower the learning rate (lr) or enable gradient clipping, then resume or start again.",
            )
        l0 = self._count_firing(counts, n)
        self._maybe_resample(x, t)
        s = state.step
        if not dist.is_main():
            if self._evaluates(s) and cfg.early_stop_patience:
                self.stopped = dist.broadcast(None)
            return {"loss": parts["loss"], "l0": l0, "ev": float("nan")}
        if s % cfg.log_every == 0 or s == cfg.steps:
            self._log(s, parts, recon, t, l0, coef, per_token)
        if self._evaluates(s):
            self._evaluate(s)
        if cfg.checkpoint_every and s % cfg.checkpoint_every == 0 and s < cfg.steps:
            self.checkpoint(position)
        return {"loss": parts["loss"], "l0": l0, "ev": self.last.get("explained_variance", float("nan"))}

    def _whole_batch(
        self, parts: dict[str, float], counts: torch.Tensor, n: int
    ) -> tuple[dict[str, float], torch.Tensor, int]:
        """Under data parallelism, every process's share of the batch counts: firing, L0 and losses over
        the whole batch."""
        if not dist.active():
            return parts, counts, n
        summed = (
            dist.all_sum(torch.tensor([parts[k] for k in sorted(parts)], dtype=torch.float64)) / dist.world()
        )
        return (
            dict(zip(sorted(parts), (float(v) for v in summed))),
            dist.all_sum(counts),
            self.cfg.batch_tokens,
        )

    def _count_firing(self, counts: torch.Tensor, n: int) -> float:
        """Dead-latent tracking and the step count after a step of ``n`` tokens; returns its L0."""
        fired = counts > 0
        self.fire_counts += counts
        self.since_fired += n
        self.since_fired[fired] = 0
        self.window_tokens += n
        self.state.step, self.state.tokens = self.state.step + 1, self.state.tokens + n
        return float(counts.sum()) / n

    def _maybe_resample(self, x: torch.Tensor, t: torch.Tensor) -> None:
        cfg = self.cfg
        every = max(cfg.dead_tokens // cfg.batch_tokens, 1)
        if self.sae.resamples_dead and cfg.resample_dead and self.state.step % every == 0:
            resample_dead(self.sae, self.opt, (self.since_fired >= cfg.dead_tokens).to(self.device), x, t)
            # the same dead latents everywhere; the main process's new directions
            dist.broadcast_tensors(self.sae.parameters())

    def _evaluates(self, s: int) -> bool:
        return bool(self.cfg.eval_every) and s % self.cfg.eval_every == 0 and s < self.cfg.steps

    def _log(self, s: int, parts, recon, t, l0: float, coef: float, per_token: torch.Tensor) -> None:
        """The training metrics of step ``s`` (over the window since the last log) and its L0 histogram."""
        cfg, now = self.cfg, time.perf_counter()
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
            "memory_mib": process_memory_mib(),
            "tokens": self.state.tokens,
            "elapsed_s": self.elapsed(),
        }
        self.ws.add_metrics(self.run.id, s, "train", self.last)
        per = per_token.float().numpy()
        counts, edges = np.histogram(per, bins=min(30, max(int(per.max()) - int(per.min()) + 1, 1)))
        self.ws.update_meta(
            self.run.id, step=s, l0_histogram={"edges": edges.tolist(), "counts": counts.tolist()}
        )
        self.fire_counts.zero_()
        self.window_tokens, self.t_log = 0, now

    def _main_evaluator(self) -> Evaluator:
        """The held-out evaluator, which only the main process holds."""
        assert self.evaluator is not None, "only the main process evaluates"
        return self.evaluator

    def _evaluate(self, s: int) -> None:
        """The held-out evaluation at step ``s``; early stopping after ``early_stop_patience`` evaluations
        without a better MSE (the decision is sent to the other processes)."""
        cfg, state = self.cfg, self.state
        with averaged(self.opt):
            ev = self._main_evaluator().run(self.sae, self.scale_in, self.scale_out)
        self.ws.add_metrics(self.run.id, s, "eval", ev)
        if not cfg.early_stop_patience:
            return
        if state.best_eval is None or ev["mse"] < state.best_eval:
            state.best_eval, state.bad_evals = ev["mse"], 0
        else:
            state.bad_evals += 1
            if state.bad_evals >= cfg.early_stop_patience:
                self.ws.update_meta(self.run.id, early_stopped=s)
                self.stopped = True
        dist.broadcast(self.stopped)

    def elapsed(self) -> float:
        """Seconds this SAE has been training, over every session of the run (for the monitor's time axis)."""
        return self.seconds_before + (time.perf_counter() - self.t_session)

    def checkpoint(self, position: tuple[int, int, int]) -> None:
        if not dist.is_main():
            return
        self.state.tokens_since_fired, self.state.position = self.since_fired.tolist(), list(position)
        self.state.seconds = self.elapsed()
        save_checkpoint(self.run.folder, self.sae, self.opt, self.sched, self.state)
        self.ws.update_meta(self.run.id, last_checkpoint=self.state.step)

    def finish(self, position: tuple[int, int, int], harvest_counts: dict[str, int]) -> TrainResult:
        ws, cfg, spec, run = self.ws, self.cfg, self.spec, self.run
        if not dist.is_main():
            return TrainResult(run.id, None, None, {}, Status.DONE)
        self.checkpoint(position)
        drop_scratch(self.sae)
        with averaged(self.opt):
            final_eval = self._main_evaluator().run(self.sae, self.scale_in, self.scale_out)
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
