"""The conformance suite, against a loopback OTLP receiver."""

from __future__ import annotations

import pytest
from sluicegate.testing import SinkStandardTests
from sluicegate_otel_sink.sink import OtelSink


class TestOtelSinkStandard(SinkStandardTests):
    sink_class = OtelSink

    @pytest.fixture
    def callback_vars(self, otlp_receiver):
        return {"otel_endpoint": otlp_receiver.http_url,
                "otel_headers": "authorization=Bearer standard-secret",
                "otel_service_name": "standard"}
