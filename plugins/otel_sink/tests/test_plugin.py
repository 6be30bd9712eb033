"""The distribution is really installed and its entry point registers the ``otel`` sink."""

from __future__ import annotations

import importlib.metadata

from sluicegate.plugins import get_plugin_manager
from sluicegate.sinks.registry import SinkRegistry
from sluicegate_otel_sink.sink import OtelSink


def test_plugin_is_installed() -> None:
    entry_points = importlib.metadata.distribution("sluicegate-otel-sink").entry_points
    assert [(ep.group, ep.name, ep.value) for ep in entry_points] == [
        ("sluicegate", "otel_sink", "sluicegate_otel_sink.plugin")]
    registry = SinkRegistry.from_plugin_manager(get_plugin_manager())
    assert registry.get("otel") is OtelSink


def test_disabled_plugin_is_absent() -> None:
    pm = get_plugin_manager({"SLUICEGATE_DISABLE_PLUGINS": "otel_sink"})
    registry = SinkRegistry.from_plugin_manager(pm)
    assert "otel" not in registry


def test_validate_callback_vars_reports_bad_endpoint_and_headers() -> None:
    pm = get_plugin_manager()
    bad = pm.hook.validate_callback_vars(callback_name="otel", callback_vars={
        "otel_endpoint": "collector:4318", "otel_protocol": "http/protobuf", "otel_headers": "novalue"})
    messages = [m for result in bad if result for m in result]
    assert any(m.startswith("otel_endpoint:") for m in messages)
    assert any(m.startswith("otel_headers:") for m in messages)
    assert not any("novalue" in m for m in messages)  # a header item may be a credential: never echoed
    good = pm.hook.validate_callback_vars(callback_name="otel", callback_vars={
        "otel_endpoint": "collector:4317", "otel_protocol": "grpc", "otel_headers": "authorization=Bearer x"})
    assert not [m for result in good if result for m in result]


def test_validate_callback_vars_ignores_other_sinks() -> None:
    pm = get_plugin_manager()
    results = pm.hook.validate_callback_vars(callback_name="file", callback_vars={"otel_endpoint": "x"})
    assert not [m for result in results if result for m in result if m.startswith("otel_")]
