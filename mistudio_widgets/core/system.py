"""System monitor: CPU per core, RAM and disk always; GPU utilisation, memory, temperature and power
through NVML (nvidia-ml-py) when an NVIDIA GPU is present, with a clear no-GPU state otherwise; and
whether the CPU computes bfloat16 natively."""

from __future__ import annotations

import functools
import threading
import time
from pathlib import Path
from typing import Any

import psutil

_nvml_lock = threading.Lock()
_nvml_state: dict[str, Any] = {"tried": False, "ok": False, "message": ""}


def _nvml():
    """The pynvml module once initialised, else None (the reason is kept in ``_nvml_state``)."""
    with _nvml_lock:
        if not _nvml_state["tried"]:
            _nvml_state["tried"] = True
            try:
                import pynvml  # provided by nvidia-ml-py

                pynvml.nvmlInit()
                _nvml_state.update(ok=True, module=pynvml)
            except ImportError:
                _nvml_state["message"] = "nvidia-ml-py is not installed"
            except Exception as exc:  # pynvml.NVMLError_LibraryNotFound etc.
                _nvml_state["message"] = f"no NVIDIA GPU or driver found ({type(exc).__name__})"
        return _nvml_state.get("module") if _nvml_state["ok"] else None


def gpu_snapshot() -> tuple[str, str, list[dict[str, Any]]]:
    """(state, message, gpus): state is 'ok', 'none' or 'error'."""
    nv = _nvml()
    if nv is None:
        return "none", _nvml_state["message"], []
    gpus = []
    try:
        for i in range(nv.nvmlDeviceGetCount()):
            h = nv.nvmlDeviceGetHandleByIndex(i)
            name = nv.nvmlDeviceGetName(h)
            mem = nv.nvmlDeviceGetMemoryInfo(h)
            util = nv.nvmlDeviceGetUtilizationRates(h)
            gpu: dict[str, Any] = {
                "index": i,
                "name": name.decode() if isinstance(name, bytes) else name,
                "util": float(util.gpu),
                "mem_used": int(mem.used),
                "mem_total": int(mem.total),
            }
            try:
                gpu["temperature"] = float(nv.nvmlDeviceGetTemperature(h, nv.NVML_TEMPERATURE_GPU))
            except Exception:
                gpu["temperature"] = None
            try:
                gpu["power_w"] = nv.nvmlDeviceGetPowerUsage(h) / 1000.0
                gpu["power_limit_w"] = nv.nvmlDeviceGetEnforcedPowerLimit(h) / 1000.0
            except Exception:
                gpu["power_w"] = gpu["power_limit_w"] = None
            gpus.append(gpu)
    except Exception as exc:  # NVML failing mid-run: report, keep the CPU side going
        return "error", f"NVML stopped answering ({type(exc).__name__}: {exc})", []
    return "ok", f"{len(gpus)} GPU(s)", gpus


def snapshot(disk_path: str | Path = ".") -> dict[str, Any]:
    """One reading of the machine."""
    vm = psutil.virtual_memory()
    try:
        du = psutil.disk_usage(str(disk_path))
        disk = {"path": str(Path(disk_path).resolve()), "used": du.used, "total": du.total}
    except OSError:
        disk = {"path": str(disk_path), "used": 0, "total": 0}
    proc = psutil.Process()
    state, message, gpus = gpu_snapshot()
    return {
        "time": time.time(),
        "cpu": psutil.cpu_percent(percpu=True),
        "ram": {"used": vm.total - vm.available, "total": vm.total},
        "process_rss": proc.memory_info().rss,
        "disk": disk,
        "gpu_state": state,
        "gpu_message": message,
        "gpus": gpus,
    }


BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


@functools.lru_cache(maxsize=1)
def cpu_has_fast_bf16() -> bool:
    """Whether this CPU computes bfloat16 matrix products natively (AVX512-BF16 or AMX, read from
    /proc/cpuinfo on Linux): there a bf16 model forward is about 3x an fp32 one. Elsewhere (no such
    flags, macOS, Windows) bf16 is emulated and slower, so the answer is False."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return False
    flags = next(
        (line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), []
    )
    return any(f in flags for f in BF16_CPU_FLAGS)
