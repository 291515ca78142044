"""Plotly figures inside the widgets: kept drawable in every front end, and coloured like the page.

Three things plotly's FigureWidget does not do by itself:

- **Late front ends.** A FigureWidget sends each change (``add_trace``, ``tr.x = ...``) as a one-off
  message and keeps its synced state (``_widget_data``, ``_widget_layout``) as it was when the widget
  was made, refreshing it only when the figure itself is displayed. A figure inside a box, changed
  before a page connects (Voila runs the whole notebook first, then the page asks for every widget's
  state), therefore reaches that page empty. :func:`publish` writes the current figure into the synced
  state after each round of changes, so a page that connects later draws what the kernel holds.
- **The theme and the width.** The widgets' pages report the colours of the theme they sit in
  (``EngineWidget.theme``: JupyterLab light or dark, Voila's ``?theme=dark``) and their width;
  :func:`apply_theme` gives a figure that background, text and grid colour, so a chart is not a white
  box on a dark page, and that width, so it fills its cell (plotly sizes a chart itself only on a
  window resize, and one drawn in a hidden tab keeps its 700 px default).
- **Figures that stop listening.** anywidget drops every kernel message to a model whose front-end
  module took more than 2 s to load, and plotly's module is a 5 MB bundle loaded once per figure: in
  Voila, which creates all models at once, the third figure often missed that deadline and never
  changed again (a white chart on a dark page; curves frozen). :func:`figure_widget` makes
  FigureWidgets whose module is a small loader (``js/plotly_figure.js``) that meets the deadline and
  imports plotly's bundle once per page, when a figure is first drawn.
"""

from __future__ import annotations

import copy
import functools
from pathlib import Path
from typing import Any


@functools.cache
def _figure_class() -> type:
    import plotly
    import plotly.graph_objects as go
    import traitlets as t

    from .base import js_dir

    bundle = Path(plotly.__file__).parent / "package_data" / "widgetbundle.js"
    if not bundle.is_file():  # a plotly laid out otherwise: its own FigureWidget
        return go.FigureWidget

    class Figure(go.FigureWidget):
        """A plotly FigureWidget whose front end loads plotly's bundle once per page, without holding up
        the model (see the module docstring)."""

        _esm = (js_dir() / "plotly_figure.js").read_text(encoding="utf-8")
        _plotly_bundle = t.Unicode(bundle.read_text(encoding="utf-8")).tag(sync=True)
        _plotly_version = t.Unicode(plotly.__version__).tag(sync=True)

    return Figure


def figure_widget(*args: Any, **kwargs: Any):
    """``go.FigureWidget(*args, **kwargs)`` that keeps listening in a busy page (see the module docstring)."""
    return _figure_class()(*args, **kwargs)


LIGHT = {"dark": False, "background": "#ffffff", "foreground": "#1f1f1f", "grid": "#e0e0e0"}


def theme_layout(theme: dict[str, Any] | None) -> dict[str, Any]:
    """The layout settings that make a figure follow ``theme`` (a page's report, or light)."""
    th = {**LIGHT, **{k: v for k, v in (theme or {}).items() if v}}
    return dict(
        template="plotly_dark" if th["dark"] else "plotly_white",
        paper_bgcolor=th["background"],
        plot_bgcolor=th["background"],
        font=dict(color=th["foreground"]),
        legend=dict(bgcolor="rgba(0,0,0,0)"),
    )


MIN_WIDTH = 320  # px: narrower than this, a chart is drawn this wide (its box scrolls)


def apply_theme(fig, theme: dict[str, Any] | None) -> None:
    """Colour ``fig`` (a FigureWidget) like the page's theme, size it to the width the page reported for
    the widget beside it (plotly keeps a chart drawn in a hidden tab at its 700 px default), and publish
    it."""
    th = {**LIGHT, **{k: v for k, v in (theme or {}).items() if v}}
    try:
        _apply(fig, th)
    except (ValueError, TypeError):  # a page that reported colours plotly does not take: stay light
        _apply(fig, LIGHT)
    publish(fig)


def _apply(fig, th: dict[str, Any]) -> None:
    with fig.batch_update():
        fig.update_layout(**theme_layout(th))
        if th.get("width"):
            fig.layout.width = max(int(th["width"]), MIN_WIDTH)
        for axes in (fig.update_xaxes, fig.update_yaxes):
            axes(gridcolor=th["grid"], zerolinecolor=th["grid"], linecolor=th["grid"])
        for ann in fig.layout.annotations or ():  # subplot titles
            ann.font.color = th["foreground"]


def publish(fig) -> None:
    """Make the figure's synced state what the kernel holds now (see the module docstring). Cheap for
    the figures here (a few thousand points at most); call it after each round of changes."""
    fig._widget_layout = copy.deepcopy(fig._layout_obj._props)
    fig._widget_data = copy.deepcopy(fig._data)


def drawable(fig) -> bool:
    """Whether a page that connects now would draw every trace the kernel holds (a check for tests)."""
    return len(fig._widget_data) == len(fig.data) and all(
        len(w.get("x") or ()) == len(tr.x or ()) for w, tr in zip(fig._widget_data, fig.data)
    )
