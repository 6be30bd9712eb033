"""``config.yaml`` → typed settings (msgspec Structs), LiteLLM-compatible.

Every problem is reported with its YAML path (``litellm_settings.default_team_settings[1].team_id: required``).
``os.environ/NAME`` references are resolved at load; a missing variable stops start-up naming path and variable.
Keys we do not support produce one warning line; a key close to one we support is reported with the likely
intended key (in a team entry that is an error: a typo there silently changes where a team's logs go).
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Mapping
from typing import Any

import msgspec
import yaml

from sluicegate.sinks.destinations import entry_problem as destination_entry_problem

__all__ = (
    "ConfigError",
    "DeliverySettings",
    "GeneralSettings",
    "LITELLM_IGNORED_PARAMS",
    "LiteLLMParams",
    "LiteLLMSettings",
    "ModelEntry",
    "Settings",
    "SinkDestinations",
    "SluicegateSettings",
    "TeamSettings",
    "load_settings",
    "parse_settings",
    "per_worker",
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
    timeout: float = 600.0
    mock_response: Any = None
    input_cost_per_token: float | None = None
    output_cost_per_token: float | None = None
    cache_read_input_token_cost: float | None = None
    """USD per prompt token read from the provider's prompt cache (replaces the price table's; LiteLLM's key)."""
    cache_creation_input_token_cost: float | None = None
    """USD per prompt token written to the provider's prompt cache (replaces the price table's; LiteLLM's key)."""
    output_cost_per_reasoning_token: float | None = None
    """USD per reasoning token, where a provider bills them apart from other completion tokens (LiteLLM's key)."""
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
    "rpm", "tpm", "max_parallel_requests", "order", "weight", "tags", "max_retries", "num_retries",
    "stream_timeout", "region_name", "litellm_credential_name", "use_in_pass_through",
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


class GeneralSettings(msgspec.Struct, kw_only=True):
    master_key: str | None = None
    database_url: str | None = None


class TeamSettings(msgspec.Struct, kw_only=True):
    """One ``default_team_settings`` entry. Flat sink variables (``langfuse_public_key``...) land in ``flat``."""

    team_id: str
    team_alias: str | None = None
    callbacks: list[str] | None = None
    success_callback: list[str] | None = None
    failure_callback: list[str] | None = None
    callback_vars: dict[str, Any] | None = None
    turn_off_message_logging: bool | None = None
    cache: bool | None = None
    flat: dict[str, Any] = msgspec.field(default_factory=dict)


class LiteLLMSettings(msgspec.Struct, kw_only=True):
    callbacks: list[str] | None = None
    success_callback: list[str] | None = None
    failure_callback: list[str] | None = None
    default_team_settings: list[TeamSettings] = msgspec.field(default_factory=list)
    turn_off_message_logging: bool = False
    cache: bool = False
    cache_params: dict[str, Any] | None = None
    drop_params: bool = False
    """Drop request parameters a model's provider cannot take instead of answering 400 naming them (a model's own
    `litellm_params.drop_params` wins)."""


class DeliverySettings(msgspec.Struct, kw_only=True):
    """``sluicegate_settings.delivery``: how events travel to sinks."""

    queue_size: int = 10_000
    memory_events: int = 100_000
    """Event deliveries waiting in memory for all sink instances together, with the spool on (an event for two
    sinks counts twice; it is held once, as its JSON: ~1.3 KB for a short chat): beyond this, new ones wait in the
    spool on disk only and are read back when their batch goes out, so memory stays bounded however many teams log
    or however far delivery falls behind. Reading back costs CPU (the event is read from disk again; one
    bench.pipeline run went from 57 to 68 us per event with half of them spilled), so this is a bound for backlogs,
    not a working size. 0: no limit. For the whole gateway: each of ``--workers N`` processes takes a 1/N share."""
    batch_interval: float = 1.0
    max_sends_per_second: float = 400.0
    """Delivery budget: with many busy destinations, each lingers up to ``busy destinations / this`` seconds
    (at most ``max_batch_interval``) so the gateway makes about this many sends a second, in fuller batches;
    lingering batches that come due together start at this pace (or faster, when ``max_batch_interval`` needs it),
    not all at once. For the whole gateway: each of ``--workers N`` processes takes a 1/N share."""
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
    """Seconds between spool writes (the most a SIGKILL can lose); 0 writes every event as it is accepted."""
    spool_max_bytes: int = 1024 * 1024 * 1024
    # Each segment repeats the header of every instance with events in it: with 2,000 instances, 4 MiB segments
    # spent ~4 us of CPU per event on headers and segment changes (bench.pipeline); 32 MiB, an eighth of that.
    spool_segment_bytes: int = 32 * 1024 * 1024
    spool_fsync: bool = False
    """fsync after each spool write (survives power loss, not only process death; costs a disk flush)."""


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


