"""The widgets: thin views over the engine (anywidget front ends in js/)."""
from .dataset_picker import DatasetPicker
from .model_picker import ModelPicker
from .studio import Studio
from .system_monitor import SystemMonitor

__all__ = ["DatasetPicker", "ModelPicker", "Studio", "SystemMonitor"]
