"""One call from an SAE to a share-ready folder, uploaded when it can be:

- ``hub/``: the repository as it goes to the hub: ``README.md`` (the model card) and the SAELens
  folder at ``<path>/`` (``cfg.json``, ``sae_weights.safetensors``, ``sparsity.safetensors``), the
  layout ``SAE.from_pretrained(release, sae_id)`` downloads;
- ``pretrained_saes.yaml``: the release entry for SAELens's list, with the real repository id, the
  folder and the Neuronpedia id;
- ``neuronpedia/``: the Neuronpedia files (dashboard batches and the bulk-import layout), their
  source pointing at the uploaded weights (``hfRepoId``/``hfFolderId``);
- ``share.json``: what was written and what was (or would be) uploaded.

The upload runs when a token is there and the hub can be reached; otherwise the result says
exactly which files would go where."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from ..core.errors import HubError
from ..core.progress import ProgressCallback
from ..core.workspace import Artifact, Workspace
from ..features import FeatureError, extract, latest_extraction
from . import neuronpedia_records as rec
from .exporting import (
    EXPORT_MARKER,
    default_sae_path,
    export_saelens,
    fresh_folder,
)
from .hub import available_token, check_repo_id, model_card, offline, upload_folder
from .neuronpedia import export_neuronpedia, neuronpedia_ids

MANIFEST = "share.json"


def _files(folder: Path) -> list[dict[str, Any]]:
    return [
        {"path": p.relative_to(folder).as_posix(), "bytes": p.stat().st_size}
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != EXPORT_MARKER
    ]


def _why_not_uploaded(upload: bool, token: str | None) -> str | None:
    if not upload:
        return "not asked to upload"
    if offline():
        return "HF_HUB_OFFLINE is set"
    if not token:
        return "no Hugging Face token (set HF_TOKEN or run `huggingface-cli login`)"
    return None


def share_sae(
    ws: Workspace,
    sae: str,
    repo: str,
    out: str | Path | None = None,
    *,
    path: str | None = None,
    release: str | None = None,
    model_id: str | None = None,
    source_id: str | None = None,
    creator_id: str = rec.DEFAULT_CREATOR_ID,
    upload: bool = True,
    token: str | None = None,
    private: bool = False,
    overwrite: bool = False,
    extract_first: bool = False,
    progress: ProgressCallback | None = None,
) -> dict[str, Any]:
    """Write ``sae`` share-ready for ``repo`` (``OWNER/NAME``) under ``out`` (default
    ``<workspace>/exports/<name>-share``) and upload ``hub/`` when a token and the network are there.
    The Neuronpedia files need a feature extraction: ``extract_first`` runs one when there is none."""
    check_repo_id(repo)
    art = ws.get(sae, "sae")
    model_id, source_id, release = neuronpedia_ids(ws, art, model_id, source_id, release, creator_id)
    path = _repo_path(path or default_sae_path(art))
    _ensure_extraction(ws, art, extract_first, progress)  # said before anything is written
    out = Path(out).expanduser() if out else ws.root / "exports" / f"{rec.slug(art.name) or art.id}-share"
    with fresh_folder(out, overwrite=overwrite, workspace=ws.root, what="share") as tmp:
        lens = export_saelens(
            ws,
            art.id,
            tmp / "hub" / path,
            repo_id=repo,
            path_in_repo=path,
            release=release,
            neuronpedia_id=f"{model_id}/{source_id}",
        )
        (tmp / "hub" / path / EXPORT_MARKER).unlink()
        shutil.move(tmp / "hub" / path / "pretrained_saes.yaml", tmp / "pretrained_saes.yaml")
        (tmp / "hub" / "README.md").write_text(
            model_card(
                {**art.meta, "name": art.name, "has_sparsity": lens["sparsity"]}, lens["cfg"], repo, path
            )
        )
        np = export_neuronpedia(
            ws,
            art.id,
            tmp / "neuronpedia",
            model_id=model_id,
            source_id=source_id,
            release=release,
            creator_id=creator_id,
            hf_repo_id=repo,
            hf_folder_id=path,
            saelens_release=release,
            saelens_sae_id=default_sae_path(art),
            progress=progress,
        )
        (tmp / "neuronpedia" / EXPORT_MARKER).unlink()
        files = _files(tmp / "hub")
        result = {
            "sae": art.id,
            "repo": repo,
            "path": path,
            "release": release,
            "sae_id": default_sae_path(art),
            "neuronpedia_id": f"{model_id}/{source_id}",
            "url": f"https://huggingface.co/{repo}/tree/main/{path}",
            "upload_files": files,
            "upload_bytes": sum(f["bytes"] for f in files),
            "neuronpedia": {k: np[k] for k in ("features", "activations", "explanations", "batches")},
            "pretrained_saes": lens["pretrained_saes"],
        }
        (tmp / MANIFEST).write_text(json.dumps({**result, "uploaded": False}, indent=2))
    return _upload(ws, art, result, out.resolve(), token, upload, private)


def _repo_path(path: str) -> str:
    """``path`` as a folder inside a repository, or a clear error."""
    path = path.strip("/")
    if not path or ".." in path.split("/"):
        raise HubError(
            f"{path!r} is not a folder inside a repository.", "give a path such as blocks.6.hook_resid_post."
        )
    return path


def _ensure_extraction(
    ws: Workspace, art: Artifact, extract_first: bool, progress: ProgressCallback | None
) -> None:
    """The SAE's feature extraction, which the Neuronpedia files need: run when asked, else a clear error."""
    if latest_extraction(ws, art) is not None:
        return
    if not extract_first:
        raise FeatureError(
            f"The Neuronpedia files need a feature extraction of {art.name!r}, and it has none yet.",
            "share with extract_first=True (CLI: --extract; the library: 'extract first') to run one "
            f"first, or run `mistudio extract {art.name}`.",
        )
    extract(ws, art.id, progress=progress)


