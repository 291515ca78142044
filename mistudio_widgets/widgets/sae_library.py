"""SAELibrary: trained and imported SAEs with their final metrics; rename, delete, open in a tab;
import (SAELens / GemmaScope / sparsify folders or hf://REPO/PATH), export (SAELens or Neuronpedia),
share (the hub layout, SAELens's yaml entry and the Neuronpedia files, uploaded when it can be) and
compare two SAEs feature by feature."""

from __future__ import annotations

import math
from typing import Any

import traitlets as t

from .base import EngineWidget, background, esm, rows_of, workspace_changed


class SAELibrary(EngineWidget):
    _esm = esm("sae_library")
    saes = t.List().tag(sync=True)
    opened = t.Dict().tag(sync=True)  # {id, target}: the Studio switches to that tab
    exported = t.Dict().tag(sync=True)  # the last export's summary
    comparison = t.Dict().tag(sync=True)  # the last comparison: summary, pairs, histogram
    shared = t.Dict().tag(sync=True)  # the last share: folder, repo, what was (or would be) uploaded

    def refresh(self) -> None:
        def row(a) -> dict[str, Any]:
            # a metric that is not a finite number (NaN: not measured) is shown as "–"; NaN in a widget's
            # state is not JSON, and the page would drop the whole list
            m = {k: v for k, v in a.meta.get("metrics", {}).items() if not _non_finite(v)}
            run = self.workspace.find(a.parent, "run") if a.parent else None
            return {
                "id": a.id,
                "name": a.name,
                "architecture": a.meta.get("architecture"),
                "hook": a.meta.get("hook"),
                "model": a.meta.get("model_name"),
                "d_sae": a.meta.get("d_sae"),
                "k": a.meta.get("k"),
                "source": a.meta.get("source", ""),
                "format": a.meta.get("format", ""),
                "run": run.name if run else "",
                "path": str(a.path),
                "explained_variance": m.get("explained_variance"),
                "l0": m.get("l0"),
                "mse": m.get("mse"),
                "dead_fraction": m.get("dead_fraction"),
                "ce_recovered": m.get("ce_recovered"),
                "tokens": m.get("tokens"),
                "created": a.created,
            }

        self.saes, note = rows_of(self.workspace.list("sae"), row)
        if note:
            self.message = note

    # -- notebook API ----------------------------------------------------------------------------
    def import_sae(self, source: str, **kw: Any) -> str:
        self.do("import", self.action_import, source=source, blocking=True, **kw)
        return self.message

    def export(self, sae: str, fmt: str = "saelens", out: str | None = None) -> dict[str, Any]:
        self.do("export", self.action_export, id=sae, format=fmt, out=out, blocking=True)
        return self.exported

    def share(self, sae: str, repo: str, upload: bool = True, extract: bool = False) -> dict[str, Any]:
        self.do("share", self.action_share, id=sae, repo=repo, upload=upload, extract=extract, blocking=True)
        return self.shared

    def compare(self, a: str, b: str) -> dict[str, Any]:
        self.do("compare", self.action_compare, a=a, b=b, blocking=True)
        return self.comparison

    # -- actions ---------------------------------------------------------------------------------
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

    @background
    def action_import(
        self,
        source: str,
        name: str | None = None,
        hook: str | None = None,
        model: str | None = None,
        progress=None,
    ):
        from ..share.importing import import_sae

        art = import_sae(
            self.workspace,
            str(source).strip(),
            name=(name or "").strip() or None,
            hook=(hook or "").strip() or None,
            model=(model or "").strip() or None,
        )

        def apply() -> None:
            m = art.meta
            self.message = f"Imported {art.name}: {m['format']} {m['architecture']} SAE at {m['hook']}" + (
                ""
                if m.get("model")
                else f" (its model {m.get('model_name') or '?'} is not in this workspace)"
            )
            workspace_changed(self.workspace)

        return apply

    @background
    def action_export(
        self, id: str, format: str = "saelens", out: str | None = None, overwrite: bool = False, progress=None
    ):
        art = self.workspace.get(id, "sae")
        target = (out or "").strip() or str(self.workspace.root / "exports" / f"{art.name}-{format}")
        if format == "saelens":
            from ..share.exporting import export_saelens

            r = export_saelens(self.workspace, art.id, target, overwrite=bool(overwrite))
            text = f"Exported {art.name} for SAELens to {r['path']} ({', '.join(r['files'])})."
        elif format == "neuronpedia":
            from ..share.neuronpedia import export_neuronpedia

            r = export_neuronpedia(
                self.workspace, art.id, target, overwrite=bool(overwrite), progress=progress
            )
            text = (
                f"Exported {r['features']:,} features of {art.name} for Neuronpedia to {r['path']} "
                f"({r['batches']} batches; ids {r['model_id']}@{r['source_id']}:INDEX)."
            )
        else:
            raise ValueError(f"unknown export format {format!r}")
        r = {k: v for k, v in r.items() if k != "cfg"}

        def apply() -> None:
            self.exported = r
            self.message = text

        return apply

    @background
    def action_share(self, id: str, repo: str, upload: bool = True, extract: bool = False, progress=None):
        from ..share.sharing import describe, share_sae

        art = self.workspace.get(id, "sae")
        r = share_sae(
            self.workspace,
            art.id,
            str(repo).strip(),
            upload=upload,
            overwrite=True,
            extract_first=extract,
            progress=progress,
        )
        view = {k: v for k, v in r.items() if k != "pretrained_saes"} | {"text": describe(r)}

        def apply() -> None:
            self.shared = view
            self.message = (
                f"Shared {art.name} to {r['url']}."
                if r["uploaded"]
                else f"{art.name} is share-ready in {r['folder']} "
                f"(not uploaded: {r['not_uploaded_because']})."
            )

        return apply

    @background
    def action_compare(self, a: str, b: str, progress=None):
        from ..features.compare import compare_saes, describe_pair

        r = compare_saes(self.workspace, a, b, top=50)
        view = {
            "summary": r["summary"],
            "pairs": r["pairs"],
            "histogram": r["histogram"],
            "sentence": describe_pair(r) if r["pairs"] else "",
        }

        def apply() -> None:
            self.comparison = view
            self.message = view["sentence"] and f"Best match: {view['sentence']}."

        return apply


def _non_finite(v: Any) -> bool:
    return isinstance(v, float) and not math.isfinite(v)
