"""Training on the real default model: learning, exact resume, failures that keep what was written."""

from __future__ import annotations

import json
import os
import subprocess
import uuid

import pytest
import torch
from waiting import wait_for

from mistudio_widgets.core.configs import TrainConfig
from mistudio_widgets.core.defaults import DEFAULT_DATASET_NAME
from mistudio_widgets.core.errors import ArtifactWriteError, MistudioError, TokenizerMismatch
from mistudio_widgets.core.jobs import JobCancelled, JobControl, submit
from mistudio_widgets.sae.io import load_sae
from mistudio_widgets.train.checkpoints import TrainState, checkpoints_of, load_checkpoint, save_checkpoint
from mistudio_widgets.train.prepare import TrainingError
from mistudio_widgets.train.training import run_status, train

TINY = dict(
    batch_tokens=256,
    chunk_sequences=24,
    eval_sequences=4,
    eval_every=0,
    checkpoint_every=0,
    log_every=1,
    expansion_factor=2,
    k=16,
    warmup_steps=2,
)


def test_short_run_learns_and_lands_in_the_library(default_ws):
    cfg = TrainConfig(
        steps=40,
        batch_tokens=1024,
        chunk_sequences=128,
        eval_sequences=8,
        eval_every=20,
        log_every=5,
        expansion_factor=4,
        lr=2e-3,
        name=default_ws.unique_name("run", "ci-topk"),
    )
    res = train(default_ws, cfg)
    rows = default_ws.metrics(res.run_id, "train")
    assert [r["step"] for r in rows] == list(range(5, 41, 5))
    assert rows[-1]["loss"] < 0.7 * rows[0]["loss"], "the loss must fall"
    assert res.metrics["explained_variance"] > 0.5 and res.metrics["l0"] == pytest.approx(32, abs=0.01)
    assert 0 < res.metrics["ce_recovered"] <= 1.0
    evals = default_ws.metrics(res.run_id, "eval")
    assert [r["step"] for r in evals] == [20, 40] and evals[-1]["ce_clean"] < evals[-1]["ce_spliced"] < evals[
        -1
    ]["ce_zero_ablated"]
    art = default_ws.get(res.sae_id, "sae")
    assert (
        art.parent == res.run_id
        and art.meta["metrics"]["explained_variance"] == res.metrics["explained_variance"]
    )
    cfg_json = json.loads((art.path / "cfg.json").read_text())
    assert cfg_json["architecture"] == "topk" and cfg_json["k"] == 32 and cfg_json["d_sae"] == 4 * 576
    assert (
        cfg_json["metadata"]["hook_name"] == "blocks.15.hook_resid_post"
        and cfg_json["metadata"]["context_size"] == 128
    )
    sae, _ = load_sae(art.path)
    assert run_status(default_ws, res.run_id)["status"] == "done"
    # the saved SAE takes raw activations: the normalisation was folded into the weights
    from mistudio_widgets.data.activations import harvest
    from mistudio_widgets.data.datasets import load_tokens
    from mistudio_widgets.data.models import load_model

    lm = load_model(default_ws)
    tokens = load_tokens(default_ws, default_ws.get(default_ws.get(res.run_id).meta["tokenization"]))[-4:]
    acts, _ = harvest(lm, tokens, ["blocks.15.hook_resid_post"])
    x = acts["blocks.15.hook_resid_post"]
    with torch.no_grad():
        ev = 1 - (sae(x) - x).pow(2).sum() / (x - x.mean(0)).pow(2).sum()
    assert ev > 0.5


def test_resume_reaches_the_same_weights(default_ws):
    base = dict(TINY, steps=6, seed=3)
    full = train(default_ws, TrainConfig(**base, name=default_ws.unique_name("run", "resume-full")))
    part = train(
        default_ws, TrainConfig(**base, name=default_ws.unique_name("run", "resume-part")), stop_after=3
    )
    assert part.status == "interrupted" and run_status(default_ws, part.run_id)["last_checkpoint"] == 3
    done = train(default_ws, resume=part.run_id)
    a, _ = load_sae(full.path)
    b, _ = load_sae(done.path)
    for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert [r["loss"] for r in default_ws.metrics(full.run_id, "train")] == [
        r["loss"] for r in default_ws.metrics(done.run_id, "train")
    ]


