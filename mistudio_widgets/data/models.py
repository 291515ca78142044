"""Models: add from the embedded default, a GGUF file, a local folder or the Hugging Face hub;
describe the architecture and memory needs before loading; load with dtype, quantization and device."""

from __future__ import annotations

import contextlib
import os
import pickle
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, cast

from ..core import defaults
from ..core.configs import DEFAULT, ModelConfig, to_dict
from ..core.errors import HubError, ModelError
from ..core.progress import ProgressCallback, emit
from ..core.system import cpu_has_fast_bf16
from ..core.workspace import Artifact, Workspace
from .model_files import check_weight_files
from .tokens import context_length, special_token_ids

BYTES_PER_PARAM = {"float32": 4.0, "float16": 2.0, "bfloat16": 2.0}
QUANT_BYTES = {"8bit": 1.0, "4bit": 0.5}

# The caches' lock guards the dicts only, for an instant: a load (seconds to minutes) holds the lock of
# its own key, so the kernel's thread listing the loaded models never waits behind a worker's load.
_cache_lock = threading.Lock()
_load_locks: dict[tuple, threading.Lock] = {}
_tokenizers: dict[tuple, Any] = {}
_models: dict[tuple, "LoadedModel"] = {}


def _load_lock(key: tuple) -> threading.Lock:
    with _cache_lock:
        return _load_locks.setdefault(key, threading.Lock())


def _cached(cache: dict[tuple, Any], key: tuple) -> Any:
    with _cache_lock:
        return cache.get(key)


def _keep(cache: dict[tuple, Any], key: tuple, value: Any) -> Any:
    with _cache_lock:
        cache[key] = value
    return value


# ---------------------------------------------------------------------------------------------
# Where a model's files are
def model_location(art: Artifact) -> tuple[str, dict[str, Any]]:
    """(path or hub id, from_pretrained kwargs) for a model artifact."""
    if art.path is not None:
        return str(art.path / "hf"), {}
    loc = art.meta.get("location")
    if loc and art.meta.get("provenance", {}).get("kind") == "local":
        if not Path(loc).is_dir():
            raise ModelError(
                f"The model folder {loc} of {art.name!r} no longer exists.",
                "restore the folder, or delete the model from the workspace and add it again.",
            )
        return loc, {}
    return art.meta["provenance"]["hub_id"], {"revision": art.meta["provenance"].get("revision")}


def _check_loading(name: str, model, loading: dict[str, Any]) -> None:
    """Refuse a model whose weight files did not cover its parameters (left random) or did not fit."""
    tied = set()
    if getattr(model.config, "tie_word_embeddings", False):
        tied = {n for n, _ in model.named_parameters() if n.endswith(("lm_head.weight", "embed_out.weight"))}
    missing = [k for k in loading.get("missing_keys", []) if k not in tied]
    bad = [str(x) for x in loading.get("mismatched_keys", [])]
    if missing or bad:
        what = (
            f"{len(missing)} parameter(s) are missing from its weight files (e.g. {', '.join(missing[:3])})"
            if missing
            else f"{len(bad)} weight(s) have the wrong shape (e.g. {', '.join(bad[:2])})"
        )
        raise ModelError(
            f"The model {name!r} cannot be used: {what}; they would be filled with random values.",
            "restore the complete weight files (or a matching config.json), then load again.",
        )


def _hub_error(source: str, exc: Exception) -> HubError:
    offline = os.environ.get("HF_HUB_OFFLINE") == "1"
    return HubError(
        f"Model {source!r} could not be fetched from the Hugging Face hub"
        + (" (the hub is offline here)" if offline else "")
        + f": {exc}",
        "check the id (and token for gated models), connect to the internet, or add a local folder or "
        ".gguf file instead.",
    )


