"""Test helpers for sink authors: the conformance suite and sample events."""

from __future__ import annotations

from sluicegate.testing.events import make_event
from sluicegate.testing.receiver import HttpReceiver
from sluicegate.testing.standard import SinkStandardTests

__all__ = ("HttpReceiver", "SinkStandardTests", "make_event")
