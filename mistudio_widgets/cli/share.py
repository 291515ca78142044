"""Sharing commands: ``mistudio export``, ``import``, ``upload``, ``compare`` and ``bundle pack|unpack``."""

from __future__ import annotations

import argparse
import os
import tempfile

from ..core.workspace import Workspace
from ..share.neuronpedia_records import DEFAULT_CREATOR_ID


def cmd_export(ws: Workspace, a: argparse.Namespace, out) -> None:
    if a.format == "saelens":
        from ..share.exporting import export_saelens

        r = export_saelens(
            ws, a.sae, a.out, repo_id=a.repo, neuronpedia_id=a.neuronpedia_id, overwrite=a.overwrite
        )
        out.summary(
            r,
            f"SAELens folder {r['path']}: {', '.join(r['files'])}"
            + "".join(f"\nwarning: {w}" for w in r["warnings"]),
        )
    else:
        from ..share.neuronpedia import export_neuronpedia

        r = export_neuronpedia(
            ws,
            a.sae,
            a.out,
            model_id=a.np_model,
            source_id=a.np_source,
            batch_size=a.batch_size,
            creator_id=a.creator_id,
            overwrite=a.overwrite,
            progress=out.progress,
        )
        out.summary(
            r,
            f"Neuronpedia export {r['path']}: {r['features']} features, {r['activations']} activation "
            "records, "
            f"{r['explanations']} explanations in {r['batches']} batches; ids "
            f"{r['model_id']}@{r['source_id']}:INDEX",
        )


def cmd_import(ws: Workspace, a: argparse.Namespace, out) -> None:
    from ..share.importing import import_sae

    art = import_sae(
        ws,
        a.source,
        name=a.name,
        model=a.model,
        hook=a.hook,
        hook_out=a.hook_out,
        token=os.environ.get("HF_TOKEN"),
    )
    m = art.meta
    out.summary(
        {
            "id": art.id,
            "name": art.name,
            "path": str(art.path),
            **{
                k: m.get(k)
                for k in (
                    "format",
                    "hook",
                    "hook_out",
                    "model",
                    "model_name",
                    "architecture",
                    "d_in",
                    "d_sae",
                )
            },
        },
        f"imported {art.name} ({art.id}): {m['format']} {m['architecture']} SAE, {m['d_in']} -> "
        f"{m['d_sae']}, "
        f"hook {m['hook']}, model {m.get('model_name') or 'unknown'}"
        + ("" if m.get("model") else " (not in this workspace)"),
    )


def cmd_upload(ws: Workspace, a: argparse.Namespace, out) -> None:
    from ..share.exporting import default_sae_path, export_saelens
    from ..share.hub import check_repo_id, model_card, resolve_token, upload_folder

    art = ws.get(a.sae, "sae")
    check_repo_id(a.repo)
    resolve_token(None)  # fail before any work when there is no token
    path = (a.path or default_sae_path(art)).strip("/")
    with tempfile.TemporaryDirectory() as tmp:
        folder = os.path.join(tmp, "sae")
        r = export_saelens(ws, art.id, folder, repo_id=a.repo, path_in_repo=path)
        with open(os.path.join(folder, "README.md"), "w") as f:
            f.write(
                model_card(
                    {**art.meta, "name": art.name, "has_sparsity": r["sparsity"]}, r["cfg"], a.repo, path
                )
            )
        url = upload_folder(folder, a.repo, private=a.private, path_in_repo=path)
    out.summary({"repo": a.repo, "path": path, "url": url}, f"uploaded {art.name} to {url}")


def cmd_share(ws: Workspace, a: argparse.Namespace, out) -> None:
    from ..share.sharing import describe, share_sae

    r = share_sae(
        ws,
        a.sae,
        a.repo,
        a.out,
        path=a.path,
        release=a.release,
        model_id=a.np_model,
        source_id=a.np_source,
        creator_id=a.creator_id,
        upload=not a.no_upload,
        private=a.private,
        overwrite=a.overwrite,
        extract_first=a.extract,
        progress=out.progress,
    )
    out.summary(r, describe(r))
    if r.get("upload_error"):
        raise SystemExit(1)


def cmd_compare(ws: Workspace, a: argparse.Namespace, out) -> None:
    from ..features.compare import compare_saes

    r = compare_saes(ws, a.sae_a, a.sae_b, top=a.top)
    s = r["summary"]
    lines = [
        f"{s['name_a']} ({s['d_sae_a']}) vs {s['name_b']} ({s['d_sae_b']}): {s['matched']} pairs by "
        f"{s['method']}, "
        f"mean cosine {s['mean_matched_cosine']:.3f}; {s['matched_above_0.9']} above 0.9, "
        f"{s['matched_above_0.7']} above 0.7",
        *(f"warning: {w}" for w in s["warnings"]),
        *(
            f"  {p['a']:>6} ~ {p['b']:<6} cos {p['cosine']:.3f}  {p['label_a'] or ''} | {p['label_b'] or ''}"
            for p in r["pairs"]
        ),
    ]
    out.summary({"summary": s, "pairs": r["pairs"], "histogram": r["histogram"]}, "\n".join(lines))


