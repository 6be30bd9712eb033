"""Generate ``docs/config-reference.md`` from the config Structs, and ``docs/sinks/<name>.md`` from each sink.

Every key, its type and default come from the Structs themselves; the description is the attribute docstring
written under the field in ``config.py`` (or, for fields without one, the line in :data:`DESCRIPTIONS` here).
``tests/test_docs.py`` fails when the committed file differs from what this produces, so the reference
cannot drift from the code. The sink pages do the same for every sink bundled in this repository (the built-in
``file`` sink and ``plugins/<x>_sink``): a callback_vars table from the sink's ``Vars`` struct, linking to the
sink's README for the wire format and delivery details. Run from the repository root::

    python -m sluicegate.docs_gen            # rewrite docs/config-reference.md and docs/sinks/*.md
    python -m sluicegate.docs_gen --check    # exit 1 if any of them is out of date
"""

from __future__ import annotations

import argparse
import ast
import inspect
import json
import sys
import types
import typing
from pathlib import Path
from typing import Any

import msgspec

from sluicegate import config

__all__ = ("DESCRIPTIONS", "config_keys", "main", "render_config_reference", "render_docs", "render_sink_pages")

OUTPUT = Path("docs") / "config-reference.md"
SINKS_DIR = Path("docs") / "sinks"
_HIDDEN = {("Settings", "source"), ("Settings", "warnings"), ("TeamSettings", "flat"), ("LiteLLMParams", "extra")}
"""Not keys of config.yaml: where the settings came from, load warnings, a team entry's flat sink variables, a
model's provider-specific keys (documented per provider in docs/providers.md)."""

