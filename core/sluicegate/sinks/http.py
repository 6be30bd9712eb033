"""Moved to :mod:`sluicegate.net.http` (providers and sinks share it); this name stays for installed sink plugins."""

from __future__ import annotations

from sluicegate.net.http import *  # noqa: F403
from sluicegate.net.http import __all__, _origin  # noqa: F401
