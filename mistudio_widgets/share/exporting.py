"""Export an SAE from the workspace: a SAELens folder (``cfg.json`` with the v6 fields and
``metadata``, ``sae_weights.safetensors``, ``sparsity.safetensors`` from the latest extraction, a
``pretrained_saes.yaml`` entry) and Neuronpedia dashboard data (see ``neuronpedia``).

Exports are written to a temporary folder beside the target and renamed into place when complete,
so an interrupted export leaves no half-written folder; an existing non-empty folder is refused
rather than overwritten."""

from __future__ import annotations

import json
import shutil
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import yaml

from ..core import defaults
from ..core.disk import atomic_folder
from ..core.errors import MistudioError
from ..core.workspace import Artifact, Workspace
from ..features import latest_extraction
from ..sae.io import CFG, SAELENS_TRANSCODERS, SPARSITY, WEIGHTS, load_sae, save_sae
from .neuronpedia_records import slug


class ExportError(MistudioError):
    """An export cannot be written as asked."""


EXPORT_MARKER = ".mistudio-export.json"  # marks a folder as an export of ours: only such a folder is replaced


@contextmanager
def fresh_folder(
    out: str | Path, *, overwrite: bool = False, workspace: Path | None = None, what: str = "export"
) -> Iterator[Path]:
    """Yield a temporary folder that becomes ``out`` when the block succeeds (see ``atomic_folder``).
    A non-empty ``out`` is refused unless ``overwrite``, and even then unless it holds an earlier export
    of ours (its marker file); the workspace, or any folder holding it, is never replaced."""
    out = Path(out).expanduser().resolve()
    if workspace is not None and Path(workspace).resolve().is_relative_to(out):
        raise ExportError(
            f"{out} is the workspace or holds it; an export never replaces it.",
            "export into a new folder, e.g. under the workspace's exports/.",
        )
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        if not overwrite:
            raise ExportError(
                f"{out} already exists and is not empty.",
                "choose a new folder, or replace an earlier export: tick 'replace an earlier export' in the "
                "SAE library, pass --overwrite on the command line, or overwrite=True in Python.",
            )
        why = _not_an_export(out)
        if why:
            raise ExportError(
                f"{out} is not an earlier export of mistudio ({why}), so it is not replaced; nothing was "
                "changed.",
                "choose a new or empty folder.",
            )
    with atomic_folder(out, writing="export") as tmp:
        yield tmp
        entries = sorted(p.name for p in tmp.iterdir())
        marker = {"format": what, "written": time.time(), "entries": entries}
        (tmp / EXPORT_MARKER).write_text(json.dumps(marker) + "\n")


def _not_an_export(out: Path) -> str | None:
    """Why ``out`` is not a folder an earlier export wrote and nobody changed since, or None. Its marker
    must be a plain file naming exactly the entries the folder holds, none newer than the export."""
    marker = out / EXPORT_MARKER
    if marker.is_symlink() or not marker.is_file():
        return f"it has no {EXPORT_MARKER}"
    try:
        rec = json.loads(marker.read_text()[:100_000])
        written = float(rec["written"])
        listed = None if rec.get("entries") is None else {str(x) for x in rec["entries"]}  # None: before 0.2
    except (OSError, ValueError, KeyError, TypeError, RecursionError):
        return f"its {EXPORT_MARKER} is not one mistudio wrote"
    held = {p.name for p in out.iterdir()} - {EXPORT_MARKER}
    if listed is not None and held != listed:
        extra = ", ".join(sorted(held - listed)[:3]) or "some it wrote are gone"
        return f"it holds entries the export did not write ({extra})"
    for p in out.iterdir():
        if p.is_symlink() or p.lstat().st_mtime > written + 5:
            return f"{p.name} was changed after the export"
    return None


def model_hub_id(ws: Workspace, sae: Artifact) -> str | None:
    """The hub id of the model an SAE reads (``HuggingFaceTB/SmolLM2-135M-Instruct`` for the default)."""
    ref = sae.meta.get("model")
    art = ws.find(ref, "model") if ref else None
    if art is None:
        return sae.meta.get("model_name")
    prov = art.meta.get("provenance") or {}
    return prov.get("upstream") or prov.get("hub_id") or art.name


def model_weights(ws: Workspace, sae: Artifact) -> str | None:
    """Which weights an SAE was trained on when they are not the hub model's own (a GGUF build,
    dequantized; a quantized load), so that nobody splices it into other weights unknowingly."""
    ref = sae.meta.get("model")
    art = ws.find(ref, "model") if ref else None
    if art is None:
        return None
    prov = art.meta.get("provenance") or {}
    notes = []
    if prov.get("weights") or prov.get("kind") == "embedded":  # models registered before it was said
        notes.append(str(prov.get("weights") or defaults.DEFAULT_MODEL_INFO["weights"]))
    elif prov.get("kind") == "gguf":
        notes.append(f"the GGUF file {Path(str(prov.get('path', ''))).name}, dequantized")
    quant = (art.meta.get("settings") or {}).get("quantization")
    if quant and quant != "none":
        notes.append(f"loaded with {quant} quantization")
    return "; ".join(notes) or None


