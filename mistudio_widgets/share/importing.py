"""Import an SAE made elsewhere into the workspace library: a SAELens folder (v6 or a pre-6.0 flat
config), a GemmaScope ``params.npz``, an EleutherAI sparsify folder, or any of these on the Hugging
Face hub (``hf://OWNER/REPO/PATH``). The SAE is stored in our SAELens folder format and is then used
like a trained one: the browser, extraction, labelling and steering take it unchanged."""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import torch

from ..core.errors import MistudioError
from ..core.sources import refuse_links_out
from ..core.workspace import Artifact, Workspace
from ..data.hooks import _HOOK_RE, HOOK_KINDS
from ..sae.formats import read_any
from ..sae.io import SPARSITY, save_sae
from . import hub


class SAEImportError(MistudioError):
    """An SAE cannot be imported as asked."""


def match_model(ws: Workspace, model_name: str | None) -> Artifact | None:
    """The workspace model an SAE's ``model_name`` refers to: by artifact name, upstream id or hub id
    (case-insensitive; ``HuggingFaceTB/SmolLM2-135M-Instruct`` matches the embedded default)."""
    if not model_name:
        return None
    want = str(model_name).lower()
    for art in ws.list("model"):
        prov = art.meta.get("provenance") or {}
        names = {art.name, art.id, prov.get("upstream"), prov.get("hub_id")}
        names |= {n.split("/")[-1] for n in list(names) if n and "/" in n}
        if want in {str(n).lower() for n in names if n} or want.split("/")[-1] in {
            str(n).lower() for n in names if n
        }:
            return art
    return None


def _default_name(source: str) -> str:
    parts = [p for p in re.split(r"[/\\]", source.rstrip("/")) if p and p not in ("params.npz",)]
    base = "-".join(parts[-2:]) if parts else "imported"
    return re.sub(r"[^\w.-]+", "-", base).strip("-")[:80] or "imported"


def import_sae(
    ws: Workspace,
    source: str | Path,
    *,
    name: str | None = None,
    model: str | None = None,
    hook: str | None = None,
    hook_out: str | None = None,
    token: str | None = None,
) -> Artifact:
    """Import the SAE at ``source`` (a local folder / params.npz, or ``hf://OWNER/REPO/PATH[@REV]``).
    ``model`` (a workspace model) and ``hook`` override what the files say; they are needed where the
    files say nothing (sparsify folders name no model; a bare params.npz no hook)."""
    src = str(source)
    if hub.is_hub_ref(src):
        repo, path, rev = hub.parse_hub_ref(src)
        local = hub.download_sae(repo, path, revision=rev, token=token)
        origin: dict[str, Any] = {"kind": "hub", "repo_id": repo, "path": path, "revision": rev}
        where = f"{repo}/{path}"
    else:
        local = Path(src).expanduser()
        refuse_links_out(local, "SAE folder", SAEImportError)
        origin = {"kind": "local", "path": str(local.resolve())}
        where = str(local)
    sae, meta, fmt = read_any(local)
    if fmt == "gemmascope":
        from ..sae.formats import gemmascope_metadata

        meta = {**meta, **gemmascope_metadata(where)}
    hook = hook or meta.get("hook_name")
    hook_out = hook_out or meta.get("hook_name_out")
    if not hook:
        raise SAEImportError(
            f"The {fmt} SAE at {where} does not say which hook it reads.",
            "pass hook=... (CLI: --hook), e.g. blocks.6.hook_resid_post.",
        )
    for h in filter(None, (hook, hook_out)):
        if not _HOOK_RE.match(h):
            raise SAEImportError(
                f"{h!r} is not a hook name mistudio can attach to.",
                f"pass hook=... as blocks.L.<point> with <point> one of: {', '.join(HOOK_KINDS)}.",
            )
    model_art = ws.get(model, "model") if model else match_model(ws, meta.get("model_name"))
    model_name = meta.get("model_name") or (model_art.name if model_art else None)
    spec = sae.spec
    spec.metadata = {**spec.metadata, "hook_name": hook, "model_name": model_name}
    if hook_out:
        spec.metadata["hook_name_out"] = hook_out
    name = ws.unique_name("sae", name or _default_name(where))
    entry = {
        "model": model_art.id if model_art else None,
        "model_name": model_name,
        "hook": hook,
        "hook_out": hook_out,
        "architecture": spec.architecture,
        "d_in": spec.d_in,
        "d_sae": spec.d_sae,
        "k": spec.k,
        "source": "imported",
        "format": fmt,
        "origin": origin,
    }
    with ws.write_artifact("sae", name, meta=entry) as w:
        save_sae(sae, w.path, extra={"imported_from": fmt, "origin": origin})
        if fmt == "saelens" and (local / SPARSITY).is_file():
            _copy_sparsity(local / SPARSITY, w.path / SPARSITY, spec.d_sae)
    return ws.get(w.id)


def _copy_sparsity(src: Path, dst: Path, d_sae: int) -> None:
    """Copy SAELens's ``sparsity.safetensors`` only when it is what it claims: a safetensors file whose
    one tensor ``sparsity`` holds d_sae finite numbers (its header read first, never pickled)."""
    from safetensors import SafetensorError, safe_open

    names, shape = [], None
    try:
        with safe_open(str(src), framework="pt") as f:
            names = list(f.keys())
            shape = f.get_slice("sparsity").get_shape() if names == ["sparsity"] else None
            ok = shape == [d_sae] and bool(torch.isfinite(f.get_tensor("sparsity").float()).all())
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise SAEImportError(
            f"{src} is not a readable safetensors file ({exc}).",
            "remove it (it is optional) or replace it with the file SAELens wrote.",
        ) from None
    if not ok:
        raise SAEImportError(
            f"{src} is not SAELens's sparsity file: it holds {names}"
            + (f" of shape {shape}" if shape is not None else "")
            + f", not one tensor 'sparsity' of {d_sae} finite values.",
            "remove it (it is optional) or replace it with the file SAELens wrote for this SAE.",
        )
    shutil.copyfile(src, dst)
