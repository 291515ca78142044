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


# -- who runs a job recorded in the catalog ---------------------------------------------------------------
def owner_stamp() -> dict[str, Any]:
    """The process that runs a job (stored in the job's metadata while it runs)."""
    import os
    import socket

    import psutil

    pid = os.getpid()
    return {"host": socket.gethostname(), "pid": pid, "created": psutil.Process(pid).create_time()}


def owner_alive(meta: dict[str, Any]) -> bool | None:
    """Whether the process recorded in ``meta['owner']`` still runs: True/False on this machine, None
    when the job was started elsewhere (or before owners were recorded)."""
    import socket

    import psutil

    owner = meta.get("owner") or {}
    if not owner or owner.get("host") != socket.gethostname():
        return None
    try:
        proc = psutil.Process(int(owner["pid"]))
        return abs(proc.create_time() - float(owner.get("created", 0))) < 1.0 and proc.status() != psutil.STATUS_ZOMBIE
    except (psutil.NoSuchProcess, psutil.AccessDenied, KeyError, ValueError):
        return False


def effective_status(meta: dict[str, Any]) -> str | None:
    """A job's status, with 'running' read as 'interrupted' when its process is gone (killed, crashed,
    kernel restarted)."""
    status = meta.get("status")
    if status == "running" and owner_alive(meta) is False:
        return "interrupted"
    return status


def claim(ws, art, what: str) -> None:
    """Refuse to start work on ``art`` (resume a run or an extraction) while another live process runs it."""
    alive = owner_alive(art.meta)
    if art.meta.get("status") == "running" and (alive or (alive is None and art.meta.get("owner"))):
        owner = art.meta.get("owner") or {}
        raise MistudioError(f"The {what} {art.name!r} is running in another process (pid {owner.get('pid', '?')}"
                            f" on {owner.get('host', 'another machine')}).",
                            "wait for it to finish or stop it there; resume it once it shows as interrupted.")
