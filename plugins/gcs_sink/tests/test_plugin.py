"""The distribution is really installed, its entry point loads, and its hooks answer."""

from __future__ import annotations

import importlib.metadata
import json

from sluicegate.plugins import get_plugin_manager
from sluicegate.sinks.registry import SinkRegistry
from sluicegate_gcs_sink.sink import GcsBucketSink


def test_plugin_is_installed() -> None:
    entry_points = [ep for ep in importlib.metadata.entry_points(group="sluicegate") if ep.name == "gcs_sink"]
    assert len(entry_points) == 1
    assert entry_points[0].dist is not None and entry_points[0].dist.name == "sluicegate-gcs-sink"
    assert entry_points[0].value == "sluicegate_gcs_sink.plugin"
    registry = SinkRegistry.from_plugin_manager(get_plugin_manager(environ={}))
    assert registry.get("gcs_bucket") is GcsBucketSink
    assert registry.owner("gcs_bucket").startswith("sluicegate-gcs-sink")


def test_plugin_can_be_disabled() -> None:
    pm = get_plugin_manager(environ={"SLUICEGATE_DISABLE_PLUGINS": "gcs_sink"})
    assert "gcs_bucket" not in SinkRegistry.from_plugin_manager(pm)
    assert pm.get_plugin("gcs_sink") is None


def _validate(callback_name: str, callback_vars: dict) -> list[str]:
    pm = get_plugin_manager(environ={"SLUICEGATE_LOAD_PLUGINS": "sluicegate-gcs-sink"})
    results = pm.hook.validate_callback_vars(callback_name=callback_name, callback_vars=callback_vars)
    return [message for result in results for message in result or []]


def _key_file(tmp_path, **info):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    data = {"type": "service_account", "private_key_id": "k1", "private_key": pem,
            "client_email": "sa@p.iam.gserviceaccount.com", "token_uri": "http://127.0.0.1:9/token", **info}
    path = tmp_path / "hidden-dir" / "sa.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(data))
    return path


def test_validate_accepts_a_good_key_file(tmp_path) -> None:
    path = _key_file(tmp_path)
    assert _validate("gcs_bucket", {"gcs_bucket_name": "my-bucket/llm-logs/prod",
                                    "gcs_path_service_account": str(path)}) == []
    assert _validate("gcs_bucket", {"gcs_bucket_name": "my-bucket"}) == []  # ADC


def test_validate_reports_unusable_key_files(tmp_path) -> None:
    bad_key = _key_file(tmp_path, private_key="-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n")
    cases = {
        str(tmp_path / "hidden-dir" / "absent.json"): "file does not exist",
        str(tmp_path / "hidden-dir"): "is a directory",
        str(bad_key): "private_key cannot be loaded",
    }
    not_json = tmp_path / "hidden-dir" / "not.json"
    not_json.write_text("{ nope")
    cases[str(not_json)] = "not valid JSON"
    user_creds = tmp_path / "hidden-dir" / "user.json"
    user_creds.write_text(json.dumps({"type": "authorized_user", "refresh_token": "r"}))
    cases[str(user_creds)] = "not a service-account key file"
    for path, reason in cases.items():
        messages = _validate("gcs_bucket", {"gcs_bucket_name": "my-bucket", "gcs_path_service_account": path})
        assert len(messages) == 1 and messages[0].startswith("gcs_path_service_account: "), messages
        assert reason in messages[0]
        assert "hidden-dir" not in messages[0]  # the path is a secret-like value: never echoed


def test_validate_reports_bad_bucket_names() -> None:
    messages = _validate("gcs_bucket", {"gcs_bucket_name": "My_Bucket!/prefix"})
    assert messages and messages[0].startswith("gcs_bucket_name: ")
    assert _validate("gcs_bucket", {"gcs_bucket_name": "ab"}) != []
    assert _validate("gcs_bucket", {"gcs_bucket_name": "gs://fine-bucket.example/x"}) == []


def test_validate_ignores_other_sinks(tmp_path) -> None:
    assert _validate("file", {"gcs_bucket_name": "My_Bucket!", "gcs_path_service_account": "/absent"}) == []