@pytest.mark.parametrize("arch", ["standard", "jumprelu", "batchtopk"])
def test_other_architectures_train_on_the_model(default_ws, arch):
    res = train(
        default_ws,
        TrainConfig(
            **dict(TINY, steps=4),
            architecture=arch,
            l1_coefficient=1.0,
            name=default_ws.unique_name("run", f"arch-{arch}"),
        ),
    )
    sae, cfg = load_sae(res.path)
    assert cfg["architecture"] == ("jumprelu" if arch != "standard" else "standard")
    assert res.metrics["l0"] > 0 and torch.isfinite(sae.W_enc).all()


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(default_ws):
    cfg = TrainConfig(
        **dict(TINY, steps=8, checkpoint_every=1, warmup_steps=0),
        lr=1e30,
        grad_clip=0.0,
        name=default_ws.unique_name("run", "nan"),
    )
    with pytest.raises(
        TrainingError, match=r"loss became .*last good checkpoint.*lower the learning rate"
    ) as err:
        train(default_ws, cfg)
    run = default_ws.get(cfg.name, "run")
    assert run.meta["status"] == "failed"
    ckpts = checkpoints_of(run.path)
    assert ckpts and f"step {int(ckpts[-1].name.split('-')[1])}" in str(err.value)


def test_a_sweep_with_a_taken_member_name_makes_no_run(default_ws):
    """A sweep whose second member's name is taken is refused with the name, before any of its runs is
    made (the first member used to stay behind as a run marked running)."""
    name = f"taken-{uuid.uuid4().hex[:8]}"
    default_ws.register("run", f"{name}-k8")
    cfg = TrainConfig(steps=1, batch_tokens=256, chunk_sequences=8, eval_sequences=2, eval_every=0,
                      checkpoint_every=0, expansion_factor=1, name=name, sweep={"k": [4, 8]})  # fmt: skip
    with pytest.raises(MistudioError, match=f"A run called '{name}-k8' already exists"):
        train(default_ws, cfg)
    assert default_ws.find(f"{name}-k4", "run") is None


def test_bad_training_input_registers_no_run(default_ws, tiny_model_art):
    before = len(default_ws.list("run"))
    with pytest.raises(MistudioError, match="larger than d_sae"):
        train(default_ws, TrainConfig(k=5000, steps=1))
    with pytest.raises(MistudioError, match="positive integer"):
        train(default_ws, TrainConfig(d_sae=0, steps=1))
    with pytest.raises(MistudioError, match="out of range"):
        train(default_ws, TrainConfig(hook="blocks.40.hook_resid_post", steps=1))
    tiny_tok = [t for t in default_ws.list("tokenization") if t.meta.get("model_name") == "tiny-gpt2-test"]
    if not tiny_tok:
        from mistudio_widgets import TokenizeConfig
        from mistudio_widgets.data.datasets import tokenize_dataset

        tiny_tok = [
            tokenize_dataset(
                default_ws,
                DEFAULT_DATASET_NAME,
                tiny_model_art,
                TokenizeConfig(context_size=32, max_tokens=2048),
            )
        ]
    with pytest.raises(TokenizerMismatch):
        train(default_ws, TrainConfig(dataset=tiny_tok[0].id, steps=1))
    assert len(default_ws.list("run")) == before


