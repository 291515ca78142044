"""Writing to disk safely: folders published by one rename when complete, and an OSError (a full
disk, a permission denied) turned into an error that says what was kept and what to do."""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import uuid
from pathlib import Path
from typing import Iterator

from .errors import ArtifactWriteError

_DISK_ERRNOS = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is exceeded",
    errno.EACCES: "permission was denied",
    errno.EPERM: "the operation is not permitted",
    errno.EROFS: "the file system is read-only",
}


_AFTER = {  # what is true after a failed write, and where to go next, by what was being written
    "artifact": (
        "Nothing was registered.",
        "point MISTUDIO_HOME at a larger disk",
        "choose another workspace folder",
    ),
    "checkpoint": (
        "The earlier checkpoints are kept; resume from the newest.",
        "point MISTUDIO_HOME at a larger disk",
        "make the run's folder writable again",
    ),
    "export": (
        "Nothing was left there, and what was there before is unchanged.",
        "choose an output folder on another disk",
        "choose a folder you may write to",
    ),
}


def disk_error(exc: OSError, what: str, *, writing: str = "artifact") -> ArtifactWriteError:
    """Turn an OSError during a write into a clear error naming the cause and the fix; ``writing`` is
    "artifact" (the workspace), "checkpoint" or "export" (a folder or file outside the workspace)."""
    cause = _DISK_ERRNOS.get(exc.errno or 0, exc.strerror or str(exc))
    after, full_fix, perm_fix = _AFTER[writing]
    fix = (
        f"free some disk space or {full_fix}, then try again."
        if exc.errno in (errno.ENOSPC, errno.EDQUOT)
        else f"check the folder's permissions or {perm_fix}, then try again."
    )
    return ArtifactWriteError(f"Could not write {what}: {cause} ({exc.filename or exc}). {after}", fix)


_OS_ERROR = re.compile(r"\(os error (\d+)\)")


def os_error_in(exc: BaseException) -> OSError | None:
    """``exc`` as an OSError when it is one, or when it is a library's wrapper around one (safetensors
    reports a full disk as "I/O error: No space left on device (os error 28)"); else None."""
    if isinstance(exc, OSError):
        return exc
    m = _OS_ERROR.search(str(exc)) if isinstance(exc, Exception) else None
    return OSError(int(m.group(1)), os.strerror(int(m.group(1)))) if m else None


@contextlib.contextmanager
def atomic_folder(final: Path, *, writing: str = "artifact") -> Iterator[Path]:
    """Write a folder under a temporary name and rename it to ``final`` when the block succeeds;
    an existing ``final`` is replaced only then. On failure the temporary folder is removed and
    ``final`` (if any) is left as it was. Disk errors become :class:`ArtifactWriteError`."""
    tmp = final.with_name(f".{final.name}.tmp-{uuid.uuid4().hex[:6]}")
    try:
        tmp.mkdir(parents=True)
        yield tmp
        _fsync_tree(tmp)
        if final.exists():
            old = final.with_name(f".{final.name}.old-{uuid.uuid4().hex[:6]}")
            os.replace(final, old)
            try:
                os.replace(tmp, final)
            except OSError:
                os.replace(old, final)  # put the previous folder back before reporting
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if (os_exc := os_error_in(exc)) is not None:
            raise disk_error(
                os_exc, str(final if writing == "export" else final.name), writing=writing
            ) from exc
        raise


def _fsync_tree(path: Path) -> None:
    """Flush written files to disk so that a rename never publishes empty files after a crash."""
    for p in path.rglob("*"):
        if p.is_file():
            fd = os.open(p, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
