"""SAE architectures and the SAELens folder format (no model needed)."""

from __future__ import annotations

import json

import pytest
import torch

from mistudio_widgets.core.configs import TrainConfig
from mistudio_widgets.sae import SAEConfigError, SAESpec, make_sae
from mistudio_widgets.sae.io import SAEFormatError, load_sae, save_sae
from mistudio_widgets.train.step import compute_losses

ARCHS = ["standard", "topk", "batchtopk", "matryoshka_batchtopk", "jumprelu"]
THRESHOLDED = ("batchtopk", "matryoshka_batchtopk")
# the training path's CUDA branches run where a GPU is (the device checks); CPU everywhere
DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU")),
]


def randomised(spec):
    torch.manual_seed(1)
    sae = make_sae(spec)
    with torch.no_grad():
        for p in sae.parameters():
            p.add_(0.05 * torch.randn_like(p))
        if spec.architecture in THRESHOLDED:
            sae.threshold.fill_(0.02)
    return sae


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("variant", ["sae", "skip", "transcoder"])
def test_saelens_round_trip(tmp_path, arch, variant):
    spec = SAESpec(
        architecture=arch,
        d_in=24,
        d_sae=96,
        k=6,
        skip=variant == "skip",
        d_out=16 if variant == "transcoder" else None,
        metadata={"hook_name": "blocks.3.hook_resid_post", "model_name": "m"},
    )
    sae = randomised(spec)
    x = torch.randn(50, 24) * 2
    save_sae(sae, tmp_path, {"context_size": 128})
    cfg = json.loads((tmp_path / "cfg.json").read_text())
    assert cfg["metadata"]["hook_name"] == "blocks.3.hook_resid_post" and cfg["metadata"][
        "sae_lens_version"
    ].startswith("6")
    assert cfg["d_in"] == 24 and cfg["d_sae"] == 96
    expected_arch = "jumprelu" if arch in ("jumprelu", *THRESHOLDED) else arch
    if variant == "skip":
        expected_arch = "skip_transcoder" if arch == "standard" else f"{expected_arch}_skip_transcoder"
    elif variant == "transcoder":
        expected_arch = "transcoder" if arch == "standard" else f"{expected_arch}_transcoder"
    assert cfg["architecture"] == expected_arch
    loaded, _ = load_sae(tmp_path)
    with torch.no_grad():
        if (
            variant == "skip" and arch != "topk"
        ):  # saved with b_dec folded into b_enc for SAELens: rounding only
            torch.testing.assert_close(loaded.encode(x), sae.encode(x), rtol=1e-5, atol=1e-5)
        else:
            assert torch.equal(loaded.encode(x), sae.encode(x))
        assert torch.allclose(loaded(x), sae(x), atol=1e-6)
    assert loaded(x).shape == (50, 16 if variant == "transcoder" else 24)


@pytest.mark.parametrize("arch", ARCHS)
def test_each_parameter_owns_its_memory_and_the_encoder_is_stored_latent_by_latent(arch):
    """W_enc [d_in, d_sae] is kept as the transpose of a contiguous [d_sae, d_in] (the training step's
    sampled product reads it so without copying), in memory of its own: it starts equal to W_dec's
    transpose, and sharing that memory would make every update to one an update to the other."""
    for d_out in (None, 16):  # an SAE, and a transcoder (whose encoder starts random)
        sae = make_sae(SAESpec(architecture=arch, d_in=24, d_sae=96, k=6, d_out=d_out))
        assert sae.W_enc.shape == (24, 96) and sae.W_enc.T.is_contiguous()
        starts = {p.untyped_storage().data_ptr() for p in sae.parameters()}
        assert len(starts) == len(list(sae.parameters()))
        before = sae.W_dec.detach().clone()
        with torch.no_grad():
            sae.W_enc.add_(1.0)
        assert torch.equal(sae.W_dec, before)


