"""How long a training takes: the time split between harvesting activations (model forward passes) and
training steps, each measured at its own rate, so the estimate holds while the work alternates between
the two (a harvest of a chunk, then many fast steps over it).

The trainer feeds a :class:`Pace` with what it harvests and how long steps take, and writes its state into
every run's record about once a second (``meta["pace"]``): any monitor, in this kernel, another kernel or
the command line, shows the same stage, progress and ETA. Before a rate has been measured, the prior
below stands in and the ETA says it is an estimate.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from ..core.progress import ProgressCallback, ProgressEvent

# rates before anything is measured, on a 2-core CPU with the default model (FACTS: the forward to layer
# 15 runs at 1,150-1,390 tokens/s; harvesting keeps ~900 with the copies); a GPU is ~20x faster
PRIOR_HARVEST_TOKENS_PER_S = {"cpu": 900.0, "cuda": 20_000.0}
PRIOR_TRAIN_TOKENS_PER_S = {"cpu": 20_000.0, "cuda": 400_000.0}
LARGE_MODEL = 2e8  # parameters above which harvesting is ~4.5x slower than the priors


def prior_rates(device: str, parameters: float = 0) -> tuple[float, float]:
    """(harvest, train) tokens per second assumed before either is measured."""
    kind = "cuda" if str(device).startswith("cuda") else "cpu"
    harvest = PRIOR_HARVEST_TOKENS_PER_S[kind] / (4.5 if parameters > LARGE_MODEL else 1.0)
    return harvest, PRIOR_TRAIN_TOKENS_PER_S[kind]


def planned_harvest_tokens(
    steps: int, batch_tokens: int, chunk_tokens: int, batches_per_chunk: int, uncached_tokens: int | None
) -> int:
    """Tokens a run will pass through the model for ``steps`` more steps: whole chunks, one visit per
    ``batches_per_chunk`` steps; with an activation cache, only the tokens not cached yet."""
    visits = math.ceil(steps / max(batches_per_chunk, 1)) if steps > 0 else 0
    tokens = visits * chunk_tokens
    return tokens if uncached_tokens is None else min(tokens, uncached_tokens)


def estimate_seconds(harvest_tokens: float, train_tokens: float, device: str, parameters: float = 0) -> float:
    """Seconds to harvest and train that many tokens at the prior rates (the configurator's estimate)."""
    h, t = prior_rates(device, parameters)
    return harvest_tokens / h + train_tokens / t


@dataclass
class Pace:
    """A training session's pace. ``harvest_left`` is the tokens still to pass through the model;
    ``steps_left`` the optimiser steps still to take."""

    steps_total: int
    step: int
    batch_tokens: int
    harvest_left: int
    device: str = "cpu"
    parameters: float = 0
    stage: str = "starting"
    stage_done: float = 0
    stage_total: float | None = None
    harvested: int = 0
    harvest_s: float = 0.0
    train_s: float = 0.0
    steps_here: int = 0
    _last_stage: str = field(default="", repr=False)
    _last_done: float = field(default=0.0, repr=False)
    # the harvest under way, timed between its progress events (until a finished harvest is timed)
    _live_tokens: float = field(default=0.0, repr=False)
    _live_s: float = field(default=0.0, repr=False)
    _live_at: float | None = field(default=None, repr=False)

    # -- what the trainer reports -----------------------------------------------------------------
    def observe(self, ev: ProgressEvent) -> None:
        """A progress event of the harvest (tokens through the model)."""
        if ev.unit != "tok":
            return
        now = time.perf_counter()
        if ev.stage != self._last_stage or ev.done < self._last_done:
            self._last_stage, self._last_done, self._live_at = ev.stage, 0.0, None
        delta = max(ev.done - self._last_done, 0)
        self._last_done = ev.done
        if self._live_at is not None:  # the tokens since the previous event, in the time since it
            self._live_tokens += delta
            self._live_s += now - self._live_at
        self._live_at = now
        self.harvested += int(delta)
        self.harvest_left = max(self.harvest_left - int(delta), 0)
        self.stage, self.stage_done, self.stage_total = "harvest", ev.done, ev.total

    def harvest_time(self, seconds: float) -> None:
        self.harvest_s += seconds

    def stepped(self, step: int, seconds: float) -> None:
        self._live_at = None  # the time of steps is not harvest time
        self.step, self.steps_here = step, self.steps_here + 1
        self.train_s += seconds
        self.stage, self.stage_done, self.stage_total = "train", step, self.steps_total

    # -- what a monitor shows ---------------------------------------------------------------------
    def rates(self) -> tuple[float, float, bool]:
        """(harvest tokens/s, training tokens/s, whether either is still the prior)."""
        prior_h, prior_t = prior_rates(self.device, self.parameters)
        measured_h = self.harvest_s > 0.25 and self.harvested > 0
        measured_t = self.train_s > 0.2 and self.steps_here >= 3
        h = self.harvested / self.harvest_s if measured_h else prior_h
        if not measured_h and self._live_s > 0.25 and self._live_tokens > 0:  # the first harvest, under way
            h, measured_h = self._live_tokens / self._live_s, True
        t = self.steps_here * self.batch_tokens / self.train_s if measured_t else prior_t
        return h, t, not (measured_h and measured_t)

    def eta_seconds(self) -> tuple[float, bool]:
        h, t, estimated = self.rates()
        steps_left = max(self.steps_total - self.step, 0)
        if self.harvest_left == 0:
            estimated = estimated and not (self.train_s > 0.2 and self.steps_here >= 3)
        return self.harvest_left / h + steps_left * self.batch_tokens / t, estimated

    def to_dict(self) -> dict[str, Any]:
        eta, estimated = self.eta_seconds()
        h, t, _ = self.rates()
        return {
            "stage": self.stage,
            "done": self.stage_done,
            "total": self.stage_total,
            "harvest_left": self.harvest_left,
            "harvested": self.harvested,
            "harvest_tokens_per_s": h,
            "train_tokens_per_s": t,
            "eta_s": eta,
            "estimated": estimated,
            "at": time.time(),
        }


class PaceWriter:
    """Writes a :class:`Pace` into the records of runs, at most once per ``interval`` seconds (and at
    once on a change of stage), and passes the harvest's progress events on to ``progress``."""

    def __init__(self, write: Callable[[dict[str, Any]], None], pace: Pace, interval: float = 1.0):
        self.write, self.pace, self.interval = write, pace, interval
        self._last = 0.0
        self._stage: str | None = None

    def progress(self, downstream: ProgressCallback | None) -> ProgressCallback:
        def cb(ev: ProgressEvent) -> None:
            self.pace.observe(ev)
            self.flush()
            if downstream is not None:
                downstream(ev)

        return cb

    def flush(self, force: bool = False) -> None:
        now = time.monotonic()
        if force or self.pace.stage != self._stage or now - self._last >= self.interval:
            self._last, self._stage = now, self.pace.stage
            self.write(self.pace.to_dict())
