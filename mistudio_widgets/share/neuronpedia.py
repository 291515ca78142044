"""Neuronpedia export of an SAE's extraction, streamed a batch of features at a time (bounded memory
for 16k+ features):

- ``dashboard/batch-N.json``: SAEDashboard's NeuronpediaRunner layout, loadable by its
  ``NeuronpediaDashboardBatch`` (no other keys), the input of Neuronpedia's converter;
- ``extras/batch-N.jsonl.gz``: what a dashboard batch cannot hold (our feature ids, the hook, every
  label with its method, model and score);
- ``<model>/<source>/``: the bulk-import layout Neuronpedia's converter and importer use
  (``release/model/sourceset/source.jsonl``; ``features``, ``activations`` and ``explanations`` as
  ``batch-N.jsonl.gz``). Field by field see ``neuronpedia_records``.
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from ..core.progress import ProgressCallback, emit
from ..core.workspace import Artifact, Workspace
from ..features import (
    EXAMPLES_FILE,
    FEATURES_FILE,
    HIST_BINS,
    LOGIT_HIST_BINS,
    label_verdict,
    read_impact,
    require_extraction,
    shown_vocab,
)
from ..features.store import read_parquet, reading_extraction_file
from ..sae.io import load_sae
from . import neuronpedia_records as rec
from .exporting import default_neuronpedia_ids, default_release, fresh_folder, model_hub_id, model_weights

DEFAULT_CREATOR_ID = rec.DEFAULT_CREATOR_ID
SHOWN_VERDICTS = ("manual", "above chance")  # labels exported as Neuronpedia explanations


def neuronpedia_ids(
    ws: Workspace,
    art: Artifact,
    model_id: str | None,
    source_id: str | None,
    release: str | None,
    creator_id: str,
) -> tuple[str, str, str]:
    """(model id, source id, release) of an SAE on Neuronpedia: the ones given, else the defaults derived
    from the SAE; every one (and the creator id) checked against Neuronpedia's id rules."""
    np_model, np_source = default_neuronpedia_ids(ws, art)
    model_id = rec.check_id(model_id or np_model, "Model id")
    source_id = rec.check_source_id(source_id or np_source)
    release = rec.check_id(release or default_release(art), "Release name")
    rec.check_creator_id(creator_id)
    return model_id, source_id, release


def _feature_batches(
    ext_path: Path, batch: int
) -> Iterator[tuple[list[dict[str, Any]], dict[int, list[dict[str, Any]]]]]:
    """(feature rows, examples by feature) for consecutive batches of features; the examples file is
    sorted by feature, so each read touches only the row groups of its batch."""
    import pyarrow.parquet as pq

    with reading_extraction_file(ext_path / FEATURES_FILE):
        batches = pq.ParquetFile(ext_path / FEATURES_FILE).iter_batches(batch_size=batch)
    while True:
        with reading_extraction_file(ext_path / FEATURES_FILE):
            rb = next(batches, None)
        if rb is None:
            return
        rows = rb.to_pylist()
        lo, hi = rows[0]["index"], rows[-1]["index"]
        ex = read_parquet(
            ext_path / EXAMPLES_FILE, filters=[("feature", ">=", lo), ("feature", "<=", hi)]
        ).to_pylist()
        by: dict[int, list[dict[str, Any]]] = {}
        for r in ex:
            by.setdefault(r["feature"], []).append(r)
        yield rows, by


