"""Who logs where: resolving a request's key and team to the sink routes its event goes to.

First source that exists wins, and a present-but-empty list counts (that is how logging is disabled):
1. the key's ``metadata.logging``; 2. the team's callbacks set through the API; 3. the team's
``default_team_settings`` entry; 4. the global ``callbacks`` / ``success_callback`` / ``failure_callback``.
Every entry keeps its own variables. Resolution runs when a key is first seen after a change, never per request.

Redaction policies (``redaction: {redactors, fields}``) resolve on the same layers, each on its own: an entry's
``callback_vars.redaction``, else the key's ``metadata.redaction``, else the team's (``metadata.redaction`` through
the API, else its ``default_team_settings`` entry), else ``litellm_settings.redaction``. A present-but-empty policy
(``redaction: {}``) switches off the one it would inherit. ``turn_off_message_logging`` wins over any policy.
A route's policy is part of its sink instance's identity, so the dispatcher can apply it when the batch goes out.
"""

from __future__ import annotations

import difflib
import fnmatch
import hashlib
import logging
import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

import msgspec

from sluicegate.config import ConfigError, TeamSettings
from sluicegate.errors import ApiError
from sluicegate.redaction.base import RedactorRegistry
from sluicegate.redaction.policy import CompiledPolicy, PolicyCompiler, PolicyError
from sluicegate.sinks.base import MASK, CallbackVars, Sink
from sluicegate.sinks.destinations import DestinationPolicy
from sluicegate.sinks.registry import UnknownCallbackName
from sluicegate.sinks.vars import FieldError, VarsError, decode_vars, encode_vars, secret_fields

if TYPE_CHECKING:
    from sluicegate.config import Settings
    from sluicegate.db.store import KeyRecord, TeamRecord
    from sluicegate.plugins import SluicegatePluginManager
    from sluicegate.sinks.registry import SinkRegistry

__all__ = ("CallbackSet", "LoggingEntry", "LoggingResolver", "Route")

log = logging.getLogger("sluicegate.routing")

CallbackType = Literal["success", "failure", "success_and_failure"]
RESERVED_VARS = ("turn_off_message_logging", "redaction")
ENV_REFERENCE = "os.environ/"


