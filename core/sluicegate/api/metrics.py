"""``GET /metrics``: the request metrics under LiteLLM's names (``sluicegate.metrics``), the delivery counters of
``/-/sinks``, the response cache's and the budgets' counters, in the Prometheus text format.

Hand-written exposition (format 0.0.4): counters and histograms kept as plain numbers do not need a client
library, and the test suite parses the output with ``prometheus_client``'s parser. Sink labels are
``callback_name`` and ``instance_id`` (a digest of the sink's variables, never a secret).
The route takes the master key unless ``litellm_settings.require_auth_for_metrics_endpoint`` is ``false``: scrape
it with ``authorization: {credentials: ...}``.
"""

from __future__ import annotations

from litestar import Request, Response, get

from sluicegate.api.common import gateway_of

__all__ = ("metrics",)

# (stats field, metric name, type, help)
_SERIES = (
    ("accepted", "sluicegate_sink_events_accepted_total", "counter", "Events queued for the sink instance."),
    ("sent", "sluicegate_sink_events_sent_total", "counter", "Events the sink instance delivered."),
    ("retried", "sluicegate_sink_retries_total", "counter", "Batch sends retried after a failure."),
    ("failed_sends", "sluicegate_sink_failed_sends_total", "counter", "Batch sends that failed."),
    ("dropped", "sluicegate_sink_events_dropped_total", "counter", "Events given up (permanent failure, full "
                                                                     "queue without spool, spool over its limit)."),
    ("queued", "sluicegate_sink_events_queued", "gauge", "Events waiting in memory."),
    ("in_flight", "sluicegate_sink_events_in_flight", "gauge", "Events in the batch being sent."),
    ("spooled", "sluicegate_sink_events_spooled", "gauge", "Events held only by the durable spool."),
    ("spool_bytes", "sluicegate_sink_spool_bytes", "gauge", "Bytes of spool segments on disk."),
)


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


_CACHE_SERIES = (
    ("hits", "sluicegate_cache_hits_total", "Requests answered from the response cache."),
    ("misses", "sluicegate_cache_misses_total", "Cache lookups that found nothing."),
    ("stores", "sluicegate_cache_stores_total", "Answers written to the cache."),
    ("errors", "sluicegate_cache_errors_total", "Cache backend failures (requests went upstream instead)."),
    ("bypassed", "sluicegate_cache_bypassed_total", "Lookups skipped while the backend was failing."),
)


def render_cache(stats: dict) -> list[str]:
    lines = []
    for field, name, text in _CACHE_SERIES:
        lines += [f"# HELP {name} {text}", f"# TYPE {name} counter", f"{name} {stats.get(field) or 0}"]
    return lines


def render_spend(stats: dict) -> list[str]:
    """The spend ledger's series: flushes, budget refusals and soft budgets crossed by entity type, and which
    entities are over their soft budget now (``entity_id``: a key's sha256 id, a team, user or end user id)."""
    lines = ["# HELP sluicegate_spend_flushes_total Batched spend writes to the database.",
             "# TYPE sluicegate_spend_flushes_total counter", f"sluicegate_spend_flushes_total {stats['flushes']}",
             "# HELP sluicegate_spend_flush_failures_total Spend writes that failed (kept for the next one).",
             "# TYPE sluicegate_spend_flush_failures_total counter",
             f"sluicegate_spend_flush_failures_total {stats['flush_failures']}",
             "# HELP sluicegate_budget_refused_total Requests refused with budget_exceeded, by entity type.",
             "# TYPE sluicegate_budget_refused_total counter"]
    lines += [f'sluicegate_budget_refused_total{{entity_type="{_label(k)}"}} {v}'
              for k, v in sorted(stats["refused"].items())]
    lines += ["# HELP sluicegate_soft_budget_crossed_total Soft budgets crossed (once per budget period), by entity "
              "type.", "# TYPE sluicegate_soft_budget_crossed_total counter"]
    lines += [f'sluicegate_soft_budget_crossed_total{{entity_type="{_label(k)}"}} {v}'
              for k, v in sorted(stats["soft_crossed"].items())]
    lines += ["# HELP sluicegate_soft_budget_exceeded Entities over their soft budget in the current period.",
              "# TYPE sluicegate_soft_budget_exceeded gauge"]
    lines += [f'sluicegate_soft_budget_exceeded{{entity_type="{_label(t)}",entity_id="{_label(i)}"}} 1'
              for t, i in stats["over_soft"]]
    return lines


def render(stats: list[dict], submitted: int, pending: int, cache: dict | None = None,
           spend: dict | None = None) -> str:
    lines = ["# HELP sluicegate_events_submitted_total Routed events accepted by the dispatcher.",
             "# TYPE sluicegate_events_submitted_total counter", f"sluicegate_events_submitted_total {submitted}",
             "# HELP sluicegate_events_pending Events not yet delivered (memory, in flight and spool).",
             "# TYPE sluicegate_events_pending gauge", f"sluicegate_events_pending {pending}",
             "# HELP sluicegate_sink_instances Sink instances alive.", "# TYPE sluicegate_sink_instances gauge",
             f"sluicegate_sink_instances {len(stats)}"]
    for field, name, kind, text in _SERIES:
        lines.append(f"# HELP {name} {text}")
        lines.append(f"# TYPE {name} {kind}")
        for row in stats:
            labels = f'callback_name="{_label(row["callback_name"])}",instance_id="{_label(row["instance_id"])}"'
            lines.append(f"{name}{{{labels}}} {row.get(field) or 0}")
    if cache is not None:
        lines += render_cache(cache)
    if spend is not None:
        lines += render_spend(spend)
    return "\n".join(lines) + "\n"


@get("/metrics")
async def metrics(request: Request) -> Response[str]:
    gateway = gateway_of(request)
    if gateway.settings.litellm_settings.require_auth_for_metrics_endpoint:
        await gateway.authorize(request, "proxy_admin_viewer")
    delivery = await gateway.delivery_stats()
    await gateway.limits.refresh_gauges()  # with Redis, the per-model windows are read now
    shared = gateway.worker_metrics  # several workers: theirs merged in (sluicegate.worker_metrics)
    lines = shared.render() if shared is not None else gateway.metrics.render()
    body = "\n".join(lines) + "\n" + render(delivery["sinks"], delivery["submitted"], delivery["pending"],
                                            gateway.cache.stats(), gateway.spend.stats())
    return Response(content=body, media_type="text/plain; version=0.0.4; charset=utf-8")