# ---------------------------------------------------------------------------------------------
# Architecture
def describe_config(config) -> dict[str, Any]:
    """Family, sizes and exact parameter count of a model config, without loading weights."""
    import torch
    from transformers import AutoModelForCausalLM

    from .hooks import FAMILIES

    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    get = lambda *names: next((getattr(text, n) for n in names if getattr(text, n, None) is not None), None)  # noqa: E731
    with torch.device("meta"):
        try:
            skeleton = AutoModelForCausalLM.from_config(config)
            params = sum(p.numel() for p in skeleton.parameters())
            tied = bool(getattr(text, "tie_word_embeddings", False))
        except Exception:  # an architecture transformers cannot build: estimate
            params, tied = None, None
    d_model = get("hidden_size", "n_embd", "d_model")
    heads = get("num_attention_heads", "n_head")
    return {
        "family": config.model_type,
        "architecture": (config.architectures or [type(config).__name__])[0],
        "layers": get("num_hidden_layers", "n_layer"),
        "d_model": d_model,
        "d_mlp": get("intermediate_size", "n_inner") or (4 * d_model if d_model else None),
        "heads": heads,
        "kv_heads": get("num_key_value_heads") or heads,
        "vocab": get("vocab_size"),
        "context_length": get("max_position_embeddings", "n_positions"),
        "parameters": params,
        "tied_embeddings": tied,
        "supported": config.model_type in FAMILIES,
        "parallel_blocks": config.model_type == "gpt_neox"
        and bool(getattr(text, "use_parallel_residual", True)),
    }


def memory_estimate(
    info: dict[str, Any], dtype: str = "float32", quantization: str = "none"
) -> dict[str, float]:
    """Bytes the weights take once loaded (embeddings stay unquantized), plus a working margin."""
    params = info.get("parameters") or 0
    per = QUANT_BYTES.get(quantization, BYTES_PER_PARAM.get(dtype, 4.0))
    embed = (info.get("vocab") or 0) * (info.get("d_model") or 0)
    embed_bytes = embed * BYTES_PER_PARAM.get(dtype if dtype in BYTES_PER_PARAM else "float16", 2.0)
    weights = (params - embed) * per + embed_bytes if quantization in QUANT_BYTES else params * per
    return {"weights_gib": weights / 2**30, "total_gib": weights * 1.2 / 2**30}


# ---------------------------------------------------------------------------------------------
# Adding
def _clear_gguf_quantizer(model) -> None:
    """A GGUF-loaded model refuses save_pretrained until its quantizer marks are cleared."""
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.is_quantized = False


def _convert_gguf(gguf: Path, out: Path, progress: ProgressCallback | None) -> Any:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    emit(progress, "convert", 0, 3, unit="steps", message="reading tokenizer")
    try:
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        emit(progress, "convert", 1, 3, unit="steps", message="de-quantizing weights")
        with quiet_bars():
            model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype="float32")
    except Exception as exc:
        raise ModelError(
            f"Could not read the GGUF file {gguf}: {exc}",
            "check that it is a complete GGUF file of a supported architecture (pip install gguf).",
        ) from exc
    _clear_gguf_quantizer(model)
    emit(progress, "convert", 2, 3, unit="steps", message="writing safetensors")
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    emit(progress, "convert", 3, 3, unit="steps", finished=True)
    return model.config


def _name_for(source: str) -> str:
    base = Path(source).name if (Path(source).exists() or source.endswith(".gguf")) else source.split("/")[-1]
    return re.sub(r"\.gguf$", "", base) or "model"


def _embedded_already(
    ws: Workspace, cfg: ModelConfig, settings: dict[str, Any], asked: bool
) -> Artifact | None:
    """The embedded model when it is registered already under ``cfg.name``; an error when it was
    registered with other settings than the ones asked for (it is not changed)."""
    existing = ws.find(cfg.name or defaults.DEFAULT_MODEL_NAME, "model")
    if not existing or existing.meta.get("provenance", {}).get("kind") != "embedded":
        return None
    had = existing.meta.get("settings", {})
    differ = sorted(k for k, v in settings.items() if asked and had.get(k, v) != v)
    if differ:
        raise ModelError(
            f"The embedded model is already registered as {existing.name!r} with "
            + ", ".join(f"{k}={had[k]!r}" for k in differ)
            + "; it was not changed.",
            "register it again under another name to keep both (e.g. mistudio models add default "
            f"--name {existing.name}-{settings[differ[0]]} ...), or load it with other settings "
            "(load_model(..., dtype=...)).",
        )
    return existing


