"""The training loop of a group of SAEs: one activation stream, harvested once at the union of their
hooks, feeds every SAE that has not finished; pace (ETA), stop and interruption."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..core import distributed as dist
from ..core.configs import TrainConfig
from ..core.jobs import JobCancelled, JobControl, Status
from ..core.progress import ProgressCallback, ProgressEvent, emit
from ..core.workspace import Artifact, Workspace
from ..data.activation_cache import ActivationCache
from ..data.activations import ActivationStream, harvest_shared
from ..data.models import LoadedModel
from ..sae import SAESpec
from .member import Member, TrainResult
from .pace import Pace, PaceWriter, planned_harvest_tokens


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


HARVEST_STAGES = ("harvest", "filling activation cache")  # progress stages that run the model over text


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
        # a short run harvests only what it needs (+5% for dropped special positions); fixed by the config,
        # so resumes agree
        width = max(harvest.train_tokens.shape[1] - 1, 1)
        needed = math.ceil(self.cfg.steps * self.cfg.batch_tokens * 1.05 / width) + 1
        self.chunk_sequences = min(self.cfg.chunk_sequences, needed, len(harvest.train_tokens))
        # the whole harvest is planned before any of it starts (held-out, then training chunks), so the
        # first ETA already counts it; a resumed run starts at its last checkpoint
        start = int(runs[0].meta.get("last_checkpoint") or 0) if resuming else 0
        self.pace = Pace(
            steps_total=self.cfg.steps,
            step=start,
            batch_tokens=self.cfg.batch_tokens,
            harvest_left=self._held_out_tokens() + self._training_harvest_tokens(start),
            device=harvest.device,
            parameters=float(harvest.lm.info.get("parameters") or 0),
        )
        record = dist.is_main()

        def write_pace(d: dict[str, Any]) -> None:
            for r in runs if record else []:
                ws.update_meta(r.id, pace=d)

        self.pace_writer = PaceWriter(write_pace, self.pace)
        self.pace_writer.flush(force=True)
        self.progress = self._listening(self.pace_writer.progress(progress))
        t0 = time.perf_counter()
        eval_acts = self._held_out_activations()
        self.pace.harvest_time(time.perf_counter() - t0)
        # each member's evaluator reads the model's own loss on the held-out text before training starts
        self.pace.stage, self.pace.stage_done, self.pace.stage_total = "preparing evaluation", 0, None
        self.pace_writer.flush(force=True)
        self.members = [
            Member(ws, r, c, sp, harvest.lm, harvest.eval_tokens, eval_acts, harvest.device, resuming)
            for r, c, sp in zip(runs, cfgs, specs)
        ]
        self.stream = ActivationStream(
            harvest.lm,
            harvest.train_tokens,
            harvest.hooks,
            batch_tokens=self.cfg.batch_tokens,
            chunk_sequences=self.chunk_sequences,
            seed=self.cfg.seed,
            harvest_batch_size=self.cfg.harvest_batch_size,
            progress=self.progress,
            cache=harvest.cache,
        )
        # the held-out part is done: what is left is the training chunks from where the members stand
        self.pace.step = min(m.state.step for m in self.members)
        self.pace.harvest_left = self._training_harvest_tokens(self.pace.step)
        self.pace_writer.flush(force=True)

    def _unfilled_tokens(self, seqs: np.ndarray) -> int:
        """Tokens of ``seqs`` (rows of the cache's token array) the activation cache does not hold yet."""
        cache = self.harvest.cache
        assert cache is not None, "a run that harvests has an activation cache"
        return int((~np.asarray(cache.filled)[seqs]).sum()) * self.harvest.train_tokens.shape[1]

    def _held_out_tokens(self) -> int:
        """Tokens the held-out activations will pass through the model (none when cached)."""
        h = self.harvest
        if h.cache is None:
            return len(h.eval_tokens) * h.eval_tokens.shape[1]
        n_all = len(h.cache.tokens)  # the held-out sequences are the data's last ones
        return self._unfilled_tokens(np.arange(n_all - len(h.eval_tokens), n_all))

    def _training_harvest_tokens(self, step: int) -> int:
        """Tokens the training chunks still to visit from ``step`` on will pass through the model."""
        h = self.harvest
        ctx = h.train_tokens.shape[1]
        per_chunk = max(self.chunk_sequences * (ctx - 1) // self.cfg.batch_tokens, 1)
        uncached = None if h.cache is None else self._unfilled_tokens(np.arange(len(h.train_tokens)))
        return planned_harvest_tokens(
            self.cfg.steps - step, self.cfg.batch_tokens, self.chunk_sequences * ctx, per_chunk, uncached
        )

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
        step, chunk, row = members[0].state.position
        it = stream.batches((step, chunk, row))
        steps_here = 0
        while not all(m.done for m in members):
            t0 = time.perf_counter()
            try:
                self.control.check()  # waits while paused
                batch = next(it)  # a harvest in the middle of it stops for Stop too (see _listening)
            except JobCancelled:
                self._checkpoint(stream.position)
                raise
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
                self._checkpoint(stream.position)
                raise JobCancelled()
        self.pace.stage = "saving"
        self.pace_writer.flush(force=True)
        results = [m.finish(stream.position, stream.counts) for m in members]
        dist.barrier()  # the others end once the main process has saved the SAEs
        emit(self.progress, "train", cfg.steps, cfg.steps, unit="step", finished=True)
        return results

    def _checkpoint(self, position: tuple[int, int, int]) -> None:
        """Checkpoint every unfinished member at ``position`` (the next batch none of them has seen)."""
        for m in self.members:
            if not m.done:
                m.checkpoint(position)

    def _listening(self, progress: ProgressCallback) -> ProgressCallback:
        """``progress``, which also pauses or stops a harvest between two of its forward batches when
        the job is paused or cancelled: refilling the stream takes seconds, and Stop used to wait for it
        (the stream's position still names the next batch the SAEs have not seen, so the checkpoint
        :meth:`run` then writes loses nothing)."""

        def cb(ev: ProgressEvent) -> None:
            progress(ev)
            if ev.stage.startswith(HARVEST_STAGES) and not ev.finished:
                self.control.check()

        return cb

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
