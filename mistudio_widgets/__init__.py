"""mistudio-widgets: sparse-autoencoder interpretability inside Jupyter.

The engine (workspace, datasets, models, hooks, activations) works without widgets; the widgets in
``mistudio_widgets.widgets`` are thin views over it.
"""
from .configs import CaptureConfig, DatasetConfig, ExtractConfig, ModelConfig, TokenizeConfig
from .errors import MistudioError
from .workspace import Workspace

__version__ = "0.1.0"

__all__ = ["CaptureConfig", "DatasetConfig", "ExtractConfig", "ModelConfig", "TokenizeConfig", "MistudioError", "Workspace",
           "__version__", "open_workspace"]


def open_workspace(root=None) -> Workspace:
    """The workspace at ``root``, ``$MISTUDIO_HOME`` or ``./mistudio-workspace`` (created if needed)."""
    return Workspace(root)
