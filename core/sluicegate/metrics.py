"""Request metrics with LiteLLM's Prometheus names and labels, so dashboards built for LiteLLM work unchanged.

Every call's :class:`~sluicegate.events.LogEvent` is observed once, on the request path, before it is handed to
delivery: one tuple of label values is built, one dict lookup finds its series, and a few counters and three or four
histogram buckets are bumped (a couple of microseconds). Everything else (projecting the series onto each metric's
own label set, formatting) happens when ``/metrics`` is scraped.

Cardinality is bounded twice:

- ``sluicegate_settings.metrics.labels`` is an allow-list: a label left out is still emitted (so LiteLLM's queries
  keep parsing) but always empty. ``end_user`` (the request's ``user`` field, chosen by clients) is off by default.
- ``sluicegate_settings.metrics.histogram_labels`` narrows the four latency histograms further (36 buckets each):
  by default they carry the model labels only, so their size follows the model list, not the number of teams
  or keys. With team labels on histograms, a scrape of 2,000 team series was 79 MB.
- ``sluicegate_settings.metrics.max_series`` caps the distinct label combinations kept; later ones are counted in
  one series whose identifying labels read ``__other__`` (totals stay exact) and in
  ``sluicegate_metrics_series_overflow_total``.
"""

from __future__ import annotations

from bisect import bisect_left
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from sluicegate.events import LogEvent

__all__ = ("ALL_LABELS", "DEFAULT_LABELS", "LATENCY_BUCKETS", "METRIC_NAMES", "RequestMetrics")

# LiteLLM's buckets (seconds), so its dashboards' histogram_quantile() panels read the same.
LATENCY_BUCKETS = (0.005, 0.00625, 0.0125, 0.025, 0.05, 0.1, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5, 5.0, 5.5,
                   6.0, 6.5, 7.0, 7.5, 8.0, 8.5, 9.0, 9.5, 10.0, 15.0, 20.0, 25.0, 30.0, 60.0, 120.0, 180.0, 240.0,
                   300.0)
_LE = (*(f"{b:g}" for b in LATENCY_BUCKETS), "+Inf")

# Position of each label in a series key.
ALL_LABELS = ("end_user", "hashed_api_key", "api_key_alias", "requested_model", "team", "team_alias", "user",
              "model", "api_provider", "api_base", "model_id", "status_code", "exception_status", "exception_class")
_AT = {name: i for i, name in enumerate(ALL_LABELS)}
DEFAULT_LABELS = tuple(name for name in ALL_LABELS if name != "end_user")
DEFAULT_HISTOGRAM_LABELS = ("requested_model", "model", "api_provider")
# Labels that say who or what a series is about: folded into ``__other__`` past ``max_series``.
_IDENTIFYING = ("end_user", "hashed_api_key", "api_key_alias", "team", "team_alias", "user", "model_id",
                "api_base")
OTHER = "__other__"

_WHO = ("end_user", "hashed_api_key", "api_key_alias", "team", "team_alias", "user")

