"""The records of a Neuronpedia export, one builder per table, with exactly the fields Neuronpedia's
importer takes:

- the metadata lines (``release``, ``model``, ``sourceset``, ``source``) carry the fields of the
  dataclasses in Neuronpedia's ``utils/neuronpedia-utils/neuronpedia_utils/db_models/`` that are
  columns of ``apps/webapp/prisma/schema.prisma`` (the importer passes each line to Prisma's
  ``create``, which refuses an unknown field and a missing required one);
- features (``Neuron`` table) and activations are what Neuronpedia's converter
  ``convert-saedashboard-to-neuronpedia-export.py`` writes for a SAEDashboard batch;
- explanations are ``Explanation`` rows. Our labelling method and model are not among Neuronpedia's
  explanation types and models (its ``explanation_type`` and ``explanation_model_type`` config), so
  ``typeName`` and ``explanationModelName`` are null and what we know goes in ``notes`` as JSON.

Dashboard features are SAEDashboard's ``NeuronpediaDashboardFeature`` (what ``to_dict`` writes);
what Neuronpedia cannot take there (our feature id, hook, labels) goes to a side record.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from typing import Any

import numpy as np

from ..core.errors import MistudioError
from ..features.store import quantile_groups

# Neuronpedia's seeded bot user (apps/webapp/prisma/seed.ts): the creator of uploaded models, sources,
# features and activations, and what its own converter writes as DEFAULT_CREATOR_ID.
DEFAULT_CREATOR_ID = "clkht01d40000jv08hvalcvly"
CREATOR_NAME = "mistudio-widgets"
_ID = re.compile(r"[a-z0-9][a-z0-9._-]*\Z")
_CREATOR = re.compile(r"[a-z0-9]+\Z")


class NeuronpediaIdError(MistudioError):
    """An id Neuronpedia would refuse or change."""


def check_id(value: str, what: str) -> str:
    """Neuronpedia's model ids, source set names and release names are lower case letters, digits,
    dashes, dots and underscores (the webapp lower-cases a model id, so an upper-case one would not
    match its own features)."""
    if not isinstance(value, str) or not value or len(value) > 128 or not _ID.match(value):
        fix = slug(value) if isinstance(value, str) else ""
        raise NeuronpediaIdError(
            f"{what} {value!r} is not an id Neuronpedia takes: only lower-case letters, digits, '-', '.' "
            "and '_' (no spaces, slashes or capitals), at most 128 characters.",
            f"use {fix!r}." if fix else "choose a short lower-case id such as 'my-saes'.",
        )
    return value


def check_source_id(value: str) -> str:
    """A source id is ``LAYER-SOURCESET`` (``15-mistudio-res-4608``)."""
    layer, _, rest = str(value).partition("-")
    if not layer.isdigit() or not rest:
        raise NeuronpediaIdError(
            f"Source id {value!r} does not start with a layer number and a dash.",
            "write LAYER-SET, e.g. 15-mistudio-res-4608.",
        )
    check_id(rest, "Source set name")
    return value


def check_creator_id(value: str) -> str:
    if not isinstance(value, str) or not _CREATOR.match(value):
        raise NeuronpediaIdError(
            f"Creator id {value!r} is not a Neuronpedia user id (a cuid of lower-case letters and digits).",
            f"leave it out to use the seeded bot user {DEFAULT_CREATOR_ID}, or give your user's id.",
        )
    return value


def slug(text: str) -> str:
    """A Neuronpedia-style id made from free text: ``My SAE/v2`` -> ``my-sae-v2``."""
    return re.sub(r"[^a-z0-9._]+", "-", str(text).lower()).strip("-._")[:128]


def now_iso(t: float | None = None) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t))


def record_id() -> str:
    """A 25-character lower-case id, as long as the converter's cuids."""
    return "c" + uuid.uuid4().hex[:24]


