"""Foreign SAE formats read into our SAE classes: GemmaScope's raw ``params.npz`` (JumpReLU) and
EleutherAI sparsify folders (``cfg.json`` + ``sae.safetensors`` with ``encoder.weight`` [d_sae, d_in]).
SAELens folders are our native format (see ``io``). ``detect`` says which one a path holds.

Each reader returns the SAE and the metadata it could establish (``hook_name``, ``hook_name_out``,
``model_name``); whatever it cannot tell (sparsify folders name no model, a bare ``params.npz`` no
hook) is left for the caller to supply."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open

from . import CLASSES, SAE, JumpReLUSAE, SAESpec
from .io import CFG, WEIGHTS, SAEFormatError

NPZ = "params.npz"
SPARSIFY_WEIGHTS = "sae.safetensors"
FORMATS = ("saelens", "gemmascope", "sparsify")

# GemmaScope repositories: google/gemma-scope-<size>-<pt|it>-<res|mlp|att>[-canonical]
_GS_REPO = re.compile(r"gemma-scope-(\d+b)-(pt|it)-(res|mlp|att|transcoders)")
_GS_SITE = {"res": "hook_resid_post", "mlp": "hook_mlp_out"}


def detect(path: str | Path) -> str:
    """'saelens', 'gemmascope' or 'sparsify' for a folder (or a params.npz file)."""
    p = Path(path)
    if p.is_file() and p.suffix == ".npz":
        return "gemmascope"
    if not p.is_dir():
        raise SAEFormatError(f"{p} does not exist.", "give the folder of an SAE (or its params.npz).")
    if (p / CFG).is_file() and (p / WEIGHTS).is_file():
        return "saelens"
    if (p / CFG).is_file() and (p / SPARSIFY_WEIGHTS).is_file():
        return "sparsify"
    if (p / NPZ).is_file():
        return "gemmascope"
    subs = sorted(q.name for q in p.iterdir() if q.is_dir() and ((q / CFG).is_file() or (q / NPZ).is_file()))
    hint = (
        f"it holds several SAEs: pick one of {', '.join(subs[:8])}."
        if subs
        else f"expected {CFG} + {WEIGHTS} (SAELens), {CFG} + {SPARSIFY_WEIGHTS} (sparsify) or {NPZ} "
        "(GemmaScope)."
    )
    raise SAEFormatError(f"{p} is not an SAE folder.", hint)


def gemmascope_metadata(where: str) -> dict[str, Any]:
    """Hook and model read from a GemmaScope repo id and/or path such as
    ``google/gemma-scope-2b-pt-res/layer_20/width_16k/average_l0_71``."""
    meta: dict[str, Any] = {}
    layer = re.search(r"layer_(\d+)", where)
    repo = _GS_REPO.search(where)
    if repo:
        size, variant, site = repo.groups()
        meta["model_name"] = f"google/gemma-2-{size}" + ("-it" if variant == "it" else "")
        if site == "att":
            raise SAEFormatError(
                "GemmaScope attention SAEs read the per-head attention output (hook_z), which "
                "mistudio does not hook.",
                "use a residual-stream (-res) or MLP (-mlp) GemmaScope SAE.",
            )
        if layer and site in _GS_SITE:
            meta["hook_name"] = f"blocks.{layer.group(1)}.{_GS_SITE[site]}"
    l0 = re.search(r"average_l0_(\d+)", where)
    if l0:
        meta["average_l0"] = int(l0.group(1))
    return meta


def read_gemmascope(path: str | Path) -> tuple[SAE, dict[str, Any]]:
    """A GemmaScope ``params.npz`` (W_enc [d_in, d_sae], W_dec [d_sae, d_in], b_enc, b_dec, threshold):
    JumpReLU on x @ W_enc + b_enc (b_dec is not subtracted from the input)."""
    p = Path(path)
    p = p / NPZ if p.is_dir() else p
    need = ("W_enc", "W_dec", "b_enc", "b_dec", "threshold")
    headers = _npz_headers(p)
    missing = [k for k in need if k not in headers]
    if not missing:
        _check_npz_shapes(p, headers)
    try:
        with np.load(p, allow_pickle=False) as z:
            state = {k: torch.from_numpy(np.asarray(z[k], dtype=np.float32)) for k in need if k in headers}
    except Exception as exc:
        raise SAEFormatError(
            f"Could not read {p}: {exc}", "the file is truncated or not a GemmaScope params.npz."
        ) from exc
    if missing:
        raise SAEFormatError(
            f"{p.name} lacks {', '.join(missing)} (has {', '.join(sorted(state))}).",
            "GemmaScope params hold W_enc, W_dec, b_enc, b_dec and threshold.",
        )
    d_in, d_sae = state["W_enc"].shape
    spec = SAESpec(
        architecture="jumprelu",
        d_in=int(d_in),
        d_sae=int(d_sae),
        k=None,
        apply_b_dec_to_input=False,
        metadata=gemmascope_metadata(str(p)),
    )
    sae = JumpReLUSAE(spec)
    _check_shapes(
        p,
        state,
        {
            "W_enc": (d_in, d_sae),
            "W_dec": (d_sae, d_in),
            "b_enc": (d_sae,),
            "b_dec": (d_in,),
            "threshold": (d_sae,),
        },
    )
    with torch.no_grad():
        for k in ("W_enc", "W_dec", "b_enc", "b_dec"):
            getattr(sae, k).copy_(state[k])
        sae.load_threshold(state["threshold"])
    return sae.eval(), dict(spec.metadata)


def _npz_headers(p: Path) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """(shape, dtype) of each array of an .npz, read from the array headers only (nothing inflated)."""
    import zipfile

    out = {}
    try:
        with zipfile.ZipFile(p) as zf:
            for info in zf.infolist():
                if not info.filename.endswith(".npy"):
                    continue
                with zf.open(info) as fh:
                    version = np.lib.format.read_magic(fh)
                    read = (
                        np.lib.format.read_array_header_1_0
                        if version == (1, 0)
                        else np.lib.format.read_array_header_2_0
                    )
                    shape, _, dtype = read(fh)
                out[info.filename[:-4]] = (tuple(int(n) for n in shape), dtype)
    except Exception as exc:
        raise SAEFormatError(
            f"Could not read {p}: {exc}", "the file is truncated or not a GemmaScope params.npz."
        ) from exc
    return out


def _check_npz_shapes(p: Path, headers: dict[str, tuple[tuple[int, ...], np.dtype]]) -> None:
    """GemmaScope's shapes agree with each other, and the SAE fits in memory, before anything is read."""
    import psutil

    w = headers["W_enc"][0]
    if len(w) != 2:
        raise SAEFormatError(f"{p.name}: W_enc has shape {w}, not [d_in, d_sae].", "use GemmaScope's file.")
    d_in, d_sae = w
    want = {"W_dec": (d_sae, d_in), "b_enc": (d_sae,), "b_dec": (d_in,), "threshold": (d_sae,)}
    for k, shape in want.items():
        if headers[k][0] != shape:
            raise SAEFormatError(
                f"{p.name}: {k} has shape {headers[k][0]} but W_enc {w} implies {shape}.",
                "the file is not a GemmaScope params.npz.",
            )
    need = 4 * 2 * (2 * d_in * d_sae + 2 * d_sae + d_in)  # float32, the arrays and the SAE built from them
    if need > psutil.virtual_memory().available:
        raise SAEFormatError(
            f"{p.name} declares an SAE of {d_in} x {d_sae} needing {need / 2**30:.1f} GiB; "
            f"{psutil.virtual_memory().available / 2**30:.1f} GiB are free. Nothing was read.",
            "free memory or use a machine with more.",
        )