def _upload(
    ws: Workspace,
    art: Artifact,
    result: dict[str, Any],
    out: Path,
    token: str | None,
    upload: bool,
    private: bool,
) -> dict[str, Any]:
    """Upload the share folder's ``hub/`` when a token and the network are there; the result says
    whether it was uploaded, and why not."""
    tok = available_token(token) if upload else None
    why = _why_not_uploaded(upload, tok)
    result.update(folder=str(out), uploaded=False, not_uploaded_because=why, commit=None)
    if why is None:
        try:
            result["commit"] = upload_folder(out / "hub", result["repo"], token=tok, private=private)
        except HubError as exc:  # the folder is written and stays; say why the upload did not happen
            result["not_uploaded_because"] = f"the upload failed: {exc.problem}"
            result["upload_error"] = str(exc)
        else:
            result["uploaded"] = True
            uploaded = {"repo_id": result["repo"], "path": result["path"], "commit": result["commit"]}
            ws.update_meta(art.id, uploaded=uploaded)
        (out / MANIFEST).write_text(json.dumps({k: v for k, v in result.items() if k != "folder"}, indent=2))
    return result


def describe(result: dict[str, Any]) -> str:
    """What was written and what was (or would be) uploaded, for the CLI and the widget."""
    np = result["neuronpedia"]
    lines = [
        f"share-ready folder {result['folder']}:",
        f"  hub/ -> {result['repo']} ({len(result['upload_files'])} files, {result['upload_bytes']:,} bytes)",
        f"  pretrained_saes.yaml: release {result['release']!r}, sae_id {result['sae_id']!r}, "
        f"neuronpedia {result['neuronpedia_id']}",
        f"  neuronpedia/: {np['features']} features, {np['activations']} activation records, "
        f"{np['explanations']} explanations",
    ]
    if result["uploaded"]:
        lines.append(f"uploaded to {result['url']} ({result['commit']})")
    else:
        lines.append(f"not uploaded ({result['not_uploaded_because']}); it would upload to {result['url']}:")
        lines += [f"  {f['path']} ({f['bytes']:,} bytes)" for f in result["upload_files"]]
        lines.append(f"load it afterwards with SAE.from_pretrained({result['repo']!r}, {result['path']!r})")
    return "\n".join(lines)
