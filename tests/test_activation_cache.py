"""The fp16 on-disk activation cache on the real default model: filled lazily, reused by a later run
with identical results, equal to a plain harvest within fp16 rounding, and safe when the disk fills."""

from __future__ import annotations

import os
import subprocess

import numpy as np
import pytest
import torch

from mistudio_widgets.core.configs import TrainConfig
from mistudio_widgets.core.errors import ArtifactWriteError
from mistudio_widgets.data.activation_cache import KIND, ActivationCache
from mistudio_widgets.data.activations import harvest
from mistudio_widgets.data.datasets import load_tokens
from mistudio_widgets.sae.io import load_sae
from mistudio_widgets.train.training import train

HOOK = "blocks.15.hook_resid_post"


def default_tokenization(ws):
    from mistudio_widgets import TokenizeConfig
    from mistudio_widgets.data.datasets import ensure_tokenization, resolve_dataset
    from mistudio_widgets.data.models import resolve_model

    return ensure_tokenization(ws, resolve_dataset(ws), resolve_model(ws), TokenizeConfig(context_size=128))


def test_a_second_run_reuses_the_cache_and_trains_the_same_sae(default_ws):
    cfg = dict(
        steps=4,
        batch_tokens=512,
        chunk_sequences=16,
        eval_sequences=4,
        eval_every=0,
        checkpoint_every=0,
        log_every=2,
        expansion_factor=2,
        hook="blocks.3.hook_resid_post",
        cache_activations=True,
        seed=11,
    )
    for old in default_ws.list(KIND):  # the test workspace persists between runs: start without a cache
        if old.meta["hooks"] == [cfg["hook"]]:
            default_ws.delete(old.id)
    events: list = []
    first = train(
        default_ws, TrainConfig(**cfg, name=default_ws.unique_name("run", "cache-a")), progress=events.append
    )
    fills = [e for e in events if e.stage.startswith("filling activation cache")]
    assert fills and fills[-1].finished
    cache_id = default_ws.get(first.run_id).meta["activation_cache"]
    art = default_ws.get(cache_id, KIND)
    assert art.parent == default_ws.get(first.run_id).meta["tokenization"] and art.meta["hooks"] == [
        "blocks.3.hook_resid_post"
    ]
    filled = art.meta["filled_sequences"]
    assert 0 < filled < art.meta["sequences"], "only the sequences the run needed are harvested"

    events2: list = []
    second = train(
        default_ws, TrainConfig(**cfg, name=default_ws.unique_name("run", "cache-b")), progress=events2.append
    )
    assert not [e for e in events2 if e.stage.startswith(("filling", "harvest"))], (
        "the second run must not touch the model"
    )
    assert default_ws.get(second.run_id).meta["activation_cache"] == cache_id
    assert default_ws.get(cache_id).meta["filled_sequences"] == filled
    a, _ = load_sae(first.path)
    b, _ = load_sae(second.path)
    assert torch.equal(a.W_enc, b.W_enc) and torch.equal(a.b_dec, b.b_dec)


def test_cached_activations_equal_a_plain_harvest(default_ws, lm):
    tok = default_tokenization(default_ws)
    tokens = load_tokens(default_ws, tok)
    cache = ActivationCache.open(
        default_ws, ActivationCache.key(lm.artifact, tok, [HOOK, "blocks.5.hook_mlp_out"]), tokens, 576
    )
    seqs = np.array([7, 2, 300, 3])
    got, counts = cache.gather(seqs, lm)
    ref, ref_counts = harvest(lm, tokens[seqs], [HOOK, "blocks.5.hook_mlp_out"])
    assert counts == ref_counts and counts["dropped_special"] >= 1
    for h in ref:
        assert got[h].shape == ref[h].shape
        assert torch.allclose(got[h], ref[h], rtol=1e-3, atol=2e-3 * float(ref[h].abs().max()))
    again, _ = cache.gather(seqs[::-1], lm)  # read back, in another order
    n = [int(cache.kept[s]) for s in seqs[::-1]]
    assert torch.equal(again[HOOK][: n[0]], got[HOOK][-n[0] :])


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root")
def test_disk_full_while_filling_keeps_what_was_filled(tmp_path, lm, monkeypatch, default_ws):
    from mistudio_widgets import Workspace

    mnt = tmp_path / "disk"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)]).returncode:
        pytest.skip("cannot mount tmpfs")
    try:
        ws = Workspace(mnt / "ws")
        tokens = load_tokens(default_ws, default_tokenization(default_ws))[:64]
        tok = ws.register("tokenization", "t", meta={"config": {"context_size": 128}})
        cache = ActivationCache.open(
            ws, ActivationCache.key(lm.artifact, tok, [HOOK]), tokens, 576, harvest_batch_size=4
        )
        first, _ = cache.gather(np.arange(4), lm)  # 4 x 147 KiB: fits
        with pytest.raises(ArtifactWriteError, match="needs about .* GiB more"):
            cache.gather(np.arange(4, 64), lm)  # checked before any work
        assert cache.filled.sum() == 4
        # the disk fills up while the cache is being written: the blocks already on disk stay usable
        monkeypatch.setattr(
            "mistudio_widgets.data.activation_cache.shutil.disk_usage",
            lambda p: type("U", (), {"free": 2**40})(),
        )
        with pytest.raises(ArtifactWriteError, match="disk is full"):
            cache.gather(np.arange(4, 64), lm)
        subprocess.run(["mount", "-o", "remount,size=4m", str(mnt)], check=True)  # the user frees some space
        reopened = ActivationCache.open(
            ws, ActivationCache.key(lm.artifact, tok, [HOOK]), tokens, 576, harvest_batch_size=4
        )
        assert reopened.art.id == cache.art.id
        n = int(reopened.filled.sum())
        assert 4 <= n < 64 and reopened.filled[:n].all() and not reopened.filled[n:].any()
        back, _ = reopened.gather(np.arange(4), lm)
        assert torch.equal(back[HOOK], first[HOOK])
    finally:
        subprocess.run(["umount", "-l", str(mnt)])
