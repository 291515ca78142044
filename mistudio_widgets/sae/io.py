"""SAELens folders, our native SAE format: ``cfg.json`` (v6 fields with ``metadata``),
``sae_weights.safetensors`` and optionally ``sparsity.safetensors``. Loading also accepts pre-6.0
flat configs. Only safetensors are read: no pickles."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..core.errors import MistudioError
from . import CLASSES, SAE, JumpReLUSAE, SAESpec

CFG, WEIGHTS, SPARSITY = "cfg.json", "sae_weights.safetensors", "sparsity.safetensors"
SAE_LENS_VERSION = "6.0.0"
# the transcoder architectures SAELens 6 can load (it has no top-k transcoders)
THRESHOLD_ARCHITECTURES = ("jumprelu", "batchtopk", "matryoshka_batchtopk")  # saved as jumprelu
SAELENS_TRANSCODERS = ("transcoder", "skip_transcoder", "jumprelu_transcoder", "jumprelu_skip_transcoder")
METADATA_KEYS = (
    "model_name",
    "hook_name",
    "hook_head_index",
    "model_class_name",
    "hook_layer",
    "prepend_bos",
    "exclude_special_tokens",
    "neuronpedia_id",
    "context_size",
    "seqpos_slice",
    "dataset_path",
    "model_from_pretrained_kwargs",
    "sae_lens_version",
    "sae_lens_training_version",
)
_OLD_KEYS = {"hook_point": "hook_name", "hook_point_head_index": "hook_head_index"}


class SAEFormatError(MistudioError):
    """A folder is not a readable SAE."""


def write_safetensors(tensors: dict[str, torch.Tensor], path: str | Path) -> None:
    """safetensors' save_file, with its I/O failures (e.g. a full disk) raised as OSError so that
    callers report them like any other write error."""
    import errno
    import re

    try:
        save_file(tensors, str(path))
    except Exception as exc:
        m = re.search(r"os error (\d+)", str(exc))
        if m:
            code = int(m.group(1))
            raise OSError(
                code, os.strerror(code) if code in errno.errorcode else str(exc), str(path)
            ) from exc
        raise


def saved_architecture(sae: SAE) -> str:
    spec = sae.spec
    base = "jumprelu" if spec.architecture in THRESHOLD_ARCHITECTURES else spec.architecture
    if spec.skip:
        return "skip_transcoder" if base == "standard" else f"{base}_skip_transcoder"
    if spec.is_transcoder:
        return "transcoder" if base == "standard" else f"{base}_transcoder"
    return base


def state_for_saving(sae: SAE) -> dict[str, torch.Tensor]:
    state = {"W_enc": sae.W_enc, "b_enc": sae.b_enc, "W_dec": sae.W_dec, "b_dec": sae.b_dec}
    if sae.spec.architecture in THRESHOLD_ARCHITECTURES:
        state["threshold"] = getattr(sae, "threshold")
    if sae.spec.skip:
        state["W_skip"] = sae.W_skip
    return {k: v.detach().float().cpu().contiguous() for k, v in state.items()}


def save_sae(
    sae: SAE,
    folder: str | Path,
    metadata: dict[str, Any] | None = None,
    sparsity: torch.Tensor | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write ``sae`` as a SAELens folder (the folder is created; existing files are replaced)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    spec = sae.spec
    meta: dict[str, Any] = {k: None for k in METADATA_KEYS}
    meta.update({k: v for k, v in {**spec.metadata, **(metadata or {})}.items()})
    meta["sae_lens_version"] = meta.get("sae_lens_version") or SAE_LENS_VERSION
    meta["sae_lens_training_version"] = meta.get("sae_lens_training_version") or SAE_LENS_VERSION
    arch = saved_architecture(sae)
    state = state_for_saving(sae)
    # SAELens transcoders never subtract b_dec from the input; a skip SAE that does is saved with
    # b_dec folded into b_enc ((x - b_dec) W_enc + b_enc = x W_enc + (b_enc - b_dec W_enc)): same outputs.
    fold = arch in SAELENS_TRANSCODERS and spec.apply_b_dec_to_input
    if fold:
        state["b_enc"] = (state["b_enc"].double() - state["b_dec"].double() @ state["W_enc"].double()).float()
    cfg: dict[str, Any] = {
        "architecture": arch,
        "d_in": spec.d_in,
        "d_sae": spec.d_sae,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": spec.apply_b_dec_to_input and not fold,
        "normalize_activations": "none",
        "reshape_activations": "none",
        "metadata": meta,
    }
    if spec.architecture == "topk":
        cfg["k"] = spec.k
    if spec.is_transcoder or spec.skip:
        cfg["d_out"] = spec.out_dim
    cfg["mistudio"] = {
        "architecture": spec.architecture,
        "k": spec.k,
        "trained_as": spec.architecture,
        **(extra or {}),
    }
    write_safetensors(state, folder / WEIGHTS)
    if sparsity is not None:
        write_safetensors({"sparsity": sparsity.detach().float().cpu().contiguous()}, folder / SPARSITY)
    (folder / CFG).write_text(json.dumps(cfg, indent=2))
    return folder


def _spec_from_cfg(cfg: dict[str, Any]) -> SAESpec:
    arch = str(cfg.get("architecture", "standard"))
    skip = "skip" in arch
    base = (
        arch.replace("_skip_transcoder", "").replace("skip_transcoder", "standard").replace("_transcoder", "")
    )
    base = "standard" if base == "transcoder" else base
    if base not in CLASSES:
        raise SAEFormatError(
            f"SAE architecture {arch!r} is not supported.",
            "use standard, topk, jumprelu or batchtopk SAEs (or their transcoders).",
        )
    if base in THRESHOLD_ARCHITECTURES:  # never saved so by us, but accept: inference is JumpReLU
        base = "jumprelu"
    k = cfg["k"] if "k" in cfg else (cfg.get("activation_fn_kwargs") or {}).get("k")
    if base == "topk" and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
        raise SAEFormatError(
            f"cfg.json gives the top-k SAE k={k!r}; k must be a whole number of at least 1.",
            "set k to the number of active latents the SAE was trained with.",
        )
    try:
        d_in, d_sae = int(cfg["d_in"]), int(cfg["d_sae"])
    except (KeyError, TypeError, ValueError) as exc:
        raise SAEFormatError(
            f"cfg.json lacks a valid d_in/d_sae ({exc}).", "check the file; SAELens configs have both."
        ) from exc
    d_out = cfg.get("d_out")
    meta = dict(cfg.get("metadata") or {})
    for key in METADATA_KEYS:  # pre-6.0 configs keep these at the top level
        if key not in meta and key in cfg:
            meta[key] = cfg[key]
    for old, new in _OLD_KEYS.items():
        if old in cfg and new not in meta:
            meta[new] = cfg[old]
    return SAESpec(
        architecture=base,
        d_in=d_in,
        d_sae=d_sae,
        k=int(k) if k else None,
        d_out=int(d_out) if d_out else None,
        skip=skip,
        apply_b_dec_to_input=bool(cfg.get("apply_b_dec_to_input", True)),
        metadata=meta,
    )


def _expected_shapes(spec: SAESpec) -> dict[str, tuple[int, ...]]:
    expected = {
        "W_enc": (spec.d_in, spec.d_sae),
        "b_enc": (spec.d_sae,),
        "W_dec": (spec.d_sae, spec.out_dim),
        "b_dec": (spec.out_dim,),
    }
    if spec.skip:
        expected["W_skip"] = (spec.out_dim, spec.d_in)
    if spec.architecture == "jumprelu":
        expected["threshold"] = (spec.d_sae,)
    return expected


def load_sae(folder: str | Path, device: str = "cpu") -> tuple[SAE, dict[str, Any]]:
    """Load a SAELens folder (ours or SAELens's, v6 or older). Returns (sae, cfg dict)."""
    folder = Path(folder)
    cfg_path, w_path = folder / CFG, folder / WEIGHTS
    if not cfg_path.is_file() or not w_path.is_file():
        raise SAEFormatError(
            f"{folder} is not an SAE folder (needs {CFG} and {WEIGHTS}).",
            "point at a folder saved by mistudio or SAELens.",
        )
    try:
        cfg = json.loads(cfg_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SAEFormatError(f"{cfg_path} is not valid JSON ({exc}).", "re-export the SAE.") from exc
    except RecursionError as exc:
        raise SAEFormatError(
            f"{cfg_path} is nested too deeply to be an SAE config.", "re-export the SAE."
        ) from exc
    if not isinstance(cfg, dict):
        raise SAEFormatError(f"{cfg_path} does not hold a JSON object.", "re-export the SAE.")
    spec = _spec_from_cfg(cfg)
    norm = cfg.get("normalize_activations")
    if norm not in (None, "none", False):
        raise SAEFormatError(
            f"This SAE expects normalised inputs ({norm!r}) without a folded scale.",
            "fold the normalisation into the weights before saving (SAELens: "
            "fold_activation_norm_scaling_factor).",
        )
    try:
        with safe_open(str(w_path), framework="pt", device="cpu") as f:
            # the header first: names and shapes are checked against cfg.json before any tensor is read
            # or any SAE built, and only the tensors an SAE needs are ever read
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118
            if "threshold" in shapes and spec.architecture == "standard":
                spec.architecture = "jumprelu"
            expected = _expected_shapes(spec)
            for name, shape in expected.items():
                if name not in shapes:
                    raise SAEFormatError(f"{w_path.name} lacks the tensor {name}.", "re-export the SAE.")
                if shapes[name] != shape:
                    raise SAEFormatError(
                        f"{name} has shape {shapes[name]} but cfg.json implies {shape}.",
                        "the weights and cfg.json do not belong together; re-export the SAE.",
                    )
            raw = {k: f.get_tensor(k) for k in expected}
    except SAEFormatError:
        raise
    except Exception as exc:
        raise SAEFormatError(
            f"Could not read {w_path}: {exc}", "the file is truncated or not safetensors; re-export it."
        ) from exc
    for name, t in raw.items():
        if not t.is_floating_point():
            raise SAEFormatError(
                f"{w_path.name}: {name} holds {t.dtype} values; SAE weights are floating point.",
                "re-export the SAE.",
            )
        if not bool(torch.isfinite(t).all()):
            raise SAEFormatError(
                f"{w_path.name}: {name} holds NaN or infinite values.",
                "re-export the SAE (or train it again).",
            )
    state = {k: t.float() for k, t in raw.items()}
    sae = CLASSES[spec.architecture](spec)
    with torch.no_grad():
        for name in ("W_enc", "b_enc", "W_dec", "b_dec") + (("W_skip",) if spec.skip else ()):
            getattr(sae, name).copy_(state[name])
        if isinstance(sae, JumpReLUSAE):
            sae.load_threshold(state["threshold"])
    sae.eval()
    return sae.to(device), cfg


def load_sparsity(folder: str | Path) -> torch.Tensor | None:
    p = Path(folder) / SPARSITY
    if not p.is_file():
        return None
    with safe_open(str(p), framework="pt", device="cpu") as f:
        return f.get_tensor("sparsity")
