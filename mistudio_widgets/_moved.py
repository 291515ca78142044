"""Old import paths of the modules that moved into rooms by pipeline stage (0.2): importing one still
works, with a DeprecationWarning naming the new path, until the next release removes them."""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings
from types import ModuleType

MOVED = {
    "workspace": "core.workspace",
    "configs": "core.configs",
    "jobs": "core.jobs",
    "progress": "core.progress",
    "errors": "core.errors",
    "defaults": "core.defaults",
    "system": "core.system",
    "datasets": "data.datasets",
    "models": "data.models",
    "hooks": "data.hooks",
    "activations": "data.activations",
    "activation_cache": "data.activation_cache",
    "training": "train.training",
    "distributed": "core.distributed",
    "labeling": "features.labeling",
    "compare": "features.compare",
    "importing": "share.importing",
    "exporting": "share.exporting",
    "neuronpedia": "share.neuronpedia",
    "hub": "share.hub",
    "bundles": "share.bundles",
    "cli_features": "cli.features",
    "cli_share": "cli.share",
    "cli_steer": "cli.steer",
    "demo": "cli.demo",
    "chat_server": "cli.chat_server",
}
PACKAGE = __name__.rpartition(".")[0]


def resolve(old: str) -> ModuleType:
    """The module that ``PACKAGE.old`` became, after a DeprecationWarning naming its new path."""
    new = f"{PACKAGE}.{MOVED[old]}"
    warnings.warn(
        f"{PACKAGE}.{old} moved to {new}; the old path will be removed in the next release.",
        DeprecationWarning,
        stacklevel=3,
    )
    return importlib.import_module(new)


class _OldPaths(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Answers ``import PACKAGE.old`` with the moved module itself (one module object, so patching either
    name patches both)."""

    def find_spec(self, fullname, path=None, target=None):
        pkg, _, old = fullname.rpartition(".")
        if pkg == PACKAGE and old in MOVED:
            return importlib.util.spec_from_loader(fullname, self)
        return None

    def create_module(self, spec):
        module = resolve(spec.name.rpartition(".")[2])
        self._spec = module.__spec__  # the import system overwrites it; exec_module puts it back
        return module

    def exec_module(self, module):
        module.__spec__ = self._spec


def install() -> None:
    if not any(isinstance(f, _OldPaths) for f in sys.meta_path):
        sys.meta_path.append(_OldPaths())