def metadata_records(
    *,
    release: str,
    title: str,
    model_id: str,
    model_display: str,
    model_info: dict[str, Any],
    set_name: str,
    set_description: str,
    source_id: str,
    dataset: str | None,
    num_prompts: int | None,
    num_tokens_in_prompt: int | None,
    creator_id: str,
    creator_name: str,
    hf_repo_id: str | None,
    hf_folder_id: str | None,
    saelens_release: str | None,
    saelens_sae_id: str | None,
    notes: str | None,
    created: str,
) -> dict[str, dict[str, Any]]:
    """``release.jsonl``, ``model.jsonl``, ``sourceset.jsonl`` and ``source.jsonl`` lines."""
    who = {"creatorId": creator_id, "createdAt": created}
    named: dict[str, Any] = {
        "creatorName": creator_name,
        "urls": [],
        "creatorEmail": None,
        "visibility": "PUBLIC",
    }
    return {
        "release.jsonl": {
            "name": release,
            "description": title,
            **named,
            **who,
            "isNewUi": False,
            "featured": False,
            "descriptionShort": title,
            "creatorNameShort": creator_name,
            "defaultSourceSetName": set_name,
            "defaultSourceId": source_id,
            "defaultUmapSourceIds": [],
        },
        "model.jsonl": _model_record(model_id, model_display, model_info, creator_name, who),
        "sourceset.jsonl": _sourceset_record(model_id, set_name, set_description, release, named, who),
        "source.jsonl": {
            "id": source_id,
            "modelId": model_id,
            "setName": set_name,
            **who,
            "hasDashboards": True,
            "inferenceEnabled": False,
            "saelensConfig": None,
            "saelensRelease": saelens_release,
            "saelensSaeId": saelens_sae_id,
            "hfRepoId": hf_repo_id,
            "hfFolderId": hf_folder_id,
            "visibility": "PUBLIC",
            "defaultOfModelId": None,
            "hasUmap": False,
            "hasUmapLogSparsity": False,
            "hasUmapClusters": False,
            "num_prompts": num_prompts,
            "num_tokens_in_prompt": num_tokens_in_prompt,
            "dataset": dataset,
            "notes": notes,
        },
    }


def _sourceset_record(
    model_id: str, set_name: str, description: str, release: str, named: dict[str, Any], who: dict[str, str]
) -> dict[str, Any]:
    """``sourceset.jsonl``: the set of sources (one per layer) the SAE belongs to."""
    return {
        "modelId": model_id,
        "name": set_name,
        **named,
        **who,
        "hasDashboards": True,
        "description": description,
        "type": "",
        "releaseName": release,
        "defaultOfModelId": None,
        "defaultRange": 1,
        "defaultShowBreaks": True,
        "showDfa": False,
        "showCorrelated": False,
        "showHeadAttribution": False,
        "showUmap": False,
    }


def _model_record(
    model_id: str, display: str, info: dict[str, Any], creator_name: str, who: dict[str, str]
) -> dict[str, Any]:
    """``model.jsonl``: the model the SAE reads, named as on the hub where it came from there."""
    return {
        "id": model_id,
        "instruct": "instruct" in model_id or model_id.endswith("-it"),
        **who,
        "displayNameShort": model_id,
        "displayName": display,
        "tlensId": None,
        "dimension": info.get("d_model"),
        "visibility": "PUBLIC",
        "defaultSourceSetName": None,
        "defaultSourceId": None,
        "inferenceEnabled": False,
        "layers": int(info.get("layers") or 0),
        "neuronsPerLayer": int(info.get("d_mlp") or 0),
        "owner": display.split("/")[0] if "/" in display else creator_name,
        "updatedAt": who["createdAt"],
        "website": f"https://huggingface.co/{display}" if "/" in display else None,
    }


def centres(lo: float, hi: float, n: int) -> list[float]:
    edges = np.linspace(lo, hi, n + 1)
    return ((edges[:-1] + edges[1:]) / 2).tolist()