# (name, type, help, labels, value) — value: a field of _Series (counters) or a histogram index.
_COUNTERS = (
    ("litellm_proxy_total_requests_metric_total", "Requests made to the proxy, by outcome.",
     ("end_user", "hashed_api_key", "api_key_alias", "requested_model", "team", "team_alias", "user", "status_code"),
     "requests"),
    ("litellm_proxy_failed_requests_metric_total", "Requests that failed at the proxy or upstream.",
     ("end_user", "hashed_api_key", "api_key_alias", "requested_model", "team", "team_alias", "user",
      "exception_status", "exception_class"), "failures"),
    ("litellm_requests_metric_total", "Successful LLM calls, per deployment model.",
     ("end_user", "hashed_api_key", "api_key_alias", "model", "team", "team_alias", "user"), "successes"),
    ("litellm_spend_metric_total", "Spend in USD (response_cost).",
     ("end_user", "hashed_api_key", "api_key_alias", "model", "team", "team_alias", "user"), "spend"),
    ("litellm_total_tokens_metric_total", "Input plus output tokens.",
     ("end_user", "hashed_api_key", "api_key_alias", "model", "team", "team_alias", "user", "requested_model"),
     "total_tokens"),
    ("litellm_input_tokens_metric_total", "Input (prompt) tokens.",
     ("end_user", "hashed_api_key", "api_key_alias", "model", "team", "team_alias", "user", "requested_model"),
     "input_tokens"),
    ("litellm_output_tokens_metric_total", "Output (completion) tokens.",
     ("end_user", "hashed_api_key", "api_key_alias", "model", "team", "team_alias", "user", "requested_model"),
     "output_tokens"),
    ("litellm_deployment_success_responses_total", "Successful responses per deployment.",
     ("requested_model", "model", "model_id", "api_base", "api_provider", "hashed_api_key", "api_key_alias",
      "team", "team_alias"), "successes"),
    ("litellm_deployment_failure_responses_total", "Failed responses per deployment.",
     ("requested_model", "model", "model_id", "api_base", "api_provider", "hashed_api_key", "api_key_alias",
      "team", "team_alias", "exception_status", "exception_class"), "failures"),
)
_HISTOGRAMS = (
    ("litellm_request_total_latency_metric", "Seconds from request received to response sent (whole request).",
     ("end_user", "hashed_api_key", "api_key_alias", "requested_model", "team", "team_alias", "user", "model"), 0),
    ("litellm_llm_api_latency_metric", "Seconds spent in upstream calls.",
     ("model", "hashed_api_key", "api_key_alias", "team", "team_alias", "requested_model", "end_user", "user"), 1),
    ("litellm_llm_api_time_to_first_token_metric", "Seconds to the first streamed token.",
     ("model", "hashed_api_key", "api_key_alias", "team", "team_alias"), 2),
    ("litellm_overhead_latency_metric", "Seconds the proxy added on top of the upstream calls.",
     ("requested_model", "api_provider", "api_base", "model", "hashed_api_key", "api_key_alias"), 3),
)
METRIC_NAMES = tuple(m[0] for m in _COUNTERS) + tuple(m[0] for m in _HISTOGRAMS)
"""Every series name :meth:`RequestMetrics.render` can emit (histograms add ``_bucket``/``_sum``/``_count``)."""


