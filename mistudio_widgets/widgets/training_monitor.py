"""TrainingMonitor: live charts of a run's metrics (read from the catalog, so it re-attaches after a
kernel restart and follows runs started elsewhere), progress with ETA, pause/resume/stop, several runs
overlaid."""

from __future__ import annotations

import time
from typing import Any, Callable

import ipywidgets as ipw
import traitlets as t

from ..core import jobs
from ..core.jobs import Status
from ..train.training import run_status, train
from .base import EngineWidget, esm

CHARTS = [
    ("loss", "train", "loss"),
    ("mse", "train", "MSE"),
    ("l0", "train", "L0"),
    ("dead_fraction", "train", "dead fraction"),
    ("explained_variance", "train", "explained variance"),
    ("ce_recovered", "eval", "CE recovered"),
    ("lr", "train", "learning rate"),
]


def pareto_figure():
    """L0 against explained variance and against CE recovered, one point per run (a sweep's trade-off);
    hollow points are still training; clicking a point opens its SAE."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(
        rows=1,
        cols=2,
        subplot_titles=["explained variance vs L0", "CE recovered vs L0"],
        horizontal_spacing=0.1,
    )
    for col in (1, 2):
        fig.add_trace(
            go.Scatter(
                x=[],
                y=[],
                mode="markers",
                marker=dict(size=11, color="#1976d2"),
                hovertemplate="%{text}<br>L0 %{x:.1f}<br>%{y:.3f}<extra></extra>",
                showlegend=False,
            ),
            row=1,
            col=col,
        )
        fig.update_xaxes(title_text="L0 (active latents per token)", row=1, col=col)
    fig.update_layout(height=300, margin=dict(l=50, r=10, t=40, b=40), template="plotly_white")
    return go.FigureWidget(fig)


def device_line() -> str:
    """One line on what training is using: each GPU's utilisation and memory (NVML), else the CPU."""
    import psutil

    from ..core.system import gpu_snapshot

    state, message, gpus = gpu_snapshot()
    if gpus:
        return "  ·  ".join(
            f"GPU {g['index']} {g['name']}: {g['util']:.0f}% busy, {g['mem_used'] / 2**30:.1f} / "
            f"{g['mem_total'] / 2**30:.1f} GiB"
            for g in gpus
        )
    import torch

    threads = torch.get_num_threads()
    cpu = f"CPU: {psutil.cpu_count()} cores at {psutil.cpu_percent():.0f}%, {threads} torch threads"
    return f"{cpu}  ·  {'no GPU' if state == 'none' else 'GPU monitor unavailable'} ({message})"


class TrainingControls(EngineWidget):
    """The monitor's status table and buttons (the charts are a plotly FigureWidget beside it)."""

    _esm = esm("training_controls")
    runs = t.List().tag(sync=True)  # [{id, name, status, step, steps, tokens_per_second, eta, live, ...}]
    device = t.Unicode("").tag(
        sync=True
    )  # what the training is using: GPU utilisation and memory, or the CPU

    def __init__(self, workspace=None, owner: "TrainingMonitor | None" = None, **kw: Any):
        self.owner = owner
        super().__init__(workspace, **kw)

    def action_pause(self, id: str) -> None:
        self.owner._job(id).pause()
        self.owner.poll()

    def action_resume(self, id: str) -> None:
        job = self.owner.jobs.get(id)
        if job is not None and job.status == "paused":
            job.resume()
        else:
            self.owner.resume_run(id)
        self.owner.poll()

    def action_stop(self, id: str) -> None:
        self.owner._job(id).cancel()

    def action_attach(self, id: str) -> None:
        self.owner.attach(id)

    def action_detach(self, id: str) -> None:
        self.owner.detach(id)


