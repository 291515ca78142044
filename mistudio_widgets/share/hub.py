"""The Hugging Face hub for SAEs: download one SAE (a repo and the path of its folder inside it) and
upload an exported SAE folder with a generated model card. Everything up to the network call runs
offline; with ``HF_HUB_OFFLINE=1`` downloads are served from the local hub cache when present."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from ..core.errors import HubError

HF_PREFIX = "hf://"
_REV = re.compile(r"[\w.-]{1,100}")  # a branch, tag or commit: no slashes or dots-only paths
_REPO = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+\Z")


def is_hub_ref(ref: str) -> bool:
    return str(ref).startswith(HF_PREFIX)


def parse_hub_ref(ref: str) -> tuple[str, str, str | None]:
    """``hf://OWNER/REPO[/PATH][@REVISION]`` -> (repo_id, path inside the repo, revision)."""
    body = str(ref)[len(HF_PREFIX) :] if is_hub_ref(ref) else str(ref)
    revision = None
    if "@" in body:
        body, revision = body.rsplit("@", 1)
    parts = [p for p in body.strip("/").split("/") if p]
    if any(p in (".", "..") or "\\" in p for p in parts) or (
        revision is not None and not _REV.fullmatch(revision)
    ):
        raise HubError(
            f"{ref!r} holds '.', '..' or a backslash in its path, or an odd revision: hub paths stay inside "
            "their repository.",
            "write hf://OWNER/REPO/PATH with plain folder names.",
        )
    if len(parts) < 2 or not _REPO.match("/".join(parts[:2])):
        raise HubError(
            f"{ref!r} does not name a hub repository.",
            "write hf://OWNER/REPO/PATH, e.g. "
            "hf://google/gemma-scope-2b-pt-res/layer_20/width_16k/average_l0_71.",
        )
    return "/".join(parts[:2]), "/".join(parts[2:]), revision


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")


def download_sae(
    repo_id: str,
    path: str = "",
    *,
    revision: str | None = None,
    token: str | None = None,
    cache_dir: str | None = None,
) -> Path:
    """Download the SAE folder ``path`` of ``repo_id`` (only its files) and return the local folder."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    pattern = [f"{path.strip('/')}/*"] if path else None
    try:
        root = Path(
            snapshot_download(
                repo_id, allow_patterns=pattern, revision=revision, token=token or None, cache_dir=cache_dir
            )
        )
    except LocalEntryNotFoundError as exc:
        raise HubError(
            f"{repo_id} is not in the local hub cache and the hub cannot be reached"
            + (" (HF_HUB_OFFLINE is set)" if offline() else "")
            + ".",
            "connect to the internet (and unset HF_HUB_OFFLINE), or import a local folder instead.",
        ) from exc
    except GatedRepoError as exc:
        raise HubError(
            f"{repo_id} is gated: {exc}", "accept its terms on huggingface.co and set HF_TOKEN."
        ) from exc
    except (RepositoryNotFoundError, RevisionNotFoundError) as exc:
        raise HubError(
            f"{repo_id}{'@' + revision if revision else ''} was not found on the hub.",
            "check the repository id (and your token for private repos).",
        ) from exc
    except EntryNotFoundError as exc:
        raise HubError(
            f"{path!r} was not found in {repo_id}.", "check the path of the SAE inside the repository."
        ) from exc
    except OSError as exc:
        raise HubError(
            f"Could not download {repo_id}: {exc}", "check your connection and disk space."
        ) from exc
    folder = root / path if path else root
    if not folder.exists() or (folder.is_dir() and not any(folder.iterdir())):
        raise HubError(
            f"{repo_id} has no files under {path!r}.", "check the path of the SAE inside the repository."
        )
    return folder


def check_repo_id(repo_id: str) -> str:
    """``OWNER/NAME`` as the hub spells repository ids."""
    if not isinstance(repo_id, str) or "/" not in repo_id:
        raise HubError(
            f"The repository id {repo_id!r} has no owner.",
            f"write OWNER/NAME, e.g. alice/{repo_id if isinstance(repo_id, str) and repo_id else 'my-saes'}.",
        )
    if not _REPO.match(repo_id):
        raise HubError(
            f"{repo_id!r} is not a repository id.",
            "write OWNER/NAME with letters, digits, '-', '_' and '.', e.g. alice/smollm2-saes.",
        )
    return repo_id


def available_token(token: str | None = None) -> str | None:
    """A Hugging Face token when one is set or saved, else None."""
    from huggingface_hub import get_token

    return token or os.environ.get("HF_TOKEN") or get_token() or None


def resolve_token(token: str | None = None) -> str:
    tok = available_token(token)
    if not tok:
        raise HubError(
            "Uploading needs a Hugging Face token.",
            "set HF_TOKEN, run `huggingface-cli login`, or pass token=... (a write token).",
        )
    return tok


def model_card(meta: dict[str, Any], cfg: dict[str, Any], repo_id: str, path_in_repo: str = "") -> str:
    """A README.md for an SAE repository: what it reads, how it was trained, how to load it."""
    md = cfg.get("metadata", {})
    metrics = meta.get("metrics") or {}
    rows = "\n".join(
        f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in metrics.items()
    )
    model = md.get("model_name") or meta.get("model_name") or "unknown"
    sub = f"/{path_in_repo}" if path_in_repo else ""
    k = f", k = {cfg['k']}" if cfg.get("k") else ""
    sparsity = ", `sparsity.safetensors`" if meta.get("has_sparsity") else ""
    data = md.get("dataset_path") or "an unnamed dataset"
    site = "https://pypi.org/project/mistudio-widgets/"
    return f"""---
