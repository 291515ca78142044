"""The CUDA paths on the real model: the model in bf16 (what 'auto' picks on a GPU) and bitsandbytes 8-bit
and 4-bit against float32 on the CPU, training under the trainer's bf16 autocast against the same run
on the CPU, a steer, and NVML's readings. They run where a GPU is (the device checks; see
``benchmarks/gpu/``) and are skipped elsewhere, like the CUDA rows of ``test_sae.py``."""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

HOOK = "blocks.10.hook_resid_post"
TEXT = (
    "To be, or not to be, that is the question: whether 'tis nobler in the mind to suffer the slings and "
    "arrows of outrageous fortune, or to take arms against a sea of troubles."
)


def _read(lm, ids):
    """(activations at HOOK [T, d] in float32 on the CPU, next-token choices [T])."""
    from mistudio_widgets.data.hooks import run_with_capture

    with torch.no_grad():
        acts = run_with_capture(lm.model, ids.to(lm.model.device), HOOK)[HOOK].float().cpu().reshape(-1, 576)
        choice = lm.model(ids.to(lm.model.device)).logits[0].argmax(-1).cpu()
    return acts, choice


def _drop(lm) -> None:
    from mistudio_widgets.data.models import _models

    _models.pop(next(k for k, v in _models.items() if v is lm))
    torch.cuda.empty_cache()


def test_the_model_reads_the_same_on_the_gpu_in_bf16_8bit_and_4bit(default_ws):
    from mistudio_widgets.data.models import load_model

    cpu = load_model(default_ws, dtype="float32", device="cpu")
    ids = cpu.tokenizer(TEXT, return_tensors="pt").input_ids
    ref_acts, ref_choice = _read(cpu, ids)
    gpu = load_model(default_ws, device="auto")
    assert (gpu.device, gpu.dtype) == ("cuda", "bfloat16")
    assert next(gpu.model.parameters()).is_cuda
    # (cosine of the activations, share of the same next-token choices) against fp32 on the CPU. Measured
    # on an H200: bf16 (0.9999, 1.0), 8-bit (0.9977, 0.884), 4-bit NF4 (0.9825, 0.372): NF4 changes most
    # next-token choices of this 135M model, and the floors say so rather than hide it.
    floors = {"none": (0.999, 0.9), "8bit": (0.99, 0.75), "4bit": (0.95, 0.3)}
    seen = {}
    for q in floors:
        lm = gpu if q == "none" else load_model(default_ws, quantization=q, device="cuda")
        assert lm.quantization == q
        acts, choice = _read(lm, ids)
        cos = torch.nn.functional.cosine_similarity(acts[1:], ref_acts[1:], dim=-1).mean().item()  # no BOS
        agree = (choice == ref_choice).float().mean().item()
        seen[q] = (round(cos, 4), round(agree, 3))
        if q != "none":
            _drop(lm)
    print("cosine to fp32 on the CPU, next-token agreement:", seen)
    for q, (cos_floor, agree_floor) in floors.items():
        assert seen[q][0] >= cos_floor and seen[q][1] >= agree_floor, (q, seen)


def test_a_run_trains_on_the_gpu_as_on_the_cpu(default_ws):
    """The same run (seed, batches) on CUDA under bf16 autocast and on the CPU: explained variance and
    L0 agree, and the saved SAE reads the same on either device."""
    from mistudio_widgets.core.configs import TrainConfig
    from mistudio_widgets.sae.io import load_sae
    from mistudio_widgets.train.training import train

    got = {}
    for device in ("cuda", "cpu"):
        res = train(
            default_ws,
            TrainConfig(
                steps=30,
                batch_tokens=2048,
                chunk_sequences=64,
                eval_sequences=8,
                eval_every=0,
                checkpoint_every=0,
                log_every=10,
                expansion_factor=4,
                k=16,
                hook="blocks.6.hook_resid_post",
                device=device,
                name=default_ws.unique_name("run", f"cuda-check-{device}"),
            ),
        )
        assert res.status == "done", res
        got[device] = res
    ev = {d: r.metrics["explained_variance"] for d, r in got.items()}
    print("explained variance and L0 by device:", {d: (ev[d], r.metrics["l0"]) for d, r in got.items()})
    assert ev["cuda"] > 0.3 and abs(ev["cuda"] - ev["cpu"]) < 0.05, ev
    assert abs(got["cuda"].metrics["l0"] - got["cpu"].metrics["l0"]) < 2, got
    folder = default_ws.get(got["cuda"].sae_id).path
    sae, _ = load_sae(folder)
    on_device, _ = load_sae(folder, device="cuda")
    x = torch.randn(64, sae.spec.d_in) * 3
    with torch.no_grad():
        on_cpu = sae.encode(x)
        on_gpu = on_device.encode(x.cuda()).cpu()
    torch.testing.assert_close(on_gpu, on_cpu, rtol=1e-3, atol=1e-3)


def test_a_steer_on_the_gpu_changes_the_text_and_reports_its_metrics(default_ws, small_sae):
    from mistudio_widgets.core.configs import SteerConfig
    from mistudio_widgets.steering import steer

    res = steer(
        default_ws,
        small_sae,
        SteerConfig(features=[[0, 40.0]], prompt="Tell me about your day.", max_tokens=24),
    )
    d = res.to_dict()
    assert d["steered"] != d["unsteered"], d
    assert d["metrics"], d


def test_nvml_reads_the_gpu():
    from mistudio_widgets.core.system import gpu_snapshot

    state, message, gpus = gpu_snapshot()
    assert state == "ok" and gpus, message
    g = gpus[0]
    assert g["name"] and 0 < g["mem_used"] <= g["mem_total"] and 0 <= g["util"] <= 100
