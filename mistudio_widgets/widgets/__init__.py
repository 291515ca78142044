"""The widgets: thin views over the engine (anywidget front ends in js/)."""

from .dataset_picker import DatasetPicker
from .feature_browser import FeatureBrowser
from .feature_map import FeatureMap
from .model_picker import ModelPicker
from .sae_library import SAELibrary
from .steering_pane import SteeringPane
from .studio import Studio
from .system_monitor import SystemMonitor
from .training_configurator import TrainingConfigurator
from .training_monitor import TrainingMonitor

__all__ = [
    "DatasetPicker",
    "FeatureBrowser",
    "FeatureMap",
    "ModelPicker",
    "SAELibrary",
    "SteeringPane",
    "Studio",
    "SystemMonitor",
    "TrainingConfigurator",
    "TrainingMonitor",
]