def _local_config(path: Path, cfg: ModelConfig, name: str):
    """The config of a local model folder, checked to hold weights that load safely."""
    from transformers import AutoConfig

    if not (path / "config.json").is_file():
        raise ModelError(
            f"{path} is not a model folder (no config.json).",
            "point at a folder saved with save_pretrained, a .gguf file, or a hub id.",
        )
    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=cfg.trust_remote_code)
    except ValueError as exc:
        raise ModelError(
            f"Could not read the model config in {path}: {exc}",
            "if the model needs its own code and you trust it, set trust_remote_code=True.",
        ) from exc
    if not any(
        next(path.glob(pat), None)
        for pat in ("*.safetensors", "*.bin", "*.safetensors.index.json", "*.bin.index.json")
    ):
        raise ModelError(
            f"{path} has a config.json but no weights (*.safetensors or *.bin).",
            "save the model with save_pretrained, or copy its weight files into the folder.",
        )
    if not next(path.glob("*.safetensors"), None) and not cfg.allow_pickle_weights:
        raise ModelError(
            f"{path} holds its weights only as *.bin files, which are Python pickles; they are not "
            "loaded by default.",
            "convert them to safetensors, or if you trust the folder add it with "
            "allow_pickle_weights=True (CLI: --allow-pickle-weights); they are then read with "
            "torch.load(weights_only=True).",
        )
    check_weight_files(path, config, name)
    return config


def _hub_config(cfg: ModelConfig):
    """The config of a hub model (read from the hub or its local cache)."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(
            cfg.source, revision=cfg.revision, token=cfg.token, trust_remote_code=cfg.trust_remote_code
        )
    except ValueError as exc:
        if "trust_remote_code" in str(exc):
            raise ModelError(
                f"{cfg.source!r} needs its own Python code to load.",
                "set trust_remote_code=True only if you trust that repository.",
            ) from exc
        raise _hub_error(cfg.source, exc) from exc
    except OSError as exc:
        raise _hub_error(cfg.source, exc) from exc


def add_model(
    ws: Workspace, cfg: ModelConfig | None = None, *, progress: ProgressCallback | None = None
) -> Artifact:
    """Register a model in the workspace. GGUF files (the embedded default among them) are converted
    once into a safetensors folder in the workspace; local folders and hub ids are referenced.
    Adding the embedded default twice returns the existing model."""
    asked = cfg is not None
    cfg = cfg or ModelConfig()
    settings = {
        k: v
        for k, v in to_dict(cfg).items()
        if k in ("dtype", "quantization", "device", "trust_remote_code", "allow_pickle_weights")
    }
    if cfg.source == DEFAULT:
        existing = _embedded_already(ws, cfg, settings, asked)
        if existing is not None:
            return existing
        gguf: Path | None = defaults.default_gguf()
        provenance: dict[str, Any] = {"kind": "embedded", **defaults.DEFAULT_MODEL_INFO}
        name = cfg.name or defaults.DEFAULT_MODEL_NAME
    else:
        path = Path(cfg.source).expanduser()
        gguf = path if path.suffix == ".gguf" else None
        if gguf is not None and not gguf.is_file():
            raise ModelError(f"No GGUF file at {gguf}.", "check the path.")
        name = cfg.name or ws.unique_name("model", _name_for(cfg.source))
        provenance = {"kind": "gguf", "path": str(gguf.resolve())} if gguf else {}
    if gguf is not None:
        meta: dict[str, Any] = {"provenance": provenance, "settings": settings}
        if provenance.get("licence"):
            meta["licence"] = provenance["licence"]
        with ws.write_artifact("model", name, meta=meta) as w:
            config = _convert_gguf(gguf, w.path / "hf", progress)
            w.meta["info"] = describe_config(config)
        return ws.get(w.id)

    path = Path(cfg.source).expanduser()
    if path.exists() or cfg.source.startswith((".", "/", "~")):
        config = _local_config(path, cfg, name)
        provenance = {"kind": "local", "path": str(path.resolve())}
        meta = {"provenance": provenance, "location": str(path.resolve()), "settings": settings}
    else:
        config = _hub_config(cfg)
        provenance = {"kind": "hub", "hub_id": cfg.source, "revision": cfg.revision}
        meta = {"provenance": provenance, "settings": settings}
    meta["info"] = describe_config(config)
    return ws.register("model", name, meta=meta)


def model_info(
    ws: Workspace, ref: str | Artifact, dtype: str | None = None, quantization: str | None = None
) -> dict[str, Any]:
    """Architecture and memory estimate of a registered model, without loading it."""
    art = ws.get(ref, "model")
    settings = art.meta.get("settings", {})
    dtype = dtype or settings.get("dtype", "auto")
    quantization = quantization or settings.get("quantization", "none")
    eff = resolve_dtype(dtype, resolve_device(settings.get("device", "auto")))
    info = dict(art.meta["info"])
    info["memory"] = memory_estimate(info, eff, quantization)
    info["memory_table"] = {
        f"{d}/{q}": round(memory_estimate(info, d, q)["total_gib"], 3)
        for d in BYTES_PER_PARAM
        for q in ("none", *QUANT_BYTES)
    }
    info["dtype"], info["quantization"] = dtype, quantization
    info["runs_in"] = eff  # what 'auto' resolves to here
    return info


# ---------------------------------------------------------------------------------------------
# Loading
@dataclass
class LoadedModel:
    artifact: Artifact
    model: Any
    tokenizer: Any
    device: str
    dtype: str
    quantization: str
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.artifact.name

    def special_ids(self) -> list[int]:
        """The tokenizer's special-token ids, sorted, each once."""
        return special_token_ids(self.tokenizer)

    @property
    def context_length(self) -> int:
        """The longest sequence the model reads."""
        return context_length(self.model.config)

    def hook_names(self) -> list[str]:
        from .hooks import hook_names

        return hook_names(self.model)


