"""The conformance suite, against the loopback Langfuse receiver."""

from __future__ import annotations

from typing import Any

import pytest

from sluicegate.testing import SinkStandardTests
from sluicegate_langfuse_sink.sink import LangfuseSink
from sluicegate_langfuse_sink.testing import LangfuseReceiver


class TestLangfuseSink(SinkStandardTests):
    sink_class = LangfuseSink

    @pytest.fixture
    def callback_vars(self, langfuse_receiver: LangfuseReceiver) -> dict[str, Any]:
        return {"langfuse_public_key": "pk-lf-1", "langfuse_secret": "sk-lf-1",
                "langfuse_host": langfuse_receiver.url}