class LoggingEntry(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One logging destination as written by an admin (``callback_vars`` as written: references unresolved)."""

    callback_name: str
    callback_type: CallbackType = "success_and_failure"
    callback_vars: dict[str, Any] = msgspec.field(default_factory=dict)


class Route(msgspec.Struct, frozen=True, kw_only=True):
    callback_name: str
    instance_id: str
    sink_class: type[Sink]
    callback_vars: CallbackVars
    on_success: bool
    on_failure: bool
    redact: bool
    trusted: bool = True
    """Written in config.yaml (trusted) rather than through the admin API: API-written routes are held to
    ``sluicegate_settings`` (``allowed_env_refs``, ``sink_destinations``, ``file_sink_root``)."""
    redaction: CompiledPolicy | None = None
    """The redaction policy the dispatcher applies to this route's events (never with ``redact``: that wins)."""
    redaction_source: str | None = None
    """Where the policy came from: ``entry``, ``key``, ``team``, ``team_config`` or ``global``."""
    plain_instance_id: str = ""
    """The instance id without the policy (the policy's key is folded into ``instance_id``)."""


class CallbackSet(msgspec.Struct, frozen=True, kw_only=True):
    routes: tuple[Route, ...]
    source: Literal["key", "team", "team_config", "global", "none"]

    @property
    def callback_names(self) -> list[str]:
        return list(dict.fromkeys(r.callback_name for r in self.routes))


def _as_bool(value: Any, field: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0", "yes", "no"):
        return value.strip().lower() in ("true", "1", "yes")
    raise VarsError([FieldError(field, f"expected a boolean, got {value!r}")])


def _policy_instance_id(instance_id: str, policy: CompiledPolicy | None) -> str:
    """``instance_id`` for events redacted by ``policy``: one sink instance per (destination, policy), so every
    event queued for an instance is redacted the same way (and the spool knows how)."""
    if policy is None:
        return instance_id
    prefix = "api-" if instance_id.startswith("api-") else ""
    digest = hashlib.sha256(f"{instance_id}/{policy.key}".encode()).hexdigest()[:16]
    return prefix + digest[len(prefix):]


def instance_id_for(callback_name: str, callback_vars: CallbackVars) -> str:
    """A stable id for (sink, resolved vars); a digest, so the secret is not readable from it."""
    payload = msgspec.json.encode([callback_name, encode_vars(callback_vars, reveal=True)])
    return hashlib.sha256(payload).hexdigest()[:16]


class LoggingResolver:
    """Turns logging entries into routes; validates entries at write time."""

    def __init__(self, settings: Settings, registry: SinkRegistry, pm: SluicegatePluginManager) -> None:
        self.settings = settings
        self.registry = registry
        self.pm = pm
        self.global_redact = settings.litellm_settings.turn_off_message_logging
        self.redaction = PolicyCompiler(RedactorRegistry.from_plugin_manager(pm))
        self.global_policy = self._config_policy(settings.litellm_settings.redaction, "litellm_settings.redaction")
        self.team_policies: dict[str, CompiledPolicy | None] = {}
        """Teams whose ``default_team_settings`` entry sets ``redaction`` (``None``: set to nothing)."""
        self.allowed_env_refs = tuple(settings.sluicegate_settings.allowed_env_refs)
        self.api_policy = DestinationPolicy.from_settings(settings)  # sink_destinations, file_sink_root
        self.global_set = self._global_set()
        self.team_config: dict[str, CallbackSet | None] = {}
        self._team_settings = {t.team_id: t for t in settings.litellm_settings.default_team_settings}
        problems: list[str] = []
        for index, team in enumerate(settings.litellm_settings.default_team_settings):
            path = f"litellm_settings.default_team_settings[{index}]"
            problems += self._unknown_team_keys(team, path)
            try:
                if team.redaction is not None:
                    self.team_policies[team.team_id] = self._config_policy(team.redaction, f"{path}.redaction")
                self.team_config[team.team_id] = self._team_config_set(team)
            except ConfigError as exc:
                problems += exc.problems
            except (VarsError, UnknownCallbackName, LookupError) as exc:
                problems.append(f"{path}: {exc}")
        if problems:
            raise ConfigError(problems)

    # building ------------------------------------------------------------------------------------------
    def _resolve_refs(self, sink_class: type[Sink], raw: Mapping[str, Any], *, trusted: bool) -> dict[str, Any]:
        callback_name = sink_class.callback_name
        resolved: dict[str, Any] = {}
        for key, value in raw.items():
            if not trusted and _is_reference(value):
                self._check_api_reference(sink_class, key, value)
            if isinstance(value, str):
                result = self.pm.hook.resolve_callback_var(value=value, key=key, callback_name=callback_name)
                resolved[key] = value if result is None else result
            else:
                resolved[key] = value
        return resolved

    def _validate(self, sink_class: type[Sink], resolved: dict[str, Any]) -> CallbackVars:
        callback_vars = decode_vars(sink_class.Vars, resolved)
        messages: list[str] = []
        for result in self.pm.hook.validate_callback_vars(callback_name=sink_class.callback_name,
                                                          callback_vars=resolved):
            messages.extend(result or [])
        if messages:
            errors = []
            for message in messages:
                field, _, reason = message.partition(":")
                errors.append(FieldError(field.strip() if reason else "callback_vars",
                                           reason.strip() if reason else message))
            raise VarsError(errors)
        return callback_vars

    def _check_api_reference(self, sink_class: type[Sink], key: str, value: str) -> None:
        """Allow an ``os.environ/NAME`` written through the admin API only in a secret field and only for a name
        matching ``allowed_env_refs``; the refusal is the same whether or not the variable exists."""
        name = value[len(ENV_REFERENCE):]
        field = sink_class.Vars.aliases.get(key, key)
        if field not in secret_fields(sink_class.Vars):
            raise VarsError([FieldError(key, "os.environ/ references through the admin API are allowed only in "
                                             "secret fields; write the value itself (config.yaml may reference "
                                             "any variable)")])
        if not any(fnmatch.fnmatchcase(name, pattern) for pattern in self.allowed_env_refs):
            raise VarsError([FieldError(key, "this os.environ/ reference is not allowed through the admin API: "
                                             "the proxy admin lists the names teams may reference in "
                                             "sluicegate_settings.allowed_env_refs")])

    # redaction policies ----------------------------------------------------------------------------------
    def _config_policy(self, raw: Any, path: str) -> CompiledPolicy | None:
        if raw is None:
            return None
        try:
            return self.redaction.compile(raw)
        except PolicyError as exc:
            raise ConfigError([f"{path}.{p}" if not p.startswith("(") else f"{path}: {p.split(': ', 1)[-1]}"
                               for p in exc.problems]) from None

    def validate_redaction(self, raw: Any, *, param: str) -> None:
        """Check an admin-written policy (``metadata.redaction``); :class:`ApiError` 422 naming the field."""
        if raw is None:
            return
        try:
            self.redaction.compile(raw)
        except PolicyError as exc:
            first = exc.problems[0]
            field, _, reason = first.partition(": ")
            where = param if field.startswith("(") else f"{param}.{field}"
            raise ApiError(422, "; ".join(f"{param}.{p}" if not p.startswith("(") else f"{param}: "
                                          f"{p.split(': ', 1)[-1]}" for p in exc.problems), param=where) from None

    def policy_for(self, key: KeyRecord | None, team: TeamRecord | None,
                   team_id: str | None) -> tuple[CompiledPolicy | None, str | None]:
        """The policy of a key's routes that set none of their own, and the layer it came from.
        Raises :class:`PolicyError` when a stored policy no longer compiles (a redactor plugin gone)."""
        for source, record in (("key", key), ("team", team)):
            metadata = getattr(record, "metadata", None)
            if isinstance(metadata, Mapping) and metadata.get("redaction") is not None:
                return self.redaction.compile(metadata["redaction"]), source
        if team_id is not None and team_id in self.team_policies:
            return self.team_policies[team_id], "team_config"
        return self.global_policy, "global"

    def _with_policy(self, callbacks: CallbackSet, policy: CompiledPolicy | None, source: str | None) -> CallbackSet:
        """``callbacks`` with ``policy`` on every route that has none of its own (and is not fully redacted)."""
        routes = []
        changed = False
        for route in callbacks.routes:
            if route.redact or route.redaction_source == "entry" or route.redaction is policy:
                routes.append(route)
                continue
            changed = True
            routes.append(msgspec.structs.replace(
                route, redaction=policy, redaction_source=source if policy is not None else None,
                instance_id=_policy_instance_id(route.plain_instance_id, policy)))
        return msgspec.structs.replace(callbacks, routes=tuple(routes)) if changed else callbacks

    def _unknown_team_keys(self, team: TeamSettings, path: str) -> list[str]:
        """A team entry's flat keys (and ``callback_vars`` keys) that no sink of the entry takes: a typo there
        would silently change where (or whether) the team's logs go, so each is a start-up error."""
        names = {*(team.callbacks or ()), *(team.success_callback or ()), *(team.failure_callback or ())}
        accepted: set[str] = set(RESERVED_VARS)
        for name in names:
            if name not in self.registry:
                return []  # reported as an unknown callback_name
            vars_type = self.registry.get(name).Vars
            accepted.update(vars_type.__struct_fields__, vars_type.aliases)
        problems = []
        team_keys = [f for f in TeamSettings.__struct_fields__ if f != "flat"]
        for where, keys in (("", team.flat), ("callback_vars.", team.callback_vars or {})):
            for key in keys:
                if key in accepted:
                    continue
                hint = difflib.get_close_matches(key, sorted(accepted | set(team_keys)), n=1, cutoff=0.6)
                sinks = ", ".join(sorted(names)) or "none"
                problems.append(f"{path}.{where}{key}: neither a team setting nor a variable of the entry's sinks "
                                f"({sinks})" + (f"; did you mean {hint[0]!r}?" if hint else ""))
        return problems

    def route(self, entry: LoggingEntry, *, default_redact: bool, trusted: bool = True) -> Route:
        sink_class = self.registry.get(entry.callback_name)
        raw = dict(entry.callback_vars)
        redact = default_redact
        if "turn_off_message_logging" in raw:
            redact = _as_bool(raw.pop("turn_off_message_logging"), "turn_off_message_logging")
        own_policy: CompiledPolicy | None = None
        has_policy = False
        if "redaction" in raw:
            written = raw.pop("redaction")
            if written is not None:
                has_policy = True
                try:
                    own_policy = self.redaction.compile(written)
                except PolicyError as exc:
                    raise VarsError([FieldError("redaction" + ("" if p.startswith("(") else "." + p.split(": ")[0]),
                                                p.split(": ", 1)[-1]) for p in exc.problems]) from None
        if not raw:
            # No variables of its own (at most the redaction switch, as in the seed's datadog key): the entry
            # means "this sink as configured for the gateway", i.e. from the process environment. An entry
            # with any variable of its own never falls back to the environment for the others.
            raw = sink_class.env_defaults(os.environ)
        callback_vars = self._validate(sink_class, self._resolve_refs(sink_class, raw, trusted=trusted))
        if not trusted:  # text only (no DNS): also runs when a stored entry is resolved, so a narrowed policy applies
            refused = sink_class.destination_problems(callback_vars, self.api_policy)
            if refused:
                raise VarsError([FieldError(field, reason) for field, reason in refused])
        instance_id = instance_id_for(entry.callback_name, callback_vars)
        if not trusted:  # never one instance with a trusted twin: their destination checks differ
            instance_id = "api-" + instance_id[4:]
        policy = None if redact else own_policy
        return Route(callback_name=entry.callback_name, instance_id=_policy_instance_id(instance_id, policy),
                     sink_class=sink_class, callback_vars=callback_vars, on_success=entry.callback_type != "failure",
                     on_failure=entry.callback_type != "success", redact=redact, trusted=trusted,
                     redaction=policy, redaction_source="entry" if has_policy else None,
                     plain_instance_id=instance_id)

    def _set(self, entries: Sequence[LoggingEntry], source: Any, *, default_redact: bool) -> CallbackSet:
        trusted = source in ("team_config", "global")  # config.yaml; "key" and "team" were written through the API
        routes = tuple(self.route(e, default_redact=default_redact, trusted=trusted) for e in entries)
        return CallbackSet(routes=routes, source=source)

    def _global_set(self) -> CallbackSet:
        ls = self.settings.litellm_settings
        entries = _named_entries(ls.callbacks, ls.success_callback, ls.failure_callback, {})
        try:
            callbacks = self._set(entries, "global", default_redact=self.global_redact)
        except (VarsError, UnknownCallbackName, LookupError) as exc:
            raise ConfigError([f"litellm_settings callbacks: {exc}"]) from None
        return self._with_policy(callbacks, self.global_policy, "global")

    def _team_config_set(self, team: TeamSettings) -> CallbackSet | None:
        if team.callbacks is None and team.success_callback is None and team.failure_callback is None:
            return None
        shared = {**team.flat, **(team.callback_vars or {})}
        entries = []
        for entry in _named_entries(team.callbacks, team.success_callback, team.failure_callback, {}):
            sink_class = self.registry.get(entry.callback_name)
            accepted = {*sink_class.Vars.__struct_fields__, *sink_class.Vars.aliases, *RESERVED_VARS}
            own = {k: v for k, v in shared.items() if k in accepted}
            entries.append(msgspec.structs.replace(entry, callback_vars=own))
        redact = self.global_redact if team.turn_off_message_logging is None else team.turn_off_message_logging
        callbacks = self._set(entries, "team_config", default_redact=redact)
        if team.team_id in self.team_policies:
            return self._with_policy(callbacks, self.team_policies[team.team_id], "team_config")
        return self._with_policy(callbacks, self.global_policy, "global")

    # per key -------------------------------------------------------------------------------------------
    def for_team(self, team: TeamRecord) -> CallbackSet:
        """The routes of a key of ``team`` with no logging or policy of its own, each with the redaction it applies
        (what the console's team page shows): the same resolution as :meth:`for_key`."""
        return self.for_key(None, team, team_id=team.team_id)

    def for_key(self, key: KeyRecord | None, team: TeamRecord | None, *, team_id: str | None = None) -> CallbackSet:
        """The routes of ``key`` (of ``team_id`` when there is no key) with their redaction policies."""
        team_id = key.team_id if key is not None else team_id
        callbacks = self._for_key(key, team, team_id)
        if not callbacks.routes:
            return callbacks
        try:
            policy, source = self.policy_for(key, team, team_id)
        except PolicyError as exc:
            # Stored policies were valid when written; a redactor plugin may have gone since. Log nothing rather
            # than log what the policy was meant to keep out.
            log.error("the redaction policy for key %s is unusable and its logging was switched off: %s",
                      key.key_name if key else "?", exc)
            return CallbackSet(routes=(), source="none")
        return self._with_policy(callbacks, policy, source)

    def redacts_by_default(self, team_id: str | None) -> bool:
        """``turn_off_message_logging`` for the team's routes that do not set it: the team's config.yaml entry,
        else ``litellm_settings``. When on, it wins over any redaction policy."""
        team_config = self.settings_for_team(team_id)
        if team_config is not None and team_config.turn_off_message_logging is not None:
            return team_config.turn_off_message_logging
        return self.global_redact

    def _for_key(self, key: KeyRecord | None, team: TeamRecord | None, team_id: str | None) -> CallbackSet:
        default_redact = self.redacts_by_default(team_id)
        if team is not None and team.logging == []:
            # disable_logging is an opt-out (GDPR): it wins over every layer, the key's own logging included.
            return CallbackSet(routes=(), source="team")
        configured = self.team_config.get(team_id) if team_id is not None else None
        if (team is None or team.logging is None) and configured is not None and not configured.routes:
            # The same opt-out written in config.yaml (`success_callback: []` and no other callbacks).
            return configured
        try:
            if key is not None and isinstance(key.metadata.get("logging"), list):
                return self._set(parse_entries(key.metadata["logging"]), "key", default_redact=default_redact)
            if team is not None and team.logging is not None:
                return self._set(parse_entries(team.logging), "team", default_redact=default_redact)
        except (ApiError, VarsError, UnknownCallbackName, LookupError) as exc:
            # Stored entries were valid when written; an env var or plugin may have gone since. Log nothing
            # rather than log to the wrong place: the team's own choice must never fall back to globals.
            log.error("logging for key %s is unusable and was switched off: %s",
                      key.key_name if key else "?", exc)
            return CallbackSet(routes=(), source="none")
        if team_id is not None and self.team_config.get(team_id) is not None:
            return self.team_config[team_id]  # type: ignore[return-value]
        return self.global_set

    def settings_for_team(self, team_id: str | None) -> TeamSettings | None:
        return self._team_settings.get(team_id) if team_id is not None else None

    # write time ----------------------------------------------------------------------------------------
    def validate_entries(self, raw: Any, *, param: str) -> list[LoggingEntry]:
        """Check admin-written entries fully (sink known, vars decode, references resolve, validate hook).

        Raises :class:`ApiError` (400 for an unknown sink, 422 naming the field otherwise).
        """
        entries = parse_entries(raw, param=param)
        for index, entry in enumerate(entries):
            where = f"{param}[{index}]" if param.endswith("logging") else param
            try:
                self.route(entry, default_redact=self.global_redact, trusted=False)
            except UnknownCallbackName as exc:
                raise ApiError(400, str(exc), param=f"{where}.callback_name" if where != param or
                               param.endswith("logging") else "callback_name") from None
            except VarsError as exc:
                first = exc.errors[0]
                raise ApiError(422, f"callback_vars.{first.field}: {first.reason}" if len(exc.errors) == 1 else
                               "; ".join(f"callback_vars.{e.field}: {e.reason}" for e in exc.errors),
                               param=f"{_prefix(where)}callback_vars.{first.field}",
                               extra={"errors": [{"field": e.field, "reason": e.reason} for e in exc.errors]}
                               ) from None
            except LookupError as exc:
                raise ApiError(422, str(exc).strip("'\""), param=f"{_prefix(where)}callback_vars") from None
        return entries

    def mask(self, entry: LoggingEntry | Mapping[str, Any]) -> dict[str, Any]:
        """An entry as shown to API clients: secret variables masked, references shown as written."""
        data = msgspec.to_builtins(entry) if isinstance(entry, LoggingEntry) else dict(entry)
        name = data.get("callback_name")
        variables = dict(data.get("callback_vars") or {})
        if name in self.registry:
            vars_type = self.registry.get(name).Vars
            secrets = secret_fields(vars_type)
            for key, value in list(variables.items()):
                if vars_type.aliases.get(key, key) in secrets and not _is_reference(value):
                    variables[key] = MASK
        data["callback_vars"] = variables
        return data


def _prefix(where: str) -> str:
    return "" if where in ("callback_vars", "") or not where.endswith("]") else f"{where}."


def _is_reference(value: Any) -> bool:
    return isinstance(value, str) and value.startswith(ENV_REFERENCE)


def _named_entries(both: list[str] | None, success: list[str] | None, failure: list[str] | None,
                   variables: dict[str, Any]) -> list[LoggingEntry]:
    entries: dict[str, list[str]] = {}
    for names, kind in ((both, "success_and_failure"), (success, "success"), (failure, "failure")):
        for name in names or ():
            entries.setdefault(name, []).append(kind)
    result = []
    for name, kinds in entries.items():
        kind = "success_and_failure" if "success_and_failure" in kinds or len(set(kinds)) > 1 else kinds[0]
        result.append(LoggingEntry(callback_name=name, callback_type=kind, callback_vars=variables))
    return result


def parse_entries(raw: Any, *, param: str = "logging") -> list[LoggingEntry]:
    """Decode stored or submitted logging entries; ApiError 422 naming the field on a bad shape."""
    if isinstance(raw, Mapping):
        raw = [raw]
    try:
        entries = msgspec.convert(raw, list[LoggingEntry], strict=False)
    except msgspec.ValidationError as exc:
        message = str(exc)
        path = message.rsplit("at `$", 1)[-1].rstrip("`") if "at `$" in message else ""
        reason = message.split(" - at ")[0]
        raise ApiError(422, f"{param}{path}: {reason}", param=f"{param}{path}") from None
    for index, entry in enumerate(entries):
        if not isinstance(entry.callback_vars, dict):
            raise ApiError(422, f"{param}[{index}].callback_vars: expected an object",
                           param=f"{param}[{index}].callback_vars")
    return entries
