"""ModelPicker: add a model, see its architecture and memory estimate, load it, choose a hook point."""

from __future__ import annotations

from typing import Any

import traitlets as t

from ..core.configs import ModelConfig, field_help, from_dict
from ..data import models as mdl
from ..data.hooks import hook_names_for
from .base import EngineWidget, background, esm, rows_of


class ModelPicker(EngineWidget):
    _esm = esm("model_picker")
    models = t.List().tag(sync=True)  # [{id, name, family, layers, ..., loaded: [...]}]
    selected = t.Unicode("").tag(sync=True)
    info = t.Dict().tag(sync=True)  # architecture + memory table of the selected model
    hooks = t.List().tag(sync=True)  # valid hook names of the selected model
    hook = t.Unicode("blocks.15.hook_resid_post").tag(sync=True)
    loaded = t.Dict().tag(sync=True)  # {model id, device, dtype, quantization} of the last load
    help = t.Dict().tag(sync=True)

    def __init__(self, workspace=None, **kwargs: Any):
        super().__init__(workspace, **kwargs)
        self.help = field_help(ModelConfig)

    def refresh(self) -> None:
        root = self.workspace.root.resolve()
        loaded: dict[str, list[str]] = {}
        for lm in mdl.loaded_models():  # loaded in this kernel, by any widget or cell
            if lm.artifact.path is None or root in lm.artifact.path.resolve().parents:
                q = "" if lm.quantization == "none" else f" {lm.quantization}"
                loaded.setdefault(lm.artifact.id, []).append(f"{lm.device} {lm.dtype}{q}")

        def row(a) -> dict[str, Any]:
            info = a.meta.get("info", {})
            return {
                "id": a.id,
                "name": a.name,
                "family": info.get("family"),
                "layers": info.get("layers"),
                "d_model": info.get("d_model"),
                "parameters": info.get("parameters"),
                "source": a.meta.get("provenance", {}).get("kind"),
                "loaded": ", ".join(loaded.get(a.id, [])) or "no",
            }

        rows, note = rows_of(self.workspace.list("model"), row)
        self.models = rows
        if note:
            self.message = note
        if self.selected not in {r["id"] for r in rows}:
            self.selected = rows[-1]["id"] if rows else ""
        self._show(self.selected)

    def _show(self, model_id: str) -> None:
        if not model_id:
            self.info, self.hooks = {}, []
            return
        info = mdl.model_info(self.workspace, model_id)
        self.info = info
        self.hooks = hook_names_for(info["layers"] or 0, info.get("parallel_blocks", False))
        if self.hooks and self.hook not in self.hooks:
            self.hook = f"blocks.{info['layers'] // 2}.hook_resid_post"

    # -- actions ---------------------------------------------------------------------------
    def action_select(self, id: str) -> None:
        if id != self.selected:
            self.hook = ""  # another model: start from its middle residual stream
        self.selected = id
        self._show(id)

    @background
    def action_add(self, progress=None, **cfg: Any):
        cfg = {k: v for k, v in cfg.items() if v not in (None, "")}
        art = mdl.add_model(self.workspace, from_dict(ModelConfig, cfg), progress=progress)

        def done() -> None:
            self.selected = art.id
            self.refresh()
            self.message = f"Added {art.name}."

        return done

    @background
    def action_load(
        self,
        id: str = "",
        dtype: str = "auto",
        quantization: str = "none",
        device: str = "auto",
        progress=None,
    ):
        lm = mdl.load_model(
            self.workspace,
            id or self.selected,
            dtype=dtype,
            quantization=quantization,
            device=device,
            progress=progress,
        )

        def done() -> None:
            self.loaded = {
                "id": lm.artifact.id,
                "name": lm.name,
                "device": lm.device,
                "dtype": lm.dtype,
                "quantization": lm.quantization,
            }
            self.refresh()
            self.message = (
                f"Loaded {lm.name} on {lm.device} in {lm.dtype}"
                + (f" ({lm.quantization})" if lm.quantization != "none" else "")
                + "."
            )

        return done

    def action_delete(self, id: str) -> None:
        self.workspace.delete(id, cascade=True)
        from .base import workspace_changed

        workspace_changed(self.workspace)

    # -- notebook API ----------------------------------------------------------------------
    def add(self, source: str = "default", **cfg: Any) -> None:
        """Same as the Add button, run in this cell; raises MistudioError on bad input."""
        self.do("add", self.action_add, blocking=True, source=source, **cfg)

    def load(self, id: str = "", **kw: Any) -> None:
        """Same as the Load button, run in this cell."""
        self.do("load", self.action_load, blocking=True, id=id, **kw)

    @property
    def model(self) -> mdl.LoadedModel | None:
        """The model loaded last from this picker (None before Load)."""
        if not self.loaded:
            return None
        return mdl.load_model(
            self.workspace,
            self.loaded["id"],
            dtype=self.loaded["dtype"],
            quantization=self.loaded["quantization"],
            device=self.loaded["device"],
        )