def cmd_bundle(ws: Workspace, a: argparse.Namespace, out) -> None:
    from ..share.bundles import pack, unpack

    if a.action == "pack":
        r = pack(ws, a.refs, a.file, progress=out.progress)
        out.summary(
            r,
            f"packed {len(r['artifacts'])} artifact(s) and {r['labels']} label(s) into {r['path']} "
            f"({r['bytes']:,} bytes)",
        )
    else:
        r = unpack(ws, a.file, progress=out.progress)
        out.summary(
            r,
            f"added {len(r['added'])} artifact(s) ({', '.join(x['name'] for x in r['added']) or 'none'}), "
            f"{r['labels']} label(s); {len(r['already_present'])} already present"
            + (
                f"\nremoved settings that would run code: {', '.join(r['stripped'])}" if r["stripped"] else ""
            ),
        )


def register(sub, cmd) -> None:
    sp = cmd(sub, "export", cmd_export, "export an SAE as a SAELens folder or Neuronpedia dashboard data")
    sp.add_argument("sae")
    sp.add_argument("--format", choices=["saelens", "neuronpedia"], default="saelens")
    sp.add_argument("--out", required=True, help="a new (or empty) folder")
    sp.add_argument("--overwrite", action="store_true", help="replace a non-empty --out folder")
    sp.add_argument("--repo", default=None, help="saelens: the hub repo named in pretrained_saes.yaml")
    sp.add_argument("--neuronpedia-id", default=None, help="saelens: metadata.neuronpedia_id (MODEL/SOURCE)")
    sp.add_argument("--np-model", default=None, help="neuronpedia: model id (default from the model)")
    sp.add_argument("--np-source", default=None, help="neuronpedia: source id such as 15-mistudio-res-4608")
    sp.add_argument("--batch-size", type=int, default=128, help="neuronpedia: features per batch file")
    sp.add_argument(
        "--creator-id",
        default=DEFAULT_CREATOR_ID,
        help="neuronpedia: the user the rows belong to (default: Neuronpedia's seeded bot user)",
    )
    sp = cmd(
        sub,
        "import",
        cmd_import,
        "import an SAE: SAELens folder, GemmaScope params.npz, sparsify folder, or hf://REPO/PATH",
    )
    sp.add_argument("source")
    sp.add_argument("--name", default=None)
    sp.add_argument("--model", default=None, help="the workspace model it reads (default: from its files)")
    sp.add_argument("--hook", default=None, help="the hook it reads, where its files do not say")
    sp.add_argument("--hook-out", default=None, help="transcoders: the hook it writes")
    sp = cmd(
        sub, "upload", cmd_upload, "upload an SAE (SAELens folder and model card) to the Hugging Face hub"
    )
    sp.add_argument("sae")
    sp.add_argument("--repo", required=True, help="OWNER/NAME")
    sp.add_argument(
        "--path",
        default="",
        help="folder inside the repository (default: the hook it reads, as SAELens's id)",
    )
    sp.add_argument("--private", action="store_true")
    sp = cmd(
        sub,
        "share",
        cmd_share,
        "make an SAE share-ready (SAELens folder in the hub layout, pretrained_saes.yaml entry, Neuronpedia "
        "files) and upload it when a token and the network are there",
    )
    sp.add_argument("sae")
    sp.add_argument("--repo", required=True, help="OWNER/NAME of the hub repository")
    sp.add_argument("--out", default=None, help="the folder to write (default: exports/<name>-share)")
    sp.add_argument("--path", default=None, help="folder inside the repository (default: the hook it reads)")
    sp.add_argument("--release", default=None, help="SAELens release and Neuronpedia release name")
    sp.add_argument("--np-model", default=None, help="Neuronpedia model id (default from the model)")
    sp.add_argument("--np-source", default=None, help="Neuronpedia source id such as 15-mistudio-res-4608")
    sp.add_argument(
        "--creator-id", default=DEFAULT_CREATOR_ID, help="the Neuronpedia user the rows belong to"
    )
    sp.add_argument(
        "--extract", action="store_true", help="run a feature extraction first when there is none"
    )
    sp.add_argument("--no-upload", action="store_true", help="write the folder only")
    sp.add_argument("--private", action="store_true")
    sp.add_argument("--overwrite", action="store_true", help="replace an earlier share folder")
    sp = cmd(sub, "compare", cmd_compare, "match the features of two SAEs by decoder cosine similarity")
    sp.add_argument("sae_a")
    sp.add_argument("sae_b")
    sp.add_argument("--top", type=int, default=20, help="how many best pairs to list")
    bd = sub.add_parser("bundle", help="pack or unpack workshop bundles").add_subparsers(
        dest="sub", required=True
    )
    sp = cmd(
        bd,
        "pack",
        cmd_bundle,
        "pack SAEs (with extraction and labels), extractions or datasets into one file",
    )
    sp.set_defaults(action="pack")
    sp.add_argument("file", help="the bundle to write (.tar.gz)")
    sp.add_argument("refs", nargs="+")
    sp = cmd(bd, "unpack", cmd_bundle, "add a bundle's artifacts to this workspace")
    sp.set_defaults(action="unpack")
    sp.add_argument("file")
