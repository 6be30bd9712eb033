"""The registry of sink classes by ``callback_name``, filled through the ``register_sinks`` hook."""

from __future__ import annotations

from sluicegate.plugin_registry import PluginRegistry
from sluicegate.sinks.base import CallbackVars, Sink

__all__ = ("DuplicateCallbackName", "SinkRegistry", "UnknownCallbackName")


class DuplicateCallbackName(RuntimeError):
    pass


class UnknownCallbackName(LookupError):
    def __init__(self, name: str, message: str) -> None:
        self.name = name
        super().__init__(message)


class SinkRegistry(PluginRegistry[Sink]):
    """Maps ``callback_name`` to a sink class and remembers which plugin registered it."""

    hook = "register_sinks"
    what = "callback_name"
    duplicate_error = DuplicateCallbackName
    __slots__ = ()

    def check(self, sink_class: type[Sink], owner: str) -> str:
        if not (isinstance(sink_class, type) and issubclass(sink_class, Sink)):
            raise TypeError(f"{owner} registered {sink_class!r}, which is not a sluicegate.Sink subclass")
        name = getattr(sink_class, "callback_name", None)
        if not isinstance(name, str) or not name:
            raise TypeError(f"{owner}: {sink_class.__qualname__} has no callback_name")
        if not (isinstance(sink_class.Vars, type) and issubclass(sink_class.Vars, CallbackVars)):
            raise TypeError(f"{owner}: {sink_class.__qualname__}.Vars must subclass sluicegate.CallbackVars")
        return name

    def unknown(self, name: str) -> UnknownCallbackName:
        message = f"unknown callback_name {name!r}; installed sinks: {', '.join(self.names()) or 'none'}"
        broken = self.load_problems()
        return UnknownCallbackName(name, f"{message}. {broken}" if broken else message)
