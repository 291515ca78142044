"""Neuronpedia export of an SAE's extraction, streamed a batch of features at a time (bounded memory
for 16k+ features):

- ``dashboard/batch-N.json``: SAEDashboard's NeuronpediaRunner layout (per feature: activations with
  tokens, values and bin fields; pos/neg logits; frac_nonzero; activation and logit histograms;
  explanations), the input of Neuronpedia's converter;
- ``<model>/<source>/``: the bulk-import layout (``release/model/sourceset/source.jsonl`` and
  ``features``, ``activations``, ``explanations`` as ``batch-N.jsonl.gz`` with camelCase records),
  feature ids ``MODEL@SOURCE:INDEX``, the decoder row as steering vector with a default strength of
  the feature's largest activation.
"""

from __future__ import annotations

import gzip
import json
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from ..core.progress import ProgressCallback, emit
from ..core.workspace import Workspace
from ..features import (
    EXAMPLES_FILE,
    FEATURES_FILE,
    HIST_BINS,
    LOGIT_HIST_BINS,
    require_extraction,
    vocab_strings,
)
from ..sae.io import load_sae
from .exporting import default_neuronpedia_ids, fresh_folder, model_hub_id

CREATOR = "mistudio-widgets"


def _centres(lo: float, hi: float, n: int) -> list[float]:
    edges = np.linspace(lo, hi, n + 1)
    return ((edges[:-1] + edges[1:]) / 2).tolist()


