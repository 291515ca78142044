"""One job lifecycle for long work (training, extraction, labelling, every widget action).

In the kernel a :class:`Job` runs the work in a worker thread so the kernel stays responsive; it
reports progress events and can be paused, resumed and cancelled. Exclusive jobs (training) queue for
the accelerator: one holds it at a time, the others wait their turn in submission order. In the
catalog, :func:`lifecycle` records a job's artifacts as running under this process and, when the work
stops early, as interrupted (resumable) or failed. Both speak :class:`Status`."""

from __future__ import annotations

import contextlib
import threading
import time
import traceback
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Callable, Iterator, Sequence

from .errors import MistudioError
from .progress import ProgressCallback, ProgressEvent


class Status(str, Enum):
    """Where a job stands: in the kernel (``Job.status``) and in the catalog (``meta['status']``). The
    values are the strings stored, so ``Status.DONE == "done"``."""

    QUEUED = "queued"
    RUNNING = "running"
    PAUSED = "paused"
    DONE = "done"
    INTERRUPTED = "interrupted"  # stopped early with its checkpoint kept: can be resumed
    CANCELLED = "cancelled"
    FAILED = "failed"

    def __str__(self) -> str:
        return self.value

    def __repr__(self) -> str:  # shown (and read back, e.g. from a kernel) as the plain string
        return repr(self.value)


ENDED = (Status.DONE, Status.CANCELLED, Status.FAILED)


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


_accelerator = threading.Lock()  # one job at a time holds the compute
_queue_lock = threading.Condition()
_queue: list["Job"] = []


@dataclass
class Job:
    name: str
    work: Callable[[ProgressCallback, JobControl], Any]
    control: JobControl = field(default_factory=JobControl)
    status: Status = Status.QUEUED
    exclusive: bool = True  # holds the accelerator while it runs (training); False: runs at once
    result: Any = None
    error: dict[str, str] | None = None
    last_event: ProgressEvent | None = None
    started: float | None = None
    finished: float | None = None
    listeners: list[Callable[["Job", ProgressEvent | None], None]] = field(default_factory=list)
    thread: threading.Thread | None = None
    exception: BaseException | None = None  # the error that failed the job

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
        if self.exclusive:
            with _queue_lock:
                while _queue[0] is not self:
                    _queue_lock.wait()
        try:
            with _accelerator if self.exclusive else contextlib.nullcontext():
                if self.control.cancelled:
                    self.status = Status.CANCELLED
                    return
                self.status, self.started = Status.RUNNING, time.time()
                self._notify(None)
                try:
                    self.result = self.work(self._progress, self.control)
                    self.status = Status.DONE
                except JobCancelled:
                    self.status = Status.CANCELLED
                except MistudioError as exc:
                    self.status, self.exception = Status.FAILED, exc
                    self.error = {"problem": exc.problem, "fix": exc.fix or ""}
                except Exception as exc:  # noqa: BLE001 - reported to the user
                    self.status, self.exception = Status.FAILED, exc
                    self.error = {
                        "problem": f"{type(exc).__name__}: {exc}",
                        "fix": "see the traceback in the kernel log.",
                        "trace": traceback.format_exc(),
                    }
        finally:
            self.finished = time.time()
            if self.exclusive:
                with _queue_lock:
                    _queue.remove(self)
                    _queue_lock.notify_all()
            self._notify(None)

    # -- controls --------------------------------------------------------------------------
    def cancel(self) -> None:
        self.control.cancel()

    def pause(self) -> None:
        if self.status == Status.RUNNING:
            self.control.pause()
            self.status = Status.PAUSED
            self._notify(None)

    def resume(self) -> None:
        if self.status == Status.PAUSED:
            self.control.resume()
            self.status = Status.RUNNING
            self._notify(None)

    def wait(self, timeout: float | None = None) -> Any:
        """Block until the job ends; returns its result or raises its error."""
        if self.thread is not None:
            self.thread.join(timeout)
        if self.status == Status.FAILED and self.error:
            raise MistudioError(self.error["problem"], self.error.get("fix"))
        return self.result

    @property
    def done(self) -> bool:
        return self.status in ENDED


def submit(
    name: str,
    work: Callable[[ProgressCallback, JobControl], Any],
    listener: Callable[[Job, ProgressEvent | None], None] | None = None,
    *,
    exclusive: bool = True,
) -> Job:
    """Start ``work(progress, control)`` in a background thread: an exclusive job queues behind the
    running exclusive jobs; another starts at once."""
    job = Job(name, work, exclusive=exclusive)
    if listener:
        job.listeners.append(listener)
    if exclusive:
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
        return (
            abs(proc.create_time() - float(owner.get("created", 0))) < 1.0
            and proc.status() != psutil.STATUS_ZOMBIE
        )
    except (psutil.NoSuchProcess, psutil.AccessDenied, KeyError, ValueError):
        return False


def effective_status(meta: dict[str, Any]) -> str | None:
    """A job's status, with 'running' read as 'interrupted' when its process is gone (killed, crashed,
    kernel restarted)."""
    status = meta.get("status")
    if status == Status.RUNNING and owner_alive(meta) is False:
        return Status.INTERRUPTED
    return status


def stop_status(exc: BaseException) -> tuple[Status, str | None]:
    """The status (and error note) a job's artifacts get when its work raises ``exc``: cancelled or
    Ctrl-C leave it interrupted (resumable from its checkpoint); anything else failed."""
    if isinstance(exc, (JobCancelled, KeyboardInterrupt)):
        return Status.INTERRUPTED, None
    if type(exc).__name__ == "OutOfMemoryError":
        return Status.FAILED, "out of memory"
    return Status.FAILED, str(exc) if isinstance(exc, MistudioError) else repr(exc)


@contextlib.contextmanager
def lifecycle(ws, arts: Sequence[Any], *, record: bool = True, **running: Any) -> Iterator[None]:
    """Run a job whose state lives in the catalog. On entry ``arts`` are marked running with this
    process as their owner (and the ``running`` fields); when the block raises they are marked
    interrupted or failed (see :func:`stop_status`) and the exception goes on. Marking them done, with
    the results, is the block's own last step. ``record=False`` (a data-parallel worker that is not the
    main process) leaves the catalog to the main process."""
    if record:
        for a in arts:
            ws.update_meta(a.id, status=Status.RUNNING, owner=owner_stamp(), **running)
    try:
        yield
    except BaseException as exc:
        if record:
            status, error = stop_status(exc)
            for a in arts:
                ws.update_meta(
                    a.id, status=status, stopped=time.time(), **({"error": error} if error else {})
                )
        raise


def claim(ws, art, what: str) -> None:
    """Refuse to start work on ``art`` (resume a run or an extraction) while another live process runs it."""
    alive = owner_alive(art.meta)
    if art.meta.get("status") == Status.RUNNING and (alive or (alive is None and art.meta.get("owner"))):
        owner = art.meta.get("owner") or {}
        raise MistudioError(
            f"The {what} {art.name!r} is running in another process (pid {owner.get('pid', '?')}"
            f" on {owner.get('host', 'another machine')}).",
            "wait for it to finish or stop it there; resume it once it shows as interrupted.",
        )
