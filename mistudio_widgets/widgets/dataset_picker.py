"""DatasetPicker: add a dataset (embedded, hub or local), tokenize it with a model, see its statistics."""

from __future__ import annotations

from typing import Any

import traitlets as t

from ..core.configs import DatasetConfig, TokenizeConfig, field_help, from_dict
from ..data import datasets as dsets
from .base import EngineWidget, background, esm, rows_of


class DatasetPicker(EngineWidget):
    _esm = esm("dataset_picker")
    datasets = t.List().tag(sync=True)  # [{id, name, documents, source, licence, tokenizations: [...]}]
    models = t.List().tag(sync=True)  # [{id, name}]
    selected = t.Unicode("").tag(sync=True)  # dataset id
    selected_tokenization = t.Unicode("").tag(sync=True)
    stats = t.Dict().tag(sync=True)  # stats of the selected tokenization
    preview = t.List().tag(sync=True)  # decoded sequences (or raw documents)
    help = t.Dict().tag(sync=True)  # field help texts from the config dataclasses

    def __init__(self, workspace=None, **kwargs: Any):
        super().__init__(workspace, **kwargs)
        self.help = {**field_help(DatasetConfig), **field_help(TokenizeConfig)}

    def refresh(self) -> None:
        ws = self.workspace

        def row(a) -> dict[str, Any]:
            toks = [
                {
                    "id": k.id,
                    "name": k.name,
                    "model": k.meta.get("model_name"),
                    "model_id": k.meta.get("model"),
                    "context_size": k.meta["config"]["context_size"],
                    "min_length": k.meta["config"]["min_length"],
                    "tokens": k.meta["stats"]["tokens"],
                }
                for k in ws.list("tokenization", parent=a.id)
            ]
            prov = a.meta.get("provenance", {})
            return {
                "id": a.id,
                "name": a.name,
                "documents": a.meta["stats"]["documents"],
                "characters": a.meta["stats"]["characters"],
                "source": prov.get("source") or prov.get("hub_id") or prov.get("path", ""),
                "licence": a.meta.get("licence", ""),
                "tokenizations": toks,
            }

        rows, note = rows_of(ws.list("dataset"), row)
        self.datasets = rows
        if note:
            self.message = note
        self.models = [{"id": m.id, "name": m.name} for m in ws.list("model")]
        ids = {r["id"] for r in rows}
        if self.selected not in ids:
            self.selected = rows[-1]["id"] if rows else ""
            self.selected_tokenization = ""
        if self.selected and not self.selected_tokenization:
            toks = next(r for r in rows if r["id"] == self.selected)["tokenizations"]
            if toks:
                self.action_select(tokenization=toks[-1]["id"])

    # -- actions ---------------------------------------------------------------------------
    @background
    def action_add(self, progress=None, **cfg: Any):
        cfg = {k: v for k, v in cfg.items() if v not in (None, "")}
        if "samples" in cfg:
            cfg["samples"] = int(cfg["samples"])
        art = dsets.add_dataset(self.workspace, from_dict(DatasetConfig, cfg), progress=progress)

        def done() -> None:
            self.refresh()
            self.selected, self.selected_tokenization, self.stats = art.id, "", {}
            self.preview = [{"text": t} for t in dsets.preview_documents(self.workspace, art)]
            self.message = f"Added {art.name}: {art.meta['stats']['documents']} documents."

        return done

    @background
    def action_tokenize(self, dataset: str = "", model: str = "", progress=None, **cfg: Any):
        from ..data.models import resolve_model

        if not model:
            from ..core.errors import MistudioError

            raise MistudioError(
                "No model chosen for tokenizing.", "add a model in the Models tab first, then pick it here."
            )
        cfg = {
            k: (int(v) if k in ("context_size", "min_length", "max_tokens") and v not in (None, "") else v)
            for k, v in cfg.items()
            if v not in (None, "")
        }
        art = dsets.tokenize_dataset(
            self.workspace,
            dataset or self.selected,
            resolve_model(self.workspace, model),
            from_dict(TokenizeConfig, cfg),
            progress=progress,
        )
        preview = dsets.preview_tokens(self.workspace, art, 3)

        def done() -> None:
            self.refresh()
            self.selected, self.selected_tokenization = art.parent or self.selected, art.id
            self.stats, self.preview = art.meta["stats"], preview
            st, ctx = art.meta["stats"], art.meta["config"]["context_size"]
            self.message = f"Tokenized into {st['sequences']} sequences of {ctx} tokens."

        return done

    def action_select(self, dataset: str = "", tokenization: str = "") -> None:
        if tokenization:
            art = self.workspace.get(tokenization, "tokenization")
            self.selected, self.selected_tokenization = art.parent or "", art.id
            self.stats = art.meta["stats"]
            self.preview = dsets.preview_tokens(self.workspace, art, 3)
        elif dataset:
            art = self.workspace.get(dataset, "dataset")
            self.selected, self.selected_tokenization, self.stats = art.id, "", {}
            self.preview = [{"text": t} for t in dsets.preview_documents(self.workspace, art)]

    def action_delete(self, id: str) -> None:
        self.workspace.delete(id, cascade=True)
        from .base import workspace_changed

        workspace_changed(self.workspace)

    def action_refresh(self) -> None:
        self.refresh()

    # -- notebook API ----------------------------------------------------------------------
    def add(self, source: str = "default", **cfg: Any) -> None:
        """Same as the Add button, run in this cell; raises MistudioError on bad input."""
        self.do("add", self.action_add, blocking=True, source=source, **cfg)

    def tokenize(self, model: str, dataset: str = "", **cfg: Any) -> None:
        """Same as the Tokenize button, run in this cell; raises MistudioError on bad input."""
        self.do("tokenize", self.action_tokenize, blocking=True, dataset=dataset, model=model, **cfg)