@contextlib.contextmanager
def quiet_bars() -> Iterator[None]:
    """transformers' own "Loading weights 272/272" bars stay out of notebook and terminal output: a load
    reports its progress through ours."""
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ModelError(
            "CUDA was asked for, but no CUDA GPU is available to this kernel.",
            "use device='cpu' (or 'auto'), or run on a machine with an NVIDIA GPU and a CUDA build of torch.",
        )
    if device == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ModelError(
            "MPS was asked for, but Apple's Metal backend is not available here.",
            "use device='cpu' or 'auto'.",
        )
    if device not in ("cpu", "cuda", "mps"):
        raise ModelError(f"Unknown device {device!r}.", "use auto, cpu, cuda or mps.")
    return device


def resolve_dtype(dtype: str, device: str) -> str:
    """The dtype the model's weights and forward run in. 'auto': bfloat16 on a CUDA GPU that supports
    it (else float16) and on a CPU that computes bf16 natively (AVX512-BF16 or AMX; ~3x fp32's
    tokens/s, hidden states at cosine 0.9999), float32 elsewhere. Whatever the model runs in, the SAE
    keeps fp32 weights and optimiser state, activations are cast to fp32 before the SAE sees them, and
    log-probabilities (perplexity, KL, CE) are computed from logits cast to fp32."""
    import torch

    if dtype == "auto":
        if device == "cuda":
            return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
        if device == "cpu" and cpu_has_fast_bf16():
            return "bfloat16"
        return "float32"
    if dtype not in BYTES_PER_PARAM:
        raise ModelError(f"Unknown dtype {dtype!r}.", "use auto, float32, float16 or bfloat16.")
    return dtype


def _quantization_config(quantization: str, device: str, dtype: str):
    if quantization == "none":
        return None
    if quantization not in QUANT_BYTES:
        raise ModelError(f"Unknown quantization {quantization!r}.", "use none, 8bit or 4bit.")
    if device == "mps":
        raise ModelError(
            "bitsandbytes quantization does not run on Apple MPS.",
            "use device='cpu' or a CUDA GPU, or quantization='none'.",
        )
    try:
        import bitsandbytes  # noqa: F401
    except Exception as exc:
        raise ModelError(
            f"{quantization} quantization needs bitsandbytes, which could not be imported ({exc}).",
            "pip install 'mistudio-widgets[quantization]' (bitsandbytes), or use quantization='none'.",
        ) from exc
    import torch
    from transformers import BitsAndBytesConfig

    if quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=getattr(torch, dtype)
    )


def load_tokenizer(ws: Workspace, ref: str | Artifact):
    """The model's tokenizer (cached per process)."""
    from transformers import AutoTokenizer

    art = ws.get(ref, "model")
    key = (str(ws.root), art.id)
    with _load_lock(("tokenizer", *key)):
        tok = _cached(_tokenizers, key)
        if tok is not None:
            return tok
        loc, kw = model_location(art)
        try:
            tok = AutoTokenizer.from_pretrained(
                loc, trust_remote_code=art.meta.get("settings", {}).get("trust_remote_code", False), **kw
            )
        except OSError as exc:
            if art.meta["provenance"]["kind"] == "hub":
                raise _hub_error(loc, exc) from exc
            raise ModelError(
                f"Could not load the tokenizer of {art.name!r}: {exc}", "check the model folder."
            ) from exc
        return _keep(_tokenizers, key, tok)


