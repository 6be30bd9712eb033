"""Resolves ``os.environ/NAME`` references in admin-written callback variables (runs last)."""

from __future__ import annotations

import os

from sluicegate.hookspecs import hookimpl

PREFIX = "os.environ/"


@hookimpl(trylast=True)
def resolve_callback_var(value: str, key: str, callback_name: str) -> str | None:
    if not value.startswith(PREFIX):
        return None
    name = value[len(PREFIX):]
    try:
        return os.environ[name]
    except KeyError:
        raise LookupError(f"environment variable {name!r} (referenced as {value!r}) is not set") from None
