"""One progress event type for all long work, consumed by tqdm (headless) and widgets alike."""

from __future__ import annotations

import threading
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable


@dataclass
class ProgressEvent:
    stage: str  # e.g. "read", "tokenize", "convert", "capture"
    done: float
    total: float | None = None
    unit: str = "it"
    message: str = ""
    finished: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


ProgressCallback = Callable[[ProgressEvent], None]


def emit(
    cb: ProgressCallback | None,
    stage: str,
    done: float,
    total: float | None = None,
    *,
    unit: str = "it",
    message: str = "",
    finished: bool = False,
) -> None:
    if cb is not None:
        cb(ProgressEvent(stage, done, total, unit, message, finished))


class TqdmProgress:
    """A progress callback drawing one tqdm bar per stage (on stderr)."""

    def __init__(self, disable: bool = False):
        self.bars: dict[str, Any] = {}
        self.disable = disable

    def __call__(self, ev: ProgressEvent) -> None:
        from tqdm.auto import tqdm

        bar = self.bars.get(ev.stage)
        if bar is None:
            bar = self.bars[ev.stage] = tqdm(
                total=ev.total,
                desc=ev.stage,
                unit=ev.unit,
                disable=self.disable,
                leave=True,
                dynamic_ncols=True,
            )
        if ev.total is not None and bar.total != ev.total:
            bar.total = ev.total
        bar.n = ev.done
        if ev.message:
            bar.set_postfix_str(ev.message, refresh=False)
        bar.refresh()
        if ev.finished:
            bar.close()
            del self.bars[ev.stage]


class Throttled:
    """Pass at most ``rate`` events per second to ``cb``; the first, stage changes and finished ones pass."""

    def __init__(self, cb: ProgressCallback, rate: float = 10.0):
        self.cb, self.interval, self.last = cb, 1.0 / rate, 0.0
        self.stage: str | None = None
        self.lock = threading.Lock()

    def __call__(self, ev: ProgressEvent) -> None:
        now = time.monotonic()
        with self.lock:
            if not (ev.finished or ev.stage != self.stage or now - self.last >= self.interval):
                return
            self.last, self.stage = now, ev.stage
        self.cb(ev)
