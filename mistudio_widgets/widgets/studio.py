"""Studio: the tabbed app (Datasets, Models, SAEs, Training, Features, Steering) with a system bar."""

from __future__ import annotations

import html
from typing import Any

import ipywidgets as ipw

from ..core.workspace import Workspace
from .dataset_picker import DatasetPicker
from .feature_browser import FeatureBrowser
from .feature_map import FeatureMap
from .model_picker import ModelPicker
from .sae_library import SAELibrary
from .steering_pane import SteeringPane
from .system_monitor import SystemMonitor
from .training_configurator import TrainingConfigurator
from .training_monitor import TrainingMonitor

TABS = ("Datasets", "Models", "SAEs", "Training", "Features", "Steering")


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
        self.steering = SteeringPane(ws)
        self.tabs = ipw.Tab(
            children=[
                self.datasets,
                self.models,
                self.library,
                training,
                ipw.VBox([self.features, self.feature_map]),
                self.steering,
            ]
        )
        self.library.observe(self._open, "opened")
        # a point of the sweep's Pareto view opens that SAE's features
        self.monitor.on_open = lambda sae: self._open({"new": {"target": "Features", "id": sae}})
        self.features.observe(self._steer_with, "steer_request")
        for i, title in enumerate(TABS):
            self.tabs.set_title(i, title)
        header = ipw.HTML(f"<b>mistudio</b> &middot; workspace <code>{html.escape(str(ws.root))}</code>")
        super().__init__(children=[header, self.system, self.tabs], **kwargs)
        self.add_class("mistudio-studio")

    def _open(self, change: dict) -> None:
        target = change["new"].get("target")
        if target == "Features" and change["new"].get("id"):
            self.features.select(change["new"]["id"])
        if target == "Steering" and change["new"].get("id"):
            self.steering.select(change["new"]["id"])
        if target in TABS:
            self.tabs.selected_index = TABS.index(target)

    def _steer_with(self, change: dict) -> None:
        """ "Steer with this" in the feature browser: that SAE and feature in the Steering tab."""
        req = change["new"] or {}
        if req.get("sae"):
            self.steering.select(req["sae"])
            self.steering.add(int(req["index"]))
            self.tabs.selected_index = TABS.index("Steering")

    def close(self) -> None:
        for w in (
            self.system,
            self.datasets,
            self.models,
            self.library,
            self.trainer,
            self.monitor,
            self.features,
            self.steering,
        ):
            w.close()
        super().close()