def test_resume_of_a_run_whose_files_were_deleted(default_ws):
    import shutil

    part = train(
        default_ws,
        TrainConfig(**dict(TINY, steps=4), name=default_ws.unique_name("run", "gone")),
        stop_after=2,
    )
    shutil.rmtree(default_ws.get(part.run_id).path)
    with pytest.raises(TrainingError, match="files of run .* are gone"):
        train(default_ws, resume=part.run_id)


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root")
def test_disk_full_while_checkpointing_keeps_the_previous_checkpoint(tmp_path):
    from mistudio_widgets.sae import SAESpec, make_sae

    mnt = tmp_path / "disk"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mnt)]).returncode:
        pytest.skip("cannot mount tmpfs")
    try:
        small = make_sae(SAESpec(architecture="topk", d_in=32, d_sae=64, k=4))
        opt = torch.optim.Adam(small.parameters())
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
        save_checkpoint(mnt, small, opt, sched, TrainState(step=1))
        big = make_sae(SAESpec(architecture="topk", d_in=256, d_sae=4096, k=4))  # ~8 MiB of weights
        opt_b = torch.optim.Adam(big.parameters())
        sched_b = torch.optim.lr_scheduler.LambdaLR(opt_b, lambda s: 1.0)
        with pytest.raises(ArtifactWriteError, match="disk is full"):
            save_checkpoint(mnt, big, opt_b, sched_b, TrainState(step=2))
        assert [p.name for p in checkpoints_of(mnt)] == ["checkpoint-1"]
        again = make_sae(SAESpec(architecture="topk", d_in=32, d_sae=64, k=4))
        opt2 = torch.optim.Adam(again.parameters())
        assert (
            load_checkpoint(
                mnt / "checkpoint-1", again, opt2, torch.optim.lr_scheduler.LambdaLR(opt2, lambda s: 1.0)
            ).step
            == 1
        )
        assert torch.equal(again.W_enc, small.W_enc)
        assert not [p for p in mnt.iterdir() if p.name.startswith(".")]
    finally:
        subprocess.run(["umount", "-l", str(mnt)])


def test_background_job_cancel_checkpoints_and_can_resume(default_ws):

    name = default_ws.unique_name("run", "job-cancel")
    started = []
    job = submit(
        "train",
        lambda progress, control: train(
            default_ws,
            TrainConfig(**dict(TINY, steps=400), name=name),
            progress=progress,
            control=control,
            on_start=started.append,
        ),
    )
    wait_for(
        lambda: default_ws.metrics(started[0].id if started else "-", "train"),
        "the first training metrics",
        timeout=240,
        interval=0.5,
        gone=lambda: job.status in ("failed", "done") and f"the job is {job.status}: {job.error}",
    )
    job.pause()
    assert job.status == "paused"
    job.resume()
    job.cancel()
    job.thread.join(240)
    assert job.status == "cancelled"
    st = run_status(default_ws, name)
    assert st["status"] == "interrupted" and st["last_checkpoint"] >= 1


def test_stop_during_a_harvest_stops_it_there_and_loses_nothing(default_ws):
    """Stop while the stream refills (a harvest takes seconds; Stop used to wait for it): the harvest
    stops after the forward batch it is in, the SAE is checkpointed at the first batch it has not seen,
    and the resumed run ends with the weights of a run never stopped."""
    base = dict(TINY, steps=16, seed=5)
    full = train(default_ws, TrainConfig(**base, name=default_ws.unique_name("run", "stop-full")))
    control, events = JobControl(), []

    def progress(ev):
        events.append(ev)
        if ev.stage.startswith("harvest chunk 2/") and ev.done > 0:
            control.cancel()

    name = default_ws.unique_name("run", "stop-harvest")
    with pytest.raises(JobCancelled):
        train(default_ws, TrainConfig(**base, name=name), progress=progress, control=control)
    second = [e for e in events if e.stage.startswith("harvest chunk 2/")]
    assert len(second) == 1 and not second[0].finished, [(e.done, e.finished) for e in second]
    st = run_status(default_ws, name)
    trained = len(default_ws.metrics(st["id"], "train"))
    assert st["status"] == "interrupted" and 0 < st["last_checkpoint"] == trained < 16
    done = train(default_ws, resume=st["id"])
    a, _ = load_sae(full.path)
    b, _ = load_sae(done.path)
    for w in ("W_enc", "b_enc", "W_dec", "b_dec"):
        assert torch.equal(getattr(a, w), getattr(b, w)), w


