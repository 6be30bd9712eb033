"""Callback variables: parsing, validation and the process-environment defaults."""

from __future__ import annotations

import pytest
from sluicegate.sinks.vars import VarsError, decode_vars, encode_vars
from sluicegate_otel_sink.sink import OtelSink, parse_key_values


def make_sink(**callback_vars) -> OtelSink:
    return OtelSink(decode_vars(OtelSink.Vars, callback_vars))


def test_headers_accept_otel_string_and_json_object() -> None:
    assert parse_key_values("authorization=Bearer%20abc, x-a = 1", what="h") == {
        "authorization": "Bearer abc", "x-a": "1"}
    as_json = parse_key_values('{"Authorization": "Bearer a=b,c"}', what="h")
    assert as_json == {"Authorization": "Bearer a=b,c"}
    with pytest.raises(ValueError, match="item 2") as info:
        parse_key_values("a=b,secret-without-equals", what="otel_headers")
    assert "secret-without-equals" not in str(info.value)


def test_headers_are_secret_and_masked() -> None:
    raw = {"otel_endpoint": "http://c:4318", "otel_headers": "authorization=k"}
    decoded = decode_vars(OtelSink.Vars, raw)
    assert encode_vars(decoded)["otel_headers"] == "***REDACTED***"
    assert "authorization=k" not in repr(decoded)
    with pytest.raises(VarsError):  # the masked placeholder is refused, not stored as a credential
        decode_vars(OtelSink.Vars, {"otel_endpoint": "http://c:4318", "otel_headers": "***REDACTED***"})


def test_resource_attributes_mapping_or_string() -> None:
    as_map = make_sink(otel_endpoint="http://c:4318", otel_resource_attributes={"env": "prod", "shard": 3})
    as_text = make_sink(otel_endpoint="http://c:4318", otel_resource_attributes="env=prod,shard=3")
    assert as_map._resource.attributes["env"] == as_text._resource.attributes["env"] == "prod"
    assert as_map._resource.attributes["shard"] == 3 and as_text._resource.attributes["shard"] == "3"
    # service.name comes from otel_service_name and wins over a resource attribute of that name.
    named = make_sink(otel_endpoint="http://c:4318", otel_service_name="gw",
                      otel_resource_attributes="service.name=other")
    assert named._resource.attributes["service.name"] == "gw"


@pytest.mark.parametrize(("endpoint", "protocol", "expected"), [
    ("http://c:4318", "http/protobuf", "http://c:4318/v1/traces"),
    ("https://otlp.example/v1/traces", "http/json", "https://otlp.example/v1/traces"),
    ("https://otlp.example/custom/path", "http/protobuf", "https://otlp.example/custom/path"),
])
def test_http_endpoint(endpoint, protocol, expected) -> None:
    assert make_sink(otel_endpoint=endpoint, otel_protocol=protocol)._url == expected


@pytest.mark.parametrize(("endpoint", "target", "tls"), [
    ("collector:4317", "collector:4317", False),
    ("http://collector:4317", "collector:4317", False),
    ("https://otlp.example", "otlp.example:443", True),
])
def test_grpc_endpoint(endpoint, target, tls) -> None:
    sink = make_sink(otel_endpoint=endpoint, otel_protocol="grpc")
    assert (sink._target, sink._tls) == (target, tls)


def test_bad_values_are_rejected() -> None:
    with pytest.raises(VarsError) as info:
        decode_vars(OtelSink.Vars, {"otel_endpoint": "http://c", "otel_protocol": "thrift"})
    assert [e.field for e in info.value.errors] == ["otel_protocol"]
    with pytest.raises(VarsError) as info:
        decode_vars(OtelSink.Vars, {})
    assert [e.field for e in info.value.errors] == ["otel_endpoint"]
    with pytest.raises(ValueError, match="otel_endpoint"):
        make_sink(otel_endpoint="collector", otel_protocol="grpc")
    with pytest.raises(ValueError, match="otel_endpoint"):
        make_sink(otel_endpoint="collector:4318")  # http needs a URL


def test_env_defaults_standard_variables() -> None:
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318/", "OTEL_EXPORTER_OTLP_HEADERS": "api-key=k",
           "OTEL_SERVICE_NAME": "gw", "OTEL_RESOURCE_ATTRIBUTES": "env=prod"}
    found = OtelSink.env_defaults(env)
    assert found == {"otel_endpoint": "http://collector:4318/v1/traces", "otel_headers": "api-key=k",
                     "otel_service_name": "gw", "otel_resource_attributes": "env=prod"}
    decode_vars(OtelSink.Vars, found)
    # The traces-specific endpoint is taken as it is and wins over the generic one.
    traces = OtelSink.env_defaults({**env, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://t:4318/x"})
    assert traces["otel_endpoint"] == "http://t:4318/x"
    # gRPC: the generic endpoint is not given a path.
    grpc = OtelSink.env_defaults({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317",
                                  "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"})
    assert grpc == {"otel_endpoint": "http://collector:4317", "otel_protocol": "grpc"}
    # LiteLLM's variables, for users moving their environment over.
    litellm = OtelSink.env_defaults({"OTEL_EXPORTER": "otlp_grpc", "OTEL_ENDPOINT": "collector:4317",
                                     "OTEL_HEADERS": "a=b"})
    assert litellm == {"otel_protocol": "grpc", "otel_endpoint": "collector:4317", "otel_headers": "a=b"}


def test_env_defaults_empty_without_variables() -> None:
    assert OtelSink.env_defaults({}) == {}
    assert OtelSink.env_defaults({"PATH": "/bin", "OTEL_SDK_DISABLED": "true"}) == {}
