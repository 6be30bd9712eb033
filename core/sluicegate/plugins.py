"""Building the plugin manager: built-in plugins and entry points, on one path.

``get_plugin_manager()`` builds a fresh manager every call (no import-time state). A plugin that fails to
import or declares a hook that does not exist is recorded in ``load_errors`` and left out, not fatal.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
from collections.abc import Mapping
from typing import Any

import msgspec
import pluggy

from sluicegate import hookspecs

__all__ = ("DEFAULT_PLUGINS", "ENTRY_POINT_GROUP", "PluginInfo", "SluicegatePluginManager", "get_plugin_manager")

ENTRY_POINT_GROUP = "sluicegate"
DEFAULT_PLUGINS = (
    "sluicegate.default_plugins.env_refs",
    "sluicegate.default_plugins.file_sink",
    "sluicegate.default_plugins.providers",
    "sluicegate.default_plugins.redactors",
)


class PluginInfo(msgspec.Struct, kw_only=True):
    name: str
    distribution: str | None
    version: str | None
    entry_point: str | None
    hooks: list[str] = msgspec.field(default_factory=list)
    callback_names: list[str] = msgspec.field(default_factory=list)
    providers: list[str] = msgspec.field(default_factory=list)
    redactors: list[str] = msgspec.field(default_factory=list)
    error: str | None = None


class SluicegatePluginManager(pluggy.PluginManager):
    """A pluggy manager that also remembers where each plugin came from and what failed to load."""

    def __init__(self) -> None:
        super().__init__(hookspecs.PROJECT_NAME)
        self.add_hookspecs(hookspecs)
        self.origins: dict[str, PluginInfo] = {}
        self.load_errors: dict[str, PluginInfo] = {}

    def origin(self, plugin_name: str) -> PluginInfo:
        return self.origins.get(plugin_name) or PluginInfo(name=plugin_name, distribution=None, version=None,
                                                           entry_point=None)

    def describe(self, callback_names: Mapping[str, list[str]] | None = None,
                 providers: Mapping[str, list[str]] | None = None,
                 redactors: Mapping[str, list[str]] | None = None) -> list[PluginInfo]:
        """Every plugin (loaded or failed) with its hooks, sinks, providers and redactors, for ``sluicegate
        plugins`` and ``/-/plugins``."""
        described = []
        for name, plugin in self.list_name_plugin():
            if plugin is None:
                continue
            info = self.origin(name)
            hooks = sorted(h.name for h in self.get_hookcallers(plugin) or ())
            described.append(msgspec.structs.replace(
                info, hooks=hooks, callback_names=sorted((callback_names or {}).get(name, [])),
                providers=sorted((providers or {}).get(name, [])),
                redactors=sorted((redactors or {}).get(name, []))))
        described.extend(self.load_errors.values())
        return sorted(described, key=lambda p: (p.distribution or "", p.name))


def _env_list(value: str | None) -> set[str] | None:
    if value is None:
        return None
    return {part.strip() for part in value.split(",") if part.strip()}


def _drop_invalid(pm: SluicegatePluginManager) -> None:
    """Unregister plugins whose hook implementations match no hookspec (usually a misspelt name)."""
    while True:
        try:
            pm.check_pending()
            return
        except pluggy.PluginValidationError as exc:
            name = pm.get_name(exc.plugin) or repr(exc.plugin)
            known = ", ".join(sorted(n for n in dir(pm.hook) if not n.startswith("_")))
            info = pm.origin(name)
            pm.unregister(exc.plugin)
            pm.load_errors[name] = msgspec.structs.replace(info, error=f"{exc} (known hooks: {known})")


def get_plugin_manager(environ: Mapping[str, str] | None = None) -> SluicegatePluginManager:
    """Build a fresh plugin manager with the built-in plugins and every installed entry point.

    ``SLUICEGATE_LOAD_PLUGINS`` (comma-separated distribution names; empty = none) restricts which
    distributions load; ``SLUICEGATE_DISABLE_PLUGINS`` (comma-separated entry point names) skips some.
    """
    environ = os.environ if environ is None else environ
    pm = SluicegatePluginManager()
    for module_name in DEFAULT_PLUGINS:
        pm.register(importlib.import_module(module_name), name=module_name)
        pm.origins[module_name] = PluginInfo(name=module_name, distribution="sluicegate",
                                             version=_version("sluicegate"), entry_point=None)
    allow = _env_list(environ.get("SLUICEGATE_LOAD_PLUGINS"))
    deny = _env_list(environ.get("SLUICEGATE_DISABLE_PLUGINS")) or set()
    seen: set[str] = set()
    for entry_point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        dist = entry_point.dist.name if entry_point.dist else None
        if allow is not None and dist not in allow:
            continue
        if entry_point.name in deny or entry_point.name in seen:
            continue
        seen.add(entry_point.name)
        info = PluginInfo(name=entry_point.name, distribution=dist,
                          version=entry_point.dist.version if entry_point.dist else None,
                          entry_point=f"{entry_point.name} = {entry_point.value}")
        try:
            module: Any = entry_point.load()
            pm.register(module, name=entry_point.name)
        except Exception as exc:  # a broken plugin is shown, not fatal
            pm.load_errors[entry_point.name] = msgspec.structs.replace(
                info, error=f"{type(exc).__name__}: {exc}")
            continue
        pm.origins[entry_point.name] = info
    _drop_invalid(pm)
    return pm


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None