def _write_gz_jsonl(path: Path, records: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt", encoding="utf-8", compresslevel=5) as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def dataset_source(ws: Workspace, tokenization: str | None) -> str | None:
    """Where the extraction's text came from, in words that mean something outside this workspace:
    a hub dataset's id, the embedded corpus's package, or a local file's name."""
    tok = ws.find(tokenization, "tokenization") if tokenization else None
    ds = ws.find(tok.parent, "dataset") if tok is not None and tok.parent else None
    if ds is None:
        return None
    prov = ds.meta.get("provenance") or {}
    if prov.get("kind") == "hub":
        return str(prov.get("hub_id")) + (f" ({prov['config_name']})" if prov.get("config_name") else "")
    if prov.get("kind") == "embedded":
        return str(prov.get("source") or ds.name).split(",")[0]
    if prov.get("kind") == "local":
        return f"local {prov.get('format') or 'text'} file {Path(prov.get('path') or ds.name).name}"
    return ds.name


def hub_location(sae: Artifact) -> tuple[str | None, str | None]:
    """Where the SAE's weights are on the hub, when we know: the repository it was imported from, or
    the one ``share`` uploaded it to."""
    uploaded = sae.meta.get("uploaded") or {}
    if uploaded.get("repo_id"):
        return uploaded["repo_id"], uploaded.get("path") or None
    origin = sae.meta.get("origin") or {}
    if origin.get("kind") == "hub":
        return origin.get("repo_id"), origin.get("path") or None
    return None, None


def _model_info(ws: Workspace, sae: Artifact) -> dict[str, Any]:
    model = ws.find(str(sae.meta["model"]), "model") if sae.meta.get("model") else None
    return dict((model.meta.get("info") if model else None) or {})


@dataclass
class _Export:
    """What every feature's records share in one export."""

    model_id: str
    source_id: str
    hook: str
    creator_id: str
    created: str
    vocab: tuple[str, ...]
    groups: int  # quantile groups of the extraction's examples
    W_dec: np.ndarray
    labels: dict[int, list[dict[str, Any]]]  # every label of each feature, with its verdict
    impact: np.ndarray | None  # each feature's ablation impact, when measured
    n_prompts: int
    n_tokens: int
    dataset: str | None

    @property
    def ids(self) -> dict[str, str]:
        return {"model_id": self.model_id, "source_id": self.source_id}


def export_neuronpedia(
    ws: Workspace,
    sae: str,
    out: str | Path,
    *,
    model_id: str | None = None,
    source_id: str | None = None,
    release: str | None = None,
    batch_size: int = 128,
    creator_id: str = DEFAULT_CREATOR_ID,
    creator_name: str = rec.CREATOR_NAME,
    hf_repo_id: str | None = None,
    hf_folder_id: str | None = None,
    saelens_release: str | None = None,
    saelens_sae_id: str | None = None,
    overwrite: bool = False,
    progress: ProgressCallback | None = None,
) -> dict[str, Any]:
    """Write the Neuronpedia export of ``sae``'s latest extraction under ``out``. ``creator_id`` is the
    Neuronpedia user the rows belong to (its seeded bot user unless given); ``hf_repo_id`` and
    ``hf_folder_id`` say where the weights were uploaded."""
    art = ws.get(sae, "sae")
    model_id, source_id, release = neuronpedia_ids(ws, art, model_id, source_id, release, creator_id)
    if hf_repo_id is None:
        hf_repo_id, hf_folder_id = hub_location(art)
    ext = require_extraction(ws, art)
    ctx = _export_context(ws, art, ext, model_id, source_id, creator_id)
    d_sae = int(ext.meta["summary"]["d_sae"])
    n_batches = -(-d_sae // batch_size)
    counts = {"features": 0, "activations": 0, "explanations": 0}
    with fresh_folder(out, overwrite=overwrite, workspace=ws.root, what="neuronpedia") as tmp:
        bulk = tmp / model_id / source_id
        bulk.mkdir(parents=True)
        (tmp / "dashboard").mkdir()
        info = _metadata(
            ws,
            art,
            ext,
            ctx,
            release=release,
            creator_name=creator_name,
            hub=(hf_repo_id, hf_folder_id),
            saelens=(saelens_release, saelens_sae_id),
        )
        for name, line in info.items():
            (bulk / name).write_text(json.dumps(line) + "\n")
        for b, (rows, examples) in enumerate(_feature_batches(ext.folder, batch_size)):
            for k, n in _write_batch(ctx, tmp, b, rows, examples).items():
                counts[k] += n
            emit(progress, "export", b + 1, n_batches, unit="batch", finished=b + 1 == n_batches)
        manifest = {
            "sae": art.id,
            "extraction": ext.id,
            **ctx.ids,
            "release": release,
            "creator_id": creator_id,
            "dataset": ctx.dataset,
            "hf_repo_id": hf_repo_id,
            "hf_folder_id": hf_folder_id,
            "batches": n_batches,
            "feature_id_format": f"{model_id}@{source_id}:INDEX",
            **counts,
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return {
        "format": "neuronpedia",
        "path": str(Path(out).expanduser().resolve()),
        **manifest,
    }


def _export_context(
    ws: Workspace, art: Artifact, ext: Artifact, model_id: str, source_id: str, creator_id: str
) -> _Export:
    """What the export's records share: ids, the hook, the vocabulary, the decoder and every label."""
    from ..data.models import load_tokenizer

    labels: dict[int, list[dict[str, Any]]] = {}
    for lab in ws.labels(art.id, history=True):
        labels.setdefault(int(lab["feature"]), []).append({**lab, "verdict": label_verdict(lab)})
    return _Export(
        model_id=model_id,
        source_id=source_id,
        hook=art.meta.get("hook") or "",
        creator_id=creator_id,
        created=rec.now_iso(),
        vocab=shown_vocab(load_tokenizer(ws, ext.meta["model"])),  # as the feature page shows tokens
        groups=int(ext.meta["config"].get("quantile_groups", 10)),
        W_dec=load_sae(art.folder)[0].W_dec.detach().float().numpy(),
        labels=labels,
        impact=impact.estimate if (impact := read_impact(ext)) is not None else None,
        n_prompts=int(ext.meta.get("sequences") or 0),
        n_tokens=int(ext.meta.get("context_size") or 0),
        dataset=dataset_source(ws, ext.meta.get("tokenization")),
    )


def _metadata(
    ws: Workspace,
    art: Artifact,
    ext: Artifact,
    ctx: _Export,
    *,
    release: str,
    creator_name: str,
    hub: tuple[str | None, str | None],
    saelens: tuple[str | None, str | None],
) -> dict[str, Any]:
    """The export's metadata records (release, model, source set, source), one JSON line each."""
    d_sae = int(ext.meta["summary"]["d_sae"])
    return rec.metadata_records(
        release=release,
        title=f"{art.name}: a {art.meta.get('architecture', '')} SAE exported with mistudio-widgets",
        model_id=ctx.model_id,
        model_display=model_hub_id(ws, art) or ctx.model_id,
        model_info=_model_info(ws, art),
        set_name=ctx.source_id.split("-", 1)[1],
        set_description=f"{ctx.hook} - {d_sae} features",
        source_id=ctx.source_id,
        dataset=ctx.dataset,
        num_prompts=ctx.n_prompts,
        num_tokens_in_prompt=ctx.n_tokens,
        creator_id=ctx.creator_id,
        creator_name=creator_name,
        hf_repo_id=hub[0],
        hf_folder_id=hub[1],
        saelens_release=saelens[0],
        saelens_sae_id=saelens[1],
        notes=f"hook {ctx.hook}; mistudio-widgets SAE {art.id}, extraction {ext.id}"
        + (f"; trained on {w}" if (w := model_weights(ws, art)) else ""),
        created=ctx.created,
    )


def _write_batch(
    ctx: _Export, tmp: Path, b: int, rows: list[dict[str, Any]], examples: dict[int, list[dict[str, Any]]]
) -> dict[str, int]:
    """One batch of features: SAEDashboard's JSON, our side records, and the bulk tables (features,
    activations, and the explanations that may be shown). Returns how many rows of each were written."""
    dash, feats, acts, expl, side = [], [], [], [], []
    who = {"creator_id": ctx.creator_id, "created": ctx.created, **ctx.ids}
    for row in rows:
        i = int(row["index"])
        activations = rec.dashboard_activations(row, examples.get(i, []), ctx.vocab, ctx.groups, HIST_BINS)
        feat = rec.dashboard_feature(
            i,
            row,
            activations,
            ctx.W_dec[i].tolist(),
            HIST_BINS,
            LOGIT_HIST_BINS,
            ctx.n_prompts,
            ctx.n_tokens,
            ctx.dataset or "",
        )
        dash.append(feat)
        feats.append(rec.bulk_feature(feat, hook=ctx.hook, **who))
        acts += [rec.bulk_activation(a, i, **who) for a in activations]
        expl += [  # only labels a person wrote or that score above chance on held-out texts
            rec.explanation(lab, i, author_id=ctx.creator_id, **ctx.ids)
            for lab in ctx.labels.get(i, [])
            if lab["verdict"] in SHOWN_VERDICTS
        ]
        side.append(
            rec.side_record(
                i,
                feature_id=f"{ctx.model_id}@{ctx.source_id}:{i}",
                hook=ctx.hook,
                labels=ctx.labels.get(i, []),
                impact=float(ctx.impact[i]) if ctx.impact is not None else None,
            )
        )
    layer, set_name = ctx.source_id.split("-", 1)
    batch = {"model_id": ctx.model_id, "layer": int(layer), "sae_set": set_name, "sae_id_suffix": None}
    (tmp / "dashboard" / f"batch-{b}.json").write_text(
        json.dumps({**batch, "features": dash}, ensure_ascii=False)
    )
    bulk = tmp / ctx.model_id / ctx.source_id
    _write_gz_jsonl(tmp / "extras" / f"batch-{b}.jsonl.gz", side)
    _write_gz_jsonl(bulk / "features" / f"batch-{b}.jsonl.gz", feats)
    _write_gz_jsonl(bulk / "activations" / f"batch-{b}.jsonl.gz", acts)
    if expl:
        _write_gz_jsonl(bulk / "explanations" / f"batch-{b}.jsonl.gz", expl)
    return {"features": len(feats), "activations": len(acts), "explanations": len(expl)}