def test_pre_6_flat_config_loads(tmp_path):
    sae = randomised(SAESpec(architecture="standard", d_in=8, d_sae=32))
    save_sae(sae, tmp_path)
    cfg = json.loads((tmp_path / "cfg.json").read_text())
    flat = {
        "architecture": "standard",
        "d_in": 8,
        "d_sae": 32,
        "hook_point": "blocks.2.hook_resid_pre",
        "model_name": "gpt2",
        "context_size": 64,
        "dtype": "float32",
        "sae_lens_version": "3.5.0",
    }
    (tmp_path / "cfg.json").write_text(json.dumps(flat))
    loaded, _ = load_sae(tmp_path)
    assert (
        loaded.spec.metadata["hook_name"] == "blocks.2.hook_resid_pre"
        and loaded.spec.metadata["context_size"] == 64
    )
    assert cfg["metadata"]["model_name"] is None


def test_bad_specs_and_broken_folders(tmp_path):
    with pytest.raises(SAEConfigError, match="larger than d_sae"):
        make_sae(SAESpec(architecture="topk", d_in=8, d_sae=16, k=17))
    with pytest.raises(SAEConfigError, match="positive integer"):
        make_sae(SAESpec(architecture="standard", d_in=8, d_sae=0))
    with pytest.raises(SAEConfigError, match="too large"):
        make_sae(SAESpec(architecture="standard", d_in=2304, d_sae=10**9))
    with pytest.raises(SAEFormatError, match="not an SAE folder"):
        load_sae(tmp_path)
    sae = randomised(SAESpec(architecture="topk", d_in=8, d_sae=32, k=4))
    save_sae(sae, tmp_path)
    w = tmp_path / "sae_weights.safetensors"
    good = w.read_bytes()
    w.write_bytes(good[: len(good) // 2])
    with pytest.raises(SAEFormatError, match="truncated"):
        load_sae(tmp_path)
    w.write_bytes(good)
    cfg = json.loads((tmp_path / "cfg.json").read_text())
    (tmp_path / "cfg.json").write_text(json.dumps({**cfg, "d_sae": 64}))
    with pytest.raises(SAEFormatError, match="shape"):
        load_sae(tmp_path)
    (tmp_path / "cfg.json").write_text(json.dumps({k: v for k, v in cfg.items() if k != "d_in"}))
    with pytest.raises(SAEFormatError, match="d_in"):
        load_sae(tmp_path)
    (tmp_path / "cfg.json").write_text("{not json")
    with pytest.raises(SAEFormatError, match="not valid JSON"):
        load_sae(tmp_path)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("arch", ARCHS)
def test_each_architecture_learns_a_sparse_dictionary(arch, device):
    """Synthetic data made of 3 of 64 true directions per sample: every architecture must reconstruct it
    (on CUDA under the trainer's bf16 autocast)."""
    from mistudio_widgets.train.step import autocast

    torch.manual_seed(0)
    d, n_true = 32, 64
    dirs = torch.nn.functional.normalize(torch.randn(n_true, d), dim=1).to(device)

    def batch(n=512):
        idx = torch.rand(n, n_true, device=device).topk(3, dim=1).indices
        coef = torch.zeros(n, n_true, device=device).scatter_(1, idx, torch.rand(n, 3, device=device) * 3 + 1)
        return coef @ dirs

    spec = SAESpec(architecture=arch, d_in=d, d_sae=128, k=4)
    sae = make_sae(spec).to(device)
    cfg = TrainConfig(architecture=arch, k=4, l1_coefficient=1.0 if arch == "standard" else 0.05)
    opt = torch.optim.Adam(sae.parameters(), lr=5e-3)
    dead = torch.zeros(128, dtype=torch.bool, device=device)
    first = None
    for step in range(400):
        x = batch()
        with autocast(cfg, device):
            losses, out = compute_losses(sae, cfg, x, x, dead, cfg.l1_coefficient, 16)
        opt.zero_grad()
        losses.total.backward()
        if arch != "standard":
            sae.remove_parallel_grad()
        opt.step()
        if arch != "standard":
            sae.normalise_decoder()
        first = first if first is not None else float(losses.mse.detach())
    x = batch(2048)
    with torch.no_grad():
        ev = 1 - (sae(x) - x).pow(2).sum() / (x - x.mean(0)).pow(2).sum()
        l0 = (sae.encode(x) > 0).float().sum(-1).mean()
    assert float(losses.mse.detach()) < 0.3 * first
    assert ev > 0.8, f"{arch}: explained variance {ev:.3f}"
    assert 1 <= l0 <= 20, f"{arch}: L0 {l0:.1f}"


def test_schedule_free_sign_descent_learns_and_swaps_to_its_average_exactly():
    """The default optimiser: sign descent with schedule-free averaging. On synthetic data it learns the
    dictionary; the averaged weights it evaluates and saves are swapped in and out without drift."""
    from mistudio_widgets.train.optim import ScheduleFreeSignSGD, averaged, default_lr, make_optimizer

    torch.manual_seed(0)
    d, n_true = 32, 64
    dirs = torch.nn.functional.normalize(torch.randn(n_true, d), dim=1)

    def batch(n=512):
        idx = torch.rand(n, n_true).topk(3, dim=1).indices
        return torch.zeros(n, n_true).scatter_(1, idx, torch.rand(n, 3) * 3 + 1) @ dirs

    cfg = TrainConfig(k=4, d_sae=128)
    assert cfg.optimizer == "signsgd" and default_lr(cfg, 128) == pytest.approx(5e-3 * (16384 / 128) ** 0.5)
    sae = make_sae(SAESpec(architecture="topk", d_in=d, d_sae=128, k=4))
    opt, sched = make_optimizer(sae.parameters(), TrainConfig(k=4, d_sae=128, lr=0.01), 128)
    assert isinstance(opt, ScheduleFreeSignSGD)
    dead = torch.zeros(128, dtype=torch.bool)
    for _ in range(300):
        x = batch()
        losses, _ = compute_losses(sae, cfg, x, x, dead, 0.0, 16)
        opt.zero_grad()
        losses.total.backward()
        sae.remove_parallel_grad()
        opt.step()
        sched.step()
        sae.normalise_decoder()
    before = {k: v.clone() for k, v in sae.state_dict().items()}
    x = batch(2048)
    with torch.no_grad(), averaged(opt):
        moved = any(not torch.equal(before[k], v) for k, v in sae.state_dict().items())
        ev = 1 - (sae(x) - x).pow(2).sum() / (x - x.mean(0)).pow(2).sum()
    assert moved  # the average differs from the point where gradients are taken
    for k, v in sae.state_dict().items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=1e-6)
    assert ev > 0.8, f"explained variance {ev:.3f}"


@pytest.mark.parametrize("device", DEVICES)
def test_two_stage_selection_picks_what_topk_picks(device):
    """``largest`` (block maxima, then top-k within the best blocks; bfloat16 compared as int16 bits)
    chooses the same positive entries as ``topk`` over whole rows, on float32 and on bfloat16 with its
    many ties, for widths that take blocks of 16, 4 and none; shapes it cannot split fall back to
    ``topk``."""
    from mistudio_widgets.sae.topk import largest

    torch.manual_seed(0)
    for dtype in (torch.float32, torch.bfloat16):
        pre = (torch.randn(512, 64) @ torch.randn(64, 2048) * 0.1 - 0.5).to(dtype).to(device)
        for width in (1, 8, 32, 128, 400):
            got = pre.gather(1, largest(pre, width)).float().clamp_min(0).sort(1).values
            want = pre.topk(width, dim=1).values.float().clamp_min(0).sort(1).values
            assert torch.equal(got, want), (dtype, width)
    odd = torch.randn(4, 999, device=device)  # not a whole number of blocks
    assert torch.equal(largest(odd, 3).sort(1).values, odd.topk(3, dim=1).indices.sort(1).values)


@pytest.mark.parametrize("products", ["sparse", "dense"])
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("arch", ["topk", "batchtopk", "matryoshka_batchtopk"])
def test_sparse_training_step_has_the_dense_gradients(arch, device, products, monkeypatch):
    """The sparse training path (two-stage selection, products over the picked entries only, the
    decoder bias's gradient taken as -W_enc @ grad b_enc, Matryoshka's prefixes decoded band by band)
    gives the gradients of the plain dense computation of the same losses, AuxK included; with the
    sparse products of CPUs and with the dense products GPUs take (both run on either device here)."""
    import copy

    from mistudio_widgets.sae import topk

    monkeypatch.setattr(topk, "SPARSE_PRODUCTS", (device,) if products == "sparse" else ())
    torch.manual_seed(0)
    d, n, k, B, aux_k = 24, 1024, 4, 64, 8
    sae = make_sae(SAESpec(architecture=arch, d_in=d, d_sae=n, k=k)).to(device)
    sae.select_dtype = None  # exact float32 selection, so both sides pick the same latents
    with torch.no_grad():
        sae.b_dec.normal_()
        sae.b_enc.normal_(0, 0.1)
    ref = copy.deepcopy(sae)
    x = torch.randn(B, d, device=device) * 2
    dead = torch.zeros(n, dtype=torch.bool, device=device)
    dead[::7] = True
    cfg = TrainConfig(architecture=arch, k=k, aux_tokens=0)
    losses, out = compute_losses(sae, cfg, x, x, dead, 0.0, aux_k)
    losses.total.backward()
    assert float(losses.aux.detach()) > 0

    pre = (x - ref.b_dec) @ ref.W_enc + ref.b_enc
    mask = torch.zeros(B, n, dtype=torch.bool, device=device)
    mask[out.picked.rows, out.picked.idx] = True
    if arch == "topk":  # the picked latents are each token's k largest
        want = torch.zeros(B, n, dtype=torch.bool, device=device).scatter_(
            1, pre.topk(k, dim=1).indices, True
        )
        assert torch.equal(mask, want)
    recon = torch.relu(pre * mask) @ ref.W_dec + ref.b_dec
    err = recon - x
    pre_dead = pre[:, dead]
    top = pre_dead.topk(aux_k, dim=1)
    e_hat = torch.zeros_like(pre_dead).scatter(1, top.indices, torch.relu(top.values)) @ ref.W_dec[dead]
    e = -err.detach()
    aux = cfg.aux_coefficient * (e_hat - e).pow(2).sum(-1).mean() / (e - e.mean(0)).pow(2).sum(-1).mean()
    inner = torch.zeros((), device=device)
    for w in getattr(ref, "widths", [n])[:-1]:  # matryoshka: each inner prefix reconstructs alone
        prefix = torch.relu(pre * mask)[:, :w] @ ref.W_dec[:w] + ref.b_dec
        inner = inner + (prefix - x).pow(2).sum(-1).mean()
    (err.pow(2).sum(-1).mean() + aux + inner).backward()
    torch.testing.assert_close(losses.aux, aux)
    torch.testing.assert_close(losses.inner, inner)
    if arch == "matryoshka_batchtopk":
        assert float(inner.detach()) > 0
    for (name, p), q in zip(sae.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-5, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("arch", ["topk", "batchtopk"])
def test_values_of_a_bfloat16_selection_are_exact(arch, device):
    """With the default bfloat16 selection, the latents are chosen from the cheap dense pass but their
    values (what is decoded and differentiated) are the float32 pre-activations."""
    torch.manual_seed(0)
    sae = make_sae(SAESpec(architecture=arch, d_in=24, d_sae=1024, k=4)).to(device)
    sae.select_dtype = torch.bfloat16
    with torch.no_grad():
        sae.b_enc.normal_(0, 0.1)
    x = torch.randn(64, 24, device=device)
    out = sae.train_step(x)
    pre = (x - sae.b_dec) @ sae.W_enc + sae.b_enc
    want = torch.relu(pre[out.picked.rows, out.picked.idx])
    torch.testing.assert_close(out.vals, want, rtol=1e-5, atol=1e-6)
    assert out.vals.dtype == torch.float32 and (out.vals > 0).sum() >= 0.9 * out.vals.numel()
