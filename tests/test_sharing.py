"""Sharing: SAELens export (with sparsity and a pretrained_saes.yaml entry) that SAELens loads,
the Neuronpedia export (SAEDashboard batches and the bulk-import layout), comparing SAEs, workshop
bundles, the hub upload up to the network call, and the CLI for all of them."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
import tarfile

import numpy as np
import pytest
import torch
import yaml
from safetensors import safe_open

from mistudio_widgets import Workspace
from mistudio_widgets.core.errors import HubError
from mistudio_widgets.features import feature_columns, feature_detail
from mistudio_widgets.features.compare import compare_saes, describe_pair
from mistudio_widgets.sae.io import load_sae
from mistudio_widgets.share.bundles import BundleError, pack, unpack
from mistudio_widgets.share.exporting import ExportError, export_saelens
from mistudio_widgets.share.hub import model_card, parse_hub_ref, upload_folder
from mistudio_widgets.share.neuronpedia import export_neuronpedia


def _cli(ws, *args, env=None):
    import os

    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "mistudio_widgets.cli",
            "--workspace",
            str(ws.root),
            "--json",
            *map(str, args),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, **(env or {})},
    )
    return proc.returncode, [json.loads(x) for x in proc.stdout.splitlines() if x.startswith("{")]


def test_saelens_export_loads_in_saelens_with_sparsity_and_yaml(default_ws, small_sae, extraction, tmp_path):
    import sae_lens

    r = export_saelens(default_ws, small_sae, tmp_path / "out", repo_id="alice/smollm2-saes")
    assert r["files"] == [
        "cfg.json",
        "pretrained_saes.yaml",
        "sae_weights.safetensors",
        "sparsity.safetensors",
    ]
    cfg = r["cfg"]
    md = cfg["metadata"]
    assert (
        md["model_name"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
        and md["hook_name"] == default_ws.get(small_sae).meta["hook"]
    )
    assert md["neuronpedia_id"].startswith("smollm2-135m-instruct/6-mistudio-res-")
    assert md["context_size"] and md["dataset_path"] and md["prepend_bos"] is True
    # the weights it was trained on are named: the dequantized GGUF build, not the hub's own weights
    assert "Q4_1 GGUF build" in md["model_weights"] and "dequantized" in md["model_weights"]
    entry = yaml.safe_load((tmp_path / "out" / "pretrained_saes.yaml").read_text())
    ((release, body),) = entry.items()
    assert body["repo_id"] == "alice/smollm2-saes" and body["saes"][0]["neuronpedia"] == md["neuronpedia_id"]
    theirs = sae_lens.SAE.load_from_disk(tmp_path / "out")
    assert theirs.cfg.metadata.model_weights == md["model_weights"]  # SAELens keeps it
    ours, _ = load_sae(default_ws.get(small_sae).path)
    x = torch.randn(16, ours.spec.d_in) * 4
    torch.testing.assert_close(theirs(x), ours(x))
    with safe_open(str(tmp_path / "out" / "sparsity.safetensors"), "pt") as f:
        log_density = f.get_tensor("sparsity")
    freq = feature_columns(default_ws, small_sae)["frequency"]
    np.testing.assert_allclose(10 ** log_density.numpy(), freq + 1e-10, rtol=1e-4)
    # an existing folder is never overwritten unless asked
    with pytest.raises(ExportError, match="already exists"):
        export_saelens(default_ws, small_sae, tmp_path / "out")
    assert (tmp_path / "out" / "cfg.json").is_file()
    export_saelens(default_ws, small_sae, tmp_path / "out", overwrite=True)
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temporary folders left behind


def test_neuronpedia_export_matches_the_extraction(default_ws, small_sae, extraction, tmp_path):
    index = int(np.argmax(feature_columns(default_ws, small_sae)["frequency"]))
    default_ws.add_label(
        small_sae,
        index,
        "busy feature",
        method="auto",
        model="SmolLM2-135M-Instruct",
        score=0.75,
        template="t1",
        meta={"scoring": {"score": 0.75, "se": 0.05, "verdict": "above chance"}},
    )
    r = export_neuronpedia(default_ws, small_sae, tmp_path / "np", batch_size=100)
    d_sae = default_ws.get(small_sae).meta["d_sae"]
    assert r["features"] == d_sae and r["batches"] == -(-d_sae // 100) and r["explanations"] >= 1
    detail = feature_detail(default_ws, small_sae, index)
    b, k = divmod(index, 100)
    batch = json.loads((tmp_path / "np" / "dashboard" / f"batch-{b}.json").read_text())
    feat = batch["features"][k]
    assert feat["feature_index"] == index and set(batch) == {
        "model_id",
        "layer",
        "sae_set",
        "sae_id_suffix",
        "features",
    }
    assert feat["frac_nonzero"] == pytest.approx(detail["frequency"])
    assert feat["pos_str"] == [x["token"] for x in detail["logits"]["positive"]]
    assert len(feat["freq_hist_data_bar_heights"]) == len(feat["freq_hist_data_bar_values"]) == 50
    top = [a for a in feat["activations"] if a["bin_min"] == -1]
    assert len(top) == len(detail["examples"]) and top[0]["tokens"] == detail["examples"][0]["tokens"]
    assert max(top[0]["values"]) == pytest.approx(detail["examples"][0]["value"], rel=1e-5)
    assert all(a["bin_max"] == pytest.approx(detail["max"]) for a in top)  # SAEDashboard's top-group mark
    with gzip.open(tmp_path / "np" / "extras" / f"batch-{b}.jsonl.gz", "rt") as f:
        side = [json.loads(x) for x in f][k]
    assert side["feature_id"] == f"{r['model_id']}@{r['source_id']}:{index}"
    assert "ablation_impact" in side  # a number once measured (features.ablation_impact), else null
    assert side["explanations"][-1]["label"] == "busy feature" and side["explanations"][-1]["score"] == 0.75
    bulk = tmp_path / "np" / r["model_id"] / r["source_id"]
    assert {p.name for p in bulk.iterdir()} == {
        "release.jsonl",
        "model.jsonl",
        "sourceset.jsonl",
        "source.jsonl",
        "features",
        "activations",
        "explanations",
    }
    with gzip.open(bulk / "features" / f"batch-{b}.jsonl.gz", "rt") as f:
        rec = [json.loads(x) for x in f][k]
    assert rec["index"] == str(index) and rec["layer"] == r["source_id"] and rec["modelId"] == r["model_id"]
    assert (
        rec["vectorDefaultSteerStrength"]
        == pytest.approx(detail["max"])
        == pytest.approx(rec["maxActApprox"])
    )
    assert (
        len(rec["vector"]) == default_ws.get(small_sae).meta["d_in"]
        and rec["hookName"] == default_ws.get(small_sae).meta["hook"]
    )
    with gzip.open(bulk / "activations" / f"batch-{b}.jsonl.gz", "rt") as f:
        acts = [json.loads(x) for x in f if json.loads(x)["index"] == str(index)]
    assert {
        "maxValue",
        "maxValueTokenIndex",
        "binMin",
        "binMax",
        "binContains",
        "qualifyingTokenIndex",
    } <= set(acts[0])
    assert acts[0]["values"][acts[0]["maxValueTokenIndex"]] == acts[0]["maxValue"]
    with gzip.open(bulk / "explanations" / f"batch-{b}.jsonl.gz", "rt") as f:
        ex = [json.loads(x) for x in f]
    (e,) = [e for e in ex if e["description"] == "busy feature"]
    assert e["typeName"] is None and e["explanationModelName"] is None  # not Neuronpedia's types
    assert json.loads(e["notes"]) == {
        "by": "mistudio-widgets",
        "method": "auto",
        "model": "SmolLM2-135M-Instruct",
        "score": 0.75,
        "chance": 0.5,
        "verdict": "above chance",
        "template": "t1",
    }


def test_compare_finds_the_same_features_in_a_permuted_copy(default_ws, small_sae, tmp_path):
    """A copy of our SAE with its features shuffled and a little noise added: every feature is
    matched to its own copy."""
    from mistudio_widgets.sae.io import save_sae
    from mistudio_widgets.share.importing import import_sae

    ours, _ = load_sae(default_ws.get(small_sae).path)
    perm = torch.randperm(ours.spec.d_sae, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours.W_enc.copy_(ours.W_enc[:, perm])
        ours.b_enc.copy_(ours.b_enc[perm])
        ours.W_dec.copy_(
            ours.W_dec[perm]
            + 0.01
            * ours.W_dec.norm(dim=1, keepdim=True).mean()
            * torch.randn_like(ours.W_dec)
            / ours.spec.d_in**0.5
        )
    save_sae(ours, tmp_path / "shuffled", metadata={"hook_name": default_ws.get(small_sae).meta["hook"]})
    other = import_sae(default_ws, tmp_path / "shuffled", name="shuffled-copy")
    default_ws.add_label(small_sae, int(perm[0]), "original label")
    r = compare_saes(default_ws, small_sae, other.id, top=5)
    s = r["summary"]
    assert s["method"] == "optimal assignment" and s["matched"] == ours.spec.d_sae
    assert (r["assignment"]["b"][np.argsort(r["assignment"]["a"])] == np.argsort(perm.numpy())).all()
    assert s["mean_matched_cosine"] > 0.95 and s["matched_above_0.9"] == ours.spec.d_sae
    assert r["nearest_a"]["index"][int(perm[0])] == 0
    assert "matches feature" in describe_pair(r) and f"at {r['pairs'][0]['cosine']:.2f}" in describe_pair(r)
    rc, lines = _cli(default_ws, "compare", small_sae, other.id, "--top", "3")
    assert rc == 0 and lines[-1]["summary"]["matched"] == ours.spec.d_sae and len(lines[-1]["pairs"]) == 3
    assert not any("same index" in w for w in s["warnings"])
    # an SAE against itself (as two trainings from one seed start): index-to-index matches are flagged
    seed = default_ws.get(default_ws.get(small_sae).meta["run"]).meta["config"]["seed"]
    same = compare_saes(default_ws, small_sae, small_sae)["summary"]["warnings"]
    assert any(
        "100% of the matched features have the same index" in w and f"seed {seed}" in w for w in same
    ), same


def test_bundle_round_trip_into_a_fresh_workspace(default_ws, small_sae, extraction, tmp_path):
    default_ws.add_label(small_sae, 3, "bundled label", method="manual")
    r = pack(default_ws, [small_sae], tmp_path / "class.tar.gz")
    kinds = sorted(a["kind"] for a in r["artifacts"])
    assert kinds == ["extraction", "sae"] and r["labels"] >= 1
    with pytest.raises(BundleError, match="already exists"):
        pack(default_ws, [small_sae], tmp_path / "class.tar.gz")
    fresh = Workspace(tmp_path / "student")
    u = unpack(fresh, tmp_path / "class.tar.gz")
    assert {a["kind"] for a in u["added"]} == {"sae", "extraction"}
    sae = fresh.get(small_sae, "sae")
    assert sae.meta["model"] == fresh.get("SmolLM2-135M-Instruct", "model").id  # the default, added on demand
    assert fresh.labels(small_sae, 3)[-1]["label"] == "bundled label"
    # the student browses the same features without training or extracting
    a = feature_detail(default_ws, small_sae, 3)
    b = feature_detail(fresh, small_sae, 3)
    assert a["examples"] == b["examples"] and a["frequency"] == b["frequency"]
    again = unpack(fresh, tmp_path / "class.tar.gz")  # idempotent
    assert again["added"] == [] and set(again["already_present"]) == {x["id"] for x in u["added"]}


def test_hostile_bundles_are_refused(default_ws, tmp_path):
    evil = tmp_path / "evil.tar.gz"
    (tmp_path / "manifest.json").write_text(
        json.dumps({"format": "mistudio-bundle", "version": 1, "artifacts": [], "labels": {}})
    )
    (tmp_path / "payload").write_text("x")
    with tarfile.open(evil, "w:gz") as tar:
        tar.add(tmp_path / "manifest.json", arcname="manifest.json")
        tar.add(tmp_path / "payload", arcname="../../outside.txt")
    with pytest.raises(BundleError, match="unexpected member"):
        unpack(Workspace(tmp_path / "victim"), evil)
    assert not (tmp_path.parent / "outside.txt").exists()
    (tmp_path / "junk.tar.gz").write_bytes(b"not a tar")
    with pytest.raises(BundleError, match="not a readable bundle"):
        unpack(default_ws, tmp_path / "junk.tar.gz")


def test_upload_up_to_the_network_call(default_ws, small_sae, tmp_path, monkeypatch):
    r = export_saelens(default_ws, small_sae, tmp_path / "up", repo_id="alice/smollm2-saes")
    card = model_card(
        {**default_ws.get(small_sae).meta, "name": "demo", "has_sparsity": True},
        r["cfg"],
        "alice/smollm2-saes",
        "blocks.6.hook_resid_post",
    )
    assert (
        card.startswith("---\nlibrary_name: saelens")
        and "base_model: HuggingFaceTB/SmolLM2-135M-Instruct" in card
    )
    assert 'snapshot_download("alice/smollm2-saes", allow_patterns="blocks.6.hook_resid_post/*")' in card
    assert (
        "| explained_variance |" in card
        and "mistudio import hf://alice/smollm2-saes/blocks.6.hook_resid_post" in card
    )
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))  # no stored login either
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_TOKEN_PATH", str(tmp_path / "hf-home" / "token"))
    monkeypatch.setattr(c, "HF_STORED_TOKENS_PATH", str(tmp_path / "hf-home" / "stored_tokens"))
    with pytest.raises(HubError, match="needs a Hugging Face token"):
        upload_folder(tmp_path / "up", "alice/smollm2-saes")
    monkeypatch.setenv("HF_TOKEN", "hf_not_a_real_token")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(HubError, match="HF_HUB_OFFLINE is set"):
        upload_folder(tmp_path / "up", "alice/smollm2-saes")
    with pytest.raises(HubError, match="'no-owner' has no owner.*alice/no-owner"):
        upload_folder(tmp_path / "up", "no-owner")
    with pytest.raises(HubError, match="not a repository id"):
        upload_folder(tmp_path / "up", "alice/bad name")
    assert parse_hub_ref("hf://google/gemma-scope-2b-pt-res/layer_20/width_16k/average_l0_71@main") == (
        "google/gemma-scope-2b-pt-res",
        "layer_20/width_16k/average_l0_71",
        "main",
    )


def test_cli_export_import_and_bundle(default_ws, small_sae, extraction, tmp_path):
    rc, lines = _cli(default_ws, "export", small_sae, "--format", "saelens", "--out", tmp_path / "lens")
    assert rc == 0 and lines[-1]["sparsity"] is True
    rc, lines = _cli(default_ws, "export", small_sae, "--format", "saelens", "--out", tmp_path / "lens")
    assert rc == 2 and "already exists" in lines[-1]["error"]
    rc, lines = _cli(default_ws, "import", tmp_path / "lens", "--name", "reimported")
    assert (
        rc == 0
        and lines[-1]["format"] == "saelens"
        and lines[-1]["model"] == default_ws.get("SmolLM2-135M-Instruct", "model").id
    )
    a, _ = load_sae(default_ws.get(small_sae).path)
    b, _ = load_sae(lines[-1]["path"])
    for k, v in a.state_dict().items():
        torch.testing.assert_close(b.state_dict()[k], v, rtol=0, atol=0)
    rc, lines = _cli(
        default_ws,
        "export",
        small_sae,
        "--format",
        "neuronpedia",
        "--out",
        tmp_path / "np",
        "--batch-size",
        "256",
    )
    assert rc == 0 and lines[-1]["features"] == default_ws.get(small_sae).meta["d_sae"]
    assert any(x.get("event") == "progress" for x in lines)
    rc, lines = _cli(default_ws, "bundle", "pack", tmp_path / "b.tar.gz", small_sae)
    assert rc == 0 and len(lines[-1]["artifacts"]) == 2
    student = Workspace(tmp_path / "student")
    rc, lines = _cli(student, "bundle", "unpack", tmp_path / "b.tar.gz")
    assert rc == 0 and len(lines[-1]["added"]) == 2
    rc, lines = _cli(
        default_ws,
        "import",
        "hf://google/gemma-scope-2b-pt-res/layer_20/width_16k/average_l0_71",
        env={"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "empty-cache")},
    )
    assert rc == 2 and lines[-1]["type"] == "HubError" and "HF_HUB_OFFLINE" in lines[-1]["error"]


def test_library_widget_imports_exports_shares_and_compares(
    default_ws, small_sae, extraction, tmp_path, monkeypatch
):
    from pathlib import Path

    from mistudio_widgets.widgets import SAELibrary

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    lib = SAELibrary(default_ws)
    export_saelens(default_ws, small_sae, tmp_path / "folder")
    name = default_ws.unique_name("sae", "lib-imported")
    msg = lib.import_sae(str(tmp_path / "folder"), name=name)
    assert msg.startswith(f"Imported {name}: saelens topk SAE at blocks.6.hook_resid_post") and not lib.error
    row = next(r for r in lib.saes if r["name"] == name)
    assert row["source"] == "imported" and row["format"] == "saelens"
    r = lib.export(small_sae, "neuronpedia", str(tmp_path / "np"))
    assert r["features"] == default_ws.get(small_sae).meta["d_sae"] and "for Neuronpedia" in lib.message
    c = lib.compare(small_sae, row["id"])
    assert (
        c["summary"]["mean_matched_cosine"] == pytest.approx(1.0, abs=1e-5)
        and c["pairs"][0]["a"] == c["pairs"][0]["b"]
    )
    assert "matches feature" in lib.message
    from mistudio_widgets.sae.io import SAEFormatError

    with pytest.raises(SAEFormatError):  # the notebook call raises, and the widget shows it
        lib.import_sae(str(tmp_path / "nowhere"))
    assert "does not exist" in lib.error["problem"] and lib.status == "idle"
    shared = lib.share(small_sae, "alice/lib-share")
    folder = Path(shared["folder"])
    assert not shared["uploaded"] and folder.is_relative_to(default_ws.root / "exports")
    assert "not uploaded (HF_HUB_OFFLINE is set)" in shared["text"] and "share-ready" in lib.message
    assert (folder / "hub" / shared["path"] / "cfg.json").is_file() and (folder / "neuronpedia").is_dir()
    assert lib.share(small_sae, "alice/lib-share")["folder"] == str(folder)  # sharing again replaces it
    with pytest.raises(HubError, match="has no owner"):
        lib.share(small_sae, "lib-share")