library_name: saelens
tags:
- sparse-autoencoder
- interpretability
- mistudio-widgets
base_model: {model}
---

# {meta.get("name", "SAE")}: a {cfg.get("architecture")} sparse autoencoder for {model}

Reads `{md.get("hook_name")}` ({cfg.get("d_in")} dimensions) with {cfg.get("d_sae")} latents{k}.
Trained with [mistudio-widgets]({site}) on {data}
(context {md.get("context_size")} tokens). Saved in the SAELens format
(`cfg.json`, `sae_weights.safetensors`{sparsity}).

## Load

```python
from huggingface_hub import snapshot_download
from sae_lens import SAE

folder = snapshot_download("{repo_id}"{f', allow_patterns="{path_in_repo}/*"' if path_in_repo else ""})
sae = SAE.load_from_disk(folder + "{sub}")
```

or in mistudio: `mistudio import hf://{repo_id}{sub}`.

## Metrics

| metric | value |
| --- | --- |
{rows or "| (none recorded) | |"}
"""


def upload_folder(
    folder: str | Path,
    repo_id: str,
    *,
    token: str | None = None,
    private: bool = False,
    path_in_repo: str = "",
    message: str = "Upload SAE from mistudio-widgets",
) -> str:
    """Create ``repo_id`` if needed and upload ``folder`` into it. Returns the commit URL."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    check_repo_id(repo_id)
    tok = resolve_token(token)
    if offline():
        raise HubError(
            "Uploading needs the network, and HF_HUB_OFFLINE is set.",
            "unset HF_HUB_OFFLINE and connect to the internet.",
        )
    api = HfApi(token=tok)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        info = api.upload_folder(
            folder_path=str(folder),
            repo_id=repo_id,
            path_in_repo=path_in_repo or None,
            commit_message=message,
            ignore_patterns=[".mistudio-export.json"],
        )
    except HfHubHTTPError as exc:
        raise HubError(
            f"The hub refused the upload to {repo_id}: {exc}",
            "check that the token can write to this repository.",
        ) from exc
    except OSError as exc:
        raise HubError(
            f"Could not reach the hub to upload to {repo_id}: {exc}", "check your connection."
        ) from exc
    return str(getattr(info, "commit_url", info))