def _load_kwargs(
    settings: dict[str, Any], dt: str, dev: str, qcfg: Any, location: dict[str, Any]
) -> dict[str, Any]:
    """transformers' from_pretrained arguments for a model's settings: dtype, remote code, safetensors
    only (unless pickles are allowed), quantization with its device map."""
    import torch

    kwargs: dict[str, Any] = dict(
        dtype=getattr(torch, dt),
        trust_remote_code=settings.get("trust_remote_code", False),
        output_loading_info=True,
        **location,
    )
    if not settings.get("allow_pickle_weights"):
        kwargs["use_safetensors"] = True
    if qcfg is not None:
        kwargs["quantization_config"] = qcfg
        kwargs["device_map"] = {"": dev if dev != "cuda" else 0}
    return kwargs


def load_model(
    ws: Workspace,
    ref: str | Artifact = defaults.DEFAULT_MODEL_NAME,
    *,
    dtype: str | None = None,
    quantization: str | None = None,
    device: str | None = None,
    progress: ProgressCallback | None = None,
) -> LoadedModel:
    """Load a registered model (cached per process for the same settings) in eval mode."""
    import torch
    from transformers import AutoModelForCausalLM

    art = ws.get(ref, "model")
    settings = art.meta.get("settings", {})
    dev = resolve_device(device or settings.get("device", "auto"))
    dt = resolve_dtype(dtype or settings.get("dtype", "auto"), dev)
    quant = quantization or settings.get("quantization", "none")
    qcfg = _quantization_config(quant, dev, dt)
    key = (str(ws.root), art.id, dev, dt, quant)
    with _load_lock(key):
        cached = _cached(_models, key)
        if cached is not None:
            return cached
        loc, kw = model_location(art)
        emit(progress, "load", 0, 1, unit="model", message=art.name)
        kwargs = _load_kwargs(settings, dt, dev, qcfg, kw)
        if Path(loc).is_dir():  # a local folder: its files may have changed since it was added
            from transformers import AutoConfig

            check_weight_files(
                Path(loc),
                AutoConfig.from_pretrained(loc, trust_remote_code=kwargs["trust_remote_code"]),
                art.name,
            )
        try:
            with quiet_bars():
                # with output_loading_info, a (model, loading info) pair
                model, loading = cast(Any, AutoModelForCausalLM).from_pretrained(loc, **kwargs)
        except torch.OutOfMemoryError as exc:
            raise ModelError(
                f"Out of memory loading {art.name!r} in {dt}.",
                "use a smaller dtype or 8bit/4bit quantization.",
            ) from exc
        except pickle.UnpicklingError:
            raise ModelError(
                f"A *.bin weight file of {art.name!r} holds more than tensors (objects or code a pickle "
                "can run); it was not loaded, and nothing in it ran.",
                "get the model as safetensors from a source you trust, then add it again.",
            ) from None
        except OSError as exc:
            if art.meta["provenance"]["kind"] == "hub":
                raise _hub_error(loc, exc) from exc
            raise ModelError(f"Could not load {art.name!r}: {exc}", "check the model folder.") from exc
        except Exception as exc:
            if qcfg is not None:
                raise ModelError(
                    f"bitsandbytes could not load {art.name!r} in {quant} on {dev}: {exc}",
                    "use a CUDA GPU for quantization, or quantization='none'.",
                ) from exc
            raise
        _check_loading(art.name, model, loading)
        if qcfg is None:
            model.to(dev)
        model.eval()
        model.requires_grad_(False)
        loaded = LoadedModel(
            art, model, load_tokenizer(ws, art), dev, dt, quant, model_info(ws, art, dt, quant)
        )
        _keep(_models, key, loaded)
        emit(progress, "load", 1, 1, unit="model", message=art.name, finished=True)
        return loaded


def loaded_models() -> list[LoadedModel]:
    with _cache_lock:
        return list(_models.values())


def unload_models() -> None:
    """Drop every cached model (frees memory)."""
    import gc

    with _cache_lock:
        _models.clear()
    gc.collect()


def resolve_model(
    ws: Workspace, ref: str | Artifact = DEFAULT, *, progress: ProgressCallback | None = None
) -> Artifact:
    """A model artifact; ``'default'`` adds the embedded model on first use."""
    if isinstance(ref, Artifact):
        return ref
    if ref == DEFAULT:
        return add_model(ws, progress=progress)
    return ws.get(ref, "model")
