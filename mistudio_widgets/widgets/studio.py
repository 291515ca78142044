"""Studio: the tabbed app (Datasets, Models, SAEs, Training, Features, Steering) with a system bar."""
from __future__ import annotations

import html
from typing import Any

import ipywidgets as ipw

from ..workspace import Workspace
from .dataset_picker import DatasetPicker
from .feature_browser import FeatureBrowser, FeatureMap
from .model_picker import ModelPicker
from .sae_library import SAELibrary
from .system_monitor import SystemMonitor
from .training_configurator import TrainingConfigurator
from .training_monitor import TrainingMonitor

COMING = {
    "Steering": "Steering generation with features, steered and unsteered side by side, arrives after training.",
}
TABS = ("Datasets", "Models", "SAEs", "Training", "Features", *COMING)


def _coming(title: str, text: str) -> ipw.HTML:
    box = ipw.HTML()
    box.value = (f"<div class='mistudio-coming'><b>{title}: coming soon.</b><br>{text}<br>"
                 "Until then, the notebooks in <code>notebooks/</code> show what already works.</div>")
    box.add_class("mistudio-coming-tab")
    return box


class Studio(ipw.VBox):
    """The whole app in one widget. ``Studio(workspace)``; the pickers are ``studio.datasets`` etc."""

    def __init__(self, workspace: Workspace | str | None = None, **kwargs: Any):
        ws = workspace if isinstance(workspace, Workspace) else Workspace(workspace)
        self.workspace = ws
        self.system = SystemMonitor(ws)
        self.datasets = DatasetPicker(ws)
        self.models = ModelPicker(ws)
        self.library = SAELibrary(ws)
        self.monitor = TrainingMonitor(ws)
        self.trainer = TrainingConfigurator(ws, monitor=self.monitor)
        training = ipw.VBox([self.trainer, self.monitor])
        self.features = FeatureBrowser(ws)
        self.feature_map = FeatureMap(self.features)
        self.tabs = ipw.Tab(children=[self.datasets, self.models, self.library, training,
                                      ipw.VBox([self.features, self.feature_map]),
                                      *(_coming(k, v) for k, v in COMING.items())])
        self.library.observe(self._open, "opened")
        for i, title in enumerate(TABS):
            self.tabs.set_title(i, title)
        header = ipw.HTML(f"<b>mistudio</b> &middot; workspace <code>{html.escape(str(ws.root))}</code>")
        super().__init__(children=[header, self.system, self.tabs], **kwargs)
        self.add_class("mistudio-studio")

    def _open(self, change: dict) -> None:
        target = change["new"].get("target")
        if target == "Features" and change["new"].get("id"):
            self.features.select(change["new"]["id"])
        if target in TABS:
            self.tabs.selected_index = TABS.index(target)

    def close(self) -> None:
        for w in (self.system, self.datasets, self.models, self.library, self.trainer, self.monitor, self.features):
            w.close()
        super().close()
