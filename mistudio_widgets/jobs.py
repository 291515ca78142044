"""Background jobs: long work (training) runs in a worker thread so the kernel stays responsive.
Jobs report progress events, can be paused, resumed and cancelled, and queue for the accelerator:
one job holds it at a time, the others wait their turn in submission order."""
from __future__ import annotations

import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable

from .errors import MistudioError
from .progress import ProgressCallback, ProgressEvent


class JobCancelled(Exception):
    """Raised inside a job's work when the job is cancelled (the work checkpoints first)."""


class JobControl:
    """Handed to long work: ``check()`` between steps honours pause and cancel."""

    def __init__(self) -> None:
        self._cancel = threading.Event()
        self._running = threading.Event()
        self._running.set()

    def cancel(self) -> None:
        self._cancel.set()
        self._running.set()

    def pause(self) -> None:
        self._running.clear()

    def resume(self) -> None:
        self._running.set()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    @property
    def paused(self) -> bool:
        return not self._running.is_set()

    def check(self) -> None:
        self._running.wait()
        if self._cancel.is_set():
            raise JobCancelled()


_accelerator = threading.Lock()   # one job at a time holds the compute
_queue_lock = threading.Condition()
_queue: list["Job"] = []


@dataclass
class Job:
    name: str
    work: Callable[[ProgressCallback, JobControl], Any]
    control: JobControl = field(default_factory=JobControl)
    status: str = "queued"             # queued | running | paused | done | cancelled | failed
    result: Any = None
    error: dict[str, str] | None = None
    last_event: ProgressEvent | None = None
    started: float | None = None
    finished: float | None = None
    listeners: list[Callable[["Job", ProgressEvent | None], None]] = field(default_factory=list)
    thread: threading.Thread | None = None

    def _notify(self, ev: ProgressEvent | None) -> None:
        for fn in list(self.listeners):
            try:
                fn(self, ev)
            except Exception:  # a broken listener must not break the job
                traceback.print_exc()

    def _progress(self, ev: ProgressEvent) -> None:
        self.last_event = ev
        self._notify(ev)

    def _run(self) -> None:
        with _queue_lock:
            while _queue[0] is not self:
                _queue_lock.wait()
        try:
            with _accelerator:
                if self.control.cancelled:
                    self.status = "cancelled"
                    return
                self.status, self.started = "running", time.time()
                self._notify(None)
                try:
                    self.result = self.work(self._progress, self.control)
                    self.status = "done"
                except JobCancelled:
                    self.status = "cancelled"
                except MistudioError as exc:
                    self.status, self.error = "failed", {"problem": exc.problem, "fix": exc.fix or ""}
                except Exception as exc:  # noqa: BLE001 - reported to the user
                    self.status = "failed"
                    self.error = {"problem": f"{type(exc).__name__}: {exc}", "fix": "see the traceback in the kernel log.",
                                  "trace": traceback.format_exc()}
        finally:
            self.finished = time.time()
            with _queue_lock:
                _queue.remove(self)
                _queue_lock.notify_all()
            self._notify(None)

    # -- controls --------------------------------------------------------------------------
    def cancel(self) -> None:
        self.control.cancel()

    def pause(self) -> None:
        if self.status == "running":
            self.control.pause()
            self.status = "paused"
            self._notify(None)

    def resume(self) -> None:
        if self.status == "paused":
            self.control.resume()
            self.status = "running"
            self._notify(None)

    def wait(self, timeout: float | None = None) -> Any:
        """Block until the job ends; returns its result or raises its error."""
        if self.thread is not None:
            self.thread.join(timeout)
        if self.status == "failed" and self.error:
            raise MistudioError(self.error["problem"], self.error.get("fix"))
        return self.result

    @property
    def done(self) -> bool:
        return self.status in ("done", "cancelled", "failed")


def submit(name: str, work: Callable[[ProgressCallback, JobControl], Any],
           listener: Callable[[Job, ProgressEvent | None], None] | None = None) -> Job:
    """Start ``work(progress, control)`` in a background thread (queued behind running jobs)."""
    job = Job(name, work)
    if listener:
        job.listeners.append(listener)
    with _queue_lock:
        _queue.append(job)
    job.thread = threading.Thread(target=job._run, name=f"mistudio-job-{name}", daemon=True)
    job.thread.start()
    return job


def queued() -> list[Job]:
    with _queue_lock:
        return list(_queue)
