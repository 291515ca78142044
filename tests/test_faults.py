"""Fault injection: the disk fills up, or permission is denied, while exporting, bundling and
checkpointing; NVML stops answering in the middle of a run. Each time the earlier state survives
unchanged and the job reports the fault with its fix."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_crash_safety import TINY, same_as_uninterrupted
from test_hostile_input import consistent, state

from mistudio_widgets.core.configs import TrainConfig
from mistudio_widgets.core.errors import ArtifactWriteError
from mistudio_widgets.share.bundles import pack
from mistudio_widgets.share.exporting import EXPORT_MARKER, export_saelens
from mistudio_widgets.share.neuronpedia import export_neuronpedia
from mistudio_widgets.train.training import train

root_only = pytest.mark.skipif(
    os.geteuid() != 0, reason="mounting a small tmpfs and dropping capabilities need root"
)
# a child process that runs as root but without the capabilities that let root write anywhere
NO_DAC = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"]
NOBODY = 65534
EXPORTERS = {"saelens": export_saelens, "neuronpedia": export_neuronpedia}


def digest(path: Path) -> dict[str, str]:
    """Every file under ``path`` with the SHA-256 of its bytes."""
    return {
        str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(path.rglob("*"))
        if p.is_file()
    }


def size(path: Path) -> int:
    return (
        path.stat().st_size
        if path.is_file()
        else sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    )


@pytest.fixture
def small_disk(tmp_path):
    """``small_disk(nbytes)`` mounts a tmpfs that holds about that much and returns its folder."""
    mounts = []

    def make(nbytes: int) -> Path:
        mnt = tmp_path / f"disk{len(mounts)}"
        mnt.mkdir()
        r = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={nbytes // 1024 + 1}k", "tmpfs", str(mnt)],
            capture_output=True,
        )
        if r.returncode:
            pytest.skip(f"cannot mount tmpfs here: {r.stderr.decode().strip()}")
        mounts.append(mnt)
        return mnt

    yield make
    for m in mounts:
        subprocess.run(["umount", "-l", str(m)])


def no_dac(*args: str) -> subprocess.CompletedProcess:
    """Run the CLI in a child without the DAC capabilities (see NO_DAC)."""
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is not installed")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run(
        [*NO_DAC, sys.executable, "-m", "mistudio_widgets.cli", *args],
        capture_output=True,
        text=True,
        env=env,
    )


@root_only
@pytest.mark.parametrize("fmt", EXPORTERS)
def test_disk_full_during_an_export_keeps_the_earlier_export(
    default_ws, small_sae, extraction, tmp_path, small_disk, fmt
):
    export = EXPORTERS[fmt]
    need = size(Path(export(default_ws, small_sae, tmp_path / "probe")["path"]))
    disk = small_disk(need * 3 // 2)  # room for one export, not for a second beside it
    export(default_ws, small_sae, disk / "out")
    before = digest(disk / "out")
    with pytest.raises(ArtifactWriteError, match="disk is full.*what was there before is unchanged") as err:
        export(default_ws, small_sae, disk / "out", overwrite=True)
    assert "another disk" in err.value.fix
    assert digest(disk / "out") == before
    assert [p.name for p in disk.iterdir()] == ["out"], "a temporary folder was left behind"


@root_only
def test_disk_full_while_packing_a_bundle_keeps_the_first(
    default_ws, small_sae, extraction, tmp_path, small_disk
):
    need = size(Path(pack(default_ws, [small_sae], tmp_path / "probe.tar.gz")["path"]))
    disk = small_disk(need * 3 // 2)
    pack(default_ws, [small_sae], disk / "a.tar.gz")
    before = digest(disk)
    with pytest.raises(ArtifactWriteError, match="disk is full"):
        pack(default_ws, [small_sae], disk / "b.tar.gz")
    assert digest(disk) == before and [p.name for p in disk.iterdir()] == ["a.tar.gz"]


@root_only
@pytest.mark.model
def test_a_full_disk_is_named_and_the_workspace_stays_browsable(small_disk):
    from mistudio_widgets import Workspace

    disk = small_disk(20 * 2**20)  # too small for the 540 MB default model
    Workspace(disk / "ws").register("dataset", "kept")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "mistudio_widgets.cli", "--workspace", str(disk / "ws"), *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=600,
        )

    r = cli("models", "add", "default")
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert "the disk is full" in r.stderr and "Nothing was registered" in r.stderr
    assert not any((disk / "ws" / ".tmp").iterdir()) and not any((disk / "ws" / "models").iterdir())
    with open(disk / "filler", "wb") as f:  # now not one byte is free
        with pytest.raises(OSError):
            while True:
                f.write(b"\0" * 65536)
                f.flush()
    r = cli("list")
    assert r.returncode == 0 and "kept" in r.stdout, r.stderr
    r = cli("rename", "kept", "other")
    assert r.returncode == 2 and "the disk is full" in r.stderr and "permission" not in r.stderr, r.stderr
    assert [a.name for a in Workspace(disk / "ws").list()] == ["kept"]


@root_only
@pytest.mark.parametrize("fmt", EXPORTERS)
def test_permission_denied_during_an_export_changes_nothing(default_ws, small_sae, extraction, tmp_path, fmt):
    shared = tmp_path / "someone-elses"
    (shared / "out").mkdir(parents=True)
    (shared / "out" / "theirs.txt").write_text("not ours")
    marker = json.dumps({"format": fmt, "written": time.time(), "entries": ["theirs.txt"]})
    (shared / "out" / EXPORT_MARKER).write_text(marker)  # an earlier export, by another user
    for p in (shared, shared / "out", shared / "out" / "theirs.txt", shared / "out" / EXPORT_MARKER):
        os.chown(p, NOBODY, NOBODY)
    before = state(default_ws)
    r = no_dac(
        "--workspace",
        str(default_ws.root),
        "export",
        small_sae,
        "--format",
        fmt,
        "--out",
        str(shared / "out"),
        "--overwrite",
    )
    assert r.returncode == 2, r.stderr[-2000:]
    assert "permission was denied" in r.stderr and "what was there before is unchanged" in r.stderr, r.stderr[
        -2000:
    ]
    assert "choose a folder you may write to" in r.stderr
    assert digest(shared) == {
        "out/theirs.txt": hashlib.sha256(b"not ours").hexdigest(),
        f"out/{EXPORT_MARKER}": hashlib.sha256(marker.encode()).hexdigest(),
    }
    assert sorted(p.name for p in shared.iterdir()) == ["out"]
    consistent(default_ws, before)


@root_only
def test_permission_denied_while_checkpointing_fails_the_run_and_keeps_its_checkpoint(default_ws, tmp_path):
    base = dict(TINY, steps=6, seed=11, checkpoint_every=2)
    before = state(default_ws)
    run_id = train(
        default_ws, TrainConfig(**base, name=default_ws.unique_name("run", "perm")), stop_after=2
    ).run_id
    folder = default_ws.get(run_id).path
    kept = digest(folder)
    assert "checkpoint-2/state.safetensors" in kept
    os.chown(folder, NOBODY, NOBODY)  # the run's folder now belongs to another user
    try:
        r = no_dac("--workspace", str(default_ws.root), "train", "--resume", run_id)
    finally:
        os.chown(folder, 0, 0)
    assert r.returncode == 2, r.stderr[-2000:]
    assert "Could not write checkpoint-4: permission was denied" in r.stderr, r.stderr[-2000:]
    assert "earlier checkpoints are kept" in r.stderr
    run = default_ws.get(run_id)
    assert run.meta["status"] == "failed" and "permission was denied" in run.meta["error"]
    assert digest(folder) == kept, "the checkpoint the run had was changed"
    assert not [a for a in default_ws.list("sae") if a.parent == run_id]
    consistent(default_ws, before)
    # with the permissions put right, the same run resumes to the weights of an uninterrupted one
    same_as_uninterrupted(default_ws, base, train(default_ws, resume=run_id).path)


def test_nvml_failing_mid_run_is_reported_and_training_goes_on(default_ws, monkeypatch):
    """The real pynvml module with its device queries answering for a while, then raising NVML's own
    "GPU is lost" error (no GPU is lent to the test machines, so the driver's answers are injected)."""
    import threading
    from types import SimpleNamespace

    import pynvml

    from mistudio_widgets.core import system
    from mistudio_widgets.widgets import SystemMonitor
    from mistudio_widgets.widgets.training_monitor import device_line

    calls = {"n": 0}

    def utilisation(_handle):
        calls["n"] += 1
        if calls["n"] > 4:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_GPU_IS_LOST)
        return SimpleNamespace(gpu=87, memory=40)

    for name, fn in {
        "nvmlInit": lambda: None,
        "nvmlDeviceGetCount": lambda: 1,
        "nvmlDeviceGetHandleByIndex": lambda i: ("gpu", i),
        "nvmlDeviceGetName": lambda h: "Injected GPU",
        "nvmlDeviceGetUtilizationRates": utilisation,
        "nvmlDeviceGetMemoryInfo": lambda h: SimpleNamespace(
            used=3 * 2**30, total=80 * 2**30, free=77 * 2**30
        ),
        "nvmlDeviceGetTemperature": lambda h, s: 61,
        "nvmlDeviceGetPowerUsage": lambda h: 250_000,
        "nvmlDeviceGetEnforcedPowerLimit": lambda h: 700_000,
    }.items():
        monkeypatch.setattr(pynvml, name, fn)
    monkeypatch.setattr(system, "_nvml_state", {"tried": False, "ok": False, "message": ""})

    assert "GPU 0 Injected GPU: 87% busy, 3.0 / 80.0 GiB" in device_line()
    seen: list[dict] = []
    lock = threading.Lock()
    mon = SystemMonitor(default_ws, interval=0.2)
    mon.observe(lambda ch: (lock.acquire(), seen.append(ch["new"]), lock.release()), names=["snapshot"])
    mon.visible = True
    try:
        res = train(
            default_ws,
            TrainConfig(
                **dict(TINY, steps=8, checkpoint_every=4), name=default_ws.unique_name("run", "nvml-lost")
            ),
        )
    finally:
        mon.close()
    states = [s["gpu_state"] for s in seen]
    assert states[0] == "ok" and states[-1] == "error", states
    lost = states.index("error")
    assert seen[lost]["gpu_message"] == "NVML stopped answering (NVMLError_GpuIsLost: GPU is lost)"
    after = seen[lost:]
    assert len(after) >= 3 and all(s["cpu"] and s["ram"]["total"] > 0 for s in after), (
        "the CPU side stopped with NVML"
    )
    assert [s["time"] for s in after] == sorted(s["time"] for s in after) and after[-1]["time"] > after[0][
        "time"
    ]
    assert device_line().endswith(
        "GPU monitor unavailable (NVML stopped answering (NVMLError_GpuIsLost: GPU is lost))"
    )
    run = default_ws.get(res.run_id)
    assert run.meta["status"] == "done" and default_ws.get(res.sae_id).kind == "sae"


def test_a_failed_final_rename_puts_the_earlier_export_back(default_ws, small_sae, tmp_path, monkeypatch):
    """The last step of replacing an export (renaming the new folder into place) fails with an I/O
    error: the export that was there is put back under its name."""
    import errno

    from mistudio_widgets.core import workspace

    export_saelens(default_ws, small_sae, tmp_path / "out")
    before = digest(tmp_path / "out")
    real = os.replace

    def failing(src, dst):
        if ".tmp-" in Path(src).name:
            raise OSError(errno.EIO, "Input/output error", str(dst))
        return real(src, dst)

    monkeypatch.setattr(workspace.os, "replace", failing)
    with pytest.raises(ArtifactWriteError, match="Input/output error.*what was there before is unchanged"):
        export_saelens(default_ws, small_sae, tmp_path / "out", overwrite=True)
    assert digest(tmp_path / "out") == before and [p.name for p in tmp_path.iterdir()] == ["out"]
