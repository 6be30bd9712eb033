"""A sink's form, generated from its ``Vars`` struct: one input per field, typed, with its default and
docstring.

Nothing here knows a sink by name, so a sink installed from a third-party package gets its form with no
console code. Values go back to the admin API's own functions as text (the API accepts ``"10"`` and
``"false"`` for numbers and switches, as LiteLLM's configs write them), so the API's validation, and its error
texts, apply. Only fields that take a list or a mapping are read here first, as JSON, since a text box holds
no structure.
"""

from __future__ import annotations

import functools
import json
import sys
import types
import typing
from collections.abc import Mapping
from typing import Any

import msgspec

from sluicegate.routing import ENV_REFERENCE
from sluicegate.sinks.base import CallbackVars, SecretStr

__all__ = ("FormField", "read_vars_form", "vars_form")


class FormField(msgspec.Struct, frozen=True, kw_only=True):
    """One input of a sink form. ``kind``: text, password (secrets: write-only), number, switch, choice or
    json."""

    name: str
    kind: str
    type_name: str
    required: bool
    default: str | None
    description: str
    secret: bool = False
    choices: tuple[str, ...] = ()
    aliases: tuple[str, ...] = ()
    accepts_text: bool = True
    """A ``json`` field that also takes a plain string (``"env:prod,team:a"``): text not shaped as JSON is
    sent as written."""

    @property
    def input_name(self) -> str:
        return f"var.{self.name}"


def _type_name(tp: Any) -> str:
    if tp is SecretStr:
        return "string"
    from sluicegate.docs_gen import _type_name as describe  # the reference pages' words for the same types

    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    return describe(tp)


def _kind(tp: Any) -> tuple[str, tuple[str, ...]]:
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        present = [a for a in args if a is not type(None)]
        if any(a is SecretStr for a in present):
            return "password", ()
        if len(present) == 1:
            return _kind(present[0])
        if all(a in (str, int, float) for a in present):
            return "text", ()
        return "json", ()
    if tp is SecretStr:
        return "password", ()
    if tp is bool:
        return "switch", ("true", "false")
    if tp in (int, float):
        return "number", ()
    if tp is str:
        return "text", ()
    if typing.get_origin(tp) is typing.Literal:
        return "choice", tuple(str(a) for a in args)
    return "json", ()


def _default(info: msgspec.structs.FieldInfo) -> str | None:
    if info.required:
        return None
    value = info.default_factory() if info.default_factory is not msgspec.NODEFAULT else info.default
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int | float):
        return str(value)
    return json.dumps(msgspec.to_builtins(value))


def _descriptions(vars_type: type[CallbackVars]) -> dict[str, str]:
    """Each field's docstring (written under it, as docs_gen reads it), else its ``msgspec.Meta``
    description."""
    from sluicegate.docs_gen import _docstrings

    found: dict[str, str] = {}
    for cls in reversed(vars_type.__mro__):  # a subclass's docstring wins over its base's
        module = sys.modules.get(cls.__module__)
        if module is None or not (isinstance(cls, type) and issubclass(cls, msgspec.Struct)):
            continue
        try:
            strings = _docstrings(module)
        except (OSError, TypeError, SyntaxError):  # no source shipped: the Meta descriptions remain
            continue
        prefix = f"{cls.__name__}."
        found.update({k[len(prefix):]: v for k, v in strings.items() if k.startswith(prefix)})
    info = msgspec.inspect.type_info(vars_type)
    for field in info.fields:  # type: ignore[union-attr]
        if field.name not in found and isinstance(field.type, msgspec.inspect.Metadata):
            description = (field.type.extra_json_schema or {}).get("description") or getattr(
                field.type, "description", None)
            if description:
                found[field.name] = description
    return found


@functools.lru_cache(maxsize=256)
def vars_form(vars_type: type[CallbackVars]) -> tuple[FormField, ...]:
    """The inputs of ``vars_type``'s form, in field order."""
    hints = typing.get_type_hints(vars_type)
    descriptions = _descriptions(vars_type)
    aliases: dict[str, list[str]] = {}
    for alias, target in vars_type.aliases.items():
        aliases.setdefault(target, []).append(alias)
    fields = []
    for info in msgspec.structs.fields(vars_type):
        kind, choices = _kind(hints[info.name])
        members = typing.get_args(hints[info.name]) or (hints[info.name],)
        fields.append(FormField(
            name=info.name, kind=kind, choices=choices, type_name=_type_name(hints[info.name]),
            required=info.required, default=_default(info), secret=kind == "password",
            description=" ".join(descriptions.get(info.name, "").split()),
            aliases=tuple(sorted(aliases.get(info.name, ()))), accepts_text=str in members))
    return tuple(fields)


def read_vars_form(fields: tuple[FormField, ...],
                   form: Mapping[str, str]) -> tuple[dict[str, Any], dict[str, str]]:
    """``callback_vars`` from a submitted form (blank inputs left out, so defaults apply) and the fields whose
    JSON could not be read, with the reason."""
    values: dict[str, Any] = {}
    errors: dict[str, str] = {}
    for field in fields:
        raw = form.get(field.input_name, "")
        text = raw if field.secret else raw.strip()
        if text == "":
            continue
        if field.kind == "json" and not text.startswith(ENV_REFERENCE) and (
                not field.accepts_text or text[:1] in ("[", "{")):
            try:
                values[field.name] = json.loads(text)
            except ValueError as exc:
                errors[field.name] = f"callback_vars.{field.name}: not valid JSON ({exc})"
        else:
            values[field.name] = text
    return values, errors