def sparsify_hooks(hookpoint: str, transcode: bool) -> dict[str, Any]:
    """Our hook names for a sparsify hookpoint (module path under the model's base, e.g. ``layers.6``,
    ``layers.6.mlp``, ``h.6`` for GPT-2)."""
    m = re.fullmatch(
        r"(?:model\.|transformer\.|gpt_neox\.)?(?:layers|h)\.(\d+)(?:\.(mlp|self_attn|attn|attention))?",
        hookpoint,
    )
    if not m:
        return {}
    layer, sub = m.groups()
    if sub is None:
        return {"hook_name": f"blocks.{layer}.hook_resid_post"} if not transcode else {}
    if sub == "mlp":
        if transcode:
            return {
                "hook_name": f"blocks.{layer}.ln2.hook_normalized",
                "hook_name_out": f"blocks.{layer}.hook_mlp_out",
            }
        return {"hook_name": f"blocks.{layer}.hook_mlp_out"}
    return {"hook_name": f"blocks.{layer}.hook_attn_out"} if not transcode else {}


def read_sparsify(folder: str | Path) -> tuple[SAE, dict[str, Any]]:
    """An EleutherAI sparsify folder: top-k on ReLU(encoder(x - b_dec)) (x itself for transcoders),
    decoder W_dec [d_sae, d_in] plus b_dec, optional W_skip. The folder's name is its hookpoint."""
    folder = Path(folder)
    try:
        cfg = json.loads((folder / CFG).read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise SAEFormatError(
            f"{folder / CFG} is not readable JSON ({exc.__class__.__name__}).", "re-save the sparsify SAE."
        ) from exc
    activation = cfg.get("activation", "topk")
    if activation != "topk":
        raise SAEFormatError(
            f"This sparsify SAE uses the {activation!r} activation.",
            "only top-k sparsify SAEs can be imported.",
        )
    try:
        with safe_open(str(folder / SPARSIFY_WEIGHTS), framework="pt", device="cpu") as f:
            state = {k: f.get_tensor(k).float() for k in f.keys()}  # noqa: SIM118
    except Exception as exc:
        raise SAEFormatError(
            f"Could not read {folder / SPARSIFY_WEIGHTS}: {exc}", "re-save the sparsify SAE."
        ) from exc
    if "W_dec" not in state:
        raise SAEFormatError("This sparsify SAE was saved without a decoder.", "save it with decoder=True.")
    if "encoder.weight" not in state:
        raise SAEFormatError(f"{SPARSIFY_WEIGHTS} lacks encoder.weight.", "re-save the sparsify SAE.")
    d_sae, d_in = state["encoder.weight"].shape
    transcode, skip = bool(cfg.get("transcode")), "W_skip" in state and state["W_skip"] is not None
    meta = sparsify_hooks(folder.name, transcode)
    if transcode and "hook_name_out" not in meta:
        meta.pop("hook_name", None)
    spec = SAESpec(
        architecture="topk",
        d_in=int(d_in),
        d_sae=int(d_sae),
        k=int(cfg.get("k", 32)),
        d_out=int(d_in) if (transcode or skip) else None,
        skip=skip,
        apply_b_dec_to_input=not transcode,
        metadata={**meta, "hookpoint": folder.name},
    )
    spec.validate()
    sae = CLASSES["topk"](spec)
    expected = {
        "encoder.weight": (d_sae, d_in),
        "encoder.bias": (d_sae,),
        "W_dec": (d_sae, d_in),
        "b_dec": (d_in,),
    }
    if skip:
        expected["W_skip"] = (d_in, d_in)
    _check_shapes(folder / SPARSIFY_WEIGHTS, state, expected)
    with torch.no_grad():
        sae.W_enc.copy_(state["encoder.weight"].T)
        sae.b_enc.copy_(state["encoder.bias"])
        sae.W_dec.copy_(state["W_dec"])
        sae.b_dec.copy_(state["b_dec"])
        if skip:
            sae.W_skip.copy_(state["W_skip"])
    return sae.eval(), dict(spec.metadata)


def _check_shapes(path: Path, state: dict[str, torch.Tensor], expected: dict[str, tuple[int, ...]]) -> None:
    for name, shape in expected.items():
        if name not in state:
            raise SAEFormatError(
                f"{path.name} lacks the tensor {name}.", "the file is incomplete; download or save it again."
            )
        if tuple(state[name].shape) != tuple(shape):
            raise SAEFormatError(
                f"{name} in {path.name} has shape {tuple(state[name].shape)}, expected {tuple(shape)}.",
                "the file's tensors do not belong together; download or save it again.",
            )


def read_any(path: str | Path) -> tuple[SAE, dict[str, Any], str]:
    """(sae, metadata, format) of a SAELens folder, a GemmaScope params.npz (or folder) or a sparsify
    folder."""
    from .io import load_sae

    fmt = detect(path)
    if fmt == "saelens":
        sae, _ = load_sae(path)
        return sae, dict(sae.spec.metadata), fmt
    if fmt == "gemmascope":
        sae, meta = read_gemmascope(path)
        return sae, meta, fmt
    sae, meta = read_sparsify(path)
    return sae, meta, fmt
