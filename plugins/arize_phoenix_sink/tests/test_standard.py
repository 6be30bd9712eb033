"""Sluicegate's conformance suite for both sinks: ``arize_phoenix`` against the real Phoenix server (a real health
check), ``arize`` against a loopback receiver (Arize's hosted endpoint cannot run here)."""

from __future__ import annotations

from typing import Any

import pytest

from sluicegate.testing import HttpReceiver, SinkStandardTests
from sluicegate_arize_phoenix_sink.sink import ArizePhoenixSink, ArizeSink

from .conftest import ADMIN_SECRET, Phoenix


class TestArizePhoenixSink(SinkStandardTests):
    sink_class = ArizePhoenixSink

    @pytest.fixture
    def callback_vars(self, phoenix: Phoenix) -> dict[str, Any]:
        return {"phoenix_collector_endpoint": phoenix.url, "phoenix_api_key": ADMIN_SECRET,
                "phoenix_project_name": "standard"}

    async def test_health_check_is_healthy_against_phoenix(self, sink: ArizePhoenixSink) -> None:
        result = await sink.health_check()
        assert result.healthy, result


class TestArizeSink(SinkStandardTests):
    sink_class = ArizeSink

    @pytest.fixture
    def callback_vars(self, http_receiver: HttpReceiver) -> dict[str, Any]:
        return {"arize_endpoint": f"{http_receiver.url}/v1/traces", "arize_space_key": "space-0123456789",
                "arize_api_key": "arize-key-0123456789", "arize_project_name": "standard"}
