"""Limits and spend: what each request cost, who spent it, and the budgets that refuse a request before it goes
upstream.

- :mod:`sluicegate.limits.budgets`: budget durations, the ``budget_exceeded`` error, one entity's counter.
- :mod:`sluicegate.limits.spend`: the :class:`~sluicegate.limits.spend.SpendLedger`: spend per key, team, user, end
  user, tag and model per day, kept in memory and written to the database in batches (never per request), and the
  budget check the pipeline makes before the upstream call.
- :mod:`sluicegate.limits.shared`: the counters shared by every process through Redis, when configured.
"""

from __future__ import annotations

__all__ = ()
