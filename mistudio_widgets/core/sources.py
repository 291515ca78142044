"""Reading a user's source folder (an SAE to import, a folder of dataset files) without following links
out of it: a file or folder inside that is a symbolic link leading outside the source folder is refused
by name, before anything is read."""

from __future__ import annotations

import os
from pathlib import Path

from .errors import MistudioError


def refuse_links_out(folder: str | Path, what: str, error: type[MistudioError] = MistudioError) -> None:
    """Raise ``error`` naming the first entry of ``folder`` (at any depth, links never followed) that is
    a symbolic link whose target lies outside ``folder``. A single file named by the user is not a folder
    and is left to the caller."""
    folder = Path(folder)
    if not folder.is_dir():
        return
    root = folder.resolve()
    for dirpath, dirnames, filenames in os.walk(folder):  # os.walk never descends into linked folders
        for name in (*dirnames, *filenames):
            p = Path(dirpath) / name
            if not p.is_symlink():
                continue
            target = p.resolve()
            if target != root and not target.is_relative_to(root):
                raise error(
                    f"{p} in the {what} is a symbolic link to {target}, outside the folder; files are "
                    "never read through links that leave the folder they were given in.",
                    f"copy the file into {folder} instead of linking it, or remove the link.",
                )


def read_small_file(
    path: str | Path, what: str, limit: int = 10 << 20, error: type[MistudioError] = MistudioError
) -> str:
    """The text of a regular file of at most ``limit`` bytes (a FIFO, a device such as /dev/zero or a
    folder is refused before it is opened, so nothing hangs or fills memory)."""
    import stat

    try:
        st = os.stat(path)
    except OSError as exc:
        raise error(f"Could not read the {what} {path} ({exc.strerror}).", "check the path.") from None
    if not stat.S_ISREG(st.st_mode):
        raise error(
            f"The {what} {path} is not a regular file (a pipe, a device or a folder).",
            "give the path of an ordinary text file.",
        )
    if st.st_size > limit:
        raise error(
            f"The {what} {path} is {st.st_size:,} bytes; at most {limit:,} are read.", "give a smaller file."
        )
    try:
        with open(path, "rb") as fh:
            data = fh.read(limit + 1)
        if len(data) > limit:
            raise error(f"The {what} {path} grew past {limit:,} bytes while read.", "give a smaller file.")
        return data.decode("utf-8")
    except OSError as exc:
        raise error(f"Could not read the {what} {path} ({exc.strerror}).", "check the path.") from None
    except UnicodeDecodeError:
        raise error(f"The {what} {path} is not UTF-8 text.", "save it as UTF-8.") from None
