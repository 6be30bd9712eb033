"""The distribution is really installed: its entry point is found and registers the sink."""

from __future__ import annotations

import importlib.metadata

from sluicegate.plugins import get_plugin_manager
from sluicegate.sinks.registry import SinkRegistry
from sluicegate_s3_sink.sink import S3Sink


def test_plugin_is_installed() -> None:
    entry_points = importlib.metadata.entry_points(group="sluicegate", name="s3_sink")
    assert [ep.value for ep in entry_points] == ["sluicegate_s3_sink.plugin"]
    assert next(iter(entry_points)).dist.name == "sluicegate-s3-sink"
    registry = SinkRegistry.from_plugin_manager(get_plugin_manager())
    assert registry.get("s3") is S3Sink


def test_plugin_can_be_disabled() -> None:
    pm = get_plugin_manager({"SLUICEGATE_DISABLE_PLUGINS": "s3_sink"})
    assert "s3" not in SinkRegistry.from_plugin_manager(pm)


def _validate(callback_vars: dict) -> list[str]:
    pm = get_plugin_manager({"SLUICEGATE_LOAD_PLUGINS": "sluicegate-s3-sink"})
    return [m for messages in pm.hook.validate_callback_vars(callback_name="s3", callback_vars=callback_vars)
            if messages for m in messages]


def test_validate_accepts_litellm_style_vars() -> None:
    assert _validate({"s3_bucket_name": "team-a-logs", "s3_region_name": "eu-west-1", "s3_path": "llm/prod",
                      "s3_aws_access_key_id": "AKIAEXAMPLE", "s3_aws_secret_access_key": "secret",
                      "s3_endpoint_url": "https://minio.example.com:9000"}) == []
    assert _validate({"s3_bucket_name": "team-a-logs"}) == []  # config.yaml: botocore's default chain


def test_validate_reports_each_problem_without_echoing_secrets() -> None:
    messages = _validate({"s3_bucket_name": "Not_A_Bucket!", "s3_region_name": "EU West",
                          "s3_endpoint_url": "ftp://user:pw@host", "s3_path": "a/../b",
                          "s3_aws_secret_access_key": "only-half-of-a-pair", "s3_aws_session_token": "tok"})
    fields = sorted(m.split(":")[0] for m in messages)
    assert fields == ["s3_aws_secret_access_key", "s3_aws_session_token", "s3_bucket_name", "s3_endpoint_url",
                      "s3_path", "s3_region_name"], messages
    assert "only-half-of-a-pair" not in str(messages) and "Not_A_Bucket!" not in str(messages)
    for bucket in ("ab", "192.168.1.1", "xn--bucket", "my..bucket", "bucket-s3alias"):
        assert _validate({"s3_bucket_name": bucket}), bucket
