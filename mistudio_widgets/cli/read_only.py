"""The mark of a command that only reads the workspace: it refuses a folder that is not a workspace
and creates or cleans nothing there (``Workspace(existing=True)``)."""

from __future__ import annotations


def read_only(fn):
    fn.read_only = True
    return fn
