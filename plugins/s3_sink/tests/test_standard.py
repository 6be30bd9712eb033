"""Sluicegate's conformance suite, against moto's S3 server (a real, authenticated health check)."""

from __future__ import annotations

from typing import Any

import pytest

from sluicegate.testing import SinkStandardTests
from sluicegate_s3_sink.sink import S3Sink


class TestS3Sink(SinkStandardTests):
    sink_class = S3Sink

    @pytest.fixture
    def callback_vars(self, moto_s3, new_bucket) -> dict[str, Any]:
        return moto_s3.writer.vars(moto_s3, new_bucket("standard"), s3_aws_session_token="session-token-0123")

