"""The distribution is really installed: its entry point is found and registers the sink; its hook validates."""

from __future__ import annotations

import importlib.metadata

from sluicegate.plugins import get_plugin_manager
from sluicegate.sinks.registry import SinkRegistry
from sluicegate_langsmith_sink.sink import LangsmithSink


def test_plugin_is_installed() -> None:
    entry_points = importlib.metadata.entry_points(group="sluicegate", name="langsmith_sink")
    assert [ep.value for ep in entry_points] == ["sluicegate_langsmith_sink.plugin"]
    assert next(iter(entry_points)).dist.name == "sluicegate-langsmith-sink"
    registry = SinkRegistry.from_plugin_manager(get_plugin_manager())
    assert registry.get("langsmith") is LangsmithSink


def test_plugin_can_be_disabled() -> None:
    pm = get_plugin_manager({"SLUICEGATE_DISABLE_PLUGINS": "langsmith_sink"})
    assert "langsmith" not in SinkRegistry.from_plugin_manager(pm)


def _validate(callback_vars: dict) -> list[str]:
    pm = get_plugin_manager({"SLUICEGATE_LOAD_PLUGINS": "sluicegate-langsmith-sink"})
    return [m for messages in pm.hook.validate_callback_vars(callback_name="langsmith", callback_vars=callback_vars)
            if messages for m in messages]


def test_validate_accepts_litellm_style_vars() -> None:
    assert _validate({"langsmith_api_key": "lsv2_pt_x", "langsmith_project": "team-a",
                      "langsmith_base_url": "https://eu.api.smith.langchain.com",
                      "langsmith_sampling_rate": 0.25}) == []


def test_validate_reports_each_problem_without_echoing_the_key() -> None:
    messages = _validate({"langsmith_api_key": "lsv2 key\n", "langsmith_project": "",
                          "langsmith_base_url": "ftp://x", "langsmith_sampling_rate": 1.5})
    assert sorted(m.split(":")[0] for m in messages) == ["langsmith_api_key", "langsmith_base_url",
                                                         "langsmith_project", "langsmith_sampling_rate"], messages
    assert "lsv2 key" not in str(messages)
