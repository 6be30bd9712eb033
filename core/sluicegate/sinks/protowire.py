"""Protobuf wire-format writing for sinks that speak OTLP (and anything else protobuf).

Building upb message objects for every attribute of every event cost sinks tens of microseconds per event on the
gateway's event loop; writing the few wire types OTLP needs straight into bytes costs a fraction of that. Only
writing is offered: parse with the real generated classes (tests compare against them).
"""

from __future__ import annotations

import struct
from typing import Any

__all__ = ("any_value", "field_fixed32", "field_fixed64", "field_len", "key_value", "tag", "varint")


def varint(value: int) -> bytes:
    """A base-128 varint; negative values as 64-bit two's complement (protobuf's int64)."""
    if value < 0:
        value += 1 << 64
    if value < 0x80:
        return bytes((value,))
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def tag(field: int, wire_type: int) -> bytes:
    """The key of a field: ``wire_type`` 0 varint, 1 fixed64, 2 length-delimited, 5 fixed32."""
    return varint(field << 3 | wire_type)


def field_len(field_tag: bytes, payload: bytes) -> bytes:
    """A length-delimited field (bytes, string, embedded message) with its precomputed tag."""
    return field_tag + varint(len(payload)) + payload


def field_fixed64(field_tag: bytes, value: int) -> bytes:
    return field_tag + struct.pack("<Q", value)


def field_fixed32(field_tag: bytes, value: int) -> bytes:
    return field_tag + struct.pack("<I", value)


_T1_LEN, _T2_LEN, _T5_LEN = tag(1, 2), tag(2, 2), tag(5, 2)
_T2_VARINT, _T3_VARINT, _T4_FIXED64 = tag(2, 0), tag(3, 0), tag(4, 1)


def any_value(value: Any) -> bytes:
    """An ``opentelemetry.proto.common.v1.AnyValue`` body: bool, int, float, str, or a list/tuple of those."""
    if isinstance(value, bool):
        return _T2_VARINT + (b"\x01" if value else b"\x00")
    if isinstance(value, int):
        return _T3_VARINT + varint(value)
    if isinstance(value, float):
        return _T4_FIXED64 + struct.pack("<d", value)
    if isinstance(value, (list, tuple)):
        return field_len(_T5_LEN, b"".join(field_len(_T1_LEN, any_value(v)) for v in value))
    return field_len(_T1_LEN, (value if isinstance(value, str) else str(value)).encode())


def key_value(key: str, value: Any) -> bytes:
    """A ``KeyValue`` body (``key`` = 1, ``value`` = 2)."""
    return field_len(_T1_LEN, key.encode()) + field_len(_T2_LEN, any_value(value))