class _Histogram:
    __slots__ = ("buckets", "count", "total")

    def __init__(self) -> None:
        self.buckets = [0] * (len(LATENCY_BUCKETS) + 1)  # per bucket, not cumulative (summed when rendered)
        self.count = 0
        self.total = 0.0

    def observe(self, seconds: float) -> None:
        self.buckets[bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.count += 1
        self.total += seconds

    def add(self, other: _Histogram) -> None:
        self.buckets = [a + b for a, b in zip(self.buckets, other.buckets, strict=True)]
        self.count += other.count
        self.total += other.total


class _Series:
    __slots__ = ("failures", "hist", "input_tokens", "output_tokens", "requests", "spend", "successes",
                 "total_tokens")

    def __init__(self) -> None:
        self.requests = 0
        self.successes = 0
        self.failures = 0
        self.spend = 0.0
        self.input_tokens = 0
        self.output_tokens = 0
        self.total_tokens = 0
        self.hist: list[_Histogram | None] = [None, None, None, None]


def _label_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class RequestMetrics:
    """One process's request metrics. :meth:`observe` is called once per call; :meth:`render` at each scrape."""

    def __init__(self, labels: Iterable[str] | None = None, max_series: int = 2000,
                 histogram_labels: Iterable[str] | None = None) -> None:
        allowed = set(DEFAULT_LABELS if labels is None else labels)
        in_histograms = set(DEFAULT_HISTOGRAM_LABELS if histogram_labels is None else histogram_labels)
        unknown = (allowed | in_histograms) - set(ALL_LABELS)
        if unknown:
            raise ValueError(f"unknown metric label(s) {sorted(unknown)}; known: {', '.join(ALL_LABELS)}")
        self._keep = tuple(name in allowed for name in ALL_LABELS)
        self._in_histograms = in_histograms
        self.max_series = max_series
        self.series: dict[tuple[str, ...], _Series] = {}
        self.overflow = 0
        self.gauges: list[Callable[[], Iterable[str]]] = []
        """Functions returning extra exposition lines at scrape time (budgets, rate limits...)."""

    def observe(self, event: LogEvent) -> None:
        meta = event.metadata
        info = event.error_information
        failed = event.status != "success"
        status = str(info.get("status_code", 500)) if failed and info else ("500" if failed else "200")
        provider = event.custom_llm_provider or ""
        values = (event.end_user or "", meta.user_api_key_hash or "", meta.user_api_key_alias or "",
                  event.model_group or "", meta.user_api_key_team_id or "", meta.user_api_key_team_alias or "",
                  getattr(meta, "user_api_key_user_id", None) or "",
                  event.model or "", provider, event.api_base or "", event.model_id or "", status,
                  status if failed else "", (info.get("error_class") or "") if failed and info else "")
        key = tuple(v if keep else "" for v, keep in zip(values, self._keep, strict=True))
        series = self.series.get(key)
        if series is None:
            if len(self.series) >= self.max_series:
                self.overflow += 1
                key = tuple(OTHER if name in _IDENTIFYING and key[i] else key[i] for i, name in enumerate(ALL_LABELS))
                series = self.series.get(key)
            if series is None:
                series = self.series[key] = _Series()
        series.requests += 1
        if failed:
            series.failures += 1
        else:
            series.successes += 1
            series.spend += event.response_cost
            series.input_tokens += event.prompt_tokens
            series.output_tokens += event.completion_tokens
            series.total_tokens += event.total_tokens
        hist = series.hist
        if hist[0] is None:
            hist[0] = _Histogram()
        hist[0].observe(event.response_time)
        attempts = event.attempts
        if attempts:
            upstream = sum(a.get("duration") or 0.0 for a in attempts)
            if hist[1] is None:
                hist[1] = _Histogram()
            hist[1].observe(upstream)
            if hist[3] is None:
                hist[3] = _Histogram()
            hist[3].observe(max(event.response_time - upstream, 0.0))
        if event.stream and event.completionStartTime and not failed:
            if hist[2] is None:
                hist[2] = _Histogram()
            hist[2].observe(max(event.completionStartTime - event.startTime, 0.0))

    def render(self) -> list[str]:
        lines: list[str] = []
        label_text: dict[tuple[str, ...], str] = {}

        def labels_of(names: tuple[str, ...], values: tuple[str, ...]) -> str:
            text = label_text.get(values)
            if text is None:
                text = label_text[values] = ",".join(f'{n}="{_label_value(v)}"' for n, v in zip(names, values,
                                                                                            strict=True))
            return text

        for name, text, names, field in _COUNTERS:
            positions = tuple(_AT[n] for n in names)
            totals: dict[tuple[str, ...], Any] = {}
            for key, series in self.series.items():
                value = getattr(series, field)
                if value:
                    projected = tuple(key[i] for i in positions)
                    totals[projected] = totals.get(projected, 0) + value
            lines.append(f"# HELP {name} {text}")
            lines.append(f"# TYPE {name} counter")
            label_text.clear()
            lines.extend(f"{name}{{{labels_of(names, values)}}} {value}" for values, value in totals.items())
        for name, text, names, index in _HISTOGRAMS:
            positions = tuple(_AT[n] if n in self._in_histograms else -1 for n in names)
            merged: dict[tuple[str, ...], _Histogram] = {}
            for key, series in self.series.items():
                hist = series.hist[index]
                if hist is None:
                    continue
                projected = tuple(key[i] if i >= 0 else "" for i in positions)
                into = merged.get(projected)
                if into is None:
                    into = merged[projected] = _Histogram()
                into.add(hist)
            lines.append(f"# HELP {name} {text}")
            lines.append(f"# TYPE {name} histogram")
            label_text.clear()
            for values, hist in merged.items():
                labels = labels_of(names, values)
                running = 0
                for le, count in zip(_LE, hist.buckets, strict=True):
                    running += count
                    lines.append(f'{name}_bucket{{{labels},le="{le}"}} {running}')
                lines.append(f"{name}_sum{{{labels}}} {hist.total}")
                lines.append(f"{name}_count{{{labels}}} {hist.count}")
        lines += ["# HELP sluicegate_metrics_series Label combinations kept for the request metrics.",
                  "# TYPE sluicegate_metrics_series gauge", f"sluicegate_metrics_series {len(self.series)}",
                  "# HELP sluicegate_metrics_series_overflow_total Observations counted in the __other__ series "
                  "because sluicegate_settings.metrics.max_series was reached.",
                  "# TYPE sluicegate_metrics_series_overflow_total counter",
                  f"sluicegate_metrics_series_overflow_total {self.overflow}"]
        for gauge in self.gauges:
            lines.extend(gauge())
        return lines
