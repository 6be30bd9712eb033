"""The registry of provider classes by ``custom_llm_provider``, filled through the ``register_providers`` hook."""

from __future__ import annotations

import difflib
from typing import TYPE_CHECKING

from sluicegate.providers.base import Provider, ProviderParams

if TYPE_CHECKING:
    from sluicegate.plugins import SluicegatePluginManager

__all__ = ("DuplicateProvider", "ProviderRegistry", "UnknownProvider")


class DuplicateProvider(RuntimeError):
    pass


class UnknownProvider(LookupError):
    def __init__(self, name: str, message: str) -> None:
        self.name = name
        super().__init__(message)


class ProviderRegistry:
    """Maps ``custom_llm_provider`` to a provider class and remembers which plugin registered it."""

    __slots__ = ("_classes", "_owners", "_plugins", "_load_errors")

    def __init__(self) -> None:
        self._classes: dict[str, type[Provider]] = {}
        self._owners: dict[str, str] = {}
        self._plugins: dict[str, str] = {}
        self._load_errors: dict[str, str] = {}

    @classmethod
    def from_plugin_manager(cls, pm: SluicegatePluginManager) -> ProviderRegistry:
        registry = cls()
        for impl in pm.hook.register_providers.get_hookimpls():
            owner = pm.origin(impl.plugin_name)
            label = f"{owner.distribution or impl.plugin_name} ({impl.plugin_name})"
            impl.function(register=lambda provider_class, _label=label, _name=impl.plugin_name:
                          registry.add(provider_class, owner=_label, plugin_name=_name))
        registry._load_errors = {name: info.error or "" for name, info in pm.load_errors.items()}
        return registry

    def add(self, provider_class: type[Provider], *, owner: str, plugin_name: str = "") -> None:
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
        if name in self._classes:
            raise DuplicateProvider(
                f"custom_llm_provider {name!r} is registered twice: by {self._owners[name]} and by {owner}. "
                "Uninstall one of them or disable it with SLUICEGATE_DISABLE_PLUGINS=<entry point>.")
        self._classes[name] = provider_class
        self._owners[name] = owner
        self._plugins[name] = plugin_name

    def names(self) -> list[str]:
        return sorted(self._classes)

    def owner(self, name: str) -> str:
        return self._owners[name]

    def __contains__(self, name: object) -> bool:
        return name in self._classes

    def get(self, name: str) -> type[Provider]:
        try:
            return self._classes[name]
        except KeyError:
            hint = difflib.get_close_matches(name, self.names(), n=1, cutoff=0.6)
            message = f"unknown provider {name!r}"
            if hint:
                message += f" (did you mean {hint[0]!r}?)"
            message += f"; known providers: {', '.join(self.names()) or 'none'}"
            broken = "; ".join(f"plugin {p!r} failed to load: {e}" for p, e in self._load_errors.items())
            raise UnknownProvider(name, f"{message}. {broken}" if broken else message) from None

    def by_plugin(self) -> dict[str, list[str]]:
        result: dict[str, list[str]] = {}
        for name, plugin in self._plugins.items():
            result.setdefault(plugin, []).append(name)
        return result
