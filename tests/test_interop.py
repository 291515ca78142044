"""Interoperability with the real libraries: SAEs saved here load in SAELens unchanged (same encode
and decode), SAEs saved by SAELens and by EleutherAI's sparsify import here with identical outputs,
GemmaScope params.npz files import as JumpReLU SAEs, and all of them steer like our own."""

from __future__ import annotations

import json

import numpy as np
import pytest
import sae_lens
import sparsify
import torch
from safetensors.torch import save_file

from mistudio_widgets.core.errors import HubError
from mistudio_widgets.sae import SAESpec, make_sae
from mistudio_widgets.sae.formats import SAEFormatError, detect
from mistudio_widgets.sae.io import load_sae, save_sae
from mistudio_widgets.share.importing import SAEImportError, import_sae, match_model

D_IN, D_SAE = 64, 256


def _random(spec: SAESpec, seed: int = 0):
    torch.manual_seed(seed)
    sae = make_sae(spec)
    with torch.no_grad():
        for p in sae.parameters():
            p.copy_(torch.randn_like(p) * 0.2)
        if spec.architecture in ("jumprelu", "batchtopk", "matryoshka_batchtopk"):
            sae.loaded_threshold = torch.rand(spec.d_sae) * 0.3
    return sae.eval()


def _x(n: int = 32, d: int = D_IN, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


CASES = {
    "standard": SAESpec("standard", D_IN, D_SAE, k=None),
    "topk": SAESpec("topk", D_IN, D_SAE, k=8),
    "batchtopk": SAESpec("batchtopk", D_IN, D_SAE, k=8),
    "matryoshka_batchtopk": SAESpec(
        "matryoshka_batchtopk", D_IN, D_SAE, k=8, matryoshka_widths=[32, 64, 256]
    ),
    "jumprelu": SAESpec("jumprelu", D_IN, D_SAE, k=None),
    "transcoder": SAESpec(
        "standard", D_IN, D_SAE, k=None, d_out=48, metadata={"hook_name_out": "blocks.1.hook_mlp_out"}
    ),
    "jumprelu_transcoder": SAESpec(
        "jumprelu", D_IN, D_SAE, k=None, d_out=48, metadata={"hook_name_out": "blocks.1.hook_mlp_out"}
    ),
    "skip_transcoder": SAESpec(
        "standard",
        D_IN,
        D_SAE,
        k=None,
        d_out=D_IN,
        skip=True,
        metadata={"hook_name_out": "blocks.1.hook_mlp_out"},
    ),
    "jumprelu_skip_transcoder": SAESpec(
        "jumprelu",
        D_IN,
        D_SAE,
        k=None,
        d_out=D_IN,
        skip=True,
        metadata={"hook_name_out": "blocks.1.hook_mlp_out"},
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_saved_here_loads_in_saelens_unchanged(tmp_path, case):
    spec = CASES[case]
    spec.metadata = {
        "hook_name": "blocks.1.ln2.hook_normalized" if spec.d_out else "blocks.1.hook_resid_post",
        "model_name": "SmolLM2-135M-Instruct",
        **spec.metadata,
    }
    ours = _random(spec)
    save_sae(ours, tmp_path / case)
    theirs = sae_lens.SAE.load_from_disk(tmp_path / case)
    expected = {"batchtopk": "jumprelu", "matryoshka_batchtopk": "jumprelu"}.get(case, case)
    assert theirs.cfg.architecture() == expected
    assert theirs.cfg.metadata.hook_name == spec.metadata["hook_name"]
    x = _x()
    with torch.no_grad():
        f_ours, f_theirs = ours.encode(x), theirs.encode(x)
        assert (f_ours > 0).any() and (f_ours == 0).any()
        torch.testing.assert_close(f_theirs, f_ours, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(theirs(x), ours(x), rtol=1e-5, atol=1e-5)
        again, _ = load_sae(tmp_path / case)  # and back here: same weights, same outputs
        torch.testing.assert_close(again(x), ours(x), rtol=1e-5, atol=1e-5)


def test_trained_sae_loads_in_saelens(default_ws, small_sae):
    art = default_ws.get(small_sae)
    theirs = sae_lens.SAE.load_from_disk(art.path)
    ours, _ = load_sae(art.path)
    x = _x(d=ours.spec.d_in) * 5
    with torch.no_grad():
        torch.testing.assert_close(theirs(x), ours(x))
    assert theirs.cfg.metadata.hook_name == art.meta["hook"]


def _saelens_sae(kind: str):
    torch.manual_seed(3)
    if kind == "standard":
        sae = sae_lens.StandardSAE(sae_lens.StandardSAEConfig(d_in=D_IN, d_sae=D_SAE))
    elif kind == "topk":
        sae = sae_lens.TopKSAE(sae_lens.TopKSAEConfig(d_in=D_IN, d_sae=D_SAE, k=8))
    else:
        sae = sae_lens.JumpReLUSAE(sae_lens.JumpReLUSAEConfig(d_in=D_IN, d_sae=D_SAE))
    with torch.no_grad():
        for name, p in sae.named_parameters():
            p.copy_(torch.rand_like(p) * 0.3 if name == "threshold" else torch.randn_like(p) * 0.2)
    sae.cfg.metadata.hook_name = "blocks.3.hook_resid_post"
    sae.cfg.metadata.model_name = "HuggingFaceTB/SmolLM2-135M-Instruct"
    return sae


@pytest.mark.parametrize("kind", ["standard", "topk", "jumprelu"])
def test_saved_by_saelens_imports_with_identical_outputs(default_ws, tmp_path, kind):
    theirs = _saelens_sae(kind)
    theirs.save_model(tmp_path / kind)
    assert detect(tmp_path / kind) == "saelens"
    art = import_sae(default_ws, tmp_path / kind, name=f"lens-{kind}")
    assert art.meta["format"] == "saelens" and art.meta["hook"] == "blocks.3.hook_resid_post"
    assert art.meta["model"] == default_ws.get("SmolLM2-135M-Instruct", "model").id  # matched by upstream id
    ours, _ = load_sae(art.path)
    x = _x()
    with torch.no_grad():
        torch.testing.assert_close(ours.encode(x), theirs.encode(x))
        torch.testing.assert_close(ours(x), theirs(x))


def test_pre_v6_flat_config_imports(default_ws, tmp_path):
    ours = _random(SAESpec("standard", D_IN, D_SAE, k=None))
    save_sae(ours, tmp_path / "new")
    cfg = json.loads((tmp_path / "new" / "cfg.json").read_text())
    flat = {k: v for k, v in cfg.items() if k not in ("metadata", "mistudio")}
    flat.update(
        {"hook_point": "blocks.2.hook_resid_pre", "model_name": "gpt2", "context_size": 128}
    )  # 5.x keys
    (tmp_path / "new" / "cfg.json").write_text(json.dumps(flat))
    art = import_sae(default_ws, tmp_path / "new", name="flat-config", model="SmolLM2-135M-Instruct")
    assert art.meta["hook"] == "blocks.2.hook_resid_pre" and art.meta["model_name"] == "gpt2"
    again, _ = load_sae(art.path)
    torch.testing.assert_close(again(_x()), ours(_x()))


@pytest.mark.parametrize("transcode", [False, True])
def test_sparsify_folder_imports_with_identical_outputs(default_ws, tmp_path, transcode):
    cfg = sparsify.SparseCoderConfig(num_latents=D_SAE, k=8, transcode=transcode)
    torch.manual_seed(5)
    coder = sparsify.SparseCoder(D_IN, cfg)
    with torch.no_grad():
        for p in coder.parameters():
            p.copy_(torch.randn_like(p) * 0.2)
    hookpoint = "layers.4.mlp" if transcode else "layers.4"
    coder.save_to_disk(tmp_path / hookpoint)
    assert detect(tmp_path / hookpoint) == "sparsify"
    art = import_sae(default_ws, tmp_path / hookpoint, name=f"sparsify-{transcode}")
    if transcode:
        assert (art.meta["hook"], art.meta["hook_out"]) == (
            "blocks.4.ln2.hook_normalized",
            "blocks.4.hook_mlp_out",
        )
    else:
        assert art.meta["hook"] == "blocks.4.hook_resid_post" and art.meta["hook_out"] is None
    ours, _ = load_sae(art.path)
    x = _x()
    with torch.no_grad():
        out = coder(x)
        dense = torch.zeros(x.shape[0], D_SAE).scatter_(
            1, coder.encode(x).top_indices, coder.encode(x).top_acts
        )
        torch.testing.assert_close(ours.encode(x), dense, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(ours(x), out.sae_out, rtol=1e-5, atol=1e-5)


def _gemmascope_npz(path, seed=7):
    rng = np.random.default_rng(seed)
    params = {
        "W_enc": rng.normal(0, 0.2, (D_IN, D_SAE)),
        "W_dec": rng.normal(0, 0.2, (D_SAE, D_IN)),
        "b_enc": rng.normal(0, 0.2, D_SAE),
        "b_dec": rng.normal(0, 0.2, D_IN),
        "threshold": rng.uniform(0, 0.3, D_SAE),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **{k: v.astype(np.float32) for k, v in params.items()})
    return params


def _gemmascope_reference(p, x):
    """GemmaScope's published JumpReLU forward."""
    pre = x @ p["W_enc"] + p["b_enc"]
    acts = (pre > p["threshold"]) * np.maximum(pre, 0)
    return acts, acts @ p["W_dec"] + p["b_dec"]


def test_gemmascope_npz_needs_a_hook_and_imports_as_jumprelu(default_ws, tmp_path):
    p = _gemmascope_npz(tmp_path / "params.npz")
    with pytest.raises(SAEImportError, match="does not say which hook"):
        import_sae(default_ws, tmp_path / "params.npz")
    art = import_sae(
        default_ws, tmp_path / "params.npz", hook="blocks.5.hook_resid_post", name="gemmascope-local"
    )
    ours, _ = load_sae(art.path)
    assert ours.spec.architecture == "jumprelu" and not ours.spec.apply_b_dec_to_input
    x = _x().numpy()
    acts, recon = _gemmascope_reference(p, x)
    with torch.no_grad():
        np.testing.assert_allclose(ours.encode(torch.from_numpy(x)).numpy(), acts, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(ours(torch.from_numpy(x)).numpy(), recon, rtol=1e-4, atol=1e-5)
    # and SAELens reads our copy the same way
    theirs = sae_lens.SAE.load_from_disk(art.path)
    np.testing.assert_allclose(theirs(torch.from_numpy(x)).detach().numpy(), recon, rtol=1e-4, atol=1e-5)


def _hub_cache(root, repo_id: str, files: dict[str, bytes]):
    """A Hugging Face hub cache holding one snapshot of ``repo_id`` (the layout huggingface_hub writes)."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = root / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    for rel, data in files.items():
        f = repo / "snapshots" / commit / rel
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(data)
    return root


def test_hub_import_reads_the_repo_layout_from_the_cache(default_ws, tmp_path, monkeypatch):
    """The real hub code (snapshot_download with allow_patterns) served offline from a local hub cache:
    the GemmaScope repo and path give the hook and the model."""
    _gemmascope_npz(tmp_path / "src" / "params.npz")
    cache = _hub_cache(
        tmp_path / "hub",
        "google/gemma-scope-2b-pt-res",
        {
            "layer_20/width_16k/average_l0_71/params.npz": (tmp_path / "src" / "params.npz").read_bytes(),
            "layer_20/width_16k/average_l0_11/params.npz": b"not used",
        },
    )
    import huggingface_hub.constants as hf_constants

    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(cache))  # read per call; the env var only at import
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    art = import_sae(default_ws, "hf://google/gemma-scope-2b-pt-res/layer_20/width_16k/average_l0_71")
    assert art.meta["hook"] == "blocks.20.hook_resid_post" and art.meta["model_name"] == "google/gemma-2-2b"
    assert art.meta["origin"] == {
        "kind": "hub",
        "repo_id": "google/gemma-scope-2b-pt-res",
        "path": "layer_20/width_16k/average_l0_71",
        "revision": None,
    }
    assert art.meta["model"] is None  # no Gemma in this workspace
    with pytest.raises(HubError, match="not in the local hub cache"):
        import_sae(default_ws, "hf://google/gemma-scope-9b-pt-res/layer_20/width_16k/average_l0_71")
    with pytest.raises(SAEFormatError, match="hook_z"):
        _hub_cache(
            tmp_path / "hub",
            "google/gemma-scope-2b-pt-att",
            {"layer_3/width_16k/average_l0_9/params.npz": (tmp_path / "src" / "params.npz").read_bytes()},
        )
        import_sae(default_ws, "hf://google/gemma-scope-2b-pt-att/layer_3/width_16k/average_l0_9")
    with pytest.raises(HubError, match="does not name a hub repository"):
        import_sae(default_ws, "hf://just-a-name")


def test_bad_imports_say_what_is_wrong(default_ws, tmp_path):
    before = len(default_ws.list("sae"))
    with pytest.raises(SAEFormatError, match="does not exist"):
        import_sae(default_ws, tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SAEFormatError, match="not an SAE folder"):
        import_sae(default_ws, tmp_path / "empty")
    save_sae(_random(SAESpec("topk", D_IN, D_SAE, k=8)), tmp_path / "trunc")
    (tmp_path / "trunc" / "sae_weights.safetensors").write_bytes(b"\x00" * 10)
    with pytest.raises(SAEFormatError, match="truncated"):
        import_sae(default_ws, tmp_path / "trunc")
    save_sae(
        _random(SAESpec("topk", D_IN, D_SAE, k=8)),
        tmp_path / "badhook",
        metadata={"hook_name": "transformer.h.3"},
    )
    with pytest.raises(SAEImportError, match="not a hook name"):
        import_sae(default_ws, tmp_path / "badhook")
    groupmax = tmp_path / "layers.1"
    groupmax.mkdir()
    (groupmax / "cfg.json").write_text(json.dumps({"activation": "groupmax", "k": 8, "d_in": D_IN}))
    save_file({"encoder.weight": torch.zeros(D_SAE, D_IN)}, str(groupmax / "sae.safetensors"))
    with pytest.raises(SAEFormatError, match="groupmax"):
        import_sae(default_ws, groupmax)
    assert len(default_ws.list("sae")) == before  # nothing half-registered


def test_model_matching(default_ws):
    default = default_ws.get("SmolLM2-135M-Instruct", "model")
    for name in ("SmolLM2-135M-Instruct", "HuggingFaceTB/SmolLM2-135M-Instruct", "smollm2-135m-instruct"):
        assert match_model(default_ws, name).id == default.id
    assert match_model(default_ws, "gpt2-small") is None and match_model(default_ws, None) is None


def test_an_imported_saelens_sae_steers_the_model(default_ws, tmp_path):
    """Steering needs no extraction: a bare SAE from SAELens, at a hook of the default model."""
    from mistudio_widgets.core.configs import SteerConfig
    from mistudio_widgets.steering import steer
    from mistudio_widgets.widgets import SteeringPane

    torch.manual_seed(11)
    theirs = sae_lens.TopKSAE(sae_lens.TopKSAEConfig(d_in=576, d_sae=1152, k=16))
    theirs.cfg.metadata.hook_name = "blocks.10.hook_resid_post"
    theirs.cfg.metadata.model_name = "HuggingFaceTB/SmolLM2-135M-Instruct"
    theirs.save_model(tmp_path / "lens-576")
    art = import_sae(default_ws, tmp_path / "lens-576", name="lens-steer")
    base = steer(
        default_ws, art.id, SteerConfig(features=[[7, 0.0]], prompt="Tell me about your day.", max_tokens=6)
    )
    assert base.steered == base.unsteered and base.metrics.kl_mean == 0.0
    pane = SteeringPane(default_ws, sae=art.id)
    pane.add(7, 60.0)
    res = pane.generate("Tell me about your day.", max_tokens=6)
    assert res["metrics"]["kl_mean"] > 0.01
    assert "".join(pane.steered) != "".join(pane.unsteered)


def test_an_imported_sparsify_sae_is_browsable(default_ws, tmp_path):
    """Imported SAEs are first-class: extraction and the feature browser take them like trained ones."""
    from mistudio_widgets.core.configs import ExtractConfig
    from mistudio_widgets.features import extract, feature_detail, fire
    from mistudio_widgets.widgets import FeatureBrowser

    torch.manual_seed(13)
    coder = sparsify.SparseCoder(576, sparsify.SparseCoderConfig(num_latents=512, k=16))
    coder.save_to_disk(tmp_path / "layers.8")
    art = import_sae(default_ws, tmp_path / "layers.8", model="SmolLM2-135M-Instruct")
    assert art.meta["hook"] == "blocks.8.hook_resid_post"
    ext = extract(default_ws, art.id, ExtractConfig(tokens=512, top_k=3, quantile_examples=1, batch_size=4))
    assert ext.meta["summary"]["alive"] > 0
    hits = fire(default_ws, art.id, "WHY ARE YOU SHOUTING?")["features"]
    # the strongest hit that also fired during the extraction has a page with examples
    detail = next(d for h in hits if (d := feature_detail(default_ws, art.id, h["index"]))["frequency"] > 0)
    assert detail["logits"]["positive"] and detail["frequency"] <= 1 and detail["examples"]
    fb = FeatureBrowser(default_ws, sae=art.id)
    assert fb.show(detail["index"])["index"] == detail["index"]