DESCRIPTIONS: dict[str, str] = {
    "Settings.model_list": "The models clients may call (`model` in a request is matched against `model_name`).",
    "Settings.general_settings": "Gateway-wide settings.",
    "Settings.litellm_settings": "Logging: global sinks, per-team sinks, redaction (LiteLLM's names).",
    "Settings.sluicegate_settings": "Sluicegate's own tuning.",
    "Settings.router_settings": "Load balancing, retries, fallbacks and cooldowns over a model group's "
                                "deployments (LiteLLM's names; an unknown key stops start-up).",
    "ModelEntry.model_name": "What clients send as `model` (the model group). Several entries with one name are "
                             "deployments of one group, load-balanced by `router_settings.routing_strategy`; "
                             "`openai/*` or `*` is a wildcard group.",
    "ModelEntry.litellm_params": "How to reach the upstream model.",
    "ModelEntry.model_info": "Information about the deployment (LiteLLM's key): `id` names it in log events "
                             "(`model_id`) and `/model/info` (default: a hash of its name and params); its "
                             "`base_model` and prices (`input_cost_per_token`, ...) count when `litellm_params` "
                             "does not set them.",
    "LiteLLMParams.model": "`provider/model` upstream, e.g. `openai/gpt-4o`, `anthropic/claude-sonnet-4-5`, "
                           "`azure/<deployment>` (docs/providers.md).",
    "LiteLLMParams.api_base": "Upstream base URL, e.g. `https://api.openai.com/v1`.",
    "LiteLLMParams.api_key": "Upstream API key; use `os.environ/NAME`. Never logged.",
    "LiteLLMParams.timeout": "Seconds before the upstream call is abandoned (504).",
    "LiteLLMParams.mock_response": "Answer offline with this text instead of calling the upstream.",
    "LiteLLMParams.input_cost_per_token": "USD per prompt token, for `response_cost` in log events; replaces the "
                                          "price table's (docs/providers.md#cost).",
    "LiteLLMParams.output_cost_per_token": "USD per completion token, for `response_cost` in log events; replaces "
                                           "the price table's.",
    "GeneralSettings.master_key": "The admin key (must start with `sk-`). Without it admin routes are closed.",
    "GeneralSettings.database_url": "`sqlite+aiosqlite:///./sluicegate.db` (default) or `postgresql+asyncpg://...`;"
                                    " the `DATABASE_URL` environment variable wins.",
    "LiteLLMSettings.callbacks": "Global sinks for successes and failures, e.g. `[\"langfuse\"]` (variables from "
                                 "the process environment).",
    "LiteLLMSettings.success_callback": "Global sinks for successful requests only.",
    "LiteLLMSettings.failure_callback": "Global sinks for failed requests only.",
    "LiteLLMSettings.default_team_settings": "Per-team logging; the first matching `team_id` wins.",
    "LiteLLMSettings.turn_off_message_logging": "Redact prompts and completions in every event (a team or key "
                                                "entry may override it).",
    "LiteLLMSettings.cache": "Response caching switch (LiteLLM's key).",
    "LiteLLMSettings.fallbacks": "`[{group: [fallback groups]}]` (`router_settings.fallbacks` wins).",
    "LiteLLMSettings.context_window_fallbacks": "Fallbacks after a context-window error "
                                                "(`router_settings` wins).",
    "LiteLLMSettings.content_policy_fallbacks": "Fallbacks after a content-policy refusal (`router_settings` wins).",
    "LiteLLMSettings.default_fallbacks": "Fallback groups for every group without its own (`router_settings` wins).",
    "RouterSettings.routing_strategy": "`simple-shuffle` (weighted random), `least-busy`, `latency-based-routing` "
                                       "or `usage-based-routing-v2`; anything else stops start-up.",
    "RouterSettings.routing_strategy_args": "Arguments of latency-based-routing (`ttl`, `lowest_latency_buffer`).",
    "RouterSettings.timeout": "Seconds per upstream attempt for deployments without their own `timeout` "
                              "(default: `litellm_settings.request_timeout`, else 600).",
    "RouterSettings.stream_timeout": "Seconds a streamed attempt may take to start answering, for deployments "
                                     "without their own `stream_timeout` (then it is retried like a timeout).",
    "RouterSettings.fallbacks": "`[{group: [fallback groups]}]`, tried in order once a group's retries are spent "
                                "(`*` as the group: every group).",
    "RouterSettings.context_window_fallbacks": "Fallbacks after a context-window error (else `fallbacks`).",
    "RouterSettings.content_policy_fallbacks": "Fallbacks after a content-policy refusal (else `fallbacks`).",
    "RouterSettings.default_fallbacks": "Fallback groups for every group without an entry in `fallbacks`.",
    "RouterSettings.retry_policy": "Retries per error class (`RateLimitErrorRetries`...), overriding `num_retries`.",
    **{f"RetryPolicy.{kind}Retries": f"Retries after a {kind} (default: `num_retries` if retryable, else 0)."
       for kind in ("BadRequestError", "AuthenticationError", "TimeoutError", "RateLimitError",
                    "ContentPolicyViolationError", "InternalServerError")},
    **{f"AllowedFailsPolicy.{kind}AllowedFails": f"{kind}s per minute before a cooldown (default: `allowed_fails`)."
       for kind in ("BadRequestError", "AuthenticationError", "TimeoutError", "RateLimitError",
                    "ContentPolicyViolationError", "InternalServerError")},
    "RouterSettings.max_fallbacks": "Most fallback groups one request tries.",
    "RouterSettings.allowed_fails": "Failures per minute a deployment may have before it cools down.",
    "RouterSettings.allowed_fails_policy": "`allowed_fails` per error class (`RateLimitErrorAllowedFails`...).",
    "RouterSettings.cooldown_time": "Seconds a failing deployment is skipped.",
    "RouterSettings.disable_cooldowns": "Never cool deployments down.",
    "RouterSettings.redis_host": "Redis for state shared by replicas (cooldowns, usage counters).",
    "RouterSettings.redis_port": "Port of `redis_host` (default 6379).",
    "RouterSettings.redis_password": "Password of `redis_host`; use `os.environ/NAME`. Never logged.",
    "RouterSettings.redis_url": "`redis://...` instead of host, port and password.",
    "LiteLLMSettings.cache_params": "Response cache settings (LiteLLM's key).",
    "TeamSettings.team_id": "Matched exactly against a key's `team_id`.",
    "TeamSettings.team_alias": "Display name, sent in events as `user_api_key_team_alias`.",
    "TeamSettings.callbacks": "This team's sinks for successes and failures; `[]` disables logging for the team, "
                              "global sinks included.",
    "TeamSettings.success_callback": "This team's sinks for successes only.",
    "TeamSettings.failure_callback": "This team's sinks for failures only.",
    "TeamSettings.callback_vars": "Sink variables, nested (each named sink takes the ones its `Vars` declares).",
    "TeamSettings.turn_off_message_logging": "This team's redaction default (overrides the global one).",
    "TeamSettings.cache": "Response caching for this team (LiteLLM's key).",
    "SluicegateSettings.delivery": "How events travel to sinks.",
    "SinkDestinations.allow": "Host names (`*.example.com` globs) or CIDR networks API-written sinks may reach; "
                              "when non-empty, nothing else is reached.",
    "SinkDestinations.deny": "Host names or CIDR networks refused (besides the built-in link-local and cloud "
                             "metadata denials) unless `allow` matches them.",
    "SluicegateSettings.sink_destinations": "Where sinks written through the admin API may connect (`allow` / "
                                            "`deny`).",
    "SluicegateSettings.change_poll_interval": "Seconds between checks for key/team changes made by other "
                                               "processes.",
    "DeliverySettings.queue_size": "Events held in memory per sink instance; past it the oldest is dropped "
                                   "(counted).",
    "DeliverySettings.batch_interval": "Seconds a worker lingers for a fuller batch (stretched by max_sends_per_second).",
    "DeliverySettings.max_retries": "Retries of a failed batch before it is dropped (counted, logged).",
    "DeliverySettings.retry_base_delay": "Seconds before the first retry; doubles each time, with jitter.",
    "DeliverySettings.retry_max_delay": "Upper bound of the retry delay, in seconds.",
    "DeliverySettings.max_concurrent_sends": "`send` calls in flight at once, across all sink instances.",
    "DeliverySettings.max_instances": "Sink instances kept; idle ones are evicted first.",
    "DeliverySettings.idle_seconds": "An instance unused this long is flushed and closed.",
    "DeliverySettings.shutdown_grace": "Seconds to drain queues on SIGTERM.",
    "DeliverySettings.health_timeout": "Seconds per sink probe in `/key/health`.",
    "DeliverySettings.spool_max_bytes": "Upper bound of the on-disk spool, in bytes.",
    "DeliverySettings.spool_segment_bytes": "Size at which a spool segment file is closed and the next one begun (each segment repeats the "
    "headers of the instances in it: larger segments, fewer repeats).",
}

