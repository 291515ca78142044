"""Checkpoints of a training run: what is saved (weights, optimiser, schedule, RNG and the
:class:`TrainState`), written atomically, the newest few kept, and checked when a run resumes."""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from ..core.disk import atomic_folder
from ..sae import SAE
from ..sae.io import write_safetensors

CKPT_PREFIX = "checkpoint-"
KEEP_CHECKPOINTS = 2
GROUP_STATE = ("weight_sum",)  # optimiser scalars kept per parameter group (schedule-free averaging)


@dataclass
class TrainState:
    """Where one SAE's training stands, besides its weights, optimiser and schedule: what a checkpoint
    restores (``state.json``) so that a resumed run continues exactly where it stopped."""

    step: int = 0
    position: list[int] = field(default_factory=lambda: [0, 0, 0])  # where the activation stream stands
    scale_in: float = 1.0  # input normalisation (folded into the weights when the SAE is saved)
    scale_out: float = 1.0
    tokens_since_fired: list[int] | None = None  # per latent, for dead-latent tracking
    best_eval: float | None = None  # early stopping: the best held-out MSE so far
    bad_evals: int = 0  # and the evaluations since it
    tokens: int = 0
    seconds: float = 0.0  # training time so far (steps and harvests, all sessions), for the time axis

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "TrainState":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def remove_stale_checkpoint_temps(run_dir: Path) -> list[str]:
    """Remove half-written checkpoint folders a killed process left (``.checkpoint-N.tmp-*``)."""
    stale = [p for p in run_dir.glob(f".{CKPT_PREFIX}*.tmp-*") if p.is_dir()]
    for p in stale:
        shutil.rmtree(p, ignore_errors=True)
    return [p.name for p in stale]


def checkpoints_of(run_dir: Path) -> list[Path]:
    found = [
        p
        for p in run_dir.glob(f"{CKPT_PREFIX}*")
        if re.fullmatch(rf"{CKPT_PREFIX}\d{{1,12}}", p.name)
        and not p.is_symlink()
        and p.is_dir()
        and (p / "state.json").is_file()
    ]
    return sorted(found, key=lambda p: int(p.name[len(CKPT_PREFIX) :]))


def save_checkpoint(run_dir: Path, sae: SAE, opt: torch.optim.Optimizer, sched, state: TrainState) -> Path:
    """Write checkpoint-<step> atomically; older checkpoints beyond the newest few are removed only after."""
    tensors = {
        f"sae.{k}": v.detach().cpu().contiguous() for k, v in sae.state_dict().items() if v is not None
    }
    names = {id(p): n for n, p in sae.named_parameters()}
    for p, st in opt.state.items():
        for key, v in st.items():
            if torch.is_tensor(v):
                tensors[f"opt.{names[id(p)]}.{key}"] = v.detach().cpu().contiguous().reshape(v.shape)
    tensors["rng.torch"] = torch.get_rng_state()
    final = run_dir / f"{CKPT_PREFIX}{state.step}"
    with atomic_folder(final, writing="checkpoint") as tmp:
        write_safetensors(tensors, tmp / "state.safetensors")
        groups = [{k: g[k] for k in GROUP_STATE if k in g} for g in opt.param_groups]
        (tmp / "state.json").write_text(
            json.dumps({**asdict(state), "scheduler": sched.state_dict(), "optimizer_groups": groups})
        )
    for old in checkpoints_of(run_dir)[:-KEEP_CHECKPOINTS]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(path: Path, sae: SAE, opt: torch.optim.Optimizer, sched) -> TrainState:
    tensors = load_file(str(path / "state.safetensors"))
    state = json.loads((path / "state.json").read_text())
    sae.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("sae.")}, strict=False)
    for n, p in sae.named_parameters():
        st = {  # optimiser state shaped like its parameter takes the parameter's device and layout
            key.split(".")[-1]: torch.empty_like(p).copy_(v) if v.shape == p.shape else v
            for key, v in tensors.items()
            if key.startswith(f"opt.{n}.")
        }
        if st:
            opt.state[p] = st
    sched.load_state_dict(state.pop("scheduler"))
    for group, saved in zip(opt.param_groups, state.pop("optimizer_groups", [])):
        group.update(saved)
    for group, lr in zip(
        opt.param_groups, sched.get_last_lr()
    ):  # the optimiser only learns it at the next sched.step()
        group["lr"] = lr
    torch.set_rng_state(tensors["rng.torch"])
    return TrainState.from_json(state)
