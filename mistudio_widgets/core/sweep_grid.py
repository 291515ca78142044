"""Sweep grids: a grid typed as text ('k: 16, 32; architecture: topk, batchtopk') read into lists,
a short name for each grid point, and what one configuration changes against another."""

from __future__ import annotations

import dataclasses
from typing import Any

from .config_fields import ConfigError

MAX_GROUP = 64  # SAEs trained from one harvest at most


_LABEL = {"architecture": "", "hook": "", "expansion_factor": "x", "l1_coefficient": "l1", "d_sae": "d"}


def parse_grid(text: str) -> dict[str, list[Any]]:
    """A sweep grid typed as text, 'k: 16, 32, 64; architecture: topk, batchtopk' (or with '='), as a
    mapping of lists; numbers become numbers."""
    grid: dict[str, list[Any]] = {}
    for part in filter(str.strip, text.split(";")):
        key, sep, values = part.replace("=", ":", 1).partition(":")
        if not sep or not key.strip():
            raise ConfigError(
                f"The sweep part {part.strip()!r} is not 'setting: value, value'.",
                "write e.g. k: 16, 32, 64; architecture: topk, batchtopk.",
            )
        grid[key.strip()] = [_scalar(v.strip()) for v in values.split(",") if v.strip()]
    return grid


def _scalar(text: str) -> Any:
    for conv in (int, float):
        try:
            return conv(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


def point_label(point: dict[str, Any]) -> str:
    """A short name for a grid point: {k: 16, expansion_factor: 8} -> 'k16-x8'."""
    return "-".join(f"{_LABEL.get(k, k)}{v}" for k, v in point.items() if k != "name")


def _differences(cfg: Any, base: Any) -> dict[str, Any]:
    return {
        f.name: getattr(cfg, f.name)
        for f in dataclasses.fields(cfg)
        if f.name not in ("saes", "sweep", "name") and getattr(cfg, f.name) != getattr(base, f.name)
    }
