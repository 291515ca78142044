"""Models: the embedded default converted once, architecture and memory before loading, loading options."""

from __future__ import annotations

import pytest
import torch

from mistudio_widgets import ModelConfig, Workspace
from mistudio_widgets.core.errors import HubError, ModelError
from mistudio_widgets.data.models import add_model, load_model, model_info


def test_default_model_converted_once(default_ws):
    art = add_model(default_ws)
    assert art.meta["provenance"]["kind"] == "embedded" and art.meta["licence"] == "Apache-2.0"
    assert (art.path / "hf" / "model.safetensors").is_file() and (
        art.path / "hf" / "tokenizer.json"
    ).is_file()
    assert add_model(default_ws).id == art.id  # idempotent: no second conversion
    # asked for other settings, the registered default is not silently returned as if it had them
    import pytest

    from mistudio_widgets.core.configs import ModelConfig
    from mistudio_widgets.core.errors import ModelError

    with pytest.raises(ModelError, match=r"already registered .* with dtype='auto'.*--name"):
        add_model(default_ws, ModelConfig(dtype="float32"))
    assert add_model(default_ws, ModelConfig(dtype="auto")).id == art.id
    info = model_info(default_ws, art)
    assert (
        info["family"],
        info["layers"],
        info["d_model"],
        info["heads"],
        info["kv_heads"],
        info["vocab"],
    ) == ("llama", 30, 576, 9, 3, 49152)
    assert info["parameters"] == 134_515_008
    t = info["memory_table"]
    assert t["float32/4bit"] < t["float32/8bit"] < t["bfloat16/none"] < t["float32/none"]
    # 'auto' loads bf16 on a CPU that computes it natively (2 bytes a weight), fp32 elsewhere (4)
    from mistudio_widgets.core.system import cpu_has_fast_bf16

    per_weight = 2 if cpu_has_fast_bf16() else 4
    assert info["dtype"] == "auto" and info["runs_in"] == ("bfloat16" if per_weight == 2 else "float32")
    assert 0.9 < info["memory"]["weights_gib"] / (134_515_008 * per_weight / 2**30) < 1.1


def test_loaded_default_generates_english(lm):
    tok = lm.tokenizer
    msgs = [{"role": "user", "content": "What is the capital of France?"}]
    ids = tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt", return_dict=True)[
        "input_ids"
    ]
    out = lm.model.generate(ids, max_new_tokens=12, do_sample=False)
    assert "Paris" in tok.decode(out[0, ids.shape[1] :])
    assert len(lm.hook_names()) == 30 * 6


def test_bad_model_sources(tmp_path):
    ws = Workspace(tmp_path)
    with pytest.raises(HubError, match="offline"):
        add_model(ws, ModelConfig(source="nobody-here/no-such-model"))
    with pytest.raises(ModelError, match="not a model folder"):
        add_model(ws, ModelConfig(source=str(tmp_path)))
    with pytest.raises(ModelError, match="No GGUF file"):
        add_model(ws, ModelConfig(source=str(tmp_path / "x.gguf")))
    assert ws.list() == []


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message given when there is no CUDA")
def test_cuda_and_quantization_without_cuda(default_ws):
    with pytest.raises(ModelError, match="no CUDA GPU.*device='cpu'"):
        load_model(default_ws, quantization="4bit", device="cuda")
    with pytest.raises(ModelError, match="no CUDA GPU"):
        load_model(default_ws, device="cuda")
    with pytest.raises(ModelError, match="Unknown quantization"):
        load_model(default_ws, quantization="3bit")


def test_local_folder_model(default_ws, tiny_model_dir, tiny_model_art):
    art = tiny_model_art
    assert art.path is None and art.meta["location"] == str(tiny_model_dir)
    lm = load_model(default_ws, art)
    assert lm.info["family"] == "gpt2" and lm.hook_names()[0] == "blocks.0.hook_resid_pre"


def test_8bit_on_cpu_through_bitsandbytes(default_ws, lm):
    pytest.importorskip("bitsandbytes")
    q = load_model(default_ws, quantization="8bit", device="cpu")
    ids = lm.tokenizer("To be, or not to be, that is the question", return_tensors="pt").input_ids
    with torch.no_grad():
        ref, got = lm.model(ids).logits[0], q.model(ids).logits[0]
    agree = (ref.argmax(-1) == got.argmax(-1)).float().mean().item()
    assert q.quantization == "8bit" and agree >= 0.7
    from mistudio_widgets.data.models import _models

    _models.pop(next(k for k, v in _models.items() if v is q))


def test_listing_loaded_models_never_waits_for_a_load(default_ws, lm):
    """The kernel's thread lists the loaded models (the Models tab does, on every refresh) while a worker
    loads another copy of the model: the list comes back at once, without the copy still loading, and
    holds it once the load is done."""
    import threading

    from mistudio_widgets.data.models import _models, loaded_models

    other = "float32" if lm.dtype == "bfloat16" else "bfloat16"  # a dtype the fixture's model is not in
    for k in [k for k, v in _models.items() if v.dtype == other]:
        _models.pop(k)  # loaded by an earlier test: this one needs the load to happen
    started, out = threading.Event(), {}

    def progress(ev):
        if ev.stage == "load" and not ev.finished:
            started.set()

    def load():
        out["lm"] = load_model(default_ws, dtype=other, device="cpu", progress=progress)

    worker = threading.Thread(target=load)
    worker.start()
    assert started.wait(120), "the load never began"
    during = loaded_models()
    still_loading = worker.is_alive()
    worker.join(300)
    assert still_loading, "the load ended before the list came back: the list waited for it"
    assert lm in during and all(m.dtype != other for m in during)
    assert out["lm"] in loaded_models() and out["lm"].dtype == other
    _models.pop(next(k for k, v in _models.items() if v is out["lm"]))
