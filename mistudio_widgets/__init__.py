"""mistudio-widgets: sparse-autoencoder interpretability inside Jupyter.

The engine is grouped by pipeline stage: ``core`` (workspace, configs, jobs, progress, errors,
defaults, system), ``data`` (datasets, models, hooks, activations), ``sae`` (architectures and their
files), ``train``, ``features`` (extraction, the stored features, the prompt tester, labelling,
comparison), ``steering``, ``share`` (import, export, Neuronpedia, hub, bundles) and ``cli``. It works
without widgets; the widgets in ``mistudio_widgets.widgets`` are thin views over it. Old flat import
paths (``mistudio_widgets.training`` ...) still work for one release, with a DeprecationWarning.
"""

from . import _moved
from .core.configs import CaptureConfig, DatasetConfig, ExtractConfig, ModelConfig, TokenizeConfig
from .core.errors import MistudioError
from .core.workspace import Workspace

__version__ = "0.1.0"

__all__ = [
    "CaptureConfig",
    "DatasetConfig",
    "ExtractConfig",
    "ModelConfig",
    "TokenizeConfig",
    "MistudioError",
    "Workspace",
    "__version__",
    "open_workspace",
]


_moved.install()


def __getattr__(name: str):
    """``mistudio_widgets.training`` and other moved modules as attributes (deprecated, see ``_moved``)."""
    if name in _moved.MOVED:
        module = globals()[name] = _moved.resolve(name)  # warned once; later reads find the attribute
        return module
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def open_workspace(root=None) -> Workspace:
    """The workspace at ``root``, ``$MISTUDIO_HOME`` or ``./mistudio-workspace`` (created if needed)."""
    return Workspace(root)
