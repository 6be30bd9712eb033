"""The router: deployments per model group, routing strategies, retries, fallbacks and cooldowns.

Pure logic (:mod:`.core`, :mod:`.strategies`, :mod:`.errors`) with its shared state behind one small interface
(:mod:`.state`: in this process, or Redis for several replicas).
"""

from __future__ import annotations

from sluicegate.router.core import Attempt, Group, Outcome, RequestOptions, Router, RouterFailure
from sluicegate.router.state import LocalRouterState, RedisRouterState, RouterState

__all__ = ("Attempt", "Group", "LocalRouterState", "Outcome", "RedisRouterState", "RequestOptions", "Router",
           "RouterFailure", "RouterState")