TEAM_SINK_VARIABLES = ("Any other key of a team entry is a sink variable in LiteLLM's flat form "
                       "(`langfuse_public_key: ...`); each named sink takes the ones its `Vars` declares. A near-miss "
                       "of a key above is an error.")

ENVIRONMENT = (
    ("DATABASE_URL", "Overrides `general_settings.database_url`."),
    ("SLUICEGATE_CONFIG", "Set by `sluicegate serve` for its workers: the config path."),
    ("SLUICEGATE_LOAD_PLUGINS", "Comma-separated distribution names: load only these plugins (empty: none)."),
    ("SLUICEGATE_DISABLE_PLUGINS", "Comma-separated entry-point names to skip (e.g. `datadog_sink`)."),
    ("SLUICEGATE_HTTP_CLIENT", "Upstream HTTP client: `builtin` (default: the gateway's own HTTP/1.1 client), "
                               "`aiohttp`, `httpx-aiohttp` or `httpx`."),
    ("SLUICEGATE_SALT_KEY", "Key that encrypts stored callback_vars (else `LITELLM_SALT_KEY`, else the master key). "
                            "Never change it by hand: use `sluicegate rotate-salt-key`."),
    ("LITELLM_SALT_KEY", "LiteLLM's name for `SLUICEGATE_SALT_KEY`, used when that is unset."),
    ("SLUICEGATE_NEW_SALT_KEY", "The new key, read by `sluicegate rotate-salt-key` only."),
    ("SLUICEGATE_HEADER_TIMEOUT", "Set by `sluicegate serve` for its workers from `sluicegate_settings.header_timeout`."),
    ("SLUICEGATE_MAX_HEADER_BYTES", "Set by `sluicegate serve` for its workers from "
                                    "`sluicegate_settings.max_header_bytes`."),
)


