"""SystemMonitor: CPU per core, RAM, disk and (through NVML) GPUs, about once a second while visible."""

from __future__ import annotations

import functools
import threading
from typing import Any

import traitlets as t

from ..core import system
from .base import EngineWidget, esm, on_kernel


class SystemMonitor(EngineWidget):
    _esm = esm("system_monitor")
    snapshot = t.Dict().tag(sync=True)
    visible = t.Bool(False).tag(sync=True)  # set by the page (IntersectionObserver + tab visibility)
    interval = t.Float(1.0).tag(sync=True)

    def __init__(self, workspace=None, **kwargs: Any):
        self._stop = threading.Event()
        self._wake = threading.Event()
        super().__init__(workspace, **kwargs)
        self.snapshot = system.snapshot(self.workspace.root)
        self._thread = threading.Thread(target=self._run, name="mistudio-system-monitor", daemon=True)
        self._thread.start()

    @t.observe("visible")
    def _on_visible(self, change: dict) -> None:
        if change["new"]:
            self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            if not self.visible:
                self._wake.wait(5.0)
                self._wake.clear()
                continue
            snap = system.snapshot(self.workspace.root)
            on_kernel(functools.partial(self._apply, snap))
            self._stop.wait(max(self.interval, 0.2))

    def _apply(self, snap: dict[str, Any]) -> None:
        if not self._stop.is_set():
            self.snapshot = snap

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        super().close()

    def action_sample(self) -> None:
        self.snapshot = system.snapshot(self.workspace.root)
