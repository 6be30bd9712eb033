"""The conformance suite, against the fake intake on loopback in agent mode (a real HTTP health check)."""

from __future__ import annotations

from typing import Any

import pytest

from sluicegate.testing import SinkStandardTests
from sluicegate_datadog_sink.sink import DatadogSink


class TestDatadogSink(SinkStandardTests):
    sink_class = DatadogSink

    @pytest.fixture
    def callback_vars(self, intake: Any) -> dict[str, Any]:
        return {"dd_api_key": "dd-key-global-0123456789abcdef", "dd_agent_host": "127.0.0.1",
                "dd_agent_port": str(intake.port), "dd_tags": "env:test"}