class Key(msgspec.Struct, frozen=True):
    path: str
    type: str
    default: str
    description: str
    struct: str
    field: str


def _docstrings(module: types.ModuleType) -> dict[str, str]:
    """``{"Struct.field": docstring}`` for attribute docstrings written under fields in ``module``."""
    found: dict[str, str] = {}
    tree = ast.parse(inspect.getsource(module))
    for node in tree.body:
        if not isinstance(node, ast.ClassDef):
            continue
        body = node.body
        for current, following in zip(body, body[1:], strict=False):
            if (isinstance(current, ast.AnnAssign) and isinstance(current.target, ast.Name)
                    and isinstance(following, ast.Expr) and isinstance(following.value, ast.Constant)
                    and isinstance(following.value.value, str)):
                # reST double backticks read as Markdown code spans
                found[f"{node.name}.{current.target.id}"] = inspect.cleandoc(following.value.value).replace("``", "`")
    return found


def _struct_of(tp: Any) -> type[msgspec.Struct] | None:
    return tp if isinstance(tp, type) and issubclass(tp, msgspec.Struct) else None


def _list_item_struct(tp: Any) -> type[msgspec.Struct] | None:
    if typing.get_origin(tp) is list:
        (item,) = typing.get_args(tp) or (Any,)
        return _struct_of(item)
    return None


def _type_name(tp: Any) -> str:
    if tp is type(None):
        return "null"
    if tp is Any:
        return "any"
    if _struct_of(tp):
        return "mapping"
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in args)
    if origin is list:
        item = args[0] if args else Any
        return "list of mappings" if _struct_of(item) else f"list of {_type_name(item)}"
    if origin is dict:
        return "mapping"
    if origin is typing.Literal:
        return " or ".join(json.dumps(a) for a in args)
    return {str: "string", int: "integer", float: "number", bool: "boolean"}.get(tp, getattr(tp, "__name__", str(tp)))


def _default(info: msgspec.structs.FieldInfo) -> str:
    if info.required:
        return "required"
    if info.default_factory is not msgspec.NODEFAULT:
        value = info.default_factory()
        if isinstance(value, msgspec.Struct):
            return "(section)"
    else:
        value = info.default
    return f"`{json.dumps(value)}`"


def config_keys() -> list[Key]:
    """Every key of config.yaml, depth first, as the Structs declare it."""
    docs = {**DESCRIPTIONS, **_docstrings(config)}
    keys: list[Key] = []

    def walk(struct: type[msgspec.Struct], prefix: str) -> None:
        hints = typing.get_type_hints(struct)
        for info in msgspec.structs.fields(struct):
            if (struct.__name__, info.name) in _HIDDEN:
                continue
            tp = hints[info.name]
            path = f"{prefix}{info.name}"
            keys.append(Key(path=path, type=_type_name(tp), default=_default(info),
                            description=docs.get(f"{struct.__name__}.{info.name}", ""), struct=struct.__name__,
                            field=info.name))
            child = _struct_of(tp)
            if child is not None:
                walk(child, f"{path}.")
            item = _list_item_struct(tp)
            if item is not None:
                walk(item, f"{path}[].")
                if item is config.TeamSettings:
                    keys.append(Key(path=f"{path}[].<sink variable>", type="any", default="—", struct="TeamSettings",
                                    field="", description=TEAM_SINK_VARIABLES))

    walk(config.Settings, "")
    return keys


