"""Workshop bundles: pack chosen workspace artifacts into one file and unpack them into another
workspace, so a class can start at any tutorial without waiting for training.

An SAE brings its newest finished extraction and its labels; a tokenization brings its dataset. The
models they refer to are not packed (they are large and usually the embedded default): unpacking maps
each to the target workspace's model of the same name or upstream id, adding the embedded default
when that is the one needed. Unpacking is all or nothing per artifact, never overwrites, and refuses
archive members outside the bundle's own folders."""

from __future__ import annotations

import json
import os
import re
import shutil
import tarfile
import time
import zlib
from pathlib import Path
from typing import Any

from ..core.disk import disk_error
from ..core.errors import MistudioError
from ..core.progress import ProgressCallback, emit
from ..core.workspace import Artifact, Workspace
from ..features import latest_extraction
from .importing import match_model

FORMAT, VERSION, MANIFEST = "mistudio-bundle", 1, "manifest.json"
PACKABLE = ("dataset", "tokenization", "sae", "extraction", "steering_preset")
SAFE_ID = re.compile(r"[a-z]{2,8}-[0-9a-f]{6,32}")  # used with fullmatch (no trailing newline)
MAX_MANIFEST_BYTES, MAX_ENTRIES = 16 << 20, 5000  # checked before the manifest is read or its entries used
LABEL_FIELDS = {"feature", "label", "method", "model", "template", "score", "meta", "time", "id"}
CODE_KEYS = ("trust_remote_code", "auto_map")  # settings that would run code: never unpacked
REQUIRED_FILES = {"sae": ("cfg.json", "sae_weights.safetensors")}


class BundleError(MistudioError):
    pass


def _closure(ws: Workspace, refs: list[str]) -> list[Artifact]:
    """The artifacts to pack, parents before children."""
    chosen: dict[str, Artifact] = {}

    def add(art: Artifact) -> None:
        if art.id in chosen:
            return
        if art.kind not in PACKABLE:
            raise BundleError(
                f"{art.name!r} is a {art.kind}; bundles hold {', '.join(PACKABLE)}.",
                "pack the SAE, extraction or dataset made from it instead.",
            )
        if art.meta.get("refused_because") or (art.path is not None and not art.path.is_dir()):
            why = art.meta.get("refused_because") or f"its folder {art.path} is gone"
            raise BundleError(
                f"The {art.kind} {art.name!r} ({art.id}) cannot be packed: {why}. Nothing was written.",
                f"make it again, or remove its catalog row with `mistudio delete {art.id}`.",
            )
        if art.kind == "tokenization" and art.parent:
            add(ws.get(art.parent))
        if art.kind == "extraction":
            add(ws.get(art.parent_id, "sae"))
        chosen[art.id] = art
        if art.kind == "sae":
            ext = latest_extraction(ws, art)
            if ext is not None:
                chosen[ext.id] = ext

    for ref in refs:
        art = ws.find(ref, "sae") or ws.get(ref)
        add(art)
    return list(chosen.values())


def pack(
    ws: Workspace, refs: list[str], out: str | Path, *, progress: ProgressCallback | None = None
) -> dict[str, Any]:
    """Write the bundle file ``out`` (a .tar.gz) holding ``refs`` and what they need."""
    if not refs:
        raise BundleError("Nothing to pack.", "name at least one SAE, extraction or dataset.")
    arts = _closure(ws, refs)
    out = Path(out).expanduser()
    if out.exists():
        raise BundleError(f"{out} already exists.", "choose a new file name (nothing was overwritten).")
    models: dict[str, Any] = {}
    for a in arts:
        mid = a.meta.get("model")
        m = ws.find(mid, "model") if isinstance(mid, str) else None
        if m is not None:
            prov = m.meta.get("provenance") or {}
            models[m.id] = {
                "name": m.name,
                "upstream": prov.get("upstream") or prov.get("hub_id"),
                "kind": prov.get("kind"),
            }
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "version": VERSION,
        "created": time.time(),
        "source_workspace": str(ws.root),
        "artifacts": [
            {
                "id": a.id,
                "kind": a.kind,
                "name": a.name,
                "parent": a.parent,
                "meta": a.meta,
                "folder": bool(a.path and a.path.is_dir()),
            }
            for a in arts
        ],
        "labels": {a.id: ws.labels(a.id, history=True) for a in arts if a.kind == "sae"},
        "models": models,
    }
    tmp = out.with_name(f".{out.name}.partial-{os.getpid()}")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with tarfile.open(tmp, "w:gz", compresslevel=1) as tar:
            data = json.dumps(manifest, indent=1, default=str).encode()
            info = tarfile.TarInfo(MANIFEST)
            info.size, info.mtime = len(data), int(time.time())
            import io

            tar.addfile(info, io.BytesIO(data))
            for i, a in enumerate(arts):
                if a.path and a.path.is_dir():
                    tar.add(a.path, arcname=f"artifacts/{a.id}")
                emit(progress, "pack", i + 1, len(arts), unit="artifact", finished=i + 1 == len(arts))
        os.replace(tmp, out)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise disk_error(exc, f"the bundle {out}", writing="export") from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return {
        "path": str(out),
        "bytes": out.stat().st_size,
        "artifacts": [{"id": a.id, "kind": a.kind, "name": a.name} for a in arts],
        "labels": sum(len(v) for v in manifest["labels"].values()),
    }