def test_the_sae_settings_of_one_harvest_nest_in_the_training_config():
    from dataclasses import fields

    from mistudio_widgets.core.configs import PER_SAE, SHARED, ConfigError

    cfg = TrainConfig(
        k=32, saes=[{"hook": "blocks.5.hook_resid_post", "k": 16}, {"architecture": "standard"}]
    )
    a, b = cfg.members()
    assert (a.k, a.hook, b.k, b.architecture) == (16, "blocks.5.hook_resid_post", 32, "standard")
    assert all(m.steps == cfg.steps and m.seed == cfg.seed and m.saes == [] for m in (a, b))
    assert TrainConfig(k=12).members() == [TrainConfig(k=12)]
    for entry, problem in (
        ({"steps": 5}, r"saes\[0\] sets steps, which every SAE of one harvest shares"),
        ({"kk": 1}, r"saes\[0\] has no setting kk"),
        ({"k": 0}, "k must be at least 1"),
        (3, r"saes\[0\] is 3; each entry is a mapping"),
    ):
        with pytest.raises(ConfigError, match=problem):
            TrainConfig(saes=[entry])
    assert set(PER_SAE).isdisjoint(SHARED)
    assert set(PER_SAE) | set(SHARED) | {"saes", "sweep"} == {f.name for f in fields(TrainConfig)}


def test_several_saes_from_one_harvest(default_ws):
    from mistudio_widgets.train.training import train_many

    base = dict(TINY, steps=5, seed=7)
    group = TrainConfig(
        **base,
        saes=[
            {"hook": "blocks.15.hook_resid_post", "name": default_ws.unique_name("run", "many-a")},
            {"k": 8, "hook": "blocks.5.hook_resid_post", "name": default_ws.unique_name("run", "many-b")},
            {
                "architecture": "standard",
                "hook": "blocks.5.hook_mlp_out",
                "l1_coefficient": 1.0,
                "name": default_ws.unique_name("run", "many-c"),
            },
        ],
    )
    results = train_many(default_ws, group.members())
    assert [r.status for r in results] == ["done"] * 3
    hooks = [load_sae(r.path)[1]["metadata"]["hook_name"] for r in results]
    assert hooks == ["blocks.15.hook_resid_post", "blocks.5.hook_resid_post", "blocks.5.hook_mlp_out"]
    harvests = [default_ws.get(r.run_id).meta["harvest"] for r in results]
    assert harvests[0] == harvests[1] == harvests[2]  # one pass of the model fed all three
    assert load_sae(results[1].path)[1]["k"] == 8
    # the first SAE matches the same config trained alone (same stream, same seed)
    alone = train(
        default_ws,
        TrainConfig(**base, hook="blocks.15.hook_resid_post", name=default_ws.unique_name("run", "alone")),
    )
    a, _ = load_sae(alone.path)
    b, _ = load_sae(results[0].path)
    assert torch.allclose(a.W_dec, b.W_dec, atol=1e-6)
    with pytest.raises(TrainingError, match="must share steps"):
        train_many(default_ws, [TrainConfig(**base), TrainConfig(**dict(base, steps=9))])


