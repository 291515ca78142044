"""Plotly figures inside the widgets: kept drawable in every front end, and coloured like the page.

Two things plotly's FigureWidget does not do by itself:

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

  A theme usually arrives as the figure's tab is first shown, which is when plotly's page view resizes
  and redraws itself; a change landing in that moment can be lost by the view (seen in Voila on a busy
  machine: a white chart on a dark page, the kernel holding the dark layout). :func:`apply_theme`
  therefore sends the theme's layout to the page once more a moment later (:data:`RESEND_S`).
"""

from __future__ import annotations

import copy
import threading
from typing import Any

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
    if theme:  # a page's report (not the light start every figure gets before any page is there)
        _resend_later(fig)


RESEND_S = 2.0  # s after a theme change, its layout goes to the page again (see the module docstring)


def themed_layout(fig) -> dict[str, Any]:
    """The parts of the figure's layout a theme sets, as a Plotly.relayout argument."""
    lay = fig.layout
    out: dict[str, Any] = {
        "template": lay.template.to_plotly_json(),
        "paper_bgcolor": lay.paper_bgcolor,
        "plot_bgcolor": lay.plot_bgcolor,
        "font.color": lay.font.color,
    }
    if lay.width:
        out["width"] = lay.width
    for name in [k for k in lay.to_plotly_json() if k.startswith(("xaxis", "yaxis"))]:
        axis = lay[name]
        out.update({f"{name}.{p}": axis[p] for p in ("gridcolor", "zerolinecolor", "linecolor")})
    for i, ann in enumerate(lay.annotations or ()):
        out[f"annotations[{i}].font.color"] = ann.font.color
    return out


def _resend_later(fig) -> None:
    from .base import _kernel_io_loop, on_kernel

    if _kernel_io_loop() is None:  # no kernel, so no page to resend to
        return

    def resend() -> None:
        if getattr(fig, "comm", None) is not None:  # still open
            fig._send_relayout_msg(themed_layout(fig))

    timer = threading.Timer(RESEND_S, on_kernel, args=(resend,))
    timer.daemon = True
    timer.start()


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