def dashboard_activations(
    row: dict[str, Any], examples: list[dict[str, Any]], vocab, groups: int, hist_bins: int
) -> list[dict[str, Any]]:
    """SAEDashboard's activation records of one feature: the top group first (``bin_min`` and
    ``bin_contains`` -1, ``bin_max`` the feature's largest activation, as its converter parses the
    ``TOP ACTIVATIONS<br>MAX = x`` title), then the quantile intervals with the share of activations
    each holds."""
    mx = float(row["max"])
    ranges = quantile_groups(row, groups, hist_bins)
    out = []
    for e in examples:
        toks = [vocab[t] if 0 <= t < len(vocab) else "" for t in e["tokens"]]
        vals = [float(v) for v in e["values"]]
        if 0 <= int(e["peak"]) < len(vals):
            vals[int(e["peak"])] = float(e["value"])  # the context is stored in 16 bits; the peak exactly
        if e["kind"] == "top":
            lo, hi, contains = -1.0, mx, -1.0
        else:
            lo, hi, contains = ranges[int(e["group"])]
        out.append(
            {
                "bin_min": lo,
                "bin_max": hi,
                "bin_contains": contains,
                "tokens": toks,
                "values": vals,
                "qualifying_token_index": int(e["peak"]),
            }
        )
    return out


def dashboard_feature(
    index: int,
    row: dict[str, Any],
    activations: list[dict[str, Any]],
    vector: list[float],
    hist_bins: int,
    logit_bins: int,
    n_prompts: int,
    n_tokens: int,
    dataset: str,
) -> dict[str, Any]:
    """A feature as SAEDashboard's ``NeuronpediaDashboardFeature.to_dict`` writes it. Decoder cosine
    neighbours go where SAEDashboard puts its cosine similarities (``correlated_features_l1``);
    ``correlated_features_pearson`` stays empty (we compute no activation correlations)."""
    mx = float(row["max"])
    return {
        "feature_index": index,
        "neuron_alignment_indices": [],
        "neuron_alignment_values": [],
        "neuron_alignment_l1": [],
        "correlated_neurons_indices": [],
        "correlated_neurons_l1": [],
        "correlated_neurons_pearson": [],
        "correlated_features_indices": [int(x) for x in row["neighbours"]],
        "correlated_features_l1": [float(x) for x in row["neighbour_cos"]],
        "correlated_features_pearson": [],
        "neg_str": list(row.get("bottom_logit_tokens") or []),
        "neg_values": [float(v) for v in row.get("bottom_logit_values") or []],
        "pos_str": list(row.get("top_logit_tokens") or []),
        "pos_values": [float(v) for v in row.get("top_logit_values") or []],
        "frac_nonzero": float(row["frequency"]),
        "freq_hist_data_bar_values": centres(0.0, mx, hist_bins),
        "freq_hist_data_bar_heights": [float(x) for x in row["hist"]],
        "logits_hist_data_bar_heights": [float(x) for x in row.get("logit_hist") or []],
        "logits_hist_data_bar_values": centres(
            float(row.get("logit_min") or 0.0), float(row.get("logit_max") or 0.0), logit_bins
        ),
        "n_prompts_total": int(n_prompts or 0),
        "n_tokens_in_prompt": int(n_tokens or 0),
        "dataset": dataset or "",
        "decoder_weights_dist": [],
        "activations": activations,
        "vector": vector,
    }