def default_neuronpedia_ids(ws: Workspace, sae: Artifact) -> tuple[str, str]:
    """(model id, source id) in Neuronpedia's style: ``smollm2-135m-instruct``, ``15-mistudio-res-4608``."""
    model = (model_hub_id(ws, sae) or "model").split("/")[-1].lower()
    hook = sae.meta.get("hook") or ""
    layer = hook.split(".")[1] if hook.startswith("blocks.") else "0"
    site = {
        "hook_resid_post": "res",
        "hook_resid_pre": "res-pre",
        "hook_resid_mid": "res-mid",
        "hook_mlp_out": "mlp",
        "hook_attn_out": "att",
        "ln2.hook_normalized": "mlp-in",
    }.get(hook.split(".", 2)[-1], "res")
    if sae.meta.get("hook_out"):
        site = "tc"
    return model, f"{layer}-mistudio-{site}-{sae.meta.get('d_sae')}"


def default_release(sae: Artifact) -> str:
    """The release name of an SAE in SAELens's list and on Neuronpedia: ``<name>-mistudio`` as an id."""
    return slug(f"{sae.name}-mistudio")


def default_sae_path(sae: Artifact) -> str:
    """The folder of an SAE inside a hub repository, and its SAELens ``sae_id``: the hook it reads."""
    return sae.meta.get("hook") or sae.name


def export_saelens(
    ws: Workspace,
    sae: str,
    out: str | Path,
    *,
    repo_id: str | None = None,
    path_in_repo: str | None = None,
    release: str | None = None,
    neuronpedia_id: str | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Write ``sae`` as a SAELens folder at ``out`` (plus ``pretrained_saes.yaml`` beside the weights).
    Returns the paths written and the yaml entry."""
    art = ws.get(sae, "sae")
    model, cfg = load_sae(art.folder)
    ext = latest_extraction(ws, art)
    np_model, np_source = default_neuronpedia_ids(ws, art)
    meta = {
        "model_name": model_hub_id(ws, art) or cfg.get("metadata", {}).get("model_name"),
        "hook_name": art.meta.get("hook"),
        "neuronpedia_id": neuronpedia_id or f"{np_model}/{np_source}",
        "model_weights": model_weights(ws, art),
    }
    if art.meta.get("hook_out"):
        meta["hook_name_out"] = art.meta["hook_out"]
    sae_path = path_in_repo or default_sae_path(art)
    release = release or default_release(art)
    entry = {
        release: {
            "repo_id": repo_id or f"YOUR-HF-USER/{art.name}",
            "model": meta["model_name"],
            "conversion_func": None,
            "saes": [
                {
                    "id": default_sae_path(art),
                    "path": sae_path,
                    "neuronpedia": meta["neuronpedia_id"],
                    **(
                        {"l0": round(float(art.meta["metrics"]["l0"]), 2)}
                        if (art.meta.get("metrics") or {}).get("l0") is not None
                        else {}
                    ),
                }
            ],
        }
    }
    with fresh_folder(out, overwrite=overwrite, workspace=ws.root, what="saelens") as tmp:
        save_sae(model, tmp, metadata=meta, extra={**(cfg.get("mistudio") or {}), "exported_from": art.id})
        if ext is not None and (ext.folder / SPARSITY).is_file():
            shutil.copy2(ext.folder / SPARSITY, tmp / SPARSITY)
        elif (art.folder / SPARSITY).is_file():
            shutil.copy2(art.folder / SPARSITY, tmp / SPARSITY)
        (tmp / "pretrained_saes.yaml").write_text(
            "# Add this release to SAELens's pretrained_saes.yaml (or your own) once the folder is on "
            "the hub.\n" + yaml.safe_dump(entry, sort_keys=False)
        )
    out = Path(out).expanduser().resolve()
    files = sorted(p.name for p in out.iterdir() if p.name != EXPORT_MARKER)  # not our marker
    cfg_out = json.loads((out / CFG).read_text())
    warnings = []
    if "transcoder" in cfg_out["architecture"] and cfg_out["architecture"] not in SAELENS_TRANSCODERS:
        warnings.append(
            f"SAELens 6 has no {cfg_out['architecture']} architecture: mistudio loads this folder, "
            "SAELens does not."
        )
    return {
        "sae": art.id,
        "format": "saelens",
        "path": str(out),
        "files": files,
        "pretrained_saes": entry,
        "sparsity": SPARSITY in files,
        "cfg": cfg_out,
        "warnings": warnings,
    }


__all__ = [
    "ExportError",
    "export_saelens",
    "fresh_folder",
    "model_hub_id",
    "default_neuronpedia_ids",
    "default_release",
    "default_sae_path",
    "WEIGHTS",
]
