"""An fp16 on-disk cache of harvested activations, reused by later runs.

One cache per (model, hooks, tokenization, context size, special-token and outlier settings) is a
workspace artifact (kind ``activation_cache``, child of the tokenization). It fills lazily, sequence by
sequence, with what runs ask for (what a sequence holds does not depend on which sequences shared its
forward pass), written with plain file writes (a full disk raises an error instead of crashing the
process as a memory map would), and marked filled only after the data is on disk. A crash mid-fill
leaves those sequences unmarked; they are harvested again next time.

Layout of the folder: ``<i>.f16`` per hook, a [sequences, context, d] float16 array whose row i holds
the kept positions of sequence i first; ``kept.npy`` (kept positions per sequence) and ``filled.npy``
(one flag per sequence), both replaced atomically.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..core import distributed as dist
from ..core.disk import disk_error
from ..core.errors import ArtifactWriteError
from ..core.progress import ProgressCallback, emit
from ..core.workspace import Artifact, Workspace

KIND = "activation_cache"


def _save_npy(path: Path, arr: np.ndarray) -> None:
    tmp = path.with_suffix(".tmp.npy")
    np.save(tmp, arr)
    os.replace(tmp, path)


class ActivationCache:
    def __init__(self, ws: Workspace, art: Artifact, tokens: np.ndarray, harvest_batch_size: int = 16):
        self.ws, self.art, self.tokens = ws, art, tokens
        m = art.meta
        self.hooks, self.d, self.block = list(m["hooks"]), int(m["d_model"]), harvest_batch_size
        self.n_seq, self.ctx = tokens.shape
        self.path = art.folder
        self.kept = np.load(self.path / "kept.npy")
        self.filled = np.load(self.path / "filled.npy")
        self._maps: list[np.memmap] | None = None

    def reload(self) -> None:
        """Re-read what is filled (another process may have filled more)."""
        self.kept = np.load(self.path / "kept.npy")
        self.filled = np.load(self.path / "filled.npy")
        self._maps = None

    # -- lookup --------------------------------------------------------------------------
    @staticmethod
    def key(
        model: Artifact,
        tokenization: Artifact,
        hooks: list[str],
        drop_special: bool = True,
        outlier_factor: float = 10.0,
    ) -> dict[str, Any]:
        return {
            "model": model.id,
            "tokenization": tokenization.id,
            "hooks": list(hooks),
            "context_size": int(tokenization.meta["config"]["context_size"]),
            "drop_special": bool(drop_special),
            "outlier_factor": float(outlier_factor),
        }

    @classmethod
    def open(
        cls,
        ws: Workspace,
        key: dict[str, Any],
        tokens: np.ndarray,
        d_model: int,
        harvest_batch_size: int = 16,
    ) -> "ActivationCache":
        """The cache for ``key``, created (empty) when there is none yet."""
        for art in ws.list(KIND, parent=key["tokenization"]):
            if art.meta.get("key") == key and art.path and (art.path / "filled.npy").exists():
                return cls(ws, art, tokens, harvest_batch_size)
        n_seq, ctx = tokens.shape
        size = n_seq * ctx * d_model * 2 * len(key["hooks"])
        name = ws.unique_name(KIND, f"{'+'.join(key['hooks'])}@{ws.get(key['tokenization']).name}")
        art = ws.create_folder(
            KIND,
            name,
            parent=key["tokenization"],
            meta={
                "key": key,
                "hooks": key["hooks"],
                "d_model": d_model,
                "sequences": n_seq,
                "context_size": ctx,
                "bytes_when_full": size,
                "dtype": "float16",
            },
        )
        try:
            for i in range(len(key["hooks"])):
                with open(art.folder / f"{i}.f16", "wb") as f:
                    f.truncate(n_seq * ctx * d_model * 2)  # sparse: blocks take space as they fill
            _save_npy(art.folder / "kept.npy", np.zeros(n_seq, dtype=np.int32))
            _save_npy(art.folder / "filled.npy", np.zeros(n_seq, dtype=bool))
        except OSError as exc:
            ws.delete(art.id)
            raise disk_error(exc, f"the activation cache {name!r}") from exc
        return cls(ws, ws.get(art.id), tokens, harvest_batch_size)

    # -- filling and reading -----------------------------------------------------------------
    def _fill(self, missing: np.ndarray, lm, progress: ProgressCallback | None) -> None:
        from .activations import _capture_batch, _special_ids

        special = _special_ids(lm)
        need = len(missing) * self.ctx * self.d * 2 * len(self.hooks)
        free = shutil.disk_usage(self.path).free
        if need > free:
            raise ArtifactWriteError(
                f"Filling the activation cache {self.art.name!r} needs about {need / 2**30:.2f} GiB more, "
                f"but only {free / 2**30:.2f} GiB is free.",
                "free disk space, delete old caches (mistudio list; mistudio delete ID), or train with "
                "cache_activations off.",
            )
        total, done = len(missing) * self.ctx, 0
        stage = f"filling activation cache {self.art.name}"
        key = self.art.meta["key"]
        files = [open(self.path / f"{i}.f16", "r+b") for i in range(len(self.hooks))]
        row_bytes = self.ctx * self.d * 2
        try:
            for start in range(0, len(missing), self.block):
                seqs = missing[start : start + self.block]
                ids = torch.tensor(self.tokens[seqs], dtype=torch.long)
                acts, idx, _, _ = _capture_batch(
                    lm, ids, self.hooks, special, key["drop_special"], key["outlier_factor"]
                )
                rows = (idx // self.ctx).numpy()
                counts = np.bincount(rows, minlength=len(seqs))
                slot = (
                    rows * self.ctx + np.arange(len(rows)) - np.repeat(np.cumsum(counts) - counts, counts)
                )  # kept first
                block = np.zeros((len(seqs) * self.ctx, self.d), dtype=np.float16)
                for f, h in zip(files, self.hooks):
                    block[slot] = acts[h].numpy().astype(np.float16)
                    data = block.reshape(len(seqs), -1)
                    for j, s in enumerate(seqs):
                        f.seek(int(s) * row_bytes)
                        f.write(data[j].tobytes())
                    block[:] = 0
                for f in files:
                    f.flush()
                    os.fsync(f.fileno())
                self.kept[seqs] = counts
                self.filled[seqs] = True  # marked only once the data is on disk
                _save_npy(self.path / "kept.npy", self.kept)
                _save_npy(self.path / "filled.npy", self.filled)
                done += ids.numel()
                emit(progress, stage, done, total, unit="tok")
        except OSError as exc:
            raise disk_error(exc, f"the activation cache {self.art.name!r}") from exc
        finally:
            for f in files:
                f.close()
            self._maps = None
            with contextlib.suppress(sqlite3.Error, OSError):  # a summary only: the .npy flags are the truth
                self.ws.update_meta(
                    self.art.id,
                    filled_sequences=int(self.filled.sum()),
                    bytes=int(self.filled.sum()) * row_bytes * len(self.hooks),
                )
        emit(progress, stage, done, total, unit="tok", finished=True)

    def gather(
        self, seqs: np.ndarray, lm, progress: ProgressCallback | None = None
    ) -> tuple[dict[str, torch.Tensor], dict[str, int]]:
        """Activations of sequences ``seqs`` (in that order, kept positions only) at every hook, as
        float32, filling missing blocks first; and the harvest counts, as :func:`harvest` gives them."""
        seqs = np.asarray(seqs)
        if dist.is_main():  # data-parallel processes: the main one fills, the others wait and read
            missing = np.unique(seqs[~self.filled[seqs]])
            if len(missing):
                self._fill(missing, lm, progress)
        if dist.active():
            dist.barrier()
            self.reload()
        if self._maps is None:
            self._maps = [
                np.memmap(
                    self.path / f"{i}.f16", dtype=np.float16, mode="r", shape=(self.n_seq, self.ctx, self.d)
                )
                for i in range(len(self.hooks))
            ]
        kept = self.kept[seqs]
        out = {}
        for mm, h in zip(self._maps, self.hooks):
            buf = np.empty((int(kept.sum()), self.d), dtype=np.float16)
            at = 0
            for s, k in zip(seqs, kept):
                buf[at : at + k] = mm[s, :k]
                at += k
            out[h] = torch.from_numpy(buf).float()
        seen = len(seqs) * self.ctx
        special = (
            int(np.isin(self.tokens[seqs], _special_list(lm)).sum())
            if self.art.meta["key"]["drop_special"]
            else 0
        )
        return out, {"seen": seen, "dropped_special": special, "outliers": seen - special - int(kept.sum())}


def _special_list(lm) -> np.ndarray:
    return np.array(lm.special_ids(), dtype=np.int64)