def test_cli_trains_several_saes_from_a_config_file(default_ws, tmp_path):
    import sys

    conf = tmp_path / "sweep.yaml"
    conf.write_text(
        "steps: 3\nbatch_tokens: 256\nchunk_sequences: 24\neval_sequences: 4\neval_every: 0\n"
        "checkpoint_every: 0\nexpansion_factor: 2\nk: 8\n"
        "saes:\n  - {hook: blocks.3.hook_resid_post}\n  - "
        "{hook: blocks.3.hook_mlp_out, architecture: batchtopk}\n"
    )
    env = {**os.environ, "MISTUDIO_HOME": str(default_ws.root)}
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "mistudio_widgets.cli",
            "--json",
            "train",
            "--config",
            str(conf),
            "--seed",
            "4",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    lines = [json.loads(x) for x in r.stdout.splitlines() if not x.startswith('{"event"')]
    assert "run_id" in lines[0] and "run_id" in lines[1]
    assert (
        lines[-1]["summary"]
        and lines[-1]["sae_id"]
        and set(lines[-1]["metrics"]) >= {"explained_variance", "l0", "mse", "dead_fraction", "ce_recovered"}
    )
    assert default_ws.get(lines[0]["run_id"]).meta["config"]["seed"] == 4
    bad = tmp_path / "bad.yaml"
    bad.write_text("saes: 3\n")
    r = subprocess.run(
        [sys.executable, "-m", "mistudio_widgets.cli", "train", "--config", str(bad)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert r.returncode == 2 and "must be a list" in r.stderr


def test_a_sweep_grid_expands_refuses_repeats_and_what_would_not_fit():
    from mistudio_widgets.core.configs import ConfigError
    from mistudio_widgets.sae import SAESpec
    from mistudio_widgets.train.planning import check_group_memory, run_names

    grid = TrainConfig(name="sw", sweep={"k": [16, 32], "architecture": ["topk", "matryoshka_batchtopk"]})
    members = grid.members()
    assert [(m.k, m.architecture, m.name) for m in members] == [
        (16, "topk", "sw-k16-topk"),
        (16, "matryoshka_batchtopk", "sw-k16-matryoshka_batchtopk"),
        (32, "topk", "sw-k32-topk"),
        (32, "matryoshka_batchtopk", "sw-k32-matryoshka_batchtopk"),
    ]
    assert all(m.sweep == {} and m.steps == grid.steps for m in members)
    # saes entries times the grid; derived run names say what differs
    both = TrainConfig(saes=[{"hook": "blocks.5.hook_resid_post"}, {}], sweep={"expansion_factor": [4, 8]})
    assert len(both.members()) == 4
    assert run_names(TrainConfig(sweep={"k": [16, 32]}).members()) == [
        "topk-L15-resid_post-k16",
        "topk-L15-resid_post-k32",
    ]
    for bad, problem in (
        ({"k": [16, 16]}, "lists 16 more than once"),
        ({"steps": [1, 2]}, "sets steps, which every SAE of one harvest shares"),
        ({"k": []}, "non-empty list"),
        ({"k": [0, 4]}, "k must be at least 1"),
        ({"k": list(range(1, 66))}, "at most 64 train together"),
    ):
        with pytest.raises(ConfigError, match=problem):
            TrainConfig(sweep=bad)
    with pytest.raises(ConfigError, match="would be the same SAE"):
        TrainConfig(saes=[{"k": 8}, {"k": 8}]).members()
    # 64 SAEs of 2^22 latents would need terabytes: refused before anything is allocated, with the sizes
    huge = TrainConfig(d_sae=2**22, sweep={"k": list(range(1, 65))}).members()
    specs = [SAESpec("topk", 576, 2**22, k=m.k) for m in huge]
    with pytest.raises(TrainingError, match=r"64 SAE\(s\) together needs about [\d.]+ GiB.*GiB is free"):
        check_group_memory(huge, specs, "cpu")


def test_a_sweep_from_the_cli_trains_its_grid_and_the_monitor_draws_the_pareto_front(default_ws):
    """`mistudio train --sweep` makes one SAE per grid point from one harvest (a Matryoshka one among
    them, which SAELens loads); the monitor shows L0 against explained variance, one point per run,
    and a click opens that SAE."""
    import sys

    import sae_lens

    from mistudio_widgets.widgets import TrainingMonitor

    env = {**os.environ, "MISTUDIO_HOME": str(default_ws.root)}
    name = f"grid-{uuid.uuid4().hex[:8]}"  # so its members (NAME-k4-topk, ...) are new in any workspace
    r = subprocess.run(
        [sys.executable, "-m", "mistudio_widgets.cli", "--json", "train", "--steps", "4", "--batch-tokens",
         "256", "--chunk-sequences", "24", "--eval-sequences", "4", "--eval-every", "0", "--checkpoint-every",
         "0", "--expansion", "2", "--name", name, "--no-normalize", "--optimizer", "adam",
         "--sweep", "k: 4, 16; architecture: topk, matryoshka_batchtopk"],
        capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    runs = [
        default_ws.get(f"{name}-k{k}-{a}", "run") for k in (4, 16) for a in ("topk", "matryoshka_batchtopk")
    ]
    cfgs = [run.meta["config"] for run in runs]
    assert [(c["k"], c["architecture"], c["optimizer"], c["normalize"]) for c in cfgs] == [
        (4, "topk", "adam", False),
        (4, "matryoshka_batchtopk", "adam", False),
        (16, "topk", "adam", False),
        (16, "matryoshka_batchtopk", "adam", False),
    ]
    assert len({json.dumps(run.meta["harvest"]) for run in runs}) == 1  # one pass of the model fed all
    matryoshka = default_ws.get(runs[1].meta["sae"])
    theirs = sae_lens.SAE.load_from_disk(matryoshka.path)
    assert theirs.cfg.architecture() == "jumprelu" and float(theirs.threshold.detach().max()) > 0
    monitor = TrainingMonitor(default_ws, runs=[run.id for run in runs])
    try:
        pts = {p["name"]: p for p in monitor.pareto_points()}
        assert set(pts) == {run.name for run in runs} and all(p["done"] for p in pts.values())
        assert pts[runs[2].name]["l0"] > pts[runs[0].name]["l0"]  # k 16 fires more than k 4
        assert monitor.pareto_box.layout.display != "none"
        ev = monitor.pareto.data[0]
        assert sorted(ev.customdata) == sorted(run.id for run in runs) and len(ev.x) == len(ev.y) == 4
        assert sorted(ev.text) == sorted(run.name for run in runs) and "text" in ev.mode  # points named
        opened = []
        monitor.on_open = opened.append
        assert monitor.open_run(runs[3].id) == runs[3].meta["sae"] and opened == [runs[3].meta["sae"]]
    finally:
        monitor.close()


def test_the_pace_measures_harvest_and_steps_apart_and_its_eta_follows_them(monkeypatch):
    """The ETA adds the harvest still to do at the measured harvest rate to the steps still to take at
    the measured step rate, so it holds while the work alternates between the two; until both rates are
    measured it says it is an estimate."""
    from mistudio_widgets.core.progress import ProgressEvent
    from mistudio_widgets.train.pace import Pace, PaceWriter, planned_harvest_tokens

    # 100 steps of 512 tokens from chunks of 4,096 tokens (8 batches each): 13 chunk visits
    assert planned_harvest_tokens(100, 512, 4096, 8, None) == 13 * 4096
    assert planned_harvest_tokens(100, 512, 4096, 8, 10_000) == 10_000  # an activation cache caps it
    pace = Pace(steps_total=100, step=0, batch_tokens=512, harvest_left=13 * 4096)
    written = []
    writer = PaceWriter(written.append, pace, interval=0.0)
    cb = writer.progress(None)
    eta0, estimated = pace.eta_seconds()
    assert estimated and eta0 > 0  # priors only
    for done in (1024, 2048, 4096):  # a chunk's harvest reported as it goes
        cb(ProgressEvent("harvest chunk 1/13", done, 4096, unit="tok"))
    cb(ProgressEvent("train", 1, 100, unit="step"))  # not the harvest: ignored
    assert pace.harvested == 4096 and pace.harvest_left == 12 * 4096
    pace.harvest_time(4.096)  # 1,000 tokens/s
    for s in range(1, 9):
        pace.stepped(s, 0.05)  # 512 tokens in 0.05 s: 10,240 tokens/s
    h, t, estimated = pace.rates()
    assert (round(h), round(t), estimated) == (1000, 10240, False)
    eta, estimated = pace.eta_seconds()
    assert not estimated and eta == pytest.approx(12 * 4096 / 1000 + 92 * 0.05)
    writer.flush()
    assert written[-1]["stage"] == "train" and written[-1]["eta_s"] == pytest.approx(eta)
    assert written[0]["stage"] == "harvest" and written[0]["total"] == 4096
    # the first harvest, still under way, is timed between its own events (a run's first chunk is most
    # of a short run: the prior stood in for all of it and made the ETA three times too long)
    import time as real_time
    import types

    from mistudio_widgets.train import pace as pace_module

    clock = iter([10.0, 11.0, 12.0, 13.0])
    fake = types.SimpleNamespace(
        perf_counter=lambda: next(clock), time=real_time.time, monotonic=real_time.monotonic
    )
    monkeypatch.setattr(pace_module, "time", fake)
    live = Pace(steps_total=10, step=0, batch_tokens=512, harvest_left=3 * 4096)
    assert live.rates()[0] == pytest.approx(900.0)  # the prior before anything is timed
    for done in (0, 4096, 8192):  # 4,096 tokens a second
        live.observe(ProgressEvent("harvest chunk 1/2", done, 3 * 4096, unit="tok"))
    assert live.rates()[0] == pytest.approx(4096.0) and live.harvest_left == 4096
    live.stepped(1, 0.1)  # a step between two harvest events is not harvest time
    live.observe(ProgressEvent("harvest chunk 1/2", 3 * 4096, 3 * 4096, unit="tok"))
    assert live.rates()[0] == pytest.approx(4096.0)
