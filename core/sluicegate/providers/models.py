"""The model list: ``model_name`` → its deployments (each: provider, upstream model, base URL, key, costs, id).

Built once at start-up from ``model_list``: each entry's provider comes from the registry (an unknown prefix
names the known ones), its ``litellm_params`` are checked against the provider's ``Params``, and ``api_base`` /
``api_key`` fall back to the provider's environment variables and default base. Every problem is reported
together, with its YAML path, as a :class:`~sluicegate.config.ConfigError`: never at request time.
"""

from __future__ import annotations

import difflib
import hashlib
import logging
import math
import os
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import msgspec

from sluicegate.config import ConfigError
from sluicegate.cost import PRICE_KEYS, Price, resolve_price
from sluicegate.providers.registry import UnknownProvider

if TYPE_CHECKING:
    from sluicegate.config import ModelEntry, Settings
    from sluicegate.providers.base import Provider, ProviderClients
    from sluicegate.providers.registry import ProviderRegistry

__all__ = ("Deployment", "ModelRouter", "build_deployments")

log = logging.getLogger("sluicegate.cost")


class Deployment(msgspec.Struct, kw_only=True):
    """One configured model. ``provider`` is the instance that answers for it (set when the gateway builds it)."""

    model_name: str
    custom_llm_provider: str
    upstream_model: str
    api_base: str | None
    api_key: str | None = msgspec.field(default=None)
    model_id: str = ""
    """``model_info.id``, else a stable hash of the entry's name and params (the event's ``model_id``)."""
    timeout: float = 600.0
    stream_timeout: float | None = None
    rpm: int | None = None
    tpm: int | None = None
    weight: float | None = None
    model_info: dict[str, Any] | None = None
    public_params: dict[str, Any] | None = None
    """``litellm_params`` as configured, secrets masked (what ``/model/info`` shows)."""
    provider_class: Any = None
    provider_params: Any = None
    mock_response: Any = None
    price_model: str = ""
    """The model looked up in the price table (``base_model`` when given, else the upstream model)."""
    price: Price | None = None
    """Resolved at start-up; None when neither the table nor the config prices the model (cost 0)."""
    price_overrides: dict[str, float] | None = None
    """The config's prices (LiteLLM's keys), kept to price the models a wildcard deployment serves."""
    drop_params: bool = False
    extra_headers: dict[str, str] | None = None
    provider: Any = None

    def __repr__(self) -> str:  # never show the upstream key
        return (f"Deployment({self.model_name!r} -> {self.custom_llm_provider}/{self.upstream_model} "
                f"at {self.api_base})")

    @property
    def completions_url(self) -> str:
        return f"{(self.api_base or '').rstrip('/')}/chat/completions"

    def cost(self, usage: Mapping[str, Any], at: float) -> float:
        """USD for an answer's OpenAI ``usage`` (0 for a model nobody priced); ``at``: when it was asked."""
        price = self.price
        return price.cost(usage, at) if price is not None else 0.0


def _first_env(names: tuple[str, ...], environ: Mapping[str, str]) -> str | None:
    for name in names:
        if environ.get(name):
            return environ[name]
    return None


def _param_problem(provider_class: type[Provider], path: str, exc: msgspec.ValidationError) -> str:
    message = str(exc)
    field = message.rsplit("at `$.", 1)[-1].rstrip("`") if "at `$." in message else ""
    reason = message.split(" - at ")[0]
    unknown = reason.startswith("Object contains unknown field")
    if unknown:
        name = reason.split("`")[1]
        known = [*provider_class.Params.__struct_fields__, "api_base", "api_key", "timeout", "mock_response",
                 "drop_params", "base_model", *PRICE_KEYS]
        hint = difflib.get_close_matches(name, known, n=1, cutoff=0.7)
        own = ", ".join(provider_class.Params.__struct_fields__) or "none"
        return (f"{path}.{name}: not a parameter of {provider_class.custom_llm_provider}"
                + (f" (did you mean {hint[0]!r}?)" if hint else "") + f"; its own parameters: {own}")
    return f"{path}.{field}: {reason}" if field else f"{path}: {reason}"


