"""Shared machinery of the widgets: ESM loading from ``js/``, actions from the page run as background
jobs (``core.jobs``: status, pause and cancel), and every update handed back to the kernel's event loop."""

from __future__ import annotations

import inspect
import threading
import traceback
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import anywidget
import traitlets as t

from ..core import jobs
from ..core.errors import MistudioError
from ..core.progress import ProgressEvent, Throttled
from ..core.workspace import Workspace


def rows_of(arts: list, row: Callable[[Any], dict[str, Any]]) -> tuple[list[dict[str, Any]], str]:
    """``row(a)`` for each artifact, leaving out those whose catalog metadata is not what the row reads
    (a catalog changed by hand or by another program), and a note naming them ('' when none)."""
    rows, odd = [], []
    for a in arts:
        try:
            rows.append(row(a))
        except (KeyError, TypeError, AttributeError, ValueError):
            odd.append(a.name)
    note = (
        f"Not shown, their metadata is not as expected: {', '.join(odd)} (see `mistudio list`)."
        if odd
        else ""
    )
    return rows, note


def js_dir() -> Path:
    """``mistudio_widgets/js`` in an installed wheel, else the repository's ``js/`` (editable installs)."""
    here = Path(__file__).resolve().parent.parent
    for cand in (here / "js", here.parent / "js"):
        if (cand / "_common.js").is_file():
            return cand
    raise FileNotFoundError(
        "The widget front ends (js/*.js) are missing from this installation; reinstall mistudio-widgets."
    )


def esm(name: str) -> str:
    """A widget's ESM: the shared helpers followed by the widget's own module (one self-contained file)."""
    d = js_dir()
    return (
        (d / "_common.js").read_text(encoding="utf-8") + "\n" + (d / f"{name}.js").read_text(encoding="utf-8")
    )


def css() -> str:
    return (js_dir() / "widgets.css").read_text(encoding="utf-8")


def _kernel_io_loop():
    """The kernel's main io loop, or None outside a kernel."""
    try:
        from ipykernel.kernelbase import Kernel

        if Kernel.initialized():
            return getattr(Kernel.instance(), "io_loop", None)
    except Exception:  # pragma: no cover - no ipykernel
        return None
    return None


def on_kernel(fn: Callable[[], Any]) -> None:
    """Run ``fn`` on the kernel's event loop (thread-safe); directly when there is no kernel."""
    loop = _kernel_io_loop()
    if loop is None or threading.current_thread() is threading.main_thread():
        fn()
    else:
        loop.add_callback(fn)


_live: "weakref.WeakSet[EngineWidget]" = weakref.WeakSet()


def workspace_changed(ws: Workspace) -> None:
    """Tell every open widget of this workspace to reload what it lists."""
    for w in list(_live):
        if w.workspace.root == ws.root:
            on_kernel(w.refresh)


