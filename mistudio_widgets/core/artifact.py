"""One catalog row (an artifact: a dataset, tokenization, model, SAE, run, ...) and the facts about
artifact ids, names and folder records the workspace and its repair share."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import WorkspaceError

ID_LIKE = re.compile(r"[a-z]{2,3}-[0-9a-f]{10}")  # the form of an artifact id (see new_id)


RECORD = (
    ".mistudio-artifact.json"  # each artifact folder's own copy of its catalog row, for `mistudio repair`
)


KIND_PREFIX = {
    "dataset": "ds",
    "tokenization": "tk",
    "model": "md",
    "sae": "sae",
    "run": "run",
    "activation_cache": "ac",
    "extraction": "fx",
    "steering_preset": "sp",
}


@dataclass
class Artifact:
    """One catalog row. ``path`` is absolute, or None for references (e.g. a hub model id)."""

    id: str
    kind: str
    name: str
    path: Path | None
    parent: str | None
    created: float
    updated: float
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def folder(self) -> Path:
        """The artifact's folder; a clear error for a reference row, which has none."""
        if self.path is None:
            raise WorkspaceError(
                f"The {self.kind} {self.name!r} ({self.id}) is a reference with no folder of its own.",
                "use an artifact that was written into the workspace.",
            )
        return self.path

    @property
    def parent_id(self) -> str:
        """The id of the artifact this one was made from; a clear error for a row without one."""
        if self.parent is None:
            raise WorkspaceError(
                f"The {self.kind} {self.name!r} ({self.id}) has no parent artifact.",
                "re-create it from the artifact it belongs to.",
            )
        return self.parent

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "name": self.name,
            "path": str(self.path) if self.path else None,
            "parent": self.parent,
            "created": self.created,
            "updated": self.updated,
            "meta": self.meta,
        }


def _valid_name(name: Any) -> bool:
    """A name that prints on one line: a non-empty string without control characters."""
    return (
        isinstance(name, str)
        and bool(name.strip())
        and not any(ord(c) < 0x20 or ord(c) == 0x7F for c in name)
    )


def _read_record(folder: Path) -> dict[str, Any]:
    """An artifact folder's own record (see :data:`RECORD`), or {} when it has none or it is unreadable."""
    try:
        rec = json.loads((folder / RECORD).read_text())
    except (OSError, ValueError, RecursionError):
        return {}
    return rec if isinstance(rec, dict) else {}