def _feature_batches(
    ext_path: Path, batch: int
) -> Iterator[tuple[list[dict[str, Any]], dict[int, list[dict[str, Any]]]]]:
    """(feature rows, examples by feature) for consecutive batches of features; the examples file is
    sorted by feature, so each read touches only the row groups of its batch."""
    import pyarrow.parquet as pq

    feats = pq.ParquetFile(ext_path / FEATURES_FILE)
    for rb in feats.iter_batches(batch_size=batch):
        rows = rb.to_pylist()
        lo, hi = rows[0]["index"], rows[-1]["index"]
        ex = pq.read_table(
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


def export_neuronpedia(
    ws: Workspace,
    sae: str,
    out: str | Path,
    *,
    model_id: str | None = None,
    source_id: str | None = None,
    batch_size: int = 128,
    creator: str = CREATOR,
    overwrite: bool = False,
    progress: ProgressCallback | None = None,
) -> dict[str, Any]:
    """Write the Neuronpedia export of ``sae``'s latest extraction under ``out``."""
    ext = require_extraction(ws, sae)
    art = ws.get(ext.parent, "sae")
    model, _ = load_sae(art.path)
    W_dec = model.W_dec.detach().float().numpy()
    np_model, np_source = default_neuronpedia_ids(ws, art)
    model_id, source_id = model_id or np_model, source_id or np_source
    layer = source_id.split("-")[0]
    cfg = ext.meta["config"]
    groups = int(cfg.get("quantile_groups", 10))
    from ..data.models import load_tokenizer

    vocab = vocab_strings(load_tokenizer(ws, ext.meta["model"]))
    labels: dict[int, list[dict[str, Any]]] = {}
    for lab in ws.labels(art.id, history=True):
        labels.setdefault(int(lab["feature"]), []).append(lab)
    now = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
    d_sae = int(ext.meta["summary"]["d_sae"])
    n_batches = -(-d_sae // batch_size)
    counts = {"features": 0, "activations": 0, "explanations": 0}
    with fresh_folder(out, overwrite=overwrite, workspace=ws.root, what="neuronpedia") as tmp:
        bulk = tmp / model_id / source_id
        bulk.mkdir(parents=True)
        hook = art.meta.get("hook") or ""
        info = {
            "release.jsonl": {
                "name": f"mistudio-{art.name}",
                "description": f"SAE {art.name} trained with mistudio-widgets",
                "descriptionShort": art.name,
                "urls": [],
                "creatorNameShort": creator,
                "creatorName": creator,
                "createdAt": now,
            },
            "model.jsonl": {
                "id": model_id,
                "instruct": "instruct" in model_id or model_id.endswith("-it"),
                "displayNameShort": model_id,
                "displayName": model_hub_id(ws, art) or model_id,
                "createdAt": now,
            },
            "sourceset.jsonl": {
                "modelId": model_id,
                "name": source_id.split("-", 1)[1],
                "creatorName": creator,
                "releaseName": f"mistudio-{art.name}",
                "description": f"{hook} - {d_sae} features",
                "visibility": "PUBLIC",
                "createdAt": now,
            },
            "source.jsonl": {
                "id": source_id,
                "modelId": model_id,
                "setName": source_id.split("-", 1)[1],
                "visibility": "PUBLIC",
                "dataset": ext.meta.get("tokenization"),
                "num_prompts": ext.meta.get("sequences"),
                "num_tokens_in_prompt": ext.meta.get("context_size"),
                "hookName": hook,
            },
        }
        for name, rec in info.items():
            (bulk / name).write_text(json.dumps(rec) + "\n")
        for b, (rows, examples) in enumerate(_feature_batches(ext.path, batch_size)):
            dash, feats, acts, expl = [], [], [], []
            for row in rows:
                i, mx = int(row["index"]), float(row["max"])
                fid = f"{model_id}@{source_id}:{i}"
                act_recs = []
                hist = np.asarray(row["hist"], dtype=np.float64)
                total = max(hist.sum(), 1.0)
                for e in examples.get(i, []):
                    toks = [vocab[t] if 0 <= t < len(vocab) else "" for t in e["tokens"]]
                    vals = [float(v) for v in e["values"]]
                    if 0 <= int(e["peak"]) < len(vals):
                        vals[int(e["peak"])] = float(
                            e["value"]
                        )  # the context is stored in 16 bits; the peak exactly
                    if e["kind"] == "top":
                        lo_b, hi_b, contains = -1.0, -1.0, -1.0  # SAEDashboard's marks for the top group
                    else:
                        g = int(e["group"])
                        lo_b, hi_b = g * mx / groups, (g + 1) * mx / groups
                        a, z = int(g * HIST_BINS / groups), int((g + 1) * HIST_BINS / groups)
                        contains = float(hist[a:z].sum() / total)
                    act_recs.append(
                        {
                            "tokens": toks,
                            "values": vals,
                            "bin_min": lo_b,
                            "bin_max": hi_b,
                            "bin_contains": contains,
                            "qualifying_token_index": int(e["peak"]),
                        }
                    )
                pos = {
                    "pos_str": list(row.get("top_logit_tokens") or []),
                    "pos_values": [float(v) for v in row.get("top_logit_values") or []],
                    "neg_str": list(row.get("bottom_logit_tokens") or []),
                    "neg_values": [float(v) for v in row.get("bottom_logit_values") or []],
                }
                exps = [
                    {
                        "text": lab["label"],
                        "method": lab["method"],
                        "model": lab["model"],
                        "score": lab["score"],
                        "template": lab["template"],
                        "time": lab["time"],
                    }
                    for lab in labels.get(i, [])
                ]
                freq_vals = _centres(0.0, mx, HIST_BINS)
                logit_vals = _centres(
                    float(row.get("logit_min") or 0.0), float(row.get("logit_max") or 0.0), LOGIT_HIST_BINS
                )
                dash.append(
                    {
                        "feature_index": i,
                        "feature_id": fid,
                        **pos,
                        "frac_nonzero": float(row["frequency"]),
                        "freq_hist_data_bar_heights": [float(x) for x in row["hist"]],
                        "freq_hist_data_bar_values": freq_vals,
                        "logits_hist_data_bar_heights": [float(x) for x in row.get("logit_hist") or []],
                        "logits_hist_data_bar_values": logit_vals,
                        "decoder_weights_dist": [],
                        "neuron_alignment_indices": [],
                        "neuron_alignment_values": [],
                        "neuron_alignment_l1": [],
                        "correlated_neurons_indices": [],
                        "correlated_neurons_pearson": [],
                        "correlated_neurons_l1": [],
                        "correlated_features_indices": [int(x) for x in row["neighbours"]],
                        "correlated_features_pearson": [float(x) for x in row["neighbour_cos"]],
                        "correlated_features_l1": [],
                        "activations": act_recs,
                        "explanations": exps,
                        "vector": W_dec[i].tolist(),
                    }
                )
                feats.append(
                    {
                        "modelId": model_id,
                        "layer": source_id,
                        "index": str(i),
                        "creatorId": creator,
                        "createdAt": now,
                        "maxActApprox": mx,
                        "hasVector": True,
                        "vector": W_dec[i].tolist(),
                        "vectorLabel": None,
                        "vectorDefaultSteerStrength": mx,
                        "hookName": hook,
                        "topkCosSimIndices": [int(x) for x in row["neighbours"]],
                        "topkCosSimValues": [float(x) for x in row["neighbour_cos"]],
                        "neg_str": pos["neg_str"],
                        "neg_values": pos["neg_values"],
                        "pos_str": pos["pos_str"],
                        "pos_values": pos["pos_values"],
                        "frac_nonzero": float(row["frequency"]),
                        "freq_hist_data_bar_heights": [float(x) for x in row["hist"]],
                        "freq_hist_data_bar_values": freq_vals,
                        "logits_hist_data_bar_heights": [float(x) for x in row.get("logit_hist") or []],
                        "logits_hist_data_bar_values": logit_vals,
                        "decoder_weights_dist": [],
                    }
                )
                for a in act_recs:
                    vals = a["values"]
                    k = int(np.argmax(vals)) if vals else 0
                    acts.append(
                        {
                            "id": uuid.uuid4().hex[:25],
                            "tokens": a["tokens"],
                            "modelId": model_id,
                            "layer": source_id,
                            "index": str(i),
                            "maxValue": max(vals) if vals else 0.0,
                            "maxValueTokenIndex": k,
                            "minValue": min(vals) if vals else 0.0,
                            "values": vals,
                            "creatorId": creator,
                            "createdAt": now,
                            "binMin": a["bin_min"],
                            "binMax": a["bin_max"],
                            "binContains": a["bin_contains"],
                            "qualifyingTokenIndex": a["qualifying_token_index"],
                            "lossValues": [],
                            "dfaValues": [],
                        }
                    )
                for lab in labels.get(i, []):
                    expl.append(
                        {
                            "id": uuid.uuid4().hex[:25],
                            "modelId": model_id,
                            "layer": source_id,
                            "index": str(i),
                            "description": lab["label"],
                            "authorId": creator,
                            "typeName": lab["method"],
                            "explanationModelName": lab["model"],
                            "scores": [lab["score"]] if lab["score"] is not None else [],
                            "notes": json.dumps({"score": lab["score"], "template": lab["template"]}),
                            "createdAt": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(lab["time"])),
                        }
                    )
            (tmp / "dashboard").mkdir(exist_ok=True)
            (tmp / "dashboard" / f"batch-{b}.json").write_text(
                json.dumps(
                    {
                        "model_id": model_id,
                        "layer": int(layer) if layer.isdigit() else layer,
                        "sae_set": source_id.split("-", 1)[1],
                        "sae_id_suffix": None,
                        "hook_name": hook,
                        "features": dash,
                    },
                    ensure_ascii=False,
                )
            )
            _write_gz_jsonl(bulk / "features" / f"batch-{b}.jsonl.gz", feats)
            _write_gz_jsonl(bulk / "activations" / f"batch-{b}.jsonl.gz", acts)
            if expl:
                _write_gz_jsonl(bulk / "explanations" / f"batch-{b}.jsonl.gz", expl)
            counts["features"] += len(feats)
            counts["activations"] += len(acts)
            counts["explanations"] += len(expl)
            emit(progress, "export", b + 1, n_batches, unit="batch", finished=b + 1 == n_batches)
        (tmp / "manifest.json").write_text(
            json.dumps(
                {
                    "sae": art.id,
                    "extraction": ext.id,
                    "model_id": model_id,
                    "source_id": source_id,
                    "batches": n_batches,
                    "feature_id_format": f"{model_id}@{source_id}:INDEX",
                    **counts,
                },
                indent=2,
            )
        )
    return {
        "sae": art.id,
        "format": "neuronpedia",
        "path": str(Path(out).expanduser().resolve()),
        "model_id": model_id,
        "source_id": source_id,
        "batches": n_batches,
        **counts,
    }