def build_deployments(settings: Settings, registry: ProviderRegistry,
                      environ: Mapping[str, str] | None = None) -> list[Deployment]:
    """Every entry of ``settings.model_list`` as a :class:`Deployment` with its provider (several may share a
    ``model_name``); raises :class:`ConfigError` listing every problem (YAML paths) at once."""
    environ = os.environ if environ is None else environ
    problems: list[str] = []
    deployments: list[Deployment] = []
    global_drop = settings.litellm_settings.drop_params
    timeout = settings.router_settings.timeout or settings.litellm_settings.request_timeout or 600.0
    for index, entry in enumerate(settings.model_list):
        path = f"model_list[{index}].litellm_params"
        deployment = _deployment(entry, path, registry, environ, global_drop, problems, timeout,
                                 settings.router_settings.stream_timeout)
        if deployment is not None:
            deployments.append(deployment)
    if problems:
        raise ConfigError(problems)
    return deployments


SECRET_PARAM_WORDS = ("key", "secret", "token", "password", "credential")


def masked_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """``litellm_params`` for display: any value under a secret-looking name shown as its last 4 characters."""
    shown: dict[str, Any] = {}
    for name, value in params.items():
        if value is not None and any(word in name.lower() for word in SECRET_PARAM_WORDS):
            text = str(value)
            shown[name] = "***" + text[-4:] if len(text) >= 12 else "***"
        else:
            shown[name] = value
    return shown


def deployment_id(entry: ModelEntry) -> str:
    """``model_info.id``, else a hash of the entry's name and params: stable across restarts and replicas."""
    given = (entry.model_info or {}).get("id")
    if given is not None:
        return str(given)
    material = msgspec.json.encode([entry.model_name, msgspec.to_builtins(entry.litellm_params)], order="sorted")
    return hashlib.sha256(material).hexdigest()


def _deployment(entry: ModelEntry, path: str, registry: ProviderRegistry, environ: Mapping[str, str],
                global_drop: bool, problems: list[str], default_timeout: float = 600.0,
                default_stream_timeout: float | None = None) -> Deployment | None:
    params = entry.litellm_params
    name, _, upstream = params.model.partition("/")
    if not upstream:
        name, upstream = params.custom_llm_provider or "openai", params.model
    try:
        provider_class = registry.get(name)
    except UnknownProvider as exc:
        problems.append(f"{path}.model: {exc}")
        return None
    try:
        provider_params = msgspec.convert(params.extra, provider_class.Params, strict=False)
    except msgspec.ValidationError as exc:
        problems.append(_param_problem(provider_class, path, exc))
        return None
    from_env = {field: value for field, names in provider_class.params_env.items()
                if getattr(provider_params, field, None) is None and (value := _first_env(names, environ))}
    if from_env:
        provider_params = msgspec.structs.replace(provider_params, **from_env)
    deployment = Deployment(
        model_name=entry.model_name, custom_llm_provider=name, upstream_model=upstream,
        api_base=params.api_base or _first_env(provider_class.api_base_env, environ) or provider_class.default_api_base,
        api_key=params.api_key or _first_env(provider_class.api_key_env, environ),
        timeout=params.timeout or default_timeout, mock_response=params.mock_response,
        drop_params=global_drop if params.drop_params is None else params.drop_params,
        model_id=deployment_id(entry), stream_timeout=params.stream_timeout or default_stream_timeout,
        rpm=params.rpm, tpm=params.tpm, weight=params.weight, model_info=entry.model_info,
        public_params=masked_params({k: v for k, v in msgspec.to_builtins(params).items()
                                     if k != "extra" and v is not None} | params.extra),
        provider_class=provider_class, provider_params=provider_params)
    if params.mock_response is None:  # an offline model needs no upstream
        found = provider_class.check(deployment, provider_params, environ)
        if found:
            problems.extend(f"{path}.{p}" if not p.startswith(path) else p for p in found)
            return None
        base = deployment.api_base
        if base is not None and not base.startswith(("http://", "https://")):
            problems.append(f"{path}.api_base: not an http(s) URL: {base!r}")
            return None
    if not _price(deployment, entry, provider_class, path, problems):
        return None
    try:
        deployment.provider = provider_class(deployment, provider_params)
    except Exception as exc:  # a third-party provider refusing its configuration
        problems.append(f"{path}: {name} refused this configuration: {exc}")
        return None
    return deployment


