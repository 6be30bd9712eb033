"""``sluicegate.sinks.protowire`` writes the bytes the real protobuf classes write (opentelemetry-proto's upb).

The table-driven fast paths of ``key_values`` switch at length boundaries (one-byte lengths, the size of the
precomputed prefixes), so values are taken on both sides of each.
"""

from __future__ import annotations

import pytest
from google.protobuf.wrappers_pb2 import Int64Value, UInt64Value
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span
from sluicegate.sinks.protowire import any_value, key_value, key_values, tag, varint

SPAN_ATTRIBUTES = tag(9, 2)


def reference(value: object) -> AnyValue:
    if isinstance(value, bool):
        return AnyValue(bool_value=value)
    if isinstance(value, int):
        return AnyValue(int_value=value)
    if isinstance(value, float):
        return AnyValue(double_value=value)
    if isinstance(value, list):
        return AnyValue(array_value=ArrayValue(values=[reference(v) for v in value]))
    return AnyValue(string_value=str(value))


STRING_SIZES = [0, 1, 60, 61, 62, 63, 100, 122, 123, 124, 125, 126, 127, 128, 129, 300, 16_383, 16_384, 70_000]
VALUES = ([("x" * n) for n in STRING_SIZES] + ["héllo ✓" * 20, "\x00nul"]
          + [0, 1, 127, 128, 300, -1, -(2**63), 2**63 - 1, True, False, 0.0, -2.5, 1e300]
          + [["a", "b"], [1, "two", 3.0, True], []]
          # request tags as the langfuse sink sends them (langfuse.trace.tags): unicode, up to 200 characters each,
          # an array whose length needs a two-byte varint
          + [["prod", "ключ", "t" * 200], ["tag-%d" % n for n in range(64)]])
KEYS = ["k", "gen_ai.usage.input_tokens", "x" * 100, "y" * 130, "ключ"]


@pytest.mark.parametrize("key", KEYS, ids=lambda k: f"key{len(k)}")
def test_key_values_match_the_generated_classes(key: str) -> None:
    items = [(key, value) for value in VALUES]
    ours = Span.FromString(key_values(SPAN_ATTRIBUTES, items))
    expected = Span(attributes=[KeyValue(key=key, value=reference(v)) for v in VALUES])
    assert ours == expected
    assert key_values(SPAN_ATTRIBUTES, items) == expected.SerializeToString()  # byte for byte, arrays included
    # the slow single-attribute writer agrees byte for byte
    assert key_values(SPAN_ATTRIBUTES, items) == b"".join(
        SPAN_ATTRIBUTES + varint(len(key_value(k, v))) + key_value(k, v) for k, v in items)


def test_key_values_leave_out_none_and_keep_order() -> None:
    ours = Span.FromString(key_values(SPAN_ATTRIBUTES, [("b", 1), ("a", None), ("c", "x"), ("a", 2)]))
    assert [(kv.key, kv.value) for kv in ours.attributes] == [
        ("b", AnyValue(int_value=1)), ("c", AnyValue(string_value="x")), ("a", AnyValue(int_value=2))]


def test_any_value_of_an_unknown_type_is_its_string() -> None:
    assert AnyValue.FromString(any_value(object)) == AnyValue(string_value=str(object))


@pytest.mark.parametrize("number", [0, 1, 127, 128, 16_383, 16_384, 2**35, 2**64 - 1, -1, -(2**63)])
def test_varint_is_protobufs(number: int) -> None:
    assert UInt64Value.FromString(tag(1, 0) + varint(number)).value == number % 2**64
    assert Int64Value.FromString(tag(1, 0) + varint(number)).value == (number if number < 2**63 else number - 2**64)
