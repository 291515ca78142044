"""What the training monitor draws: the panels worth drawing for the attached runs' architectures, the
smoothing of a series, fixed y ranges where autorange misleads, and the sweep's Pareto figure."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..core.configs import K_ARCHITECTURES  # L0 is fixed at k while these train
from .plots import apply_theme, figure_widget


@dataclass(frozen=True)
class Panel:
    metric: str
    split: str  # train | eval | meta (a run-record value)
    title: str
    kind: str = "line"  # line | fraction (0..1) | score (at most 1) | histogram


PANELS = {
    p.metric: p
    for p in (
        Panel("loss", "train", "loss"),
        Panel("explained_variance", "train", "explained variance", "score"),
        Panel("mse", "train", "MSE"),
        Panel("l0", "train", "L0 (active latents per token)"),
        Panel("dead_fraction", "train", "dead latents (fraction)", "fraction"),
        Panel("ce_recovered", "eval", "CE loss recovered (held out)", "score"),
        Panel("lr", "train", "learning rate"),
        Panel("l0_histogram", "meta", "active latents per token (last batch)", "histogram"),
    )
}


def panels_for(architectures: set[str]) -> list[Panel]:
    """The charts worth drawing for these architectures: a top-k SAE's L0 is k at every step and its
    per-token count is one bar, so those panels appear only for architectures where they vary."""
    names = ["loss", "explained_variance", "mse", "dead_fraction", "ce_recovered", "lr"]
    if any(a not in K_ARCHITECTURES for a in architectures):
        names.insert(2, "l0")
    if any(a != "topk" for a in architectures):
        names.append("l0_histogram")
    return [PANELS[n] for n in names]


def smooth(ys: list[float], weight: float) -> list[float]:
    """A local straight-line fit over a window that widens with ``weight`` (0: the raw series; 0.6: 3
    points each side; 0.9: 9), read at each point. Inside the series the window is centred, so it is a
    plain moving average with no lag; at the ends it is one-sided, and the line follows a falling loss
    to its last point instead of ending above the raw line as a moving average (or TensorBoard's
    exponential one) does."""
    n = len(ys)
    if not weight or n < 3:
        return list(ys)
    half = max(1, round(weight / (1 - weight)))
    y = np.asarray(ys, dtype=float)
    x = np.arange(n, dtype=float)
    c = {
        k: np.concatenate([[0.0], np.cumsum(v)])
        for k, v in (("1", np.ones(n)), ("x", x), ("y", y), ("xx", x * x), ("xy", x * y))
    }
    a = np.maximum(np.arange(n) - half, 0)
    b = np.minimum(np.arange(n) + half + 1, n)
    s = {k: v[b] - v[a] for k, v in c.items()}
    mx, my = s["x"] / s["1"], s["y"] / s["1"]
    sxx = s["xx"] - s["1"] * mx * mx
    sxy = s["xy"] - s["1"] * mx * my
    slope = np.where(sxx > 1e-12, sxy / np.where(sxx > 1e-12, sxx, 1.0), 0.0)
    return (my + slope * (x - mx)).tolist()


def y_range(panel: Panel, ys: list[float]) -> list[float] | None:
    """Fixed ranges where autorange misleads: a fraction stays in 0..1 (not -1..1 when all are 0), a
    score tops at 1."""
    vals = [y for y in ys if y is not None and math.isfinite(y)]
    if panel.kind == "fraction":
        return [0, min(1.0, max(0.05, 1.2 * max(vals, default=0)))]
    if panel.kind == "score" and vals:
        lo = min(vals)
        return [max(-1.0, min(0.0, lo - 0.05)), 1.02]
    return None


X_TITLES = {"step": "step", "tokens": "tokens", "elapsed_s": "seconds"}


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
                mode="markers+text",  # each point named by its run
                textposition="top center",
                textfont=dict(size=10),
                cliponaxis=False,
                marker=dict(size=11, color="#1976d2"),
                hovertemplate="%{hovertext}<br>L0 %{x:.1f}<br>%{y:.3f}<extra></extra>",
                showlegend=False,
            ),
            row=1,
            col=col,
        )
        fig.update_xaxes(title_text="L0 (active latents per token)", row=1, col=col)
    fig.update_layout(height=300, autosize=True, margin=dict(l=50, r=10, t=40, b=40))
    widget = figure_widget(fig)
    apply_theme(widget, None)
    return widget
