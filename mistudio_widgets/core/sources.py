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
