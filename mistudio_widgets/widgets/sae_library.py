"""SAELibrary: trained and imported SAEs with their final metrics; rename, delete, open in a tab."""
from __future__ import annotations

from typing import Any

import traitlets as t

from .base import EngineWidget, esm, workspace_changed


class SAELibrary(EngineWidget):
    _esm = esm("sae_library")
    saes = t.List().tag(sync=True)
    opened = t.Dict().tag(sync=True)     # {id, target}: the Studio switches to that tab

    def refresh(self) -> None:
        rows = []
        for a in self.workspace.list("sae"):
            m = a.meta.get("metrics", {})
            run = self.workspace.find(a.parent, "run") if a.parent else None
            rows.append({"id": a.id, "name": a.name, "architecture": a.meta.get("architecture"), "hook": a.meta.get("hook"),
                         "model": a.meta.get("model_name"), "d_sae": a.meta.get("d_sae"), "k": a.meta.get("k"),
                         "source": a.meta.get("source", ""), "run": run.name if run else "", "path": str(a.path),
                         "explained_variance": m.get("explained_variance"), "l0": m.get("l0"), "mse": m.get("mse"),
                         "dead_fraction": m.get("dead_fraction"), "ce_recovered": m.get("ce_recovered"),
                         "tokens": m.get("tokens"), "created": a.created})
        self.saes = rows

    def action_rename(self, id: str, name: str) -> None:
        self.workspace.rename(id, name)
        self.message = f"Renamed to {name}."
        workspace_changed(self.workspace)

    def action_delete(self, id: str) -> None:
        art = self.workspace.get(id, "sae")
        self.workspace.delete(id, cascade=True)
        self.message = f"Deleted {art.name}."
        workspace_changed(self.workspace)

    def action_open(self, id: str, target: str) -> None:
        self.opened = {"id": id, "target": target}
