"""Sluicegate's conformance suite, against the loopback LangSmith receiver (a real authenticated health check)."""

from __future__ import annotations

from typing import Any

import pytest

from sluicegate.testing import SinkStandardTests
from sluicegate_langsmith_sink.sink import LangsmithSink


class TestLangsmithSink(SinkStandardTests):
    sink_class = LangsmithSink

    @pytest.fixture
    def callback_vars(self, tenant) -> dict[str, Any]:
        return tenant(langsmith_sampling_rate=1.0)