class EngineWidget(anywidget.AnyWidget):
    """A widget over the engine. Subclasses define ``action_<name>(**args)`` methods; the page calls
    them with ``model.send({action, args})``. Actions marked with :func:`background` run in a worker
    thread, report progress, and apply their results on the kernel's loop."""

    _css = css()
    status = t.Unicode("idle").tag(sync=True)  # idle | busy
    task = t.Unicode("").tag(sync=True)  # what is running
    progress = t.Dict().tag(sync=True)  # the last ProgressEvent
    error = t.Dict().tag(sync=True)  # {problem, fix} of the last failure
    message = t.Unicode("").tag(sync=True)  # the last success note
    theme = t.Dict().tag(sync=True)  # the page's theme colours, reported by the page (plots.apply_theme)

    def __init__(self, workspace: Workspace | str | None = None, **kwargs: Any):
        self.workspace = workspace if isinstance(workspace, Workspace) else Workspace(workspace)
        super().__init__(**kwargs)
        self.job: jobs.Job | None = None  # the background action running (or last run) here
        self._action_apply: Callable[[], None] | None = (
            None  # what that action hands back to apply to the widget
        )
        self.on_msg(self._on_page_msg)
        _live.add(self)
        self.refresh()

    def refresh(self) -> None:
        """Reload lists from the workspace (override)."""

    # -- messages from the page ------------------------------------------------------------
    def _on_page_msg(self, _widget: Any, content: dict[str, Any], _buffers: Any) -> None:
        action = content.get("action") if isinstance(content, dict) else None
        handler = getattr(self, f"action_{action}", None) if isinstance(action, str) else None
        if not isinstance(action, str) or handler is None:
            self._fail(MistudioError(f"Unknown action {action!r}.", "update the widget front end."))
            return
        self.do(action, handler, **(content.get("args") or {}))

    stopped_message = "Stopped."  # shown when a background action is cancelled

    def do(
        self,
        _action: str,
        _handler: Callable[..., Any],
        *,
        blocking: bool = False,
        exclusive: bool = False,
        **args: Any,
    ) -> jobs.Job | None:
        """Run an action. Page clicks run background actions as a job (:mod:`core.jobs`) in a worker
        thread, returned and kept in ``self.job`` (pause, resume, cancel); ``exclusive`` jobs queue for
        the accelerator (training). The notebook API passes ``blocking=True`` to run an action in the
        calling cell (progress still reaches the page). A handler that takes ``control`` gets the job's."""
        if not getattr(_handler, "_background", False):
            try:
                self.error = {}
                _handler(**args)
            except Exception as exc:  # noqa: BLE001 - shown in the widget
                self._fail(exc)
            return None
        if self.job is not None and not self.job.done:
            self._fail(MistudioError(f"Still busy with {self.task}.", "wait for it to finish, or stop it."))
            return None
        self.error, self.message, self.status, self.task, self.progress = {}, "", "busy", _action, {}
        report = Throttled(lambda ev: on_kernel(lambda: self._set_progress(ev)))
        takes_control = "control" in inspect.signature(_handler).parameters

        def work(_progress: Any, control: jobs.JobControl) -> Any:
            out = _handler(progress=report, **({"control": control} if takes_control else {}), **args)
            self._action_apply = out.apply if isinstance(out, Outcome) else out
            return out.value if isinstance(out, Outcome) else None  # the job's result

        if blocking:
            try:
                work(None, jobs.JobControl())
            except Exception as exc:
                self._fail(exc)
                raise
            self._finish(self._action_apply)
            return None
        self.job = jobs.submit(_action, work, listener=self._on_job, exclusive=exclusive)
        return self.job

    def _on_job(self, job: jobs.Job, ev: ProgressEvent | None) -> None:
        if ev is None and job.done:
            on_kernel(lambda: self._ended(job))

    def _ended(self, job: jobs.Job) -> None:
        if job.status == jobs.Status.DONE:
            self._finish(self._action_apply)
        elif job.status == jobs.Status.CANCELLED:
            self.status, self.task, self.message = "idle", "", self.stopped_message
            workspace_changed(self.workspace)
        else:
            self._fail(
                job.exception
                or MistudioError(
                    (job.error or {}).get("problem", "The action failed."), (job.error or {}).get("fix")
                )
            )

    def wait(self, timeout: float | None = None) -> None:
        """Block until the running background action ends (for notebooks and tests)."""
        if self.job is not None and self.job.thread is not None:
            self.job.thread.join(timeout)

    def _set_progress(self, ev: ProgressEvent) -> None:
        self.progress = ev.to_dict()

    def _finish(self, finish: Callable[[], None] | None) -> None:
        try:
            if callable(finish):
                finish()
        except Exception as exc:  # noqa: BLE001
            self._fail(exc)
            return
        finally:
            self.status, self.task = "idle", ""
        workspace_changed(self.workspace)

    def _fail(self, exc: BaseException) -> None:
        self.status, self.task = "idle", ""
        if isinstance(exc, MistudioError):
            self.error = {"problem": exc.problem, "fix": exc.fix or ""}
        else:
            self.error = {
                "problem": f"{type(exc).__name__}: {exc}",
                "fix": "see the kernel log for details.",
                "trace": traceback.format_exception_only(type(exc), exc)[-1],
            }


@dataclass
class Outcome:
    """What a background action may return instead of a bare ``apply``: ``apply`` runs on the kernel to
    update the widget, ``value`` becomes the job's result (``job.wait()`` returns it)."""

    apply: Callable[[], None] | None
    value: Any = None


def background(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Mark an action to run in a worker thread. It receives ``progress`` and returns a callable
    that applies its results to the widget (run on the kernel's loop), or None."""
    fn._background = True  # type: ignore[attr-defined]
    return fn
