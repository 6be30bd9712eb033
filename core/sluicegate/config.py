"""``config.yaml`` → typed settings (msgspec Structs), LiteLLM-compatible.

Every problem is reported with its YAML path (``litellm_settings.default_team_settings[1].team_id: required``).
``os.environ/NAME`` references are resolved at load; a missing variable stops start-up naming path and variable.
LiteLLM keys we deliberately do not implement produce one warning line. A key close to one we support (``master_kye``,
``sucess_callback``, ``litellm_param``, ``mock_respone``) and any unknown key in ``sluicegate_settings`` stop start-up
naming the likely intended key, since the gateway would silently do something else; ``allow_unknown_keys`` (``sluicegate
serve --allow-unknown-keys``) turns those into warnings, except in team entries, where a typo changes where a team's
logs go.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Mapping
from typing import Any

import msgspec
import yaml

from sluicegate.metrics import ALL_LABELS as METRIC_LABELS
from sluicegate.limits.budgets import duration_seconds as _budget_seconds
from sluicegate.sinks.destinations import entry_problem as destination_entry_problem

__all__ = (
    "ConfigError",
    "DeliverySettings",
    "GeneralSettings",
    "LITELLM_IGNORED_PARAMS",
    "LiteLLMParams",
    "LiteLLMSettings",
    "MetricsSettings",
    "ModelEntry",
    "ROUTING_STRATEGIES",
    "RouterSettings",
    "Settings",
    "SinkDestinations",
    "SluicegateSettings",
    "TeamSettings",
    "load_settings",
    "parse_settings",
    "per_worker",
    "restart_needed",
)

ENV_PREFIX = "os.environ/"
DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///./sluicegate.db"


class ConfigError(ValueError):
    """Configuration is unusable; ``problems`` lists every ``path: reason`` found."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("invalid configuration:\n  " + "\n  ".join(problems))


class LiteLLMParams(msgspec.Struct, kw_only=True):
    model: str
    api_base: str | None = None
    api_key: str | None = None
    timeout: float | None = None
    """Seconds for one upstream attempt (default: ``router_settings.timeout``, else 600)."""
    stream_timeout: float | None = None
    """Seconds a streamed attempt may take to start answering (default: ``router_settings.stream_timeout``)."""
    rpm: int | None = None
    """Requests per minute this deployment takes: a shuffle weight, and a limit for usage-based-routing-v2."""
    tpm: int | None = None
    """Tokens per minute this deployment takes: a shuffle weight, and a limit for usage-based-routing-v2."""
    weight: float | None = None
    """Share of the group's traffic under simple-shuffle (relative to the other deployments' weights)."""
    mock_response: Any = None
    input_cost_per_token: float | None = None
    output_cost_per_token: float | None = None
    cache_read_input_token_cost: float | None = None
    """USD per prompt token read from the provider's prompt cache (replaces the price table's; LiteLLM's key)."""
    cache_creation_input_token_cost: float | None = None
    """USD per prompt token written to the provider's prompt cache (replaces the price table's; LiteLLM's key)."""
    output_cost_per_reasoning_token: float | None = None
    """USD per reasoning token, where a provider bills them apart from other completion tokens (LiteLLM's key)."""
    input_cost_per_second: float | None = None
    """USD per second of transcribed audio (`/v1/audio/transcriptions`; LiteLLM's key)."""
    input_cost_per_character: float | None = None
    """USD per character spoken (`/v1/audio/speech`; LiteLLM's key)."""
    output_cost_per_image: float | None = None
    """USD per generated image (`/v1/images/generations`; LiteLLM's key)."""
    base_model: str | None = None
    """The model to look prices up under when `model` does not name it (an Azure deployment name: `gpt-4o`)."""
    custom_llm_provider: str | None = None
    """The provider, when `model` has no `provider/` prefix (LiteLLM's key); the prefix wins otherwise."""
    drop_params: bool | None = None
    """Drop request parameters this model's provider cannot take instead of answering 400 naming them
    (overrides `litellm_settings.drop_params`)."""
    extra: dict[str, Any] = msgspec.field(default_factory=dict)
    """The provider's own keys (``api_version``...), checked against its ``Params`` when the gateway starts."""


LITELLM_IGNORED_PARAMS = frozenset({
    "max_parallel_requests", "order", "tags", "max_retries", "num_retries", "region_name",
    "litellm_credential_name", "use_in_pass_through",
    "use_litellm_proxy", "merge_reasoning_content_in_choices", "mock_testing_fallbacks",
    "cache_control_injection_points", "litellm_trace_id", "temperature", "max_tokens", "top_p", "seed",
    "configurable_clientside_auth_params", "model_info",
})
"""LiteLLM ``litellm_params`` keys Sluicegate accepts and ignores (one warning line): router-level settings and
request defaults. Any other key not in :class:`LiteLLMParams` belongs to the model's provider."""


class ModelEntry(msgspec.Struct, kw_only=True):
    model_name: str
    litellm_params: LiteLLMParams
    model_info: dict[str, Any] | None = None


ROUTING_STRATEGIES = ("simple-shuffle", "least-busy", "latency-based-routing", "usage-based-routing-v2")
"""``router_settings.routing_strategy`` values Sluicegate implements (LiteLLM's names)."""
_LITELLM_ONLY_STRATEGIES = {"usage-based-routing": "usage-based-routing-v2", "cost-based-routing": "simple-shuffle"}


