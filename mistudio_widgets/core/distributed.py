"""Data-parallel training under ``torchrun --nproc_per_node N``: process group set-up from the
environment torchrun provides (gloo on CPU, nccl on CUDA) and the few collectives training needs.

Every helper is a no-op in a single process, so the trainer calls them unconditionally."""

from __future__ import annotations

import contextlib
import os
from typing import Any, Iterator

import torch
import torch.distributed as dist

from ..core.errors import MistudioError


class DistributedError(MistudioError):
    pass


def env_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def init_from_env(device: str = "auto") -> bool:
    """Join the process group torchrun describes (once). Returns whether training is distributed."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size() > 1
    if env_world_size() <= 1:
        return False
    if not dist.is_available():
        raise DistributedError(
            "This torch build has no torch.distributed.", "install a torch build with distributed support."
        )
    cuda = device in ("auto", "cuda") and torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    try:
        dist.init_process_group("nccl" if cuda else "gloo")
    except (RuntimeError, ValueError) as exc:
        raise DistributedError(
            f"Could not join the torchrun process group: {exc}",
            "start with `torchrun --nproc_per_node N -m mistudio_widgets.cli train ...`, "
            "or unset WORLD_SIZE for a single process.",
        ) from exc
    return True


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if active():
        dist.barrier()


@contextlib.contextmanager
def main_first() -> Iterator[None]:
    """The main process runs the body first (e.g. converting the default model, tokenizing, creating
    runs in the catalog); the others run it once that is done and find the results in the workspace."""
    if not is_main():
        barrier()
    yield
    if is_main():
        barrier()


def broadcast(obj: Any) -> Any:
    """The main process's ``obj`` on every process."""
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_sum(t: torch.Tensor) -> torch.Tensor:
    if active():
        t = t.clone()
        dist.all_reduce(t)
    return t


def broadcast_tensors(tensors) -> None:
    if active():
        for t in tensors:
            dist.broadcast(t.data, src=0)


def gather_rows(t: torch.Tensor) -> torch.Tensor:
    """Concatenate every process's rows [n_r, ...] in rank order (n_r may differ)."""
    if not active():
        return t
    n = torch.tensor([t.shape[0]])
    sizes = [torch.zeros_like(n) for _ in range(world())]
    dist.all_gather(sizes, n)
    most = int(max(s.item() for s in sizes))
    pad = torch.zeros((most, *t.shape[1:]), dtype=t.dtype)
    pad[: t.shape[0]] = t
    parts = [torch.empty_like(pad) for _ in range(world())]
    dist.all_gather(parts, pad)
    return torch.cat([p[: int(s.item())] for p, s in zip(parts, sizes)])


def shard(n: int) -> slice:
    """This process's contiguous share of ``n`` items (the first processes take one more when uneven)."""
    r, w = rank(), world()
    base, extra = divmod(n, w)
    lo = r * base + min(r, extra)
    return slice(lo, lo + base + (r < extra))
