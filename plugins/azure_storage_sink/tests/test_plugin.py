"""The distribution is really installed: its entry point is found and registers the sink."""

from __future__ import annotations

import importlib.metadata

from sluicegate.plugins import get_plugin_manager
from sluicegate.sinks.registry import SinkRegistry
from sluicegate_azure_storage_sink.sink import AzureStorageSink

KEY = "c2x1aWNlZ2F0ZS1henVyaXRlLXRlc3Qta2V5LWFjY291bnQtb25lLTAxMjM0NTY3ODlhYmNkZWY="


def test_plugin_is_installed() -> None:
    entry_points = importlib.metadata.entry_points(group="sluicegate", name="azure_storage_sink")
    assert [ep.value for ep in entry_points] == ["sluicegate_azure_storage_sink.plugin"]
    assert next(iter(entry_points)).dist.name == "sluicegate-azure-storage-sink"
    registry = SinkRegistry.from_plugin_manager(get_plugin_manager())
    assert registry.get("azure_storage") is AzureStorageSink


def test_plugin_can_be_disabled() -> None:
    pm = get_plugin_manager({"SLUICEGATE_DISABLE_PLUGINS": "azure_storage_sink"})
    assert "azure_storage" not in SinkRegistry.from_plugin_manager(pm)


def _validate(callback_vars: dict) -> list[str]:
    pm = get_plugin_manager({"SLUICEGATE_LOAD_PLUGINS": "sluicegate-azure-storage-sink"})
    return [m for messages in pm.hook.validate_callback_vars(callback_name="azure_storage",
                                                             callback_vars=callback_vars)
            if messages for m in messages]


def test_validate_accepts_a_key_or_a_sas_token() -> None:
    base = {"azure_storage_account_name": "acme", "azure_storage_container": "llm-logs"}
    assert _validate({**base, "azure_storage_account_key": KEY}) == []
    assert _validate({**base, "azure_storage_sas_token": "?sv=2024-11-04&sp=cw&sig=abc%3D"}) == []


def test_validate_names_every_problem_without_echoing_secrets() -> None:
    problems = _validate({"azure_storage_account_name": "Bad_Account", "azure_storage_container": "x",
                          "azure_storage_sas_token": "not a token secret-123",
                          "azure_storage_endpoint": "https://user:pw@acme.blob.core.windows.net"})
    assert [p.split(":")[0] for p in problems] == ["azure_storage_account_name", "azure_storage_container",
                                                  "azure_storage_sas_token", "azure_storage_endpoint"]
    assert "secret-123" not in str(problems) and "pw@" not in str(problems)
    assert _validate({"azure_storage_account_name": "acme", "azure_storage_container": "logs"}) == [
        "azure_storage_account_key: give the account key or azure_storage_sas_token"]
