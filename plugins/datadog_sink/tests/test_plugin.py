"""The distribution is really installed and its hooks behave: entry point, registry, config validation."""

from __future__ import annotations

import importlib.metadata

from sluicegate.plugins import get_plugin_manager
from sluicegate.sinks.registry import SinkRegistry
from sluicegate.sinks.vars import decode_vars
from sluicegate_datadog_sink.sink import DatadogSink, DatadogVars


def test_plugin_is_installed() -> None:
    entry_points = importlib.metadata.entry_points(group="sluicegate", name="datadog_sink")
    assert [ep.value for ep in entry_points] == ["sluicegate_datadog_sink.plugin"]
    assert next(iter(entry_points)).dist.name == "sluicegate-datadog-sink"
    registry = SinkRegistry.from_plugin_manager(get_plugin_manager())
    assert registry.get("datadog") is DatadogSink
    assert "sluicegate-datadog-sink" in registry.owner("datadog")


def test_plugin_can_be_disabled() -> None:
    pm = get_plugin_manager({"SLUICEGATE_DISABLE_PLUGINS": "datadog_sink"})
    assert "datadog" not in SinkRegistry.from_plugin_manager(pm)


def _validate(callback_vars: dict) -> list[str]:
    pm = get_plugin_manager({"SLUICEGATE_LOAD_PLUGINS": "sluicegate-datadog-sink"})
    return [m for messages in pm.hook.validate_callback_vars(callback_name="datadog", callback_vars=callback_vars)
            if messages for m in messages]


def test_validate_accepts_a_complete_entry() -> None:
    assert _validate({"dd_api_key": "k", "dd_site": "datadoghq.eu"}) == []
    assert _validate({"dd_agent_host": "dd-agent.internal", "dd_agent_port": "10518"}) == []


def test_validate_reports_a_missing_key_and_a_bad_site() -> None:
    assert _validate({"dd_site": "datadoghq.eu"}) == [
        "dd_api_key: required to send to Datadog directly (or set dd_agent_host for an agent)"]
    assert _validate({"dd_api_key": "k", "dd_site": "https://datadoghq.eu/some/path"})[0].startswith("dd_site:")
    assert _validate({"dd_agent_host": "http://agent:10518"})[0].startswith("dd_agent_host:")


def test_validate_only_answers_for_datadog() -> None:
    pm = get_plugin_manager({"SLUICEGATE_LOAD_PLUGINS": "sluicegate-datadog-sink"})
    assert pm.hook.validate_callback_vars(callback_name="langfuse", callback_vars={"dd_site": "x"}) in ([], [None])


def test_validate_leaves_an_entry_without_vars_to_the_core() -> None:
    # The seed's redaction override: {"turn_off_message_logging": false} and nothing else.
    assert _validate({}) == []
    assert _validate({"turn_off_message_logging": False}) == []


def test_env_defaults_use_litellm_names() -> None:
    environ = {"DD_API_KEY": "env-key", "DD_SITE": "datadoghq.eu", "LITELLM_DD_AGENT_HOST": "agent",
               "LITELLM_DD_AGENT_PORT": "10519", "DD_SOURCE": "gw", "DD_SERVICE": "gateway", "OTHER": "x"}
    defaults = DatadogSink.env_defaults(environ)
    assert defaults == {"dd_api_key": "env-key", "dd_site": "datadoghq.eu", "dd_agent_host": "agent",
                        "dd_agent_port": "10519", "dd_source": "gw", "dd_service": "gateway"}
    decoded = decode_vars(DatadogVars, defaults)
    assert decoded.dd_agent_port == 10519 and decoded.dd_api_key.get_secret_value() == "env-key"
    assert DatadogSink.env_defaults({"DD_API_KEY": ""}) == {}
