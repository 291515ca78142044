"""FeatureMap: the SAE's decoder directions as a 2-D map beside the feature browser."""

from __future__ import annotations

import threading
from typing import Any

import ipywidgets as ipw
import numpy as np

from .. import features as fx
from ..core.errors import MistudioError
from .base import on_kernel
from .feature_browser import COLUMNS, FeatureBrowser
from .plots import apply_theme, figure_widget, publish

GROUP_COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22")
LAYOUT_TITLES = {
    "pca": "feature map (decoder directions, PCA)",
    "umap": "feature map (decoder directions, UMAP on their cosines)",
}


class FeatureMap(ipw.VBox):
    """The SAE's decoder directions in 2-D: PCA (instant) or UMAP (features that write alike sit
    together; computed in a worker thread the first time, about 25 s on a 2-core CPU, while the PCA map
    stays on screen). Points are coloured by firing frequency (log10) or by label group (the commonest
    shown labels, the other labelled features, the unlabelled); clicking one opens that feature in
    ``browser``. The figure follows the page's theme and reaches late front ends whole (Voila)."""

    def __init__(self, browser: FeatureBrowser, colour: str = "frequency", layout: str = "pca", **kw: Any):
        self.browser = browser
        self.figure = figure_widget(
            layout=dict(
                height=380,
                autosize=True,
                margin=dict(l=40, r=10, t=40, b=30),
                title=dict(text=LAYOUT_TITLES["pca"], font=dict(size=13)),
                dragmode="pan",
                legend=dict(orientation="h", y=1.02, x=1, xanchor="right", yanchor="bottom"),
            )
        )
        self.colour_picker = ipw.ToggleButtons(
            options=[("frequency", "frequency"), ("label group", "label")], value=colour
        )
        self.layout_picker = ipw.ToggleButtons(options=[("PCA", "pca"), ("UMAP", "umap")], value=layout)
        self.status = ipw.Label("")
        self.shown_layout = "pca"  # the layout on screen (UMAP arrives later)
        self._computing: set[tuple[str, str]] = set()
        self.colour_picker.observe(lambda ch: self.draw(), "value")
        self.layout_picker.observe(lambda ch: self.draw(), "value")
        bar = ipw.HBox([self.layout_picker, self.colour_picker, self.status])
        super().__init__(children=[bar, self.figure], layout=ipw.Layout(width="100%"), **kw)
        self.add_class("mistudio-feature-map")
        browser.observe(lambda ch: self.draw(), names=["extraction", "labels"])
        browser.observe(lambda ch: apply_theme(self.figure, browser.theme), names=["theme"])
        apply_theme(self.figure, browser.theme)
        self.draw()

    def _coordinates(self) -> dict[str, Any]:
        """The asked layout when it is ready; else the PCA map, with the asked one started in a thread."""
        b, layout = self.browser, self.layout_picker.value
        if fx.map_ready(b.workspace, b.sae, layout):
            self.status.value = ""
            return fx.feature_map(b.workspace, b.sae, layout)
        if (b.sae, layout) not in self._computing:
            self._computing.add((b.sae, layout))
            threading.Thread(target=self._compute, args=(b.sae, layout), daemon=True).start()
        self.status.value = f"computing the {layout.upper()} map (the PCA map meanwhile)…"
        return fx.feature_map(b.workspace, b.sae, "pca")

    def _compute(self, sae: str, layout: str) -> None:
        try:
            fx.feature_map(self.browser.workspace, sae, layout)
            done = self.draw
        except MistudioError as exc:
            message = str(exc)

            def done() -> None:
                self.layout_picker.value = "pca"
                self.status.value = message

        finally:
            self._computing.discard((sae, layout))
        on_kernel(done)

    def draw(self) -> None:
        b = self.browser
        with self.figure.batch_update():
            self.figure.data = ()
            if not b.sae:
                publish(self.figure)
                return
            xy = self._coordinates()
            self.shown_layout = xy["layout"]
            self.figure.layout.title.text = LAYOUT_TITLES[xy["layout"]]
            for trace in self._traces(np.asarray(xy["x"]), np.asarray(xy["y"])):
                self.figure.add_trace(trace)
        for tr in self.figure.data:
            tr.on_click(self._clicked)
        publish(self.figure)

    def _traces(self, x: np.ndarray, y: np.ndarray) -> list:
        import plotly.graph_objects as go

        b, n = self.browser, len(x)
        freq = (
            np.frombuffer(b.columns, dtype="<f4").reshape(len(COLUMNS), -1)[COLUMNS.index("frequency")]
            if b.columns
            else np.zeros(n)
        )
        kind = go.Scattergl if n > 20000 else go.Scatter  # SVG draws everywhere; WebGL only for huge SAEs
        text = [f"feature {i}: {b.labels.get(str(i), '')} (fires on {100 * freq[i]:.3f}%)" for i in range(n)]
        if self.colour_picker.value == "label":
            names, group = fx.label_groups(b.labels, n)
            colours = [*GROUP_COLOURS[: len(names) - 2], "#f5a35c", "#9e9e9e"]
            groups = [
                (name, group == g, colours[g], 4 if g == len(names) - 1 else 6)
                for g, name in enumerate(names)
            ]
        else:
            groups = [("features", np.ones(n, dtype=bool), "", 4)]  # "": coloured by frequency
        traces = []
        for name, mask, colour, size in groups:
            idx = np.nonzero(mask)[0]
            if not len(idx) and len(groups) > 1:
                continue
            marker: dict[str, Any] = dict(size=size, color=colour)
            if not colour:
                marker.update(
                    color=np.log10(freq[idx] + 1e-7).tolist(),
                    colorscale="Viridis",
                    showscale=True,
                    colorbar=dict(title=dict(text="log10 freq"), thickness=12),
                )
            traces.append(
                kind(
                    x=x[idx].tolist(),
                    y=y[idx].tolist(),
                    mode="markers",
                    name=f"{name[:30]} ({len(idx):,})",
                    text=[text[i] for i in idx],
                    customdata=idx.tolist(),
                    hoverinfo="text",
                    marker=marker,
                    showlegend=len(groups) > 1,
                )
            )
        return traces

    def _clicked(self, trace, points, _state) -> None:
        if points.point_inds:
            self.browser.show(int(trace.customdata[points.point_inds[0]]))
