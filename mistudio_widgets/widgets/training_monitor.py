"""TrainingMonitor: live charts of a run's metrics (read from the catalog, so it re-attaches after a
kernel restart and follows runs started elsewhere), progress with ETA, pause/resume/stop, several runs
overlaid."""

from __future__ import annotations

import math
import time
from typing import Any, Callable

import ipywidgets as ipw
import traitlets as t

from ..core import jobs
from ..core.jobs import Status
from ..train.training import run_status, train
from .base import EngineWidget, esm
from .plots import apply_theme, figure_widget, publish
from .training_charts import X_TITLES, Panel, panels_for, pareto_figure, smooth, y_range

COLOURS = ["#1976d2", "#d32f2f", "#388e3c", "#f57c00", "#7b1fa2", "#00838f"]


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

    def __init__(self, workspace: Any, owner: "TrainingMonitor", **kw: Any):
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
    """``TrainingMonitor(ws)`` shows the newest run; ``attach(run_id)`` overlays more. The charts are
    the panels that vary for the attached runs' architectures, sized to the cell, smoothed (the faint
    line is the raw series), with the axis on the live run's steps."""

    def __init__(
        self, workspace=None, runs: list[str] | None = None, *, interval: float = 1.0, **kwargs: Any
    ):
        self.controls = TrainingControls(workspace, owner=self)
        self.workspace = self.controls.workspace
        self.run_ids: list[str] = []
        self.jobs: dict[str, jobs.Job] = {}
        self._seen: dict[str, dict[str, int]] = {}
        self._series: dict[str, dict[str, list[dict[str, Any]]]] = {}  # run -> split -> metric rows
        self.smoothing = ipw.FloatSlider(
            value=0.6,
            min=0.0,
            max=0.99,
            step=0.01,
            description="smoothing",
            readout_format=".2f",
            continuous_update=False,
            layout=ipw.Layout(width="320px"),
        )
        self.smoothing.observe(lambda _ch: self._draw_charts(), "value")
        self.x_axis = ipw.ToggleButtons(
            options=[("step", "step"), ("tokens", "tokens"), ("time", "elapsed_s")],
            value="step",
            tooltips=["optimiser steps", "training tokens seen", "seconds of training (harvests included)"],
            style={"button_width": "64px"},
        )
        self.x_axis.observe(lambda _ch: self._rebuild(), "value")
        self.panels = panels_for(set())
        self.figure = self._new_figure()
        self.pareto = pareto_figure()
        self.pareto.data[0].on_click(self._open_point)
        self.pareto.data[1].on_click(self._open_point)
        self.pareto_box = ipw.Box([self.pareto], layout=ipw.Layout(display="none"))  # shown for 2+ runs
        self.chart_box = ipw.Box([self.figure], layout=ipw.Layout(width="100%"))
        self._timer: Any = None  # tornado's PeriodicCallback while the monitor polls
        super().__init__(
            children=[
                self.controls,
                ipw.HBox([self.smoothing, ipw.Label("x axis"), self.x_axis]),
                self.chart_box,
                self.pareto_box,
            ],
            layout=ipw.Layout(width="100%"),
            **kwargs,
        )
        self.on_open: Callable[[str], None] | None = None  # called with an SAE id when a point is clicked
        self.add_class("mistudio-training-monitor")
        self.controls.observe(lambda _ch: self._theme(), "theme")
        if runs is None:  # default: the newest run; [] attaches none
            runs = [self.workspace.list("run")[-1].id] if self.workspace.list("run") else []
        for r in runs:
            self.attach(r)
        self._start_timer(interval)

    # -- the charts ------------------------------------------------------------------------------
    def _new_figure(self):
        """A figure with one subplot per panel and, for each attached run, its traces (smoothed and
        raw lines, eval points, the per-token histogram); the data comes from ``_draw_charts``."""
        from plotly.subplots import make_subplots

        n = len(self.panels)
        cols = 3 if n <= 6 else 4
        rows = math.ceil(n / cols)
        specs = [[{} if r * cols + c < n else None for c in range(cols)] for r in range(rows)]
        fig = make_subplots(
            rows=rows,
            cols=cols,
            specs=specs,  # no empty axes after the last panel
            subplot_titles=[p.title for p in self.panels],
            horizontal_spacing=0.06,
            vertical_spacing=0.3 / rows,
        )
        fig.update_layout(
            height=220 * rows + 50,
            autosize=True,
            margin=dict(l=50, r=20, t=40, b=40),
            showlegend=len(self.run_ids) > 1,
            legend=dict(orientation="h", y=-0.08),
            hovermode="x unified",
        )
        for i, panel in enumerate(self.panels):
            row, col = i // cols + 1, i % cols + 1
            for j, rid in enumerate(self.run_ids):
                for trace in self._traces(panel, rid, j, first=i == 0):
                    fig.add_trace(trace, row=row, col=col)
            if panel.kind != "histogram" and i + cols >= n:  # the bottom chart of each column names the axis
                fig.update_xaxes(title_text=X_TITLES[self.x_axis.value], title_standoff=2, row=row, col=col)
            if panel.metric == "lr":
                fig.update_yaxes(rangemode="tozero", exponentformat="e", row=row, col=col)
        widget = figure_widget(fig)
        apply_theme(widget, self.controls.theme)
        return widget

    def _traces(self, panel: Panel, rid: str, j: int, first: bool) -> list:
        """The traces of one run in one panel: a histogram's bars, eval points with the last value
        written beside them, or a faint raw line under its smoothed line (the one in the legend)."""
        import plotly.graph_objects as go

        colour, name = COLOURS[j % len(COLOURS)], self.workspace.get(rid, "run").name
        common = dict(name=name, legendgroup=rid)
        if panel.kind == "histogram":
            return [
                go.Bar(
                    marker=dict(color=colour), showlegend=False, meta=[rid, panel.metric, "meta"], **common
                )
            ]
        line = dict(line=dict(color=colour), **common)
        if panel.split == "eval":
            return [
                go.Scatter(
                    mode="lines+markers+text",
                    textposition="top center",
                    marker=dict(size=8),
                    showlegend=False,
                    meta=[rid, panel.metric, "eval"],
                    **line,
                )
            ]
        raw = go.Scatter(
            mode="lines",
            opacity=0.4,  # faint but visible on a dark page too
            hoverinfo="skip",
            showlegend=False,
            meta=[rid, panel.metric, "raw"],
            **line,
        )
        smoothed = go.Scatter(mode="lines", showlegend=first, meta=[rid, panel.metric, "train"], **line)
        return [raw, smoothed]

    def _rebuild(self) -> None:
        """A new figure for the attached runs (a fresh widget, so every front end gets it whole)."""
        archs = set()
        for rid in self.run_ids:
            art = self.workspace.find(rid, "run")
            if art is not None:
                archs.add((art.meta.get("config") or {}).get("architecture", "topk"))
        self.panels = panels_for(archs)
        old, self.figure = self.figure, self._new_figure()
        self.chart_box.children = [self.figure]
        old.close()
        self._draw_charts()

    def _theme(self) -> None:
        for fig in (self.figure, self.pareto):
            apply_theme(fig, self.controls.theme)

    def _draw_charts(self) -> None:
        """Put the series held for each run into the traces: smoothed and raw lines, eval points with
        the last value written, the latest histogram; fixed ranges where autorange misleads."""
        w = float(self.smoothing.value)
        ys_by_axis: dict[str, list[float]] = {}
        live = self._live()
        with self.figure.batch_update():
            for tr in self.figure.data:
                rid, metric, kind = tr.meta
                series = self._series.get(rid)
                if series is None:
                    continue
                # while a run trains, the others are drawn faded and dotted: never taken for the live one
                faded = bool(live) and rid not in live
                tr.opacity = (0.15 if kind == "raw" else 0.35) if faded else (0.4 if kind == "raw" else 1.0)
                if kind != "meta":
                    tr.line.dash = "dot" if faded else None
                if kind == "meta":
                    art = self.workspace.find(rid, "run")
                    h = art.meta.get("l0_histogram") if art is not None else None
                    if h:
                        tr.x = [(a + b) / 2 for a, b in zip(h["edges"][:-1], h["edges"][1:])]
                        tr.y = h["counts"]
                    continue
                rows = series["eval" if kind == "eval" else "train"]
                at = self._x_of(series["train"])
                pts = [(at(r), r[metric]) for r in rows if r.get(metric) is not None and at(r) is not None]
                xs, ys = [p[0] for p in pts], [p[1] for p in pts]
                if kind == "train" and metric != "lr":  # a schedule is drawn as it is, never smoothed
                    ys = smooth(ys, w)
                if kind == "eval":
                    tr.text = [""] * (len(ys) - 1) + [f"{ys[-1]:.3f}"] if ys else []
                tr.x, tr.y = xs, ys
                ys_by_axis.setdefault(tr.yaxis or "y", []).extend(ys)
            for i, panel in enumerate(self.panels):
                axis = "y" if i == 0 else f"y{i + 1}"
                rng = y_range(panel, ys_by_axis.get(axis, []))
                yaxis = self.figure.layout[f"yaxis{'' if i == 0 else i + 1}"]
                if rng is not None:
                    yaxis.range, yaxis.autorange = rng, False
                xaxis = self.figure.layout[f"xaxis{'' if i == 0 else i + 1}"]
                focus = self._focus_steps() if self.x_axis.value == "step" else None
                if panel.kind != "histogram":
                    if focus:
                        xaxis.range, xaxis.autorange = [0, focus], False
                    else:
                        xaxis.autorange = True
            self.figure.layout.annotations = [
                a for a in self.figure.layout.annotations if a.name != "harvest"
            ] + self._harvest_notes(live)
        publish(self.figure)

    def _x_of(self, train_rows: list[dict[str, Any]]) -> Callable[[dict[str, Any]], float | None]:
        """Where a metric row sits on the chosen x axis: its step, or the tokens or seconds of training
        at that step (an evaluation row takes them from the training row of its step)."""
        key = self.x_axis.value
        if key == "step":
            return lambda r: r["step"]
        by_step = {r["step"]: r.get(key) for r in train_rows}
        return lambda r: r.get(key) if r.get(key) is not None else by_step.get(r["step"])

    def _live(self) -> set[str]:
        return {rid for rid, job in self.jobs.items() if rid in self.run_ids and not job.done}

    def _harvest_notes(self, live: set[str]) -> list[dict[str, Any]]:
        """A note across the charts while a live run harvests before its first step: the curves on
        screen then are other runs' (faded), not the new one's."""
        notes = []
        for rid in live:
            if self._series.get(rid, {}).get("train"):
                continue
            art = self.workspace.find(rid, "run")
            pace = (art.meta.get("pace") or {}) if art is not None else {}
            got = pace.get("harvested")
            progress = f" ({int(got):,} tokens so far)" if got else ""
            name = art.name if art else rid
            notes.append(
                dict(
                    name="harvest",
                    text=f"{name}: harvesting activations{progress}; its curves start at step 1",
                    xref="paper",
                    yref="paper",
                    x=0.5,
                    y=1.12,
                    showarrow=False,
                    font=dict(size=12),
                )
            )
        return notes

    def _focus_steps(self) -> int | None:
        """The x-axis end: the steps of the live runs (an older, longer run overlaid does not squeeze
        the one training); None (autorange) when none is live."""
        live = [
            (self.workspace.get(rid, "run").meta.get("config") or {}).get("steps")
            for rid, job in self.jobs.items()
            if rid in self.run_ids and not job.done
        ]
        return max((s for s in live if s), default=None)

    # -- runs --------------------------------------------------------------------------------
    def attach(self, run_id: str, job: jobs.Job | None = None) -> None:
        run = self.workspace.get(run_id, "run")
        if job is not None:
            self.jobs[run.id] = job
        if run.id not in self.run_ids:
            self.run_ids.append(run.id)
            self._seen[run.id] = {}
            self._series[run.id] = {"train": [], "eval": []}
            self._read_new(run.id)
            self._rebuild()
        self.poll()

    def detach(self, run_id: str) -> None:
        if run_id in self.run_ids:
            self.run_ids.remove(run_id)
            self._series.pop(run_id, None)
            self._rebuild()
            self.poll()

    def _read_new(self, rid: str) -> bool:
        """Append the run's metric rows recorded since the last read; whether there were any."""
        seen, got = self._seen[rid], False
        for split in ("train", "eval"):
            new = self.workspace.metrics(rid, split, since_step=seen.get(split, 0))
            if new:
                self._series[rid][split].extend(new)
                seen[split] = new[-1]["step"]
                got = True
        return got

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
        rows_out, changed = [], False
        for rid in list(self.run_ids):
            art = self.workspace.find(rid, "run")
            if art is None:
                self.run_ids.remove(rid)
                changed = True
                continue
            changed |= self._read_new(rid)
            rows_out.append(self._row(art))
        if changed:
            self._draw_charts()
        others = [
            {"id": a.id, "name": a.name, "status": jobs.effective_status(a.meta)}
            for a in self.workspace.list("run")
            if a.id not in self.run_ids
        ]
        self.controls.runs = rows_out + [{**o, "attached": False} for o in others[-10:]]
        self._draw_pareto()
        self.controls.device = device_line()

    def _row(self, art) -> dict[str, Any]:
        """One run's line in the table: status, step, the stage it is in (harvesting activations or
        training) with that stage's progress, and the ETA from the trainer's measured pace."""
        rid = art.id
        st = run_status(self.workspace, rid)
        job = self.jobs.get(rid)
        train_rows = self._series[rid]["train"]
        tps = train_rows[-1].get("tokens_per_second") if train_rows else None
        step = art.meta.get("step") or self._seen[rid].get("train", 0)
        status = job.status if job is not None and not job.done else st["status"]
        pace = art.meta.get("pace") or {}
        running = status == Status.RUNNING
        eta = None
        if running and pace.get("eta_s") is not None:
            eta = max(pace["eta_s"] - (time.time() - pace.get("at", time.time())), 0.0)
        return {
            "id": rid,
            "name": art.name,
            "status": status,
            "step": step,
            "steps": st["steps"],
            "tokens_per_second": tps,
            "eta_seconds": eta,
            "eta_estimated": bool(pace.get("estimated")),
            "stage": pace.get("stage") if running else None,
            "stage_done": pace.get("done"),
            "stage_total": pace.get("total"),
            "live": job is not None and not job.done,
            "last_checkpoint": st["last_checkpoint"],
            "sae": st["sae"],
            "error": art.meta.get("error", ""),
        }

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
                tr.text = [pts[i]["name"] for i in keep]
                tr.hovertext = [text[i] for i in keep]
                tr.customdata = [pts[i]["run"] for i in keep]
                tr.marker.symbol = ["circle" if pts[i]["done"] else "circle-open" for i in keep]
        publish(self.pareto)

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
        self.figure.close()
        self.pareto.close()
        super().close()
