"""The registry of sink classes by ``callback_name``, filled through the ``register_sinks`` hook."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sluicegate.sinks.base import CallbackVars, Sink

if TYPE_CHECKING:
    from sluicegate.plugins import SluicegatePluginManager

__all__ = ("DuplicateCallbackName", "SinkRegistry", "UnknownCallbackName")


class DuplicateCallbackName(RuntimeError):
    pass


class UnknownCallbackName(LookupError):
    def __init__(self, name: str, message: str) -> None:
        self.name = name
        super().__init__(message)


class SinkRegistry:
    """Maps ``callback_name`` to a sink class and remembers which plugin registered it."""

    __slots__ = ("_classes", "_owners", "_load_errors")

    def __init__(self) -> None:
        self._classes: dict[str, type[Sink]] = {}
        self._owners: dict[str, str] = {}
        self._load_errors: dict[str, str] = {}

    @classmethod
    def from_plugin_manager(cls, pm: SluicegatePluginManager) -> SinkRegistry:
        registry = cls()
        for impl in pm.hook.register_sinks.get_hookimpls():
            owner = pm.origin(impl.plugin_name)
            label = f"{owner.distribution or impl.plugin_name} ({impl.plugin_name})"
            impl.function(register=lambda sink_class, _label=label, _name=impl.plugin_name:
                          registry.add(sink_class, owner=_label, plugin_name=_name))
        registry._load_errors = {name: info.error or "" for name, info in pm.load_errors.items()}
        return registry

    def add(self, sink_class: type[Sink], *, owner: str, plugin_name: str = "") -> None:
        if not (isinstance(sink_class, type) and issubclass(sink_class, Sink)):
            raise TypeError(f"{owner} registered {sink_class!r}, which is not a sluicegate.Sink subclass")
        name = getattr(sink_class, "callback_name", None)
        if not isinstance(name, str) or not name:
            raise TypeError(f"{owner}: {sink_class.__qualname__} has no callback_name")
        if not (isinstance(sink_class.Vars, type) and issubclass(sink_class.Vars, CallbackVars)):
            raise TypeError(f"{owner}: {sink_class.__qualname__}.Vars must subclass sluicegate.CallbackVars")
        if name in self._classes:
            raise DuplicateCallbackName(
                f"callback_name {name!r} is registered twice: by {self._owners[name]} and by {owner}. "
                "Uninstall one of them or disable it with SLUICEGATE_DISABLE_PLUGINS=<entry point>.")
        self._classes[name] = sink_class
        self._owners[name] = owner

    def names(self) -> list[str]:
        return sorted(self._classes)

    def owner(self, name: str) -> str:
        return self._owners[name]

    def __contains__(self, name: object) -> bool:
        return name in self._classes

    def get(self, name: str) -> type[Sink]:
        try:
            return self._classes[name]
        except KeyError:
            installed = ", ".join(self.names()) or "none"
            broken = "; ".join(f"plugin {p!r} failed to load: {e}" for p, e in self._load_errors.items())
            message = f"unknown callback_name {name!r}; installed sinks: {installed}"
            raise UnknownCallbackName(name, f"{message}. {broken}" if broken else message) from None

    def by_plugin(self) -> dict[str, list[str]]:
        result: dict[str, list[str]] = {}
        for name, owner in self._owners.items():
            plugin = owner.rsplit("(", 1)[-1].rstrip(")")
            result.setdefault(plugin, []).append(name)
        return result