def _price(deployment: Deployment, entry: ModelEntry, provider_class: type[Provider], path: str,
           problems: list[str]) -> bool:
    """Resolve the deployment's price once: ``litellm_params`` prices, else ``model_info``'s, else the table's
    (key by key), looked up under ``base_model`` (``litellm_params``, then ``model_info``) or the upstream model."""
    params = entry.litellm_params
    info = entry.model_info or {}
    overrides: dict[str, float] = {}
    for key in PRICE_KEYS:
        value = getattr(params, key)
        where = path
        if value is None and info.get(key) is not None:
            value, where = info[key], path.rsplit(".", 1)[0] + ".model_info"
            try:  # model_info is free-form: LiteLLM configs carry numbers, sometimes as strings
                value = float(value)
            except (TypeError, ValueError):
                value = math.nan
        if value is not None:
            if not math.isfinite(value) or value < 0:
                problems.append(f"{where}.{key}: expected a non-negative number (USD per token)")
                return False
            overrides[key] = value
    deployment.price_overrides = overrides
    base_model = params.base_model or info.get("base_model")
    deployment.price_model = str(base_model) if base_model else deployment.upstream_model
    table_provider = provider_class.price_provider or provider_class.custom_llm_provider
    deployment.price = resolve_price(table_provider, deployment.price_model, overrides, time.time())
    return True


def for_wildcard(deployment: Deployment, name: str, matched: str) -> Deployment:
    """A wildcard deployment (``model: openai/*``) made concrete for the model ``name`` a client asked for,
    ``matched`` being what its ``model_name``'s ``*`` stood for; its provider is built like any other's."""
    upstream = deployment.upstream_model.replace("*", matched) if "*" in deployment.upstream_model \
        else deployment.upstream_model
    concrete = msgspec.structs.replace(deployment, model_name=name, upstream_model=upstream,
                                       model_id=deployment.model_id, provider=None)
    if "*" in deployment.price_model:  # no base_model: price the concrete model (the config's prices still win)
        provider_class = deployment.provider_class
        concrete.price_model = upstream
        concrete.price = resolve_price(provider_class.price_provider or provider_class.custom_llm_provider,
                                       upstream, deployment.price_overrides or {}, time.time())
    concrete.provider = deployment.provider_class(concrete, deployment.provider_params)
    return concrete


class ModelRouter:
    """The configured deployments grouped by ``model_name`` (the routing itself lives in :mod:`sluicegate.router`)."""

    __slots__ = ("all", "groups")

    def __init__(self, deployments: list[Deployment]) -> None:
        self.all: list[Deployment] = list(deployments)
        self.groups: dict[str, list[Deployment]] = {}
        for deployment in self.all:
            self.groups.setdefault(deployment.model_name, []).append(deployment)

    @classmethod
    def from_settings(cls, settings: Settings, registry: ProviderRegistry,
                      environ: Mapping[str, str] | None = None) -> ModelRouter:
        return cls(build_deployments(settings, registry, environ))

    def get(self, name: str) -> Deployment | None:
        """The first deployment of the group ``name`` (the router picks among all of them per request)."""
        group = self.groups.get(name)
        return group[0] if group else None

    def names(self) -> list[str]:
        return list(self.groups)

    def unpriced(self) -> list[str]:
        """``provider/model`` of every configured model that neither the price table nor the config prices."""
        return sorted({f"{d.custom_llm_provider}/{d.price_model}" for d in self.all
                       if d.price is None and "*" not in d.price_model})

    async def start(self, clients: ProviderClients) -> None:
        for name in self.unpriced():  # one line per model and process, never per request
            log.warning("no price for %s (not in genai-prices' table): its response_cost is 0; set "
                        "input_cost_per_token / output_cost_per_token in its litellm_params or model_info, or "
                        "base_model to the model it is", name)
        for deployment in self.all:
            await deployment.provider.start(clients)

    async def aclose(self) -> None:
        for deployment in self.all:
            await deployment.provider.aclose()
