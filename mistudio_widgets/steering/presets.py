"""Steering presets: features, strengths and settings kept under a name in the workspace."""

from __future__ import annotations

from ..core.configs import SteerConfig, from_dict, to_dict
from ..core.workspace import Artifact, Workspace
from .edit import parse_features

PRESET = "steering_preset"


def save_preset(ws: Workspace, name: str, sae: str, cfg: SteerConfig) -> Artifact:
    """Keep features, strengths and settings under a name in the workspace."""
    art = ws.get(sae, "sae")
    parse_features(cfg.features)
    old = ws.find(name, PRESET)
    if old is not None:
        ws.delete(old.id)
    return ws.register(PRESET, name, parent=art.id, meta={"sae": art.id, "config": to_dict(cfg)})


def load_preset(ws: Workspace, name: str) -> tuple[str, SteerConfig]:
    art = ws.get(name, PRESET)
    return art.meta["sae"], from_dict(SteerConfig, art.meta["config"])
