"""The distribution is really installed: its entry point is found and registers both sinks."""

from __future__ import annotations

import importlib.metadata

from sluicegate.plugins import get_plugin_manager
from sluicegate.sinks.registry import SinkRegistry
from sluicegate_arize_phoenix_sink.sink import ArizePhoenixSink, ArizeSink


def test_plugin_is_installed() -> None:
    entry_points = importlib.metadata.entry_points(group="sluicegate", name="arize_phoenix_sink")
    assert [ep.value for ep in entry_points] == ["sluicegate_arize_phoenix_sink.plugin"]
    assert next(iter(entry_points)).dist.name == "sluicegate-arize-phoenix-sink"
    registry = SinkRegistry.from_plugin_manager(get_plugin_manager())
    assert registry.get("arize_phoenix") is ArizePhoenixSink
    assert registry.get("arize") is ArizeSink


def test_plugin_can_be_disabled() -> None:
    pm = get_plugin_manager({"SLUICEGATE_DISABLE_PLUGINS": "arize_phoenix_sink"})
    registry = SinkRegistry.from_plugin_manager(pm)
    assert "arize_phoenix" not in registry and "arize" not in registry


def _validate(name: str, callback_vars: dict) -> list[str]:
    pm = get_plugin_manager({"SLUICEGATE_LOAD_PLUGINS": "sluicegate-arize-phoenix-sink"})
    return [m for messages in pm.hook.validate_callback_vars(callback_name=name, callback_vars=callback_vars)
            if messages for m in messages]


def test_validate_accepts_an_origin_or_a_traces_url() -> None:
    assert _validate("arize_phoenix", {"phoenix_collector_endpoint": "http://phoenix:6006"}) == []
    assert _validate("arize", {"arize_space_key": "s", "arize_api_key": "k"}) == []


def test_validate_names_problems_without_echoing_secrets() -> None:
    found = _validate("arize_phoenix", {"phoenix_collector_endpoint": "phoenix:6006",
                                        "phoenix_api_key": "key\nsecret-123", "phoenix_project_name": ""})
    assert [p.split(":")[0] for p in found] == ["phoenix_collector_endpoint", "phoenix_project_name",
                                               "phoenix_api_key"]
    assert "secret-123" not in str(found)