class RoutingStrategyArgs(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """``router_settings.routing_strategy_args`` (latency-based-routing)."""

    ttl: float = 3600.0
    """Seconds a latency sample counts for."""
    lowest_latency_buffer: float = 0.0
    """Pick at random among deployments within this fraction of the lowest latency (0.5: up to 50 % slower)."""
    max_latency_list_size: int = 10
    """Latency samples kept per deployment."""


class RetryPolicy(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """``router_settings.retry_policy``: retries per error class (overrides ``num_retries`` for that class; a class
    that is not retried by default is retried only when set here)."""

    BadRequestErrorRetries: int | None = None
    AuthenticationErrorRetries: int | None = None
    TimeoutErrorRetries: int | None = None
    RateLimitErrorRetries: int | None = None
    ContentPolicyViolationErrorRetries: int | None = None
    InternalServerErrorRetries: int | None = None


class AllowedFailsPolicy(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """``router_settings.allowed_fails_policy``: failures per minute a deployment may have in one error class
    before it cools down (overrides ``allowed_fails`` for that class)."""

    BadRequestErrorAllowedFails: int | None = None
    AuthenticationErrorAllowedFails: int | None = None
    TimeoutErrorAllowedFails: int | None = None
    RateLimitErrorAllowedFails: int | None = None
    ContentPolicyViolationErrorAllowedFails: int | None = None
    InternalServerErrorAllowedFails: int | None = None


class RouterSettings(msgspec.Struct, kw_only=True):
    """``router_settings``: how requests for a model group are spread over its deployments, retried and failed
    over (LiteLLM's names and defaults)."""

    routing_strategy: str = "simple-shuffle"
    routing_strategy_args: RoutingStrategyArgs = msgspec.field(default_factory=RoutingStrategyArgs)
    model_group_alias: dict[str, Any] = msgspec.field(default_factory=dict)
    """``alias: group`` or ``alias: {model: group, hidden: true}`` (hidden: not listed by ``/v1/models``)."""
    num_retries: int | None = None
    """Retries per model group (default: ``litellm_settings.num_retries``, else 2)."""
    retry_after: float = 0.0
    """Seconds to wait before each retry."""
    retry_policy: RetryPolicy = msgspec.field(default_factory=RetryPolicy)
    timeout: float | None = None
    stream_timeout: float | None = None
    fallbacks: list[dict[str, list[str]]] | None = None
    context_window_fallbacks: list[dict[str, list[str]]] | None = None
    content_policy_fallbacks: list[dict[str, list[str]]] | None = None
    default_fallbacks: list[str] | None = None
    max_fallbacks: int = 5
    allowed_fails: int = 3
    allowed_fails_policy: AllowedFailsPolicy = msgspec.field(default_factory=AllowedFailsPolicy)
    cooldown_time: float = 5.0
    disable_cooldowns: bool = False
    redis_host: str | None = None
    redis_port: int | None = None
    redis_password: str | None = None
    redis_url: str | None = None


ROUTER_IGNORED_SETTINGS = frozenset({
    "enable_pre_call_checks", "cache_responses", "set_verbose", "debug_level", "client_ttl",
    "default_max_parallel_requests", "polling_interval", "provider_budget_config", "alerting_config",
    "optional_pre_call_checks", "enable_tag_filtering", "tag_filtering_match_any", "default_priority",
    "router_general_settings", "caching_groups", "model_group_retry_policy", "default_litellm_params",
    "cache_kwargs", "ignore_invalid_deployments",
})
"""LiteLLM ``router_settings`` keys Sluicegate accepts and ignores (one warning line); any other unknown key
stops start-up."""


class GeneralSettings(msgspec.Struct, kw_only=True):
    master_key: str | None = None
    database_url: str | None = None
    background_health_checks: bool = False
    """Probe every deployment every ``health_check_interval`` seconds: ``GET /health`` serves the latest round and
    the router skips the deployments it found unhealthy (LiteLLM's name)."""
    health_check_interval: float = 300.0
    """Seconds between background health checks (LiteLLM's name and default)."""
    fail_closed_rate_limit_enforcement: bool = False
    """LiteLLM's name for ``sluicegate_settings.rate_limit_fail_closed`` (either turns it on)."""


class TeamSettings(msgspec.Struct, kw_only=True):
    """One ``default_team_settings`` entry. Flat sink variables (``langfuse_public_key``...) land in ``flat``."""

    team_id: str
    team_alias: str | None = None
    callbacks: list[str] | None = None
    success_callback: list[str] | None = None
    failure_callback: list[str] | None = None
    callback_vars: dict[str, Any] | None = None
    turn_off_message_logging: bool | None = None
    redaction: dict[str, Any] | None = None
    """The team's redaction policy, ``{redactors: [...], fields: [...]}`` (docs/redaction.md); ``{}`` switches off
    the global one for this team. A key's or an entry's own policy wins."""
    cache: bool | None = None
    flat: dict[str, Any] = msgspec.field(default_factory=dict)


class LiteLLMSettings(msgspec.Struct, kw_only=True):
    callbacks: list[str] | None = None
    success_callback: list[str] | None = None
    failure_callback: list[str] | None = None
    default_team_settings: list[TeamSettings] = msgspec.field(default_factory=list)
    turn_off_message_logging: bool = False
    redaction: dict[str, Any] | None = None
    """Redaction policy for every destination that sets none on a narrower layer: ``{redactors: [email, phone,
    card, iban, ip, secret, {regex: {patterns: {...}}}], fields: [messages, response, tool_arguments, metadata,
    end_user]}`` (docs/redaction.md). ``turn_off_message_logging`` wins over it. (Sluicegate's own key.)"""
    cache: bool = False
    cache_params: dict[str, Any] | None = None
    drop_params: bool = False
    """Drop request parameters a model's provider cannot take instead of answering 400 naming them (a model's own
    `litellm_params.drop_params` wins)."""
    num_retries: int | None = None
    """Retries per request (``router_settings.num_retries`` wins)."""
    request_timeout: float | None = None
    """Seconds per upstream attempt (``router_settings.timeout`` wins)."""
    fallbacks: list[dict[str, list[str]]] | None = None
    context_window_fallbacks: list[dict[str, list[str]]] | None = None
    content_policy_fallbacks: list[dict[str, list[str]]] | None = None
    default_fallbacks: list[str] | None = None
    require_auth_for_metrics_endpoint: bool = True
    """``/metrics`` needs the master key. LiteLLM's default is ``false`` (open); ours is ``true`` because the labels
    name teams, keys and models: set ``false`` to let Prometheus scrape without a key."""
    max_budget: float | None = None
    """USD the whole proxy may spend (per ``budget_duration`` when set); a request beyond it is refused with
    ``budget_exceeded`` before it goes upstream."""
    budget_duration: str | None = None
    """The proxy budget's period (``30s``, ``1h``, ``1d``, ``7d``, ``30d``): spend starts again from 0 after it."""
    default_key_generate_params: dict[str, Any] | None = None
    """Values ``/key/generate`` gives a key for the fields a request leaves out (LiteLLM's key): ``rpm_limit``,
    ``tpm_limit``, ``max_parallel_requests``, ``duration``, ``team_id``, ``models``, ``metadata`` and, where this
    gateway stores them, ``max_budget``, ``budget_duration`` and ``user_id``; any other key stops start-up."""
    upperbound_key_generate_params: dict[str, Any] | None = None
    """Ceilings for what ``/key/generate`` and ``/key/update`` may set (LiteLLM's key): ``rpm_limit``,
    ``tpm_limit``, ``max_parallel_requests``, ``duration`` and, where stored, ``max_budget`` and
    ``budget_duration``. A value over its ceiling is a 400 naming the field; a new key that leaves the field out
    gets the ceiling."""


class DeliverySettings(msgspec.Struct, kw_only=True):
    """``sluicegate_settings.delivery``: how events travel to sinks."""

    queue_size: int = 10_000
    memory_events: int = 100_000
    """Event deliveries waiting in memory for all sink instances together, with the spool on (an event for two
    sinks counts twice; it is held once, as its JSON: ~1.3 KB for a short chat): beyond this, new ones wait in the
    spool on disk only and are read back when their batch goes out, so memory stays bounded however many teams log
    or however far delivery falls behind. Reading back costs CPU (the event is read from disk again; one
    bench.pipeline run went from 57 to 68 us per event with half of them spilled), so this is a bound for backlogs,
    not a working size. 0: no limit. For the whole gateway: the delivery process has it all; with ``--delivery
    inline`` each of ``--workers N`` processes takes a 1/N share."""
    batch_interval: float = 1.0
    max_sends_per_second: float = 400.0
    """Delivery budget: with many busy destinations, each lingers up to ``busy destinations / this`` seconds
    (at most ``max_batch_interval``) so the gateway makes about this many sends a second, in fuller batches;
    lingering batches that come due together start at this pace (or faster, when ``max_batch_interval`` needs it),
    not all at once. For the whole gateway: the delivery process has it all; with ``--delivery inline`` each of
    ``--workers N`` processes takes a 1/N share."""
    max_batch_interval: float = 5.0
    """Upper bound of the linger that ``max_sends_per_second`` may add (0 or less: no adaptive linger)."""
    max_retries: int = 8
    retry_base_delay: float = 0.5
    retry_max_delay: float = 30.0
    max_concurrent_sends: int = 64
    max_instances: int = 20_000
    idle_seconds: float = 600.0
    shutdown_grace: float = 20.0
    health_timeout: float = 5.0
    spool: bool = True
    """Write every accepted event to a durable spool on disk (see docs/operations.md, "Durable delivery")."""
    spool_dir: str | None = None
    """Default: ``sluicegate-spool`` next to a SQLite database file, else in the working directory."""
    spool_flush_interval: float = 0.2
    """Seconds between spool writes (the most a SIGKILL can lose); 0 writes every event as it is accepted. With the
    delivery process, also how often each serving worker writes its log and how often the delivery process
    records how far it has read."""
    spool_max_bytes: int = 1024 * 1024 * 1024
    # Each segment repeats the header of every instance with events in it: with 2,000 instances, 4 MiB segments
    # spent ~4 us of CPU per event on headers and segment changes (bench.pipeline); 32 MiB, an eighth of that.
    spool_segment_bytes: int = 32 * 1024 * 1024
    spool_fsync: bool = False
    """fsync after each spool write (survives power loss, not only process death; costs a disk flush)."""
    watchdog_interval: float = 5.0
    """Seconds between two health pings of the delivery process by ``sluicegate serve``'s supervisor (over its
    status socket); 0: no pings, a hung delivery process is left alone."""
    watchdog_timeout: float = 2.0
    """Seconds a ping may take before it counts as missed."""
    watchdog_misses: int = 3
    """Missed pings in a row after which the supervisor SIGKILLs the delivery process and restarts it (with the
    restart backoff): with the defaults, a delivery process hung for about 15 s."""


class SinkDestinations(msgspec.Struct, kw_only=True):
    """``sluicegate_settings.sink_destinations``: where sinks written through the admin API may connect.

    Entries are host names (``*.example.com`` globs) or IP networks in CIDR form (``10.0.0.0/8``). A destination is
    refused when it matches ``deny`` (or the built-in denials: link-local ranges and the cloud metadata addresses)
    and does not match ``allow``; with a non-empty ``allow`` list, nothing outside it is reached. Checked when the
    callback is written and again against the resolved address at every connection (DNS rebinding). Sinks from
    config.yaml are trusted and not checked."""

    allow: list[str] = msgspec.field(default_factory=list)
    """Host globs and networks API-written sinks may reach; non-empty: nothing else is reached, and a listed
    network overrides the built-in denials (e.g. ``169.254.169.254`` for a metadata proxy you run)."""
    deny: list[str] = msgspec.field(default_factory=list)
    """Host globs and networks refused to API-written sinks, besides the built-in ones (``169.254.0.0/16``,
    ``fe80::/10``, ``fd00:ec2::254``, ``100.100.100.200``, ``192.0.0.192``, ``metadata.google.internal``...)."""


class MetricsSettings(msgspec.Struct, kw_only=True):
    """``sluicegate_settings.metrics``: the request metrics on ``/metrics`` (LiteLLM's names and labels)."""

    labels: list[str] = msgspec.field(default_factory=lambda: [
        "hashed_api_key", "api_key_alias", "requested_model", "team", "team_alias", "user", "model", "api_provider",
        "api_base", "model_id", "status_code", "exception_status", "exception_class"])
    """Labels that carry values; the others are emitted empty. ``end_user`` (the request's ``user`` field, chosen by
    clients, so unbounded) is left out by default."""
    histogram_labels: list[str] = msgspec.field(default_factory=lambda: ["requested_model", "model", "api_provider"])
    """Labels the four latency histograms carry values for (36 buckets each, so a team label there multiplies the
    scrape: 79 MB at 2,000 teams); others are emitted empty. Counters follow ``labels``."""
    max_series: int = 2000
    """Distinct label combinations kept; past it, new ones are counted under ``__other__`` (totals stay exact).
    Bounds the scrape: see docs/operations.md for its cost at 10,000 teams."""


class SluicegateSettings(msgspec.Struct, kw_only=True):
    delivery: DeliverySettings = msgspec.field(default_factory=DeliverySettings)
    metrics: MetricsSettings = msgspec.field(default_factory=MetricsSettings)
    """Request metrics: which labels carry values and how many label combinations are kept."""
    change_poll_interval: float = 0.25
    database_connect_timeout: float = 30.0
    """Seconds ``sluicegate serve`` keeps retrying, with backoff, a database that refuses or does not answer at
    start-up (containers start out of order); 0: try once. A missing database, wrong password or missing driver
    stops at once. (Sluicegate's own key: LiteLLM has none.)"""
    request_body_timeout: float = 30.0
    """Seconds a client may take to send its whole request body; slower ones get 408 and lose the connection."""
    header_timeout: float = 10.0
    """Seconds a client may take to send a request's headers (from its first byte, or from connecting); slower
    connections are closed (slow-header attacks)."""
    max_header_bytes: int = 64 * 1024
    """Largest request head (request line and headers) accepted; a larger one gets 431 and the connection closed."""
    allowed_env_refs: list[str] = msgspec.field(default_factory=list)
    """Glob patterns of environment variable names that ``os.environ/NAME`` may reference in callbacks written
    through the admin API, and only in secret fields. Empty (the default): refused. config.yaml is not limited."""
    file_sink_root: str | None = None
    """Directory every ``file`` sink path resolves under. Default: ``logs/`` next to config.yaml (the working
    directory without a config file). Paths escaping it are refused."""
    sink_destinations: SinkDestinations = msgspec.field(default_factory=SinkDestinations)
    """Where sinks written through the admin API may connect (``allow`` / ``deny``); config.yaml's are not checked.
    Default: everything but link-local addresses and the cloud metadata services."""
    key_health_per_minute: int = 10
    """Calls of ``/key/health`` a key may make per minute (each probes every sink of the key); more get 429."""
    spend_flush_interval: float = 1.0
    """Seconds between writes of the accumulated spend to the database (one batched transaction; at most 1).
    Spend is also written at shutdown; a killed process loses at most this much."""
    rate_limit_window: float = 60.0
    """Seconds of the window ``rpm_limit`` and ``tpm_limit`` count in (the "minute"; windows are aligned to the
    clock: with 60, each starts on a whole minute)."""
    rate_limit_fail_closed: bool = False
    """With Redis configured and unreachable: refuse requests of keys that have limits (503 and ``retry-after``)
    instead of enforcing them in each process alone (the default, with a warning at most once a minute)."""
    rate_limit_redis_timeout: float = 0.5
    """Seconds a rate-limit check waits for Redis before it counts as down (then Redis is left alone for a
    second)."""


class Settings(msgspec.Struct, kw_only=True):
    model_list: list[ModelEntry] = msgspec.field(default_factory=list)
    general_settings: GeneralSettings = msgspec.field(default_factory=GeneralSettings)
    litellm_settings: LiteLLMSettings = msgspec.field(default_factory=LiteLLMSettings)
    router_settings: RouterSettings = msgspec.field(default_factory=RouterSettings)
    sluicegate_settings: SluicegateSettings = msgspec.field(default_factory=SluicegateSettings)
    source: str | None = None
    warnings: list[str] = msgspec.field(default_factory=list)

    @property
    def database_url(self) -> str:
        return os.environ.get("DATABASE_URL") or self.general_settings.database_url or DEFAULT_DATABASE_URL


_SECTIONS: dict[str, type[msgspec.Struct]] = {
    "model_list": ModelEntry,
    "general_settings": GeneralSettings,
    "litellm_settings": LiteLLMSettings,
    "router_settings": RouterSettings,
    "sluicegate_settings": SluicegateSettings,
}
_TEAM_KEYS = frozenset(f for f in TeamSettings.__struct_fields__ if f != "flat")
_PATH = re.compile(r" - at `\$(.*)`$")


def _fields(struct: type[msgspec.Struct]) -> tuple[str, ...]:
    return tuple(f for f in struct.__struct_fields__ if f not in ("source", "warnings", "flat", "extra"))


def _resolve_env(node: Any, path: str, problems: list[str]) -> Any:
    if isinstance(node, str) and node.startswith(ENV_PREFIX):
        name = node[len(ENV_PREFIX):]
        if name not in os.environ:
            problems.append(f"{path}: environment variable {name} is not set (referenced as {node!r})")
            return node
        return os.environ[name]
    if isinstance(node, Mapping):
        return {k: _resolve_env(v, f"{path}.{k}" if path else str(k), problems) for k, v in node.items()}
    if isinstance(node, list):
        return [_resolve_env(v, f"{path}[{i}]", problems) for i, v in enumerate(node)]
    return node


def _suggest(key: str, known: tuple[str, ...] | frozenset[str]) -> str | None:
    hint = difflib.get_close_matches(key, list(known), n=1, cutoff=0.8)
    return hint[0] if hint else None


_OURS_ONLY: tuple[type[msgspec.Struct], ...] = ()  # set below: sections with no LiteLLM keys to tolerate


def _check_keys(data: Any, struct: type[msgspec.Struct], path: str, unknown: list[str], typos: list[str]) -> None:
    if not isinstance(data, Mapping):
        return
    known = _fields(struct)
    for key, value in data.items():
        here = f"{path}.{key}" if path else str(key)
        if struct is LiteLLMParams and key not in known and key not in LITELLM_IGNORED_PARAMS:
            continue  # the provider's own key: its Params refuse it, with the likely intended key, at start-up
        if key not in known:
            hint = _suggest(str(key), known)
            if hint:
                typos.append(f"{here}: unknown key; did you mean {hint!r}?")
            elif struct in _OURS_ONLY:
                typos.append(f"{here}: unknown key; known: {', '.join(known)}")
            else:
                unknown.append(here)
            continue
        child = {"litellm_params": LiteLLMParams, "general_settings": GeneralSettings,
                 "delivery": DeliverySettings, "sink_destinations": SinkDestinations,
                 "metrics": MetricsSettings}.get(key)
        if child is not None:
            _check_keys(value, child, here, unknown, typos)


_OURS_ONLY = (SluicegateSettings, DeliverySettings, SinkDestinations, MetricsSettings)

_ROUTER_NESTED: dict[str, type[msgspec.Struct]] = {
    "routing_strategy_args": RoutingStrategyArgs, "retry_policy": RetryPolicy,
    "allowed_fails_policy": AllowedFailsPolicy}


def _router_keys(router: Mapping[str, Any], problems: list[str], unknown: list[str]) -> dict[str, Any]:
    # ``problems`` here is the caller's list of misspelt keys (errors unless ``allow_unknown_keys``)
    """``router_settings`` without the LiteLLM keys we ignore; any other unknown key (here or in its nested
    policies) is a start-up error naming the likely intended key: a typo there silently changes failover."""
    known = _fields(RouterSettings)
    kept: dict[str, Any] = {}
    for key, value in router.items():
        here = f"router_settings.{key}"
        if key in ROUTER_IGNORED_SETTINGS:
            unknown.append(here)
            continue
        if key not in known:
            hint = difflib.get_close_matches(str(key), list(known), n=1, cutoff=0.6)
            problems.append(f"{here}: not a router setting" + (f"; did you mean {hint[0]!r}?" if hint else
                                                                  f"; known: {', '.join(known)}"))
            continue
        nested = _ROUTER_NESTED.get(str(key))
        if nested is not None and isinstance(value, Mapping):
            for inner in value:
                if inner not in nested.__struct_fields__:
                    hint = difflib.get_close_matches(str(inner), list(nested.__struct_fields__), n=1, cutoff=0.6)
                    problems.append(f"{here}.{inner}: unknown key" + (f"; did you mean {hint[0]!r}?" if hint else
                                    f"; known: {', '.join(nested.__struct_fields__)}"))
            value = {k: v for k, v in value.items() if k in nested.__struct_fields__}
        kept[str(key)] = value
    return kept


def _split_team_entry(entry: Any, path: str, problems: list[str]) -> Any:
    """Move flat sink variables of a team entry into ``flat``; report likely typos of our keys as errors."""
    if not isinstance(entry, Mapping):
        return entry
    base: dict[str, Any] = {}
    flat: dict[str, Any] = {}
    for key, value in entry.items():
        if key in _TEAM_KEYS:
            base[key] = value
            continue
        hint = _suggest(str(key), _TEAM_KEYS)
        if hint:
            problems.append(f"{path}.{key}: unknown key; did you mean {hint!r}?")
        flat[str(key)] = value
    base["flat"] = flat
    return base


def _split_litellm_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """The keys of :class:`LiteLLMParams`, with the provider's own keys gathered under ``extra``."""
    known = _fields(LiteLLMParams)
    result = {k: v for k, v in params.items() if k in known}
    result["extra"] = {str(k): v for k, v in params.items() if k not in known and k not in LITELLM_IGNORED_PARAMS}
    return result


def parse_settings(raw: Any, *, source: str | None = None, allow_unknown_keys: bool = False) -> Settings:
    """Validate an already-parsed YAML document. Raises :class:`ConfigError` listing every problem.

    Keys that look like misspellings of ours are problems too, unless ``allow_unknown_keys``: then one warning.
    """
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise ConfigError([f"(top level): expected a mapping, got {type(raw).__name__}"])
    problems: list[str] = []
    data = _resolve_env(raw, "", problems)
    unknown: list[str] = []
    typos: list[str] = []
    for key in list(data):
        if key not in _SECTIONS:
            hint = _suggest(str(key), tuple(_SECTIONS))
            if hint:
                typos.append(f"{key}: unknown key; did you mean {hint!r}?")
            else:
                unknown.append(str(key))
            data.pop(key)
    models = data.get("model_list")
    for index, entry in enumerate(models if isinstance(models, list) else []):
        if isinstance(entry, Mapping):
            _check_keys(entry, ModelEntry, f"model_list[{index}]", unknown, typos)
    for section in ("general_settings", "sluicegate_settings"):
        _check_keys(data.get(section), _SECTIONS[section], section, unknown, typos)
    router = data.get("router_settings")
    if isinstance(router, Mapping):
        data["router_settings"] = _router_keys(router, typos, unknown)
    litellm = data.get("litellm_settings")
    if isinstance(litellm, Mapping):
        litellm = dict(litellm)
        _check_keys({k: v for k, v in litellm.items() if k != "default_team_settings"}, LiteLLMSettings,
                    "litellm_settings", unknown, typos)
        teams = litellm.get("default_team_settings")
        if isinstance(teams, list):
            litellm["default_team_settings"] = [
                _split_team_entry(e, f"litellm_settings.default_team_settings[{i}]", problems)
                for i, e in enumerate(teams)]
        data["litellm_settings"] = {k: v for k, v in litellm.items() if k in _fields(LiteLLMSettings)}
    if isinstance(models, list):
        data["model_list"] = [
            {**e, "litellm_params": _split_litellm_params(e["litellm_params"])}
            if isinstance(e, Mapping) and isinstance(e.get("litellm_params"), Mapping) else e
            for e in models]
    if not allow_unknown_keys:
        problems += typos
    if problems:
        raise ConfigError(problems)
    try:
        settings = msgspec.convert(data, Settings, strict=False)
    except msgspec.ValidationError as exc:
        raise ConfigError([_describe(exc)]) from None
    _check_semantics(settings, problems)
    if problems:
        raise ConfigError(problems)
    settings.source = source
    if typos:  # only with allow_unknown_keys
        settings.warnings.append("keys that look misspelt (ignored): " + "; ".join(typos))
    if unknown:
        settings.warnings.append("ignoring keys Sluicegate does not support: " + ", ".join(unknown))
    return settings


def _describe(exc: msgspec.ValidationError) -> str:
    message = str(exc)
    match = _PATH.search(message)
    path = match.group(1) if match else ""
    path = path.lstrip(".")
    reason = _PATH.sub("", message)
    missing = re.match(r"Object missing required field `([^`]+)`", reason)
    if missing:
        return f"{path + '.' if path else ''}{missing.group(1)}: required"
    return f"{path or '(top level)'}: {reason}"


def _check_semantics(settings: Settings, problems: list[str]) -> None:
    seen: dict[str, int] = {}
    for index, team in enumerate(settings.litellm_settings.default_team_settings):
        path = f"litellm_settings.default_team_settings[{index}]"
        if not team.team_id:
            problems.append(f"{path}.team_id: must not be empty")
        if team.team_id in seen:
            problems.append(f"{path}.team_id: {team.team_id!r} already configured at index {seen[team.team_id]}")
        seen[team.team_id] = index
    _check_models_and_router(settings, problems)
    delivery = settings.sluicegate_settings.delivery
    if not 0 <= delivery.spool_flush_interval <= 60:
        problems.append("sluicegate_settings.delivery.spool_flush_interval: must be between 0 and 60 seconds")
    if not 0 <= delivery.watchdog_interval <= 3600:
        problems.append("sluicegate_settings.delivery.watchdog_interval: must be between 0 (off) and 3600 seconds")
    if not 0 < delivery.watchdog_timeout <= 600:
        problems.append("sluicegate_settings.delivery.watchdog_timeout: must be more than 0 and at most 600 seconds")
    if delivery.watchdog_misses < 1:
        problems.append("sluicegate_settings.delivery.watchdog_misses: must be at least 1")
    if delivery.spool_max_bytes < 1024 * 1024:
        problems.append("sluicegate_settings.delivery.spool_max_bytes: must be at least 1048576 (1 MiB)")
    if settings.sluicegate_settings.database_connect_timeout < 0:
        problems.append("sluicegate_settings.database_connect_timeout: must be 0 or more")
    if delivery.queue_size < 1:
        problems.append("sluicegate_settings.delivery.queue_size: must be at least 1")
    if delivery.memory_events < 0:
        problems.append("sluicegate_settings.delivery.memory_events: must be 0 (no limit) or more")
    gateway = settings.sluicegate_settings
    for kind in ("allow", "deny"):
        for index, entry in enumerate(getattr(gateway.sink_destinations, kind)):
            problem = destination_entry_problem(entry)
            if problem is not None:
                problems.append(f"sluicegate_settings.sink_destinations.{kind}[{index}]: {problem}")
    if gateway.file_sink_root is not None and (not gateway.file_sink_root.strip() or "\0" in gateway.file_sink_root):
        problems.append("sluicegate_settings.file_sink_root: must be a directory path (default: logs/ next to "
                        "config.yaml)")
    metrics = settings.sluicegate_settings.metrics
    for field in ("labels", "histogram_labels"):
        for index, label in enumerate(getattr(metrics, field)):
            if label not in METRIC_LABELS:
                hint = difflib.get_close_matches(label, METRIC_LABELS, n=1)
                problems.append(f"sluicegate_settings.metrics.{field}[{index}]: unknown label {label!r}" + (
                    f"; did you mean {hint[0]!r}?" if hint else f"; known: {', '.join(METRIC_LABELS)}"))
    if metrics.max_series < 1:
        problems.append("sluicegate_settings.metrics.max_series: must be at least 1")
    from sluicegate.limits.key_params import key_params_problems  # the limits module owns these rules

    problems += key_params_problems(settings)
    for name in ("rate_limit_window", "rate_limit_redis_timeout"):
        if not getattr(settings.sluicegate_settings, name) > 0:
            problems.append(f"sluicegate_settings.{name}: must be more than 0 seconds")
    if not settings.general_settings.health_check_interval > 0:
        problems.append("general_settings.health_check_interval: must be more than 0 seconds")
    master = settings.general_settings.master_key
    if master is not None and not master.startswith("sk-"):
        problems.append("general_settings.master_key: must start with 'sk-'")
    from sluicegate.cache import cache_params_problems  # the cache module owns its settings' rules

    cache_problems, cache_warnings = cache_params_problems(settings)
    problems += cache_problems
    settings.warnings += cache_warnings


def model_name_matches(pattern: str, name: str) -> str | None:
    """What ``*`` stands for when ``name`` matches the wildcard ``pattern`` (``openai/*``, ``*``), else None."""
    prefix, star, suffix = pattern.partition("*")
    if not star or len(name) < len(prefix) + len(suffix) or not name.startswith(prefix) or not name.endswith(suffix):
        return None
    matched = name[len(prefix):len(name) - len(suffix) if suffix else None]
    return matched or None


def _check_models_and_router(settings: Settings, problems: list[str]) -> None:
    names: set[str] = set()
    ids: dict[str, int] = {}
    for index, model in enumerate(settings.model_list):
        names.add(model.model_name)
        params = model.litellm_params
        here = f"model_list[{index}].litellm_params"
        for field in ("timeout", "stream_timeout"):
            value = getattr(params, field)
            if value is not None and value <= 0:
                problems.append(f"{here}.{field}: must be positive")
        for field in ("rpm", "tpm", "weight"):
            value = getattr(params, field)
            if value is not None and value < 0:
                problems.append(f"{here}.{field}: must be 0 or more")
        model_id = (model.model_info or {}).get("id")
        if model_id is not None:
            if not isinstance(model_id, str | int) or not str(model_id):
                problems.append(f"model_list[{index}].model_info.id: must be a non-empty string")
            elif str(model_id) in ids:
                problems.append(f"model_list[{index}].model_info.id: {model_id!r} already used by "
                                f"model_list[{ids[str(model_id)]}]")
            else:
                ids[str(model_id)] = index
    router = settings.router_settings
    litellm = settings.litellm_settings
    if router.routing_strategy not in ROUTING_STRATEGIES:
        instead = _LITELLM_ONLY_STRATEGIES.get(router.routing_strategy)
        hint = difflib.get_close_matches(router.routing_strategy, ROUTING_STRATEGIES, n=1, cutoff=0.6)
        problems.append(f"router_settings.routing_strategy: {router.routing_strategy!r} is not supported"
                        + (f" (use {instead!r})" if instead else f" (did you mean {hint[0]!r}?)" if hint else "")
                        + f"; choose one of {', '.join(ROUTING_STRATEGIES)}")
    args = router.routing_strategy_args
    if args.ttl <= 0:
        problems.append("router_settings.routing_strategy_args.ttl: must be positive")
    if args.lowest_latency_buffer < 0:
        problems.append("router_settings.routing_strategy_args.lowest_latency_buffer: must be 0 or more")
    if args.max_latency_list_size < 1:
        problems.append("router_settings.routing_strategy_args.max_latency_list_size: must be at least 1")
    for field in ("num_retries", "allowed_fails", "max_fallbacks"):
        value = getattr(router, field)
        if value is not None and value < 0:
            problems.append(f"router_settings.{field}: must be 0 or more")
    if litellm.num_retries is not None and litellm.num_retries < 0:
        problems.append("litellm_settings.num_retries: must be 0 or more")
    for field in ("retry_after", "cooldown_time"):
        if getattr(router, field) < 0:
            problems.append(f"router_settings.{field}: must be 0 or more")
    for where, value in (("router_settings.timeout", router.timeout),
                         ("router_settings.stream_timeout", router.stream_timeout),
                         ("litellm_settings.request_timeout", litellm.request_timeout)):
        if value is not None and value <= 0:
            problems.append(f"{where}: must be positive")
    for policy_name in ("retry_policy", "allowed_fails_policy"):
        policy = getattr(router, policy_name)
        for field in policy.__struct_fields__:
            value = getattr(policy, field)
            if value is not None and value < 0:
                problems.append(f"router_settings.{policy_name}.{field}: must be 0 or more")
    patterns = [n for n in names if "*" in n]

    def exists(name: str) -> bool:
        return name in names or name in aliases or any(model_name_matches(p, name) for p in patterns)

    aliases: dict[str, str] = {}
    for alias, target in router.model_group_alias.items():
        group = target.get("model") if isinstance(target, Mapping) else target
        if not isinstance(group, str) or not group:
            problems.append(f"router_settings.model_group_alias.{alias}: expected a model group name or "
                            "{model: <group>, hidden: true}")
            continue
        if isinstance(target, Mapping) and set(target) - {"model", "hidden"}:
            extra = ", ".join(sorted(set(target) - {"model", "hidden"}))
            problems.append(f"router_settings.model_group_alias.{alias}: unknown key(s) {extra}; known: model, hidden")
        aliases[alias] = group
    for alias, group in aliases.items():
        if group not in names and not any(model_name_matches(p, group) for p in patterns):
            problems.append(f"router_settings.model_group_alias.{alias}: model group {group!r} is not in "
                            f"model_list{_closest(group, names)}")
    for section_name, section in (("router_settings", router), ("litellm_settings", litellm)):
        for kind in ("fallbacks", "context_window_fallbacks", "content_policy_fallbacks"):
            for index, entry in enumerate(getattr(section, kind) or ()):
                for group, targets in entry.items():
                    here = f"{section_name}.{kind}[{index}].{group}"
                    if group != "*" and not exists(group):
                        problems.append(f"{here}: model group {group!r} is not in model_list{_closest(group, names)}")
                    for target in targets:
                        if not exists(target):
                            problems.append(f"{here}: fallback model {target!r} is not in "
                                            f"model_list{_closest(target, names)}")
        for target in section.default_fallbacks or ():
            if not exists(target):
                problems.append(f"{section_name}.default_fallbacks: fallback model {target!r} is not in "
                                f"model_list{_closest(target, names)}")
    if router.redis_port is not None and not router.redis_host:
        problems.append("router_settings.redis_port: set redis_host too")
    if litellm.max_budget is not None and not (0 <= litellm.max_budget < float("inf")):
        problems.append("litellm_settings.max_budget: expected a number of USD, 0 or more")
    if litellm.budget_duration is not None and _budget_seconds(litellm.budget_duration) is None:
        problems.append(f"litellm_settings.budget_duration: expected a positive number with a unit s, m, h, d, w or "
                        f"mo (e.g. '30d'), got {litellm.budget_duration!r}")
    interval = settings.sluicegate_settings.spend_flush_interval
    if not 0 < interval <= 1:
        problems.append(f"sluicegate_settings.spend_flush_interval: between 0 and 1 second, got {interval!r}")


def _closest(name: str, names: set[str]) -> str:
    hint = difflib.get_close_matches(name, sorted(names), n=1, cutoff=0.6)
    return f" (did you mean {hint[0]!r}?)" if hint else ""


def per_worker(settings: Settings, workers: int) -> Settings:
    """``settings`` as one of ``workers`` server processes sees them: gateway-wide budgets divided among them."""
    if workers <= 1:
        return settings
    gateway = settings.sluicegate_settings
    delivery = msgspec.structs.replace(gateway.delivery,
                                       max_sends_per_second=gateway.delivery.max_sends_per_second / workers,
                                       memory_events=-(-gateway.delivery.memory_events // workers))
    return msgspec.structs.replace(settings,
                                   sluicegate_settings=msgspec.structs.replace(gateway, delivery=delivery))


def restart_needed(old: Settings, new: Settings) -> list[str]:
    """The settings that differ between ``old`` and ``new`` but that a live reload does not apply: they shape the
    server, the database, the cache connection or delivery, which are built once per process."""
    changed = []
    if old.database_url != new.database_url:
        changed.append("general_settings.database_url")
    if (old.litellm_settings.cache, old.litellm_settings.cache_params) != (new.litellm_settings.cache,
                                                                           new.litellm_settings.cache_params):
        changed.append("litellm_settings.cache / cache_params")
    for field in msgspec.structs.fields(SluicegateSettings):
        if field.name in ("allowed_env_refs", "file_sink_root", "sink_destinations"):
            continue  # read through the routing resolver, which a reload replaces
        if getattr(old.sluicegate_settings, field.name) != getattr(new.sluicegate_settings, field.name):
            changed.append(f"sluicegate_settings.{field.name}")
    return changed


_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def load_settings(path: str | os.PathLike[str], *, allow_unknown_keys: bool = False) -> Settings:
    """Read and validate ``config.yaml`` (see :func:`parse_settings`)."""
    return parse_settings(_read_yaml(path), source=str(path), allow_unknown_keys=allow_unknown_keys)


def _read_yaml(path: str | os.PathLike[str]) -> Any:
    """The parsed file, rebuilt in fresh objects once every object the YAML parser made is freed.

    The settings keep the parsed strings, and those sit scattered among the parser's garbage (nodes, events,
    marks), so the heap's arenas could not be given back: a 10,000-team config left ~100 MB resident where the
    same data rebuilt this way leaves ~20 MB (bench/). msgpack keeps what YAML gives (integer keys, bytes,
    datetimes; a set comes back as a list, a date as its ISO text); a file with a value it cannot hold (an integer
    past 64 bits) is used as parsed.
    """
    try:
        with open(path, "rb") as handle:
            # libyaml's loader when PyYAML has it: same YAML, a fraction of the time and of the transient heap
            raw = yaml.load(handle, Loader=_YAML_LOADER)  # noqa: S506 - a safe loader either way
    except FileNotFoundError:
        raise ConfigError([f"{path}: file not found"]) from None
    except yaml.YAMLError as exc:
        raise ConfigError([f"{path}: not valid YAML: {exc}"]) from None
    try:
        packed = msgspec.msgpack.encode(raw)
    except (TypeError, OverflowError):
        return raw
    del raw  # the last reference: the parser's objects go before the rebuilt ones are made
    return _share_strings(msgspec.msgpack.decode(packed))


def _share_strings(data: Any) -> Any:
    """``data`` with each distinct string value held once: thousands of team entries repeat the same sink names,
    hosts and endpoints, and every process keeps them all (bench/README.md, "what a serving worker holds")."""
    shared: dict[str, str] = {}
    todo = [data]
    while todo:
        node = todo.pop()
        items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
        for key, value in items:
            if isinstance(value, str):
                node[key] = shared.setdefault(value, value)
            elif isinstance(value, dict | list):
                todo.append(value)
    return data
