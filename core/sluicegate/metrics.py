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

The remaining-budget and remaining-rate-limit gauges (:data:`GAUGES`) are not observed at all: their sources
(:meth:`sluicegate.limits.spend.SpendLedger.gauges`, :meth:`sluicegate.limits.ratelimit.RateLimiter.gauges`) read
the budget counters and rate-limit windows when ``/metrics`` is scraped. They follow the same allow-list (a label
left out is emitted empty; a family none of whose identifying labels is allowed is left out) and carry at most
``max_series`` entities each (the rest are counted in ``sluicegate_metrics_gauge_samples_omitted``).

With ``sluicegate serve --workers N`` each worker's series are one part of the whole: :meth:`RequestMetrics.snapshot`
encodes them for the others and :meth:`RequestMetrics.render` merges theirs in (:mod:`sluicegate.worker_metrics`).
"""

from __future__ import annotations

import math
from bisect import bisect_left
from typing import TYPE_CHECKING, Any

import msgspec

if TYPE_CHECKING:
    from collections.abc import Callable, Generator, Iterable, Sequence

    from sluicegate.events import LogEvent

__all__ = ("ALL_LABELS", "DEFAULT_LABELS", "GAUGES", "LATENCY_BUCKETS", "METRIC_NAMES", "GaugeSamples",
           "RequestMetrics", "Snapshot")

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
# LiteLLM's gauges computed at scrape time: name -> (help, labels); the first labels identify the entity.
GAUGES = {
    "litellm_remaining_team_budget_metric": ("Remaining budget for team (max_budget - spend of the period).",
                                             ("team", "team_alias")),
    "litellm_team_max_budget_metric": ("Maximum budget set for team.", ("team", "team_alias")),
    "litellm_remaining_api_key_budget_metric": ("Remaining budget for api key (max_budget - spend of the period).",
                                                ("hashed_api_key", "api_key_alias")),
    "litellm_api_key_max_budget_metric": ("Maximum budget set for api key.", ("hashed_api_key", "api_key_alias")),
    "litellm_remaining_user_budget_metric": ("Remaining budget for user (max_budget - spend of the period).",
                                             ("user",)),
    "litellm_user_max_budget_metric": ("Maximum budget set for user.", ("user",)),
    "litellm_remaining_api_key_requests_for_model": (
        "Remaining requests the api key can make for the model in the current window (model_rpm_limit).",
        ("hashed_api_key", "api_key_alias", "model")),
    "litellm_remaining_api_key_tokens_for_model": (
        "Remaining tokens the api key can use for the model in the current window (model_tpm_limit).",
        ("hashed_api_key", "api_key_alias", "model")),
}
GaugeSamples = dict[str, list[tuple[tuple[str, ...], float]]]
"""A gauge source's answer: family name (a key of :data:`GAUGES`) -> [(label values in its order, value)]."""

METRIC_NAMES = tuple(m[0] for m in _COUNTERS) + tuple(m[0] for m in _HISTOGRAMS) + tuple(GAUGES)
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
        buckets = self.buckets
        for i, count in enumerate(other.buckets):
            if count:  # most buckets of a series are empty
                buckets[i] += count
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


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(value) if isinstance(value, float) else str(value)


class _Wire(msgspec.Struct, array_like=True):
    """A snapshot as written: series rows are (label values, the seven counters, the four histograms as
    ``(buckets, count, sum)`` or None)."""

    written: float
    overflow: int
    series: list[tuple[tuple[str, ...], int, int, int, float, int, int, int,
                       list[tuple[list[int], int, float] | None]]]
    gauges: dict[str, list[tuple[tuple[str, ...], float]]]


class _WireOut(msgspec.Struct, array_like=True):
    """:class:`_Wire` as written in steps: the same layout, with the series rows already encoded."""

    written: float
    overflow: int
    series: msgspec.Raw
    gauges: dict[str, list[tuple[tuple[str, ...], float]]]


_encode_wire = msgspec.msgpack.Encoder().encode
_decode_wire = msgspec.msgpack.Decoder(_Wire).decode

SNAPSHOT_STEP = 250
"""Series read and encoded per step of :meth:`RequestMetrics.snapshot_steps` (the event loop runs between steps)."""


def _array_header(length: int) -> bytes:
    """MessagePack's header of an array of ``length`` items (fixarray, array 16 or array 32)."""
    if length < 16:
        return bytes((0x90 | length,))
    if length < 0x10000:
        return b"\xdc" + length.to_bytes(2, "big")
    return b"\xdd" + length.to_bytes(4, "big")