def _read_manifest(tar: tarfile.TarFile, path: Path) -> dict[str, Any]:
    try:
        info = tar.getmember(MANIFEST)
        if info.size > MAX_MANIFEST_BYTES:
            raise BundleError(
                f"{path} has a {info.size:,}-byte manifest; bundles' manifests are at most "
                f"{MAX_MANIFEST_BYTES:,} bytes. Nothing was read or added.",
                "only unpack bundles made by `mistudio bundle pack`; this one was refused.",
            )
        f = tar.extractfile(info)
        manifest = json.loads(f.read()) if f else None
    except (KeyError, json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise BundleError(
            f"{path} is not a mistudio bundle (no readable {MANIFEST}).",
            "pack it with `mistudio bundle pack`.",
        ) from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BundleError(f"{path} is not a mistudio bundle.", "pack it with `mistudio bundle pack`.")
    version = manifest.get("version", 0)
    if isinstance(version, bool) or not isinstance(version, int):
        raise BundleError(
            f"{path} has a bundle version of {str(version)[:20]!r}.", "this bundle was refused."
        )
    if version > VERSION:
        raise BundleError(
            f"{path} was packed by a newer mistudio (bundle version {manifest['version']}).",
            "upgrade mistudio-widgets.",
        )
    return manifest


def _strip_code(value: Any, where: str, stripped: list[str]) -> Any:
    """``value`` without settings that can run code (at any depth); their paths go into ``stripped``."""
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if k in CODE_KEYS:
                stripped.append(f"{where}.{k}")
                continue
            out[k] = _strip_code(v, f"{where}.{k}", stripped)
        return out
    if isinstance(value, list):
        return [_strip_code(v, f"{where}[{i}]", stripped) for i, v in enumerate(value)]
    return value


def _check_entries(manifest: dict[str, Any], members: list[tarfile.TarInfo], path: Path) -> None:
    """Refuse entries that are not plain data: unknown kinds, ids that are not ids, wrong types, folders
    without their files."""
    entries = manifest.get("artifacts")
    if not isinstance(entries, list):
        raise BundleError(f"{path} has no list of artifacts.", "pack it again with `mistudio bundle pack`.")
    if len(entries) > MAX_ENTRIES:
        raise BundleError(
            f"{path} lists {len(entries):,} artifacts; a bundle holds at most {MAX_ENTRIES:,}.",
            "split it into several bundles; this one was refused and nothing was added.",
        )
    names = {m.name for m in members}
    tops = {"/".join(Path(n).parts[:2]) for n in names}  # artifacts/<id> of every member, looked up once
    for a in entries:
        if not isinstance(a, dict) or a.get("kind") not in PACKABLE:
            kind = a.get("kind") if isinstance(a, dict) else a
            raise BundleError(
                f"{path} holds an artifact of kind {str(kind)[:60]!r}; bundles hold {', '.join(PACKABLE)}.",
                "only unpack bundles made by `mistudio bundle pack`; this one was refused and nothing "
                "was added.",
            )
        if not isinstance(a.get("id"), str) or not SAFE_ID.fullmatch(a["id"]):
            raise BundleError(
                f"{path} holds an artifact with the id {str(a.get('id'))[:60]!r}, which is not an id.",
                "this bundle was refused and nothing was added.",
            )
        if (
            not isinstance(a.get("name"), str)
            or not isinstance(a.get("meta"), dict)
            or not (a.get("parent") is None or isinstance(a["parent"], str))
            or not isinstance(a.get("folder"), bool)
        ):
            raise BundleError(
                f"{path}: the entry of {a['id']} has fields of the wrong type.", "this bundle was refused."
            )
        prefix = f"artifacts/{a['id']}"
        if a["folder"] and prefix not in tops:
            raise BundleError(
                f"{path} lists the {a['kind']} {a['name']!r} with a folder, but holds no files for it.",
                "pack it again; this bundle was refused.",
            )
        for f in REQUIRED_FILES.get(a["kind"], ()) if a["folder"] else ():
            if f"{prefix}/{f}" not in names:
                raise BundleError(
                    f"{path}: the {a['kind']} {a['name']!r} lacks its {f}.",
                    "pack it again; this bundle was refused.",
                )


def _check_labels(manifest: dict[str, Any], path: Path) -> dict[str, list[dict[str, Any]]]:
    """The bundle's labels, every row checked (keys, types, lengths) before anything is written; labels
    only of SAEs the bundle itself carries."""
    from ..features.store import MAX_LABEL_CHARS

    labels = manifest.get("labels") or {}
    saes = {a["id"] for a in manifest["artifacts"] if a["kind"] == "sae"}
    if not isinstance(labels, dict):
        raise BundleError(f"{path}: its labels are not a table by SAE.", "this bundle was refused.")

    def bad(why: str) -> BundleError:
        return BundleError(f"{path}: {why}. Nothing was added.", "this bundle was refused.")

    for sae_id, rows in labels.items():
        if sae_id not in saes:
            raise bad(f"it holds labels for {str(sae_id)[:40]!r}, an SAE it does not carry")
        if not isinstance(rows, list):
            raise bad(f"the labels of {sae_id} are not a list")
        for r in rows:
            if not isinstance(r, dict) or not {"feature", "label"} <= set(r) or set(r) - LABEL_FIELDS:
                raise bad(f"a label row of {sae_id} has unexpected fields")
            text, feat = r["label"], r["feature"]
            if not isinstance(text, str) or not text.strip() or len(text) > MAX_LABEL_CHARS:
                raise bad(f"a label of {sae_id} is empty, not text, or over {MAX_LABEL_CHARS:,} characters")
            if isinstance(feat, bool) or not isinstance(feat, int) or feat < 0:
                raise bad(f"a label of {sae_id} names the feature {str(feat)[:20]!r}")
            short = all(
                r.get(k) is None or (isinstance(r[k], str) and len(r[k]) <= 200)
                for k in ("method", "model", "template")
            )
            score = r.get("score")
            number = score is None or (
                isinstance(score, (int, float)) and not isinstance(score, bool) and 0 <= score <= 1
            )
            when = r.get("time") is None or (
                isinstance(r["time"], (int, float)) and not isinstance(r["time"], bool)
            )
            meta_ok = r.get("meta") is None or (
                isinstance(r["meta"], dict) and len(json.dumps(r["meta"])) <= 20_000
            )
            if not (short and number and when and meta_ok):
                raise bad(f"a label row of {sae_id} has a field of the wrong type or size")
    return labels


def _map_model(ws: Workspace, info: dict[str, Any], progress: ProgressCallback | None) -> str | None:
    art = match_model(ws, info.get("name")) or match_model(ws, info.get("upstream"))
    if art is None and info.get("kind") == "embedded":
        from ..data.models import resolve_model

        art = resolve_model(ws, "default", progress=progress)
    return art.id if art is not None else None


def _check_members(manifest: dict[str, Any], members: list[tarfile.TarInfo], path: Path) -> None:
    """Every member is the manifest or lies in a listed artifact's folder, and none is a link or device."""
    ids = {a["id"] for a in manifest["artifacts"]}
    for m in members:
        parts = Path(m.name).parts
        if m.name != MANIFEST and not (
            len(parts) >= 2 and parts[0] == "artifacts" and parts[1] in ids and ".." not in parts
        ):
            raise BundleError(
                f"{path} holds an unexpected member {m.name!r}.",
                "only unpack bundles you trust; this one was refused.",
            )
        if m.issym() or m.islnk() or m.isdev():
            raise BundleError(f"{path} holds a link or device {m.name!r}.", "this bundle was refused.")


def _extract_folder(
    ws: Workspace,
    tar: tarfile.TarFile,
    members: list[tarfile.TarInfo],
    a: dict[str, Any],
    rel: str,
    path: Path,
) -> None:
    """One artifact's folder, extracted into the workspace's ``.tmp`` and renamed to ``rel`` when whole."""
    tmp = ws.root / ".tmp" / f"unpack-{a['id']}.{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        prefix = f"artifacts/{a['id']}"
        mine = [m for m in members if m.name == prefix or m.name.startswith(prefix + "/")]
        try:
            tar.extractall(tmp, members=mine, filter="data")
        except (tarfile.TarError, EOFError, zlib.error) as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            raise BundleError(
                f"{path} is corrupted inside the {a['kind']} {a['name']!r} ({exc}).",
                "copy the bundle again.",
            ) from exc
        (ws.root / f"{a['kind']}s").mkdir(exist_ok=True)
        os.replace(tmp / prefix, ws.root / rel)
        shutil.rmtree(tmp, ignore_errors=True)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise disk_error(exc, f"the {a['kind']} {a['name']!r}") from exc


def unpack(ws: Workspace, path: str | Path, *, progress: ProgressCallback | None = None) -> dict[str, Any]:
    """Add a bundle's artifacts (and labels) to ``ws``. Artifacts already present (same id) are kept
    as they are; names taken by other artifacts get a suffix."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise BundleError(
            f"{path} does not exist.", "give the path of a .tar.gz made by `mistudio bundle pack`."
        )
    try:
        tar = tarfile.open(path, "r:*")
    except (tarfile.TarError, OSError) as exc:
        raise BundleError(
            f"{path} is not a readable bundle ({exc}).", "copy the file again; it may be truncated."
        ) from exc
    added: list[dict[str, Any]] = []
    kept: list[str] = []
    stripped: list[str] = []
    with tar:
        try:
            manifest = _read_manifest(tar, path)
            members = (
                tar.getmembers()
            )  # reads the whole archive: a truncated one fails here, before any write
        except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
            raise BundleError(
                f"{path} is truncated or corrupted ({exc.__class__.__name__}: {exc}); nothing was added.",
                "copy the bundle again.",
            ) from exc
        _check_entries(manifest, members, path)
        labels = _check_labels(manifest, path)
        _check_members(manifest, members, path)
        model_map = {
            mid: _map_model(ws, info, progress) for mid, info in (manifest.get("models") or {}).items()
        }
        for i, a in enumerate(manifest["artifacts"]):
            if ws.find(a["id"]) is not None:
                kept.append(a["id"])
                continue
            meta = _strip_code(dict(a["meta"]), a["id"], stripped)
            if meta.get("model") in model_map:
                meta["model"] = model_map[meta["model"]]
            elif meta.get("model") is not None and ws.find(str(meta["model"]), "model") is None:
                meta["model"] = None  # an unknown model reference is dropped, never followed
            parent = a["parent"] if a["parent"] and ws.find(a["parent"]) is not None else None
            name = ws.unique_name(a["kind"], a["name"])
            rel = f"{a['kind']}s/{a['id']}" if a["folder"] else ""
            if rel:
                ws.contained(rel, f"folder of the bundled {a['kind']} {a['name']!r}")
            if rel:
                _extract_folder(ws, tar, members, a, rel, path)
            try:
                ws.register(a["kind"], name, meta=meta, parent=parent, id=a["id"], relpath=rel)
            except BaseException:
                if rel:
                    shutil.rmtree(ws.root / rel, ignore_errors=True)
                raise
            added.append({"id": a["id"], "kind": a["kind"], "name": name})
            emit(progress, "unpack", i + 1, len(manifest["artifacts"]), unit="artifact")
        n_labels = 0
        new = {a["id"] for a in added}
        for sae_id, rows in labels.items():
            if sae_id in new:  # an SAE already here keeps its own labels
                n_labels += ws.add_labels(sae_id, [{"method": "manual", **r} for r in rows])
    return {
        "path": str(path),
        "added": added,
        "already_present": kept,
        "labels": n_labels,
        "models": {k: v for k, v in model_map.items()},
        "stripped": stripped,
    }
