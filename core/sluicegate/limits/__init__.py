"""Limits and spend: what each request cost, who spent it, the budgets and rate limits that refuse a request before
it goes upstream, and the key defaults and ceilings from config.yaml.

- :mod:`sluicegate.limits.budgets`: budget durations, the ``budget_exceeded`` error, one entity's counter.
- :mod:`sluicegate.limits.spend`: the :class:`~sluicegate.limits.spend.SpendLedger`: spend per key, team, user, end
  user, tag and model per day, kept in memory and written to the database in batches (never per request), and the
  budget check the pipeline makes before the upstream call.
- :mod:`sluicegate.limits.shared`: the spend counters shared by every process through Redis, when configured.
- :mod:`sluicegate.limits.ratelimit`, :mod:`sluicegate.limits.ratelimit_redis`: rpm, tpm and parallel-request
  limits, in process or in Redis.
- :mod:`sluicegate.limits.key_params`: ``default_key_generate_params`` / ``upperbound_key_generate_params``.
"""

from __future__ import annotations

__all__ = ()
