"""The conformance suite, with a real bucket on fake-gcs-server and a real service-account key file."""

from __future__ import annotations

from typing import Any

import pytest

from sluicegate.sinks.vars import decode_vars
from sluicegate.testing import SinkStandardTests
from sluicegate_gcs_sink.sink import GcsBucketSink, GcsBucketVars


class TestGcsBucketSink(SinkStandardTests):
    sink_class = GcsBucketSink

    @pytest.fixture
    def callback_vars(self, gcs_env, new_bucket) -> dict[str, Any]:
        bucket = new_bucket("standard")
        account = gcs_env.account("standard", bucket)
        return {"gcs_bucket_name": f"{bucket}/llm-logs", "gcs_path_service_account": str(account.key_file)}

    async def test_health_check_is_healthy_for_valid_vars(self, sink: GcsBucketSink) -> None:
        result = await sink.health_check()
        assert result.healthy, result

    async def test_health_check_is_unhealthy_for_a_missing_bucket(self, callback_vars) -> None:
        sink = GcsBucketSink(decode_vars(GcsBucketVars, {**callback_vars, "gcs_bucket_name": "absent-bucket"}))
        result = await sink.health_check()
        assert (result.healthy, result.error_kind) == (False, "not_found")

    def test_service_account_path_is_masked(self, callback_vars) -> None:
        decoded = decode_vars(GcsBucketVars, callback_vars)
        assert callback_vars["gcs_path_service_account"] not in repr(decoded)
        # Control: the bucket name is not a secret and is shown.
        assert callback_vars["gcs_bucket_name"] in repr(decoded)

    def test_env_defaults(self) -> None:
        environ = {"GCS_BUCKET_NAME": "logs-bucket/prod", "GCS_PATH_SERVICE_ACCOUNT": "/etc/sa.json"}
        assert GcsBucketSink.env_defaults(environ) == {
            "gcs_bucket_name": "logs-bucket/prod", "gcs_path_service_account": "/etc/sa.json"}
        assert GcsBucketSink.env_defaults({"GCS_BUCKET_NAME": "b-1"}) == {"gcs_bucket_name": "b-1"}
        assert GcsBucketSink.env_defaults({"UNRELATED": "x"}) == {}