def bulk_feature(
    feat: dict[str, Any], *, model_id: str, source_id: str, hook: str, creator_id: str, created: str
) -> dict[str, Any]:
    """A ``Neuron`` row from a dashboard feature, field for field what Neuronpedia's converter makes:
    ``maxActApprox`` is the largest activation among the examples and the default steering strength."""
    mx = max((max(a["values"]) for a in feat["activations"] if a["values"]), default=0.0)
    mx = max(mx, 0.0)
    rec = {
        "modelId": model_id,
        "layer": source_id,
        "index": str(feat["feature_index"]),
        "creatorId": creator_id,
        "createdAt": created,
        "maxActApprox": mx,
        "hasVector": len(feat["vector"]) > 0,
        "vector": feat["vector"],
        "vectorLabel": None,
        "vectorDefaultSteerStrength": mx,
        "hookName": hook or None,
        "topkCosSimIndices": [],
        "topkCosSimValues": [],
    }
    for key in (
        "neuron_alignment_indices",
        "neuron_alignment_values",
        "neuron_alignment_l1",
        "correlated_neurons_indices",
        "correlated_neurons_pearson",
        "correlated_neurons_l1",
        "correlated_features_indices",
        "correlated_features_pearson",
        "correlated_features_l1",
        "neg_str",
        "neg_values",
        "pos_str",
        "pos_values",
        "frac_nonzero",
        "freq_hist_data_bar_heights",
        "freq_hist_data_bar_values",
        "logits_hist_data_bar_heights",
        "logits_hist_data_bar_values",
        "decoder_weights_dist",
    ):
        rec[key] = feat[key]
    return rec


def bulk_activation(
    act: dict[str, Any], index: int, *, model_id: str, source_id: str, creator_id: str, created: str
) -> dict[str, Any]:
    """An ``Activation`` row from a dashboard activation record, as the converter makes it."""
    vals = act["values"]
    mx = max(vals) if vals else 0.0
    return {
        "id": record_id(),
        "tokens": act["tokens"],
        "index": str(index),
        "layer": source_id,
        "modelId": model_id,
        "maxValue": mx,
        "maxValueTokenIndex": vals.index(mx) if vals else 0,
        "minValue": min(vals) if vals else 0.0,
        "values": vals,
        "creatorId": creator_id,
        "dataSource": None,
        "dataIndex": None,
        "dfaValues": [],
        "dfaTargetIndex": None,
        "dfaMaxValue": None,
        "createdAt": created,
        "lossValues": [],
        "logitContributions": None,
        "binMin": act["bin_min"],
        "binMax": act["bin_max"],
        "binContains": act["bin_contains"],
        "qualifyingTokenIndex": act["qualifying_token_index"],
    }


def explanation(
    label: dict[str, Any], index: int, *, model_id: str, source_id: str, author_id: str
) -> dict[str, Any]:
    """An ``Explanation`` row for one of our labels; its method, model, score and template in ``notes``."""
    notes = {
        "by": CREATOR_NAME,
        "method": label.get("method"),
        "model": label.get("model"),
        "score": label.get("score"),
        "chance": 0.5 if label.get("method") != "manual" else None,
        "verdict": label.get("verdict"),
        "template": label.get("template"),
    }
    return {
        "id": record_id(),
        "modelId": model_id,
        "layer": source_id,
        "index": str(index),
        "description": label["label"],
        "authorId": author_id,
        "triggeredByUserId": None,
        "typeName": None,
        "explanationModelName": None,
        "notes": json.dumps(notes, ensure_ascii=False),
        "createdAt": now_iso(label.get("time")),
    }


def side_record(
    index: int, *, feature_id: str, hook: str, labels: list[dict[str, Any]], impact: float | None = None
) -> dict[str, Any]:
    """What a dashboard feature cannot hold: our feature id, the hook, every label with its score and
    verdict (those at chance or unscored included: this is the full record, not a claim) and, when it was
    measured, the feature's ablation impact (next-token loss change in nats per token when zeroed)."""
    return {
        "feature_index": index,
        "feature_id": feature_id,
        "hook_name": hook,
        "ablation_impact": impact,
        "explanations": [
            {k: lab.get(k) for k in ("label", "method", "model", "score", "verdict", "template", "time")}
            for lab in labels
        ],
    }
