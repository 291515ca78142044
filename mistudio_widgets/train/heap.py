"""The C heap while training on CPUs: keep freed memory for the next step instead of handing it back.

A training step allocates and frees the same tensors every time (gradients, optimiser temporaries,
the sparse products' outputs: 2-40 MB each). glibc's malloc maps blocks that large afresh and returns
freed heap tops to the kernel, so every step page-faults ~50 MB back in: ~13,000 faults, ~10% of a
step on 2 cores (measured by ``benchmarks/bench_train.py``'s configuration, ``ru_minflt`` and system
time). Raising the mapping threshold to its maximum and the trim threshold to a bounded size makes
them reuse the heap instead.

The setting is process-wide and stays after training; what it costs is up to ``TRIM_BYTES`` of freed
memory kept by the process rather than returned to the system. Only glibc has ``mallopt``; elsewhere
(macOS, Windows, musl) this does nothing."""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's malloc.h
MMAP_BYTES = 32 * 1024 * 1024  # glibc's largest allowed mapping threshold on 64-bit systems
TRIM_BYTES = 256 * 1024 * 1024

_done = False


def keep_freed_memory(device: str) -> bool:
    """On a CPU device under glibc, set the two thresholds once per process; True when they are set."""
    global _done
    if _done or not str(device).startswith("cpu") or not sys.platform.startswith("linux"):
        return _done
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _done = bool(mallopt(M_MMAP_THRESHOLD, MMAP_BYTES)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_BYTES))
    return _done
