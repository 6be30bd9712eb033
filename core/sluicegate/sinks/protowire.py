"""Protobuf wire-format writing for sinks that speak OTLP (and anything else protobuf).

Building upb message objects for every attribute of every event cost sinks tens of microseconds per event on the
gateway's event loop; writing the few wire types OTLP needs straight into bytes costs a fraction of that. Only
writing is offered: parse with the real generated classes (tests compare against them).

:func:`key_values` is the hot one: an event's attributes, with the bytes of each key written once per process
(``tag + length + key + value tag``) and only the value encoded per event.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Iterable

__all__ = ("RepeatedKeyValues", "any_value", "field_fixed32", "field_fixed64", "field_len", "key_value", "key_values",
           "tag", "varint")

_SMALL = [bytes((n,)) for n in range(128)]
_DOUBLE = struct.Struct("<d")
_FIXED64 = struct.Struct("<Q")
_FIXED32 = struct.Struct("<I")


def varint(value: int) -> bytes:
    """A base-128 varint; negative values as 64-bit two's complement (protobuf's int64)."""
    if 0 <= value < 0x80:
        return _SMALL[value]
    if value < 0:
        value += 1 << 64
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
    size = len(payload)
    return field_tag + (_SMALL[size] if size < 0x80 else varint(size)) + payload


def field_fixed64(field_tag: bytes, value: int) -> bytes:
    return field_tag + _FIXED64.pack(value)


def field_fixed32(field_tag: bytes, value: int) -> bytes:
    return field_tag + _FIXED32.pack(value)


_T1_LEN, _T2_LEN, _T5_LEN = tag(1, 2), tag(2, 2), tag(5, 2)
_T2_VARINT, _T3_VARINT, _T4_FIXED64 = tag(2, 0), tag(3, 0), tag(4, 1)
_TRUE, _FALSE = _T2_VARINT + b"\x01", _T2_VARINT + b"\x00"


def any_value(value: Any) -> bytes:
    """An ``opentelemetry.proto.common.v1.AnyValue`` body: bool, int, float, str, or a list/tuple of those."""
    kind = type(value)
    if kind is str:
        return field_len(_T1_LEN, value.encode())
    if kind is bool:
        return _TRUE if value else _FALSE
    if kind is int:
        return _T3_VARINT + varint(value)
    if kind is float:
        return _T4_FIXED64 + _DOUBLE.pack(value)
    if isinstance(value, (list, tuple)):
        return field_len(_T5_LEN, b"".join([field_len(_T1_LEN, any_value(v)) for v in value]))
    if isinstance(value, bool):  # subclasses of the scalar types, rare: the slow checks only here
        return _TRUE if value else _FALSE
    if isinstance(value, int):
        return _T3_VARINT + varint(value)
    if isinstance(value, float):
        return _T4_FIXED64 + _DOUBLE.pack(value)
    return field_len(_T1_LEN, str(value).encode())


def key_value(key: str, value: Any) -> bytes:
    """A ``KeyValue`` body (``key`` = 1, ``value`` = 2)."""
    return field_len(_T1_LEN, key.encode()) + field_len(_T2_LEN, any_value(value))


class _KeyTable:
    """Everything about one attribute key under one field tag that can be written before seeing a value.

    ``short[n]``: the whole field up to the string's bytes for a string value of ``n`` bytes (one concatenation
    per attribute then); ``small_ints[v]`` and ``bools``: the whole field for the commonest non-string values.
    """

    __slots__ = ("bools", "head", "short", "small_ints")

    def __init__(self, field_tag: bytes, key: str) -> None:
        self.head = head = field_len(_T1_LEN, key.encode()) + _T2_LEN
        # field_tag, field length, head, AnyValue length, string tag, string length: one byte each while
        # len(head) + n + 3 < 128
        room = max(0, min(0x7E, 0x80 - len(head) - 3))
        self.short = [field_tag + _SMALL[len(head) + n + 3] + head + _SMALL[n + 2] + b"\n" + _SMALL[n]
                      for n in range(room)]
        self.small_ints = [field_tag + _SMALL[len(head) + 3] + head + b"\x02" + _T3_VARINT + _SMALL[v]
                           for v in range(0x80)] if len(head) + 3 < 0x80 else []
        self.bools = (field_tag + _SMALL[len(head) + 3] + head + b"\x02" + _FALSE,
                      field_tag + _SMALL[len(head) + 3] + head + b"\x02" + _TRUE) if len(head) + 3 < 0x80 else ()


_TABLES: dict[bytes, dict[str, _KeyTable]] = {}
_MAX_KEYS = 4096  # keys are code constants and parameter names; the bound only guards against a runaway caller


def _table(tables: dict[str, _KeyTable], field_tag: bytes, key: str) -> _KeyTable:
    table = _KeyTable(field_tag, key)
    if len(tables) < _MAX_KEYS:
        tables[key] = table
    return table


def key_values(field_tag: bytes, items: Iterable[tuple[str, Any]]) -> bytes:
    """Repeated ``KeyValue`` fields (``field_tag`` each, e.g. ``Span.attributes``), ``None`` values left out.

    Same bytes as ``b"".join(field_len(field_tag, key_value(k, v)) for k, v in items)`` at a fraction of the
    cost: per key, the bytes around short strings, small ints and bools are written once per process.
    """
    tables = _TABLES.get(field_tag)
    if tables is None:
        tables = _TABLES.setdefault(field_tag, {})
    out = []
    append = out.append
    for key, value in items:
        if value is None:
            continue
        table = tables.get(key) or _table(tables, field_tag, key)
        kind = type(value)
        if kind is str:
            data = value.encode()
            size = len(data)
            short = table.short
            if size < len(short):
                append(short[size] + data)
                continue
            inner = b"\n" + varint(size) + data
            body = table.head + varint(len(inner)) + inner
        elif kind is bool and table.bools:
            append(table.bools[value])
            continue
        elif kind is int and 0 <= value < len(table.small_ints):
            append(table.small_ints[value])
            continue
        else:
            inner = any_value(value)
            size = len(inner)
            body = table.head + (_SMALL[size] if size < 0x80 else varint(size)) + inner
        size = len(body)
        append(field_tag + (_SMALL[size] if size < 0x80 else varint(size)) + body)
    return b"".join(out)


class RepeatedKeyValues:
    """``key_values`` for a fixed list of keys whose values repeat from event to event (team, model, status):
    written once per distinct tuple of values and then looked up. Bounded: a full table starts over.

    ``RepeatedKeyValues(tag(9, 2), ("team", "model")).encode((team, model))``
    """

    __slots__ = ("_table", "field_tag", "keys", "max_entries")

    def __init__(self, field_tag: bytes, keys: tuple[str, ...], *, max_entries: int = 4096) -> None:
        self.field_tag = field_tag
        self.keys = keys
        self.max_entries = max_entries
        self._table: dict[tuple[Any, ...], bytes] = {}

    def encode(self, values: tuple[Any, ...]) -> bytes:
        """The fields for ``values`` (hashable, in the order of ``keys``; ``None`` values left out)."""
        encoded = self._table.get(values)
        if encoded is None:
            encoded = key_values(self.field_tag, zip(self.keys, values))
            if len(self._table) >= self.max_entries:
                self._table.clear()
            self._table[values] = encoded
        return encoded