class SluicegateSettings(msgspec.Struct, kw_only=True):
    delivery: DeliverySettings = msgspec.field(default_factory=DeliverySettings)
    change_poll_interval: float = 0.25
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


class Settings(msgspec.Struct, kw_only=True):
    model_list: list[ModelEntry] = msgspec.field(default_factory=list)
    general_settings: GeneralSettings = msgspec.field(default_factory=GeneralSettings)
    litellm_settings: LiteLLMSettings = msgspec.field(default_factory=LiteLLMSettings)
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


def _check_keys(data: Any, struct: type[msgspec.Struct], path: str, unknown: list[str], typos: list[str]) -> None:
    if not isinstance(data, Mapping):
        return
    known = _fields(struct)
    for key, value in data.items():
        here = f"{path}.{key}" if path else str(key)
        if struct is LiteLLMParams and key not in known and key not in LITELLM_IGNORED_PARAMS:
            continue  # the provider's own key: its Params check it when the gateway starts
        if key not in known:
            hint = _suggest(str(key), known)
            (typos if hint else unknown).append(f"{here} (did you mean {hint!r}?)" if hint else here)
            continue
        child = {"litellm_params": LiteLLMParams, "general_settings": GeneralSettings,
                 "delivery": DeliverySettings, "sink_destinations": SinkDestinations}.get(key)
        if child is not None:
            _check_keys(value, child, here, unknown, typos)


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


def parse_settings(raw: Any, *, source: str | None = None) -> Settings:
    """Validate an already-parsed YAML document. Raises :class:`ConfigError` listing every problem."""
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
            (typos if hint else unknown).append(f"{key} (did you mean {hint!r}?)" if hint else str(key))
            data.pop(key)
    models = data.get("model_list")
    for index, entry in enumerate(models if isinstance(models, list) else []):
        if isinstance(entry, Mapping):
            _check_keys(entry, ModelEntry, f"model_list[{index}]", unknown, typos)
    for section in ("general_settings", "sluicegate_settings"):
        _check_keys(data.get(section), _SECTIONS[section], section, unknown, typos)
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
    if typos:
        settings.warnings.append("keys that look misspelt: " + ", ".join(typos))
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
    names: set[str] = set()
    for index, model in enumerate(settings.model_list):
        if model.model_name in names:
            problems.append(f"model_list[{index}].model_name: {model.model_name!r} is listed twice")
        names.add(model.model_name)
        if model.litellm_params.timeout <= 0:
            problems.append(f"model_list[{index}].litellm_params.timeout: must be positive")
    delivery = settings.sluicegate_settings.delivery
    if not 0 <= delivery.spool_flush_interval <= 60:
        problems.append("sluicegate_settings.delivery.spool_flush_interval: must be between 0 and 60 seconds")
    if delivery.spool_max_bytes < 1024 * 1024:
        problems.append("sluicegate_settings.delivery.spool_max_bytes: must be at least 1048576 (1 MiB)")
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
    master = settings.general_settings.master_key
    if master is not None and not master.startswith("sk-"):
        problems.append("general_settings.master_key: must start with 'sk-'")
    from sluicegate.cache import cache_params_problems  # the cache module owns its settings' rules

    cache_problems, cache_warnings = cache_params_problems(settings)
    problems += cache_problems
    settings.warnings += cache_warnings


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


_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def load_settings(path: str | os.PathLike[str]) -> Settings:
    """Read and validate ``config.yaml``."""
    return parse_settings(_read_yaml(path), source=str(path))


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
    return msgspec.msgpack.decode(packed)
