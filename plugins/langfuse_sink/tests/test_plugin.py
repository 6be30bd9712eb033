"""The distribution is installed, its entry point loads, and the registry maps ``langfuse`` to it."""

from __future__ import annotations

import importlib.metadata

from sluicegate.plugins import get_plugin_manager
from sluicegate.sinks.registry import SinkRegistry
from sluicegate_langfuse_sink import plugin
from sluicegate_langfuse_sink.sink import LangfuseSink


def test_plugin_is_installed() -> None:
    entry_points = importlib.metadata.entry_points(group="sluicegate", name="langfuse_sink")
    assert [ep.value for ep in entry_points] == ["sluicegate_langfuse_sink.plugin"]
    assert next(iter(entry_points)).dist.name == "sluicegate-langfuse-sink"
    registry = SinkRegistry.from_plugin_manager(get_plugin_manager({}))
    assert registry.get("langfuse") is LangfuseSink
    assert "sluicegate-langfuse-sink" in registry.owner("langfuse")


def test_disabled_plugin_is_absent() -> None:
    registry = SinkRegistry.from_plugin_manager(get_plugin_manager({"SLUICEGATE_DISABLE_PLUGINS": "langfuse_sink"}))
    assert "langfuse" not in registry
    assert "file" in registry  # the manager still loaded the rest


def _validate(**callback_vars: object) -> list[str] | None:
    return plugin.validate_callback_vars(callback_name="langfuse", callback_vars=callback_vars)


def test_validate_accepts_good_vars() -> None:
    assert _validate(langfuse_public_key="pk-lf-1", langfuse_secret_key="sk-lf-1",
                     langfuse_host="https://cloud.langfuse.com") == []
    assert _validate(langfuse_public_key="pk-lf-1", langfuse_secret="sk-lf-1") == []


def test_validate_reports_what_would_fail_every_delivery() -> None:
    problems = _validate(langfuse_public_key="sk-lf-1", langfuse_secret_key="pk-lf-1",
                         langfuse_host="ftp://user:pw@example.com")
    assert problems is not None
    assert any(p.startswith("langfuse_public_key: looks like a secret key") for p in problems)
    assert any(p.startswith("langfuse_host: must be an http(s) URL") for p in problems)
    assert any(p.startswith("langfuse_host: must not carry credentials") for p in problems)
    assert _validate(langfuse_public_key="pk:1", langfuse_secret_key="x") == [
        "langfuse_public_key: must not contain ':' (it is the Basic auth user name)"]
    assert _validate(langfuse_public_key="pk-lf-1", langfuse_secret_key="   ") == [
        "langfuse_secret_key: must not be empty"]


def test_validate_ignores_other_sinks() -> None:
    assert plugin.validate_callback_vars(callback_name="otel", callback_vars={"langfuse_host": "ftp://x"}) is None
