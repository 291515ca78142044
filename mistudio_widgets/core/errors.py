"""Errors a user can cause. Each message names the problem and the fix."""

from __future__ import annotations


class MistudioError(Exception):
    """Base class: something the user can fix. ``str(err)`` says what and how."""

    def __init__(self, problem: str, fix: str | None = None):
        self.problem = problem
        self.fix = fix
        super().__init__(problem if not fix else f"{problem} Fix: {fix}")


class WorkspaceError(MistudioError):
    """The workspace folder or catalog cannot be used as asked."""


class ArtifactNotFound(MistudioError):
    """No dataset/model/... with that id or name."""


class ArtifactWriteError(MistudioError):
    """Writing an artifact failed (disk full, permission denied); nothing was registered."""


class DatasetError(MistudioError):
    """A dataset cannot be read, is empty, or does not fit the request."""


class TokenizerMismatch(MistudioError):
    """A tokenized dataset was made with another model's tokenizer."""


class ModelError(MistudioError):
    """A model cannot be found, loaded or quantized as asked."""


class HookError(MistudioError):
    """A hook name is invalid or does not exist in this model."""


class HubError(MistudioError):
    """The Hugging Face hub could not be reached or the repo does not exist."""