class Snapshot:
    """One worker's metrics as another reads them (:meth:`RequestMetrics.decode`): its series, its overflow count,
    and the gauges its sources gave when it was written (``written``: seconds since the epoch)."""

    __slots__ = ("gauges", "overflow", "series", "written")

    def __init__(self, written: float, overflow: int, series: list[tuple[tuple[str, ...], _Series]],
                 gauges: GaugeSamples) -> None:
        self.written = written
        self.overflow = overflow
        self.series = series
        self.gauges = gauges


def _series_of(row: Any) -> _Series:
    series = _Series()
    (_, series.requests, series.successes, series.failures, series.spend, series.input_tokens, series.output_tokens,
     series.total_tokens, hists) = row
    for i, hist in enumerate(hists):
        if hist is not None:
            into = series.hist[i] = _Histogram()
            into.buckets, into.count, into.total = hist[0], hist[1], hist[2]
    return series


def _add_series(into: _Series, other: _Series) -> None:
    into.requests += other.requests
    into.successes += other.successes
    into.failures += other.failures
    into.spend += other.spend
    into.input_tokens += other.input_tokens
    into.output_tokens += other.output_tokens
    into.total_tokens += other.total_tokens
    for i, hist in enumerate(other.hist):
        if hist is not None:
            mine = into.hist[i]
            if mine is None:
                mine = into.hist[i] = _Histogram()
            mine.add(hist)


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
        self._allowed = frozenset(allowed)
        self.series: dict[tuple[str, ...], _Series] = {}
        self.overflow = 0
        self.observations = 0  # lets a worker skip rewriting an unchanged snapshot (sluicegate.worker_metrics)
        self.gauges_omitted = 0
        self.gauge_sources: list[Callable[[int], tuple[GaugeSamples, int]]] = []
        """Functions called at scrape time (and when a worker publishes its snapshot) for :data:`GAUGES` samples:
        given the most samples wanted per family, they answer those and the number they left out."""

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
        self.observations += 1
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

    # scrape time -------------------------------------------------------------------------------------------------
    def gauges(self) -> GaugeSamples:
        """The gauge sources' samples projected onto the allow-list: a label left out is emptied, a family whose
        identifying labels are all left out is dropped, samples that became identical are kept once, and at most
        ``max_series`` samples are kept per family."""
        found: GaugeSamples = {}
        cap = self.max_series
        omitted = 0
        for source in self.gauge_sources:
            samples, left_out = source(cap)
            omitted += left_out
            for name, rows in samples.items():
                names = GAUGES[name][1]
                keep = tuple(n in self._allowed for n in names)
                if not any(keep):
                    continue
                if (name not in found and all(keep) and len(rows) <= cap
                        and len({values for values, _ in rows}) == len(rows)):
                    found[name] = list(rows)  # nothing to empty, fold or cut: the samples as the source gave them
                    continue
                into = found.setdefault(name, [])
                seen = {values for values, _ in into}
                for values, number in rows:
                    if not all(keep):
                        values = tuple(v if k else "" for v, k in zip(values, keep, strict=True))
                    if values not in seen:
                        if len(into) >= cap:
                            omitted += 1
                            continue
                        seen.add(values)
                        into.append((values, number))
        self.gauges_omitted = omitted
        return found

    def snapshot(self, gauges: GaugeSamples, written: float, carried: Snapshot | None = None) -> bytes:
        """This process's series (plus ``carried``: what an earlier process of the same slot counted) and
        ``gauges``, encoded for the other workers (:mod:`sluicegate.worker_metrics`)."""
        steps = self.snapshot_steps(gauges, written, carried)
        while True:
            try:
                next(steps)
            except StopIteration as done:
                snapshot: bytes = done.value
                return snapshot

    def snapshot_steps(self, gauges: GaugeSamples, written: float,
                       carried: Snapshot | None = None) -> Generator[None, None, bytes]:
        """:meth:`snapshot` in steps of at most :data:`SNAPSHOT_STEP` series: the generator yields between steps
        (a publisher on the event loop lets requests run there) and returns the snapshot. A series' row is read
        and encoded within one step, so each row is whole; rows of later steps may count requests observed
        meanwhile, as a snapshot taken a moment later would. Series that appear meanwhile wait for the next one."""
        overflow = self.overflow
        if carried is None:
            items = list(self.series.items())
        else:
            merged: dict[tuple[str, ...], _Series] = {}
            parts = self._parts([carried])[0]
            for start in range(0, len(parts), SNAPSHOT_STEP):
                for key, one in parts[start:start + SNAPSHOT_STEP]:
                    into = merged.get(key)
                    if into is None:
                        into = merged[key] = _Series()
                    _add_series(into, one)
                yield
            items = list(merged.items())
            overflow += carried.overflow
        body: list[bytes] = []
        for start in range(0, len(items), SNAPSHOT_STEP):
            step = items[start:start + SNAPSHOT_STEP]
            rows = [(key, s.requests, s.successes, s.failures, s.spend, s.input_tokens, s.output_tokens,
                     s.total_tokens, [(h.buckets, h.count, h.total) if h is not None else None for h in s.hist])
                    for key, s in step]
            body.append(_encode_wire(rows)[len(_array_header(len(rows))):])
            yield
        series = msgspec.Raw(_array_header(len(items)) + b"".join(body))
        return _encode_wire(_WireOut(written=written, overflow=overflow, series=series, gauges=gauges))

    @staticmethod
    def decode(data: bytes) -> Snapshot:
        wire = _decode_wire(data)
        return Snapshot(wire.written, wire.overflow, [(row[0], _series_of(row)) for row in wire.series],
                        wire.gauges)

    def _parts(self, others: Sequence[Snapshot]) -> tuple[list[tuple[tuple[str, ...], _Series]], int]:
        """This process's series followed by the others' (nothing copied), and the number of label combinations
        among them: at most ``max_series`` (+ ``__other__``), a combination past the cap is folded as
        :meth:`observe` folds one."""
        parts = list(self.series.items())
        kept = set(self.series)
        cap = self.max_series
        for snapshot in others:
            for key, one in snapshot.series:
                if key not in kept:
                    if len(kept) >= cap:
                        key = tuple(OTHER if name in _IDENTIFYING and key[i] else key[i]
                                    for i, name in enumerate(ALL_LABELS))
                    kept.add(key)
                parts.append((key, one))
        return parts, len(kept)

    def render(self, others: Sequence[Snapshot] = (), *, gauges: GaugeSamples | None = None,
               now: float = 0.0, fresh_for: float = math.inf) -> list[str]:
        """The exposition lines: this process's series merged with ``others`` (the other workers' snapshots;
        counters and histogram buckets summed). Gauges: this process's (``gauges``, else its sources' now),
        completed by the newest snapshot written within ``fresh_for`` seconds of ``now`` that has each sample."""
        if others:
            parts, kept = self._parts(others)
        else:
            parts, kept = list(self.series.items()), len(self.series)
        overflow = self.overflow + sum(s.overflow for s in others)
        if gauges is None:
            gauges = self.gauges()
        if others:
            gauges = {name: list(rows) for name, rows in gauges.items()}
            for snapshot in sorted(others, key=lambda s: s.written, reverse=True):
                if now - snapshot.written > fresh_for:
                    continue  # its worker is gone or stuck: its counts stay, its gauges say nothing now
                for name, rows in snapshot.gauges.items():
                    if name not in GAUGES:
                        continue
                    into = gauges.setdefault(name, [])
                    seen = {values for values, _ in into}
                    for values, number in rows:
                        values = tuple(values)
                        if values not in seen and len(into) < self.max_series:
                            seen.add(values)
                            into.append((values, number))
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
            for key, one in parts:
                value = getattr(one, field)
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
            for key, one in parts:
                hist = one.hist[index]
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
        for name, (text, names) in GAUGES.items():
            rows = gauges.get(name) or ()
            lines.append(f"# HELP {name} {text}")
            lines.append(f"# TYPE {name} gauge")
            label_text.clear()
            lines.extend(f"{name}{{{labels_of(names, values)}}} {_number(number)}" for values, number in rows)
        lines += ["# HELP sluicegate_metrics_series Label combinations kept for the request metrics.",
                  "# TYPE sluicegate_metrics_series gauge", f"sluicegate_metrics_series {kept}",
                  "# HELP sluicegate_metrics_series_overflow_total Observations counted in the __other__ series "
                  "because sluicegate_settings.metrics.max_series was reached.",
                  "# TYPE sluicegate_metrics_series_overflow_total counter",
                  f"sluicegate_metrics_series_overflow_total {overflow}",
                  "# HELP sluicegate_metrics_gauge_samples_omitted Budget and rate-limit gauge samples left out "
                  "because a family had more than sluicegate_settings.metrics.max_series.",
                  "# TYPE sluicegate_metrics_gauge_samples_omitted gauge",
                  f"sluicegate_metrics_gauge_samples_omitted {self.gauges_omitted}"]
        return lines
