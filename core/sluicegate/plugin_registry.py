"""What the sink, provider and redactor registries share: a map from a plugin-chosen name to the class a plugin
registered through its hook (``register_sinks``, ``register_providers``, ``register_redactors``), with the plugin
that registered it, refusing a name registered twice and explaining an unknown one.

Each registry says what a valid class of its kind is (:meth:`PluginRegistry.check`, returning the name it
registers under) and how an unknown name is refused (:meth:`PluginRegistry.unknown`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, Generic, TypeVar

if TYPE_CHECKING:
    from typing import Self

    from sluicegate.plugins import SluicegatePluginManager

__all__ = ("PluginRegistry",)

T = TypeVar("T")


class PluginRegistry(Generic[T]):
    """Maps a name to a plugin's class and remembers which plugin registered it."""

    hook: ClassVar[str]
    """The hook whose implementations fill the registry (``register_sinks``...)."""
    what: ClassVar[str]
    """How the name is spoken of in the duplicate error (``callback_name``, ``custom_llm_provider``...)."""
    duplicate_error: ClassVar[type[Exception]] = RuntimeError

    __slots__ = ("_classes", "_load_errors", "_owners", "_plugins")

    def __init__(self) -> None:
        self._classes: dict[str, type[T]] = {}
        self._owners: dict[str, str] = {}
        self._plugins: dict[str, str] = {}
        self._load_errors: dict[str, str] = {}

    @classmethod
    def from_plugin_manager(cls, pm: SluicegatePluginManager) -> Self:
        registry = cls()
        for impl in getattr(pm.hook, cls.hook).get_hookimpls():
            origin = pm.origin(impl.plugin_name)
            label = f"{origin.distribution or impl.plugin_name} ({impl.plugin_name})"
            impl.function(register=lambda plugin_class, _label=label, _name=impl.plugin_name:
                          registry.add(plugin_class, owner=_label, plugin_name=_name))
        registry._load_errors = {name: info.error or "" for name, info in pm.load_errors.items()}
        return registry

    def check(self, plugin_class: type[T], owner: str) -> str:
        """``plugin_class``'s registered name, after checking it is a valid class of this kind (``TypeError``
        naming ``owner`` otherwise)."""
        raise NotImplementedError

    def unknown(self, name: str) -> LookupError:
        """The error for a name nothing registered."""
        raise NotImplementedError

    def add(self, plugin_class: type[T], *, owner: str, plugin_name: str = "") -> None:
        name = self.check(plugin_class, owner)
        if name in self._classes:
            raise self.duplicate_error(
                f"{self.what} {name!r} is registered twice: by {self._owners[name]} and by {owner}. "
                "Uninstall one of them or disable it with SLUICEGATE_DISABLE_PLUGINS=<entry point>.")
        self._classes[name] = plugin_class
        self._owners[name] = owner
        self._plugins[name] = plugin_name or owner.rsplit("(", 1)[-1].rstrip(")")

    def names(self) -> list[str]:
        return sorted(self._classes)

    def owner(self, name: str) -> str:
        return self._owners[name]

    def __contains__(self, name: object) -> bool:
        return name in self._classes

    def get(self, name: str) -> type[T]:
        try:
            return self._classes[name]
        except KeyError:
            raise self.unknown(name) from None

    def load_problems(self) -> str:
        """The plugins that failed to load, as one sentence (empty when none did): an unknown name is often
        theirs."""
        return "; ".join(f"plugin {p!r} failed to load: {e}" for p, e in self._load_errors.items())

    def by_plugin(self) -> dict[str, list[str]]:
        result: dict[str, list[str]] = {}
        for name, plugin in self._plugins.items():
            result.setdefault(plugin, []).append(name)
        return result