def _cell(text: str) -> str:
    return " ".join(text.replace("|", "\\|").split())


def render_config_reference() -> str:
    """The whole of ``docs/config-reference.md``."""
    lines = [
        "# Configuration reference",
        "",
        "<!-- Generated by `python -m sluicegate.docs_gen` from the Structs in core/sluicegate/config.py."
        " Do not edit by hand: tests/test_docs.py fails when this file and the code disagree. -->",
        "",
        "Every key `config.yaml` accepts, with its type and default. `[]` in a path means \"each element of the "
        "list\". Any value may be written `os.environ/NAME` (read from the environment at start-up). For what the "
        "keys do together (who logs where, redaction) see [Configuration](configuration.md).",
    ]
    section = None
    for key in config_keys():
        top = key.path.split(".")[0].split("[")[0]
        if top != section:
            section = top
            lines += ["", f"## `{section}`", "", "| key | type | default | description |", "|---|---|---|---|"]
        lines.append(f"| `{key.path}` | {_cell(key.type)} | {_cell(key.default)} | {_cell(key.description)} |")
    lines += ["", "## Environment variables", "", "| name | meaning |", "|---|---|"]
    lines += [f"| `{name}` | {_cell(meaning)} |" for name, meaning in ENVIRONMENT]
    lines += ["", "Sinks named globally without variables read their own variables (e.g. `LANGFUSE_PUBLIC_KEY`, "
              "`DD_API_KEY`); see each sink's page under [sinks/](sinks/).", ""]
    return "\n".join(lines)


def _bundled_sinks(root: Path) -> list[tuple[str, type[Any], str, str | None]]:
    """``(callback_name, sink class, distribution, README path relative to root or None)`` for bundled sinks."""
    from sluicegate.plugins import get_plugin_manager
    from sluicegate.sinks.registry import SinkRegistry

    registry = SinkRegistry.from_plugin_manager(get_plugin_manager({}))
    found = []
    for name in registry.names():
        distribution, _, rest = registry.owner(name).partition(" (")
        entry_point = rest.rstrip(")")
        if distribution == "sluicegate":
            found.append((name, registry.get(name), distribution, None))
        elif (root / "plugins" / entry_point / "README.md").is_file():
            found.append((name, registry.get(name), distribution, f"plugins/{entry_point}/README.md"))
    return found


def _render_sink_page(name: str, sink_class: type[Any], distribution: str, readme: str | None,
                      root: Path = Path(".")) -> str:
    vars_type = sink_class.Vars
    docs = _docstrings(sys.modules[vars_type.__module__]).get
    hints = typing.get_type_hints(vars_type)
    aliases: dict[str, list[str]] = {}
    for alias, target in vars_type.aliases.items():
        aliases.setdefault(target, []).append(alias)
    from sluicegate.sinks.vars import secret_fields

    secrets = secret_fields(vars_type)
    lines = [f"# `{name}` sink", "",
             "<!-- Generated by `python -m sluicegate.docs_gen` from the sink's Vars struct. Do not edit by hand. -->",
             ""]
    first = (inspect.getdoc(sys.modules[sink_class.__module__]) or "").split("\n\n")[0]
    lines.append(" ".join(first.replace("``", "`").split()))
    where = "built into `sluicegate`" if readme is None else f"distribution `{distribution}`"
    lines += ["", f"`callback_name: \"{name}\"` · {where} · batches of at most {sink_class.max_batch_size} "
              f"events · `send` timeout {sink_class.send_timeout:g} s.", ""]
    lines += ["## callback_vars", "", "| name | type | required | secret | default | aliases | description |",
              "|---|---|---|---|---|---|---|"]
    for info in msgspec.structs.fields(vars_type):
        default = _default(info)
        lines.append("| " + " | ".join([
            f"`{info.name}`", _cell(_type_name(hints[info.name]).replace("SecretStr", "string")),
            "yes" if info.required else "no", "yes" if info.name in secrets else "no",
            "—" if info.required else _cell(default),
            ", ".join(f"`{a}`" for a in sorted(aliases.get(info.name, []))) or "—",
            _cell(docs(f"{vars_type.__name__}.{info.name}", ""))]) + " |")
    lines += ["", "Set them per team (`POST /team/{team_id}/callback`, or `default_team_settings` in config.yaml) "
              "or per key (`metadata.logging`); see [Configuration](../configuration.md). Secret variables are "
              "shown as `***REDACTED***` in every answer. `os.environ/NAME` references are resolved when an admin "
              "writes them.", ""]
    attribution = _attribution_section(sink_class, readme, root)
    if attribution:
        lines += ["## Request attribution", "", attribution, ""]
    if readme:
        lines += [f"Wire format, environment variables for a global entry, delivery and limits: "
                  f"[{readme}](../../{readme}).", ""]
    return "\n".join(lines)


