"""Redaction policies: detectors (``Redactor`` plugins) that replace personal data and secrets in log events.

``base`` holds the contract plugin authors implement and the registry filled through ``register_redactors``;
``policy`` turns a ``redaction: {redactors, fields}`` setting into a compiled policy and applies it to an event on
the delivery side (once per distinct policy per event). Nothing here runs on the request path.
"""

from __future__ import annotations

from sluicegate.redaction.base import (
    DuplicateRedactorName,
    Redactor,
    RedactorOptions,
    RedactorRegistry,
    UnknownRedactorName,
)

__all__ = ("DuplicateRedactorName", "Redactor", "RedactorOptions", "RedactorRegistry", "UnknownRedactorName")
