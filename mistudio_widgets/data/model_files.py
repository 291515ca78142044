"""What a model folder's weight files hold, read from their headers without loading a tensor: a
config that promises far more parameters than the files carry (or an empty or damaged file) is
refused before anything tries to allocate the model."""

from __future__ import annotations

import json
import math
import struct
from collections import Counter
from pathlib import Path
from typing import Any

from ..core.errors import ModelError

MAX_HEADER_BYTES = 100 * 2**20  # a safetensors header holds names and shapes: far below this


def safetensors_shapes(path: Path) -> list[tuple[int, ...]]:
    """The shapes of the tensors stored in one .safetensors file, from its header; a clear error when
    the file is empty, truncated or not a safetensors file."""
    size = path.stat().st_size
    try:
        with path.open("rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n > min(MAX_HEADER_BYTES, size - 8):
                raise ValueError(f"a header of {n} bytes in a file of {size}")
            header = json.loads(f.read(n))
        shapes, end = [], 0
        for name, t in header.items():
            if name == "__metadata__":
                continue
            shapes.append(tuple(int(d) for d in t["shape"]))
            end = max(end, int(t["data_offsets"][1]))
    except (struct.error, ValueError, KeyError, TypeError, RecursionError) as exc:
        raise ModelError(
            f"The weight file {path} ({size} bytes) is empty, truncated or not a safetensors file ({exc}).",
            "restore the complete weight files of the model, then add or load it again.",
        ) from exc
    if 8 + n + end > size:
        raise ModelError(
            f"The weight file {path} is truncated: its header describes {8 + n + end} bytes, it has {size}.",
            "restore the complete weight files of the model, then add or load it again.",
        )
    return shapes


def minimum_parameters(config: Any) -> int:
    """A lower bound on a transformer's parameters from its config: the token embedding plus, per layer,
    at least two d_model x d_model attention matrices (the query and output projections)."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config

    def get(*names: str) -> int:
        return next((int(getattr(text, n)) for n in names if isinstance(getattr(text, n, None), int)), 0)

    d_model, layers, vocab = (
        get("hidden_size", "n_embd", "d_model"),
        get("num_hidden_layers", "n_layer"),
        get("vocab_size"),
    )
    return vocab * d_model + layers * 2 * d_model * d_model


def needed_shapes(config: Any) -> list[tuple[int, ...]] | None:
    """The shapes of the parameters the model a config describes is built from (tied weights once),
    from a copy built on the meta device, which allocates nothing; None when that cannot be built
    (a quantized or custom-code config), and then only the lower bound above is checked."""
    if getattr(config, "quantization_config", None) is not None:
        return None
    try:
        import torch
        from transformers import AutoModelForCausalLM

        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
    except Exception:  # noqa: BLE001 - any failure here leaves the check to the lower bound
        return None
    return [tuple(p.shape) for p in model.parameters()]


def matching_values(needed: list[tuple[int, ...]], held: list[tuple[int, ...]]) -> int:
    """How many of the needed values the held tensors can supply: each held tensor counts only against
    a needed parameter of exactly its shape, at most once (a junk tensor of another shape adds nothing)."""
    left = Counter(needed)
    total = 0
    for shape in held:
        if left[shape] > 0:
            left[shape] -= 1
            total += math.prod(shape)
    return total


def check_weight_files(folder: Path, config: Any, name: str) -> None:
    """Refuse a model folder whose weight files cannot hold the model its config describes. Only
    safetensors files are counted (a pickle's contents are unknown until it is unpickled); an empty
    .bin file is refused too."""
    folder = Path(folder)
    for p in folder.glob("*.bin"):
        if p.stat().st_size == 0:
            raise ModelError(
                f"The weight file {p} of {name!r} is empty.", "restore the model's complete weight files."
            )
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        return
    shapes = [s for p in files for s in safetensors_shapes(p)]
    held = sum(math.prod(s) for s in shapes)
    need = minimum_parameters(config)
    if need <= held:  # the lower bound holds: count only the tensors the model is built from
        needed = needed_shapes(config)
        if needed is not None:
            need = sum(math.prod(s) for s in needed)
            held = matching_values(needed, shapes)
            need = need if held < 0.9 * need else 0  # a few missing values (a tied head) are fine
    if need > held:
        raise ModelError(
            f"The config of {name!r} describes a model of at least {need:,} parameters, but its weight "
            f"files hold only {held:,} values of the shapes it needs; it was not loaded (the rest would "
            "be random, and allocating it could exhaust memory).",
            "restore the matching config.json and complete weight files, then add the model again.",
        )
