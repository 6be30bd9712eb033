"""The registry of provider classes by ``custom_llm_provider``, filled through the ``register_providers`` hook."""

from __future__ import annotations

import difflib

from sluicegate.plugin_registry import PluginRegistry
from sluicegate.providers.base import Provider, ProviderParams

__all__ = ("DuplicateProvider", "ProviderRegistry", "UnknownProvider")


class DuplicateProvider(RuntimeError):
    pass


class UnknownProvider(LookupError):
    def __init__(self, name: str, message: str) -> None:
        self.name = name
        super().__init__(message)


class ProviderRegistry(PluginRegistry[Provider]):
    """Maps ``custom_llm_provider`` to a provider class and remembers which plugin registered it."""

    hook = "register_providers"
    what = "custom_llm_provider"
    duplicate_error = DuplicateProvider
    __slots__ = ()

    def check(self, provider_class: type[Provider], owner: str) -> str:
        if not (isinstance(provider_class, type) and issubclass(provider_class, Provider)):
            raise TypeError(f"{owner} registered {provider_class!r}, which is not a sluicegate.Provider subclass")
        name = getattr(provider_class, "custom_llm_provider", None)
        if not isinstance(name, str) or not name or "/" in name:
            raise TypeError(f"{owner}: {provider_class.__qualname__} has no custom_llm_provider (a name without '/')")
        params = provider_class.Params
        if not (isinstance(params, type) and issubclass(params, ProviderParams)):
            raise TypeError(f"{owner}: {provider_class.__qualname__}.Params must subclass sluicegate.ProviderParams")
        if not params.__struct_config__.forbid_unknown_fields:
            raise TypeError(f"{owner}: {provider_class.__qualname__}.Params must refuse unknown keys "
                            "(forbid_unknown_fields=True)")
        return name

    def unknown(self, name: str) -> UnknownProvider:
        hint = difflib.get_close_matches(name, self.names(), n=1, cutoff=0.6)
        message = f"unknown provider {name!r}"
        if hint:
            message += f" (did you mean {hint[0]!r}?)"
        message += f"; known providers: {', '.join(self.names()) or 'none'}"
        broken = self.load_problems()
        return UnknownProvider(name, f"{message}. {broken}" if broken else message)
