"""The layout by pipeline stage: old flat import paths still work for one release (with a warning), and
imports between the rooms point one way."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import mistudio_widgets

PKG = Path(mistudio_widgets.__file__).parent
# each room may import only rooms listed before it (the order of the pipeline)
ORDER = ["core", "data", "sae", "features", "train", "evaluate", "steering", "share", "widgets", "cli"]
ALLOWED = {
    "core": set(),
    "data": {"core"},
    "sae": {"core"},
    "features": {"core", "data", "sae"},
    "train": {"core", "data", "sae"},
    "evaluate": {"core", "data", "sae", "features", "train"},
    "steering": {"core", "data", "sae", "features"},
    "share": {"core", "data", "sae", "features"},
    "widgets": {"core", "data", "sae", "features", "train", "evaluate", "steering", "share"},
    "cli": {"core", "data", "sae", "features", "train", "evaluate", "steering", "share"},
}


def room_imports() -> dict[tuple[str, str], list[str]]:
    """(from room, to room) -> the modules that import across, from every relative import in the package."""
    out: dict[tuple[str, str], list[str]] = {}
    for f in PKG.rglob("*.py"):
        parts = f.relative_to(PKG).with_suffix("").parts
        pkg = list(parts if f.name == "__init__.py" else parts[:-1])
        if f.name == "__init__.py":
            pkg = pkg[:-1]
        mine = parts[0].removesuffix(".py") if len(parts) > 1 else parts[0]
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                base = pkg[: len(pkg) - node.level + 1]
                names = [node.module] if node.module else [a.name for a in node.names]
                for n in names:
                    target = (base + n.split("."))[0] if base or n else ""
                    if target and target != mine and mine in ALLOWED:
                        out.setdefault((mine, target), []).append(str(f.relative_to(PKG)))
    return out


def test_rooms_import_one_way():
    back = {k: v for k, v in room_imports().items() if k[1] in ALLOWED and k[1] not in ALLOWED[k[0]]}
    assert not back, f"imports against the pipeline order {ORDER}: {back}"
    assert ("widgets", "cli") not in room_imports() and not any(
        a != "cli" and b == "cli" for a, b in room_imports()
    )


def test_old_import_paths_work_for_one_release_with_a_warning():
    code = """
import warnings
warnings.simplefilter("error")
try:
    import mistudio_widgets.training
except DeprecationWarning as w:
    print("WARNED", w)
warnings.simplefilter("ignore")
import mistudio_widgets.training as old
from mistudio_widgets.train import training as new
from mistudio_widgets.workspace import Workspace
from mistudio_widgets.core.workspace import Workspace as W2
import mistudio_widgets as ms
print(old is new, Workspace is W2, ms.bundles is ms.share.bundles, old.__spec__.name)
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "WARNED mistudio_widgets.training moved to mistudio_widgets.train.training" in r.stdout
    assert "True True True mistudio_widgets.train.training" in r.stdout