class TrainingMonitor(ipw.VBox):
    """``TrainingMonitor(ws)`` shows the newest run; ``attach(run_id)`` overlays more."""

    def __init__(
        self, workspace=None, runs: list[str] | None = None, *, interval: float = 1.0, **kwargs: Any
    ):
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots

        self.controls = TrainingControls(workspace, owner=self)
        self.workspace = self.controls.workspace
        self.run_ids: list[str] = []
        self.jobs: dict[str, jobs.Job] = {}
        self._seen: dict[str, dict[str, int]] = {}
        titles = [c[2] for c in CHARTS] + ["active features per token"]
        fig = make_subplots(
            rows=2, cols=4, subplot_titles=titles, horizontal_spacing=0.07, vertical_spacing=0.16
        )
        fig.update_layout(
            height=440,
            margin=dict(l=40, r=10, t=40, b=30),
            showlegend=True,
            legend=dict(orientation="h", y=-0.12),
            template="plotly_white",
        )
        self.figure = go.FigureWidget(fig)
        self.pareto = pareto_figure()
        self.pareto.data[0].on_click(self._open_point)
        self.pareto.data[1].on_click(self._open_point)
        self.pareto_box = ipw.Box([self.pareto], layout=ipw.Layout(display="none"))  # shown for 2+ runs
        self._timer = None
        super().__init__(children=[self.controls, self.figure, self.pareto_box], **kwargs)
        self.on_open: Callable[[str], None] | None = None  # called with an SAE id when a point is clicked
        self.add_class("mistudio-training-monitor")
        if runs is None:  # default: the newest run; [] attaches none
            runs = [self.workspace.list("run")[-1].id] if self.workspace.list("run") else []
        for r in runs:
            self.attach(r)
        self._start_timer(interval)

    # -- runs --------------------------------------------------------------------------------
    def attach(self, run_id: str, job: jobs.Job | None = None) -> None:
        run = self.workspace.get(run_id, "run")
        if job is not None:
            self.jobs[run.id] = job
        if run.id not in self.run_ids:
            self.run_ids.append(run.id)
            self._seen[run.id] = {}
            import plotly.graph_objects as go

            colour = ["#1976d2", "#d32f2f", "#388e3c", "#f57c00", "#7b1fa2", "#00838f"][
                (len(self.run_ids) - 1) % 6
            ]
            with self.figure.batch_update():
                for i, (metric, split, _) in enumerate(CHARTS):
                    self.figure.add_trace(
                        go.Scatter(
                            x=[],
                            y=[],
                            mode="lines+markers" if split == "eval" else "lines",
                            name=run.name,
                            legendgroup=run.id,
                            showlegend=i == 0,
                            line=dict(color=colour),
                            meta=[run.id, metric, split],
                        ),
                        row=i // 4 + 1,
                        col=i % 4 + 1,
                    )
                self.figure.add_trace(
                    go.Bar(
                        x=[],
                        y=[],
                        name=run.name,
                        legendgroup=run.id,
                        showlegend=False,
                        marker=dict(color=colour),
                        meta=[run.id, "l0_histogram", "meta"],
                    ),
                    row=2,
                    col=4,
                )
        self.poll()

    def detach(self, run_id: str) -> None:
        if run_id in self.run_ids:
            self.run_ids.remove(run_id)
            self.figure.data = tuple(tr for tr in self.figure.data if tr.meta[0] != run_id)
            self.poll()

    def _job(self, run_id: str) -> jobs.Job:
        from ..core.errors import MistudioError

        job = self.jobs.get(run_id)
        if job is None or job.done:
            raise MistudioError(
                "This run is not running in this kernel.",
                "runs started elsewhere can be watched, not controlled.",
            )
        return job

    def resume_run(self, run_id: str) -> jobs.Job:
        """Resume an interrupted run from its last checkpoint, as a background job."""
        ws = self.workspace
        job = jobs.submit(
            "train", lambda progress, control: train(ws, resume=run_id, progress=progress, control=control)
        )
        self.jobs[run_id] = job
        return job

    # -- updates -----------------------------------------------------------------------------
    def _start_timer(self, interval: float) -> None:
        from .base import _kernel_io_loop

        if _kernel_io_loop() is None:
            return
        from tornado.ioloop import PeriodicCallback

        self._timer = PeriodicCallback(self._tick, interval * 1000)
        self._timer.start()

    def _tick(self) -> None:
        try:
            self.poll()
        except Exception:  # noqa: BLE001 - a broken poll must not kill the timer
            import traceback

            traceback.print_exc()

    def poll(self) -> None:
        """Read new metric rows and statuses from the catalog into the charts and the table."""
        rows_out = []
        for rid in list(self.run_ids):
            art = self.workspace.find(rid, "run")
            if art is None:
                self.run_ids.remove(rid)
                continue
            seen = self._seen[rid]
            new = {
                split: self.workspace.metrics(rid, split, since_step=seen.get(split, 0))
                for split in ("train", "eval")
            }
            with self.figure.batch_update():
                for tr in self.figure.data:
                    run_id, metric, split = tr.meta
                    if run_id != rid:
                        continue
                    if split == "meta":
                        h = art.meta.get("l0_histogram")
                        if h:
                            tr.x = [(a + b) / 2 for a, b in zip(h["edges"][:-1], h["edges"][1:])]
                            tr.y = h["counts"]
                        continue
                    pts = [(r["step"], r[metric]) for r in new[split] if r.get(metric) is not None]
                    if pts:
                        tr.x = list(tr.x or ()) + [p[0] for p in pts]
                        tr.y = list(tr.y or ()) + [p[1] for p in pts]
            for split in ("train", "eval"):
                if new[split]:
                    seen[split] = new[split][-1]["step"]
            st = run_status(self.workspace, rid)
            job = self.jobs.get(rid)
            last = self.workspace.metrics(rid, "train", since_step=seen.get("train", 0) - 1)
            tps = last[-1].get("tokens_per_second") if last else None
            step = art.meta.get("step") or seen.get("train", 0)
            status = job.status if job is not None and not job.done else st["status"]
            since = art.meta.get("resumed") or art.meta.get("started")
            done_tokens = (step - (art.meta.get("resumed_at_step") or 0)) * art.meta["config"]["batch_tokens"]
            overall = done_tokens / max(time.time() - since, 1e-9) if since and done_tokens > 0 else None
            remaining = (
                (st["steps"] - step) * art.meta["config"]["batch_tokens"] / overall
                if overall and status == Status.RUNNING
                else None
            )
            rows_out.append(
                {
                    "id": rid,
                    "name": art.name,
                    "status": status,
                    "step": step,
                    "steps": st["steps"],
                    "tokens_per_second": tps,
                    "eta_seconds": remaining,
                    "live": job is not None and not job.done,
                    "last_checkpoint": st["last_checkpoint"],
                    "sae": st["sae"],
                    "error": art.meta.get("error", ""),
                }
            )
        others = [
            {"id": a.id, "name": a.name, "status": jobs.effective_status(a.meta)}
            for a in self.workspace.list("run")
            if a.id not in self.run_ids
        ]
        self.controls.runs = rows_out + [{**o, "attached": False} for o in others[-10:]]
        self._draw_pareto()
        self.controls.device = device_line()

    # -- the Pareto view of a sweep --------------------------------------------------------
    def pareto_points(self) -> list[dict[str, Any]]:
        """One point per attached run: its latest L0, explained variance and CE recovered (held-out
        evaluation when there is one, else the latest training metrics)."""
        pts = []
        for rid in self.run_ids:
            art = self.workspace.find(rid, "run")
            if art is None:
                continue
            final = art.meta.get("metrics") or {}
            ev_rows = self.workspace.metrics(rid, "eval")
            tr_rows = self.workspace.metrics(rid, "train")
            last = final or (ev_rows[-1] if ev_rows else {}) or (tr_rows[-1] if tr_rows else {})
            if last.get("l0") is None or last.get("explained_variance") is None:
                continue
            ce = final.get("ce_recovered", ev_rows[-1].get("ce_recovered") if ev_rows else None)
            pts.append(
                {
                    "run": rid,
                    "name": art.name,
                    "sae": art.meta.get("sae"),
                    "l0": last["l0"],
                    "explained_variance": last["explained_variance"],
                    "ce_recovered": ce,
                    "step": art.meta.get("step") or 0,
                    "done": bool(art.meta.get("sae")),
                }
            )
        return pts

    def _draw_pareto(self) -> None:
        pts = self.pareto_points()
        self.pareto_box.layout.display = "" if len(self.run_ids) > 1 else "none"
        if len(self.run_ids) < 2:
            return
        text = [f"{p['name']}<br>step {p['step']}{'' if p['done'] else ' (training)'}" for p in pts]
        with self.pareto.batch_update():
            for tr, key in zip(self.pareto.data, ("explained_variance", "ce_recovered")):
                keep = [i for i, p in enumerate(pts) if p[key] is not None]
                tr.x = [pts[i]["l0"] for i in keep]
                tr.y = [pts[i][key] for i in keep]
                tr.text = [text[i] for i in keep]
                tr.customdata = [pts[i]["run"] for i in keep]
                tr.marker.symbol = ["circle" if pts[i]["done"] else "circle-open" for i in keep]

    def _open_point(self, trace, points, _state) -> None:
        if not points.point_inds:
            return
        run = self.workspace.get(trace.customdata[points.point_inds[0]], "run")
        self.open_run(run.id)

    def open_run(self, run_id: str) -> str | None:
        """Open a run's SAE (the Studio shows it in Features); returns the SAE id, None while training."""
        sae = self.workspace.get(run_id, "run").meta.get("sae")
        if sae and self.on_open is not None:
            self.on_open(sae)
        self.controls.message = (
            f"Opened the SAE of {self.workspace.get(run_id).name}." if sae else "That run is still training."
        )
        return sae

    def close(self) -> None:
        if self._timer is not None:
            self._timer.stop()
        self.controls.close()
        super().close()
