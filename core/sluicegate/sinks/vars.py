"""Decoding, validating and masking callback variables through a sink's ``Vars`` struct."""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

import msgspec

from sluicegate.sinks.base import MASK, CallbackVars, SecretStr

__all__ = ("FieldError", "VarsError", "decode_vars", "encode_vars", "secret_fields")

_PATH = re.compile(r" - at `\$\.([A-Za-z0-9_]+)[^`]*`")


class FieldError(msgspec.Struct, frozen=True):
    field: str
    reason: str

    def __str__(self) -> str:
        return f"{self.field}: {self.reason}"


class VarsError(ValueError):
    """The callback variables do not fit the sink's ``Vars``; ``errors`` lists every problem found."""

    def __init__(self, errors: list[FieldError]) -> None:
        self.errors = errors
        super().__init__("; ".join(str(e) for e in errors))


def _dec_hook(type_: type, obj: Any) -> Any:
    if type_ is SecretStr:
        if isinstance(obj, SecretStr):
            return obj
        if isinstance(obj, Mapping) and all(isinstance(k, str) and isinstance(v, str) for k, v in obj.items()):
            # A secret mapping (e.g. OTLP headers) travels as one "k=v,k2=v2" string, each part percent-encoded.
            if any(v == MASK for v in obj.values()):
                raise ValueError(f"contains the masked placeholder {MASK!r}; send the real secret")
            return SecretStr(",".join(f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in obj.items()))
        if not isinstance(obj, str):
            raise TypeError(f"Expected `str`, got `{type(obj).__name__}`")
        if obj == MASK:
            raise ValueError(f"is the masked placeholder {MASK!r}; send the real secret")
        return SecretStr(obj)
    raise NotImplementedError


def _enc_hook(obj: Any) -> Any:
    if isinstance(obj, SecretStr):
        return MASK
    raise NotImplementedError


def _enc_hook_reveal(obj: Any) -> Any:
    if isinstance(obj, SecretStr):
        return obj.get_secret_value()
    raise NotImplementedError


def field_names(vars_type: type[CallbackVars]) -> tuple[str, ...]:
    return vars_type.__struct_fields__


def secret_fields(vars_type: type[CallbackVars]) -> frozenset[str]:
    """Names of the fields typed ``SecretStr`` (alone or in a union)."""
    found = set()
    for field in msgspec.inspect.type_info(vars_type).fields:  # type: ignore[union-attr]
        types = field.type.types if isinstance(field.type, msgspec.inspect.UnionType) else (field.type,)
        if any(isinstance(t, msgspec.inspect.CustomType) and t.cls is SecretStr for t in types):
            found.add(field.name)
    return frozenset(found)


def canonical_names(vars_type: type[CallbackVars], raw: Mapping[str, Any]) -> dict[str, Any]:
    """Map aliases to field names; raises :class:`VarsError` for unknown keys (with a suggestion)."""
    fields = field_names(vars_type)
    data: dict[str, Any] = {}
    errors: list[FieldError] = []
    for key, value in raw.items():
        name = vars_type.aliases.get(key, key)
        if name not in fields:
            hint = difflib.get_close_matches(key, [*fields, *vars_type.aliases], n=1)
            accepted = ", ".join(fields) or "none"
            reason = f"unknown variable; did you mean {hint[0]!r}?" if hint else f"unknown variable (accepted: {accepted})"
            errors.append(FieldError(key, reason))
        elif name in data:
            errors.append(FieldError(key, f"given twice (as {name!r} and its alias)"))
        else:
            data[name] = value
    if errors:
        raise VarsError(errors)
    return data


def decode_vars(vars_type: type[CallbackVars], raw: Mapping[str, Any]) -> CallbackVars:
    """Build ``vars_type`` from raw (resolved) variables.

    Accepts aliases, JSON types and LiteLLM's stringly forms (``"False"``, ``"10"``); rejects unknown keys,
    wrong types, missing required fields and masked placeholders, naming the field in each error.
    """
    data = canonical_names(vars_type, raw)
    try:
        return msgspec.convert(data, vars_type, strict=False, dec_hook=_dec_hook)
    except msgspec.ValidationError as exc:
        message = str(exc)
        match = _PATH.search(message)
        missing = re.search(r"missing required field `([A-Za-z0-9_]+)`", message)
        if missing:
            raise VarsError([FieldError(missing.group(1), "required")]) from None
        field = match.group(1) if match else "callback_vars"
        reason = _PATH.sub("", message) or message
        raise VarsError([FieldError(field, reason)]) from None


def encode_vars(callback_vars: CallbackVars, *, reveal: bool = False) -> dict[str, Any]:
    """Variables as a plain dict: secrets masked unless ``reveal`` (only for building a cache key)."""
    return msgspec.to_builtins(callback_vars, enc_hook=_enc_hook_reveal if reveal else _enc_hook)