def _attribution_section(sink_class: type[Any], readme: str | None, root: Path) -> str:
    """Where the sink puts a request's attribution: its README's ``## Request attribution`` section, or for a
    built-in sink the paragraph of its module docstring that starts with ``Request attribution:``."""
    if readme is not None:
        text = (root / readme).read_text() if (root / readme).is_file() else ""
        _, found, rest = text.partition("\n## Request attribution\n")
        return rest.split("\n## ", 1)[0].strip() if found else ""
    for paragraph in (inspect.getdoc(sys.modules[sink_class.__module__]) or "").split("\n\n"):
        if paragraph.startswith("Request attribution:"):
            text = " ".join(paragraph.removeprefix("Request attribution:").replace("``", "`").split())
            return text[:1].upper() + text[1:]
    return ""


def render_sink_pages(root: Path = Path(".")) -> dict[str, str]:
    """``{"<callback_name>.md": text}`` for every bundled sink, plus ``README.md`` (the index)."""
    pages: dict[str, str] = {}
    index = ["# Sinks", "",
             "<!-- Generated by `python -m sluicegate.docs_gen`. Do not edit by hand. -->", "",
             "One page per sink bundled with Sluicegate; `sluicegate plugins` lists what is installed. To write your "
             "own: [Writing a sink](../plugins.md) (`sluicegate new-sink NAME`).", "",
             "| callback_name | where | page |", "|---|---|---|"]
    for name, sink_class, distribution, readme in _bundled_sinks(root):
        pages[f"{name}.md"] = _render_sink_page(name, sink_class, distribution, readme, root)
        where = "built in" if readme is None else f"[{readme.split('/')[1]}](../../{readme})"
        index.append(f"| `{name}` | {where} | [{name}.md]({name}.md) |")
    pages["README.md"] = "\n".join([*index, ""])
    return pages


def render_docs(root: Path = Path(".")) -> dict[Path, str]:
    """Every generated file, by path relative to ``root``."""
    files = {OUTPUT: render_config_reference()}
    files.update({SINKS_DIR / page: text for page, text in render_sink_pages(root).items()})
    return files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sluicegate.docs_gen", description=__doc__.split("\n")[0])
    parser.add_argument("--root", type=Path, default=Path("."), help="repository root (default: here)")
    parser.add_argument("--check", action="store_true", help="exit 1 if a file differs instead of writing it")
    args = parser.parse_args(argv)
    stale = []
    for relative, text in render_docs(args.root).items():
        path = args.root / relative
        current = path.read_text(encoding="utf-8") if path.exists() else None
        if current == text:
            continue
        stale.append(str(relative))
        if not args.check:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
    if args.check:
        if stale:
            print(f"out of date: {', '.join(stale)}; run python -m sluicegate.docs_gen", file=sys.stderr)
            return 1
        return 0
    print(f"wrote {', '.join(stale) or 'nothing (all up to date)'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
