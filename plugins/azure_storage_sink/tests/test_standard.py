"""Sluicegate's conformance suite, against Azurite (a real health check: the container's properties)."""

from __future__ import annotations

from typing import Any

import pytest

from sluicegate.testing import SinkStandardTests
from sluicegate_azure_storage_sink.sink import AzureStorageSink

from .conftest import ACCOUNT, ACCOUNT_KEY, Azurite


class TestAzureStorageSink(SinkStandardTests):
    sink_class = AzureStorageSink

    @pytest.fixture
    def callback_vars(self, azurite: Azurite) -> dict[str, Any]:
        return {"azure_storage_account_name": ACCOUNT, "azure_storage_account_key": ACCOUNT_KEY,
                "azure_storage_container": azurite.new_container("standard"),
                "azure_storage_endpoint": azurite.url()}

    async def test_health_check_is_healthy_against_azurite(self, sink: AzureStorageSink) -> None:
        result = await sink.health_check()
        assert result.healthy, result
