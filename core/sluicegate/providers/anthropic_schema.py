"""``response_format`` JSON Schemas for Anthropic: checked against what each of its two JSON paths accepts.

Structured outputs (``output_config.format``) take a subset of JSON Schema, the one Anthropic's official SDK's
``transform_schema`` keeps: the basic types, ``enum`` / ``const`` of primitives, ``anyOf`` / ``allOf`` (``oneOf``
is sent as ``anyOf``, as the SDK does), a ``$ref`` standing alone that points into the root's ``$defs``
(``definitions`` is sent as ``$defs``, its refs rewritten), ``properties`` / ``required`` with
``additionalProperties: false`` on every object (added where the client left it out), ``items`` with ``minItems``
0 or 1, the string formats Anthropic lists, ``description`` / ``title``. Everything else (recursive ``$ref``
cycles, external or deep refs, keywords beside a ``$ref``, ``minimum`` / ``maxLength`` / ``maxItems`` / ``pattern``
/ ``default`` and other keywords the SDK would fold into the description, ``additionalProperties`` other than
false) is a 400 naming the keyword's path: the gateway neither drops it nor folds it into a description.

The forced ``json_tool_call`` tool (models without structured outputs, and ``json_object``) takes any JSON Schema
as its ``input_schema``, ``$defs`` and ``$ref`` included, but its root must be an object: a root ``$ref`` is
resolved to the definition it names (the ``$defs`` stay for the refs inside), and a root of another type is a 400.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sluicegate.errors import ApiError

__all__ = ("structured_output_schema", "tool_input_schema")

WHERE = "response_format.json_schema.schema"
TYPES = frozenset({"object", "array", "string", "integer", "number", "boolean", "null"})
STRING_FORMATS = frozenset({"date-time", "time", "date", "duration", "email", "hostname", "uri", "ipv4", "ipv6",
                            "uuid"})
COMMON = frozenset({"type", "description", "title", "enum", "const", "anyOf", "oneOf", "allOf", "$ref"})
BY_TYPE = {"object": frozenset({"properties", "required", "additionalProperties"}),
           "array": frozenset({"items", "minItems"}),
           "string": frozenset({"format"})}
DEF_KEYS = ("$defs", "definitions")


def _refused(path: str, reason: str) -> ApiError:
    return ApiError(400, f"{path}: {reason}", param="response_format")


def _definitions(schema: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """``{"#/$defs/Name": schema, ...}`` for the root's ``$defs`` and ``definitions``."""
    found: dict[str, dict[str, Any]] = {}
    for key in DEF_KEYS:
        defs = schema.get(key)
        if defs is None:
            continue
        if not isinstance(defs, dict) or not all(isinstance(v, dict) for v in defs.values()):
            raise _refused(f"{WHERE}.{key}", "expected an object of schemas")
        for name, value in defs.items():
            found[f"#/{key}/{name}"] = value
    return found


def _primitive(value: Any) -> bool:
    return value is None or isinstance(value, (str, int, float, bool))


class _StructuredChecker:
    __slots__ = ("definitions", "visiting", "done")

    def __init__(self, definitions: dict[str, dict[str, Any]]) -> None:
        self.definitions = definitions
        self.visiting: list[str] = []  # the refs being checked, to find cycles
        self.done: set[str] = set()

    def ref(self, ref: Any, path: str) -> None:
        if not isinstance(ref, str) or ref not in self.definitions:
            raise _refused(f"{path}.$ref", f"{ref!r} is not supported: Anthropic's structured outputs take only "
                                           "local references to the root's $defs or definitions (#/$defs/Name)")
        if ref in self.visiting:
            cycle = " → ".join([*self.visiting[self.visiting.index(ref):], ref])
            raise _refused(f"{path}.$ref", f"recursive schemas are not supported by Anthropic's structured "
                                           f"outputs ({cycle})")
        if ref in self.done:
            return
        self.visiting.append(ref)
        self.definitions[ref] = self.node(self.definitions[ref], f"{WHERE}.{ref[2:].replace('/', '.')}")
        self.visiting.pop()
        self.done.add(ref)

    def node(self, schema: Any, path: str) -> dict[str, Any]:
        """``schema`` checked, as sent (``additionalProperties: false`` added, ``oneOf`` as ``anyOf``)."""
        if not isinstance(schema, dict):
            raise _refused(path, "expected a JSON Schema object")
        types = schema.get("type")
        names = [types] if isinstance(types, str) else types if isinstance(types, list) else []
        if types is not None and (not names or not all(isinstance(t, str) and t in TYPES for t in names)):
            raise _refused(f"{path}.type", f"expected one of {', '.join(sorted(TYPES))} (or a list of them)")
        allowed = COMMON.union(*(BY_TYPE.get(t, ()) for t in names))
        out: dict[str, Any] = {}
        for key, value in schema.items():
            where = f"{path}.{key}"
            if key in DEF_KEYS and path == WHERE:
                continue  # the root's definitions: checked through the refs that use them
            if key not in allowed:
                if key in ("properties", "required", "additionalProperties", "items", "minItems", "format") \
                        and not names:
                    raise _refused(where, f"{key} needs the schema's type (Anthropic's structured outputs take "
                                          f"{key} only on a typed schema)")
                raise _refused(where, f"{key} is not supported by Anthropic's structured outputs")
            if key == "$ref":
                if len(schema) > 1:
                    beside = sorted(k for k in schema if k != "$ref")
                    raise _refused(f"{path}.{beside[0]}", "keywords beside $ref are not supported by Anthropic's "
                                                          "structured outputs (a $ref stands alone)")
                self.ref(value, path)
                value = value.replace("#/definitions/", "#/$defs/", 1)
            elif key == "enum":
                if not isinstance(value, list) or not value or not all(_primitive(v) for v in value):
                    raise _refused(where, "expected a non-empty list of strings, numbers, booleans or null")
            elif key == "const":
                if not _primitive(value):
                    raise _refused(where, "expected a string, number, boolean or null")
            elif key in ("anyOf", "oneOf", "allOf"):
                if not isinstance(value, list) or not value:
                    raise _refused(where, "expected a non-empty list of schemas")
                if key == "allOf" and any(isinstance(v, dict) and "$ref" in v for v in value):
                    raise _refused(where, "allOf with $ref is not supported by Anthropic's structured outputs")
                value = [self.node(v, f"{where}[{i}]") for i, v in enumerate(value)]
                key = "anyOf" if key == "oneOf" else key  # as Anthropic's SDK sends it
                if key in out:
                    raise _refused(where, "anyOf and oneOf together are not supported")
            elif key == "properties":
                if not isinstance(value, dict):
                    raise _refused(where, "expected an object of schemas")
                value = {name: self.node(v, f"{where}.{name}") for name, v in value.items()}
            elif key == "required":
                if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                    raise _refused(where, "expected a list of property names")
            elif key == "additionalProperties":
                if value is not False:
                    raise _refused(where, "Anthropic's structured outputs take only additionalProperties: false")
            elif key == "items":
                value = self.node(value, where)
            elif key == "minItems":
                if value not in (0, 1) or isinstance(value, bool):
                    raise _refused(where, "Anthropic's structured outputs take only minItems 0 or 1")
            elif key == "format":
                if value not in STRING_FORMATS:
                    raise _refused(where, f"{value!r} is not supported; Anthropic's structured outputs take "
                                          f"{', '.join(sorted(STRING_FORMATS))}")
            elif key in ("description", "title") and not isinstance(value, str):
                raise _refused(where, "expected a string")
            out[key] = value
        if not names and not any(k in schema for k in ("anyOf", "oneOf", "allOf", "enum", "const", "$ref")):
            raise _refused(path, "needs a type, anyOf, oneOf, allOf, enum, const or $ref (Anthropic's structured "
                                 "outputs take no untyped schema)")
        if "object" in names:
            out["additionalProperties"] = False  # required on every object; false is what was meant or allowed
        return out


def structured_output_schema(schema: Mapping[str, Any]) -> dict[str, Any]:
    """The schema for ``output_config.format``, or a 400 naming the first keyword Anthropic does not take."""
    schema = {k: v for k, v in schema.items() if k != "$schema"}  # the dialect's URI: an annotation, not a rule
    checker = _StructuredChecker(_definitions(schema))
    out = checker.node(schema, WHERE)
    defs: dict[str, Any] = {}
    for key in DEF_KEYS:  # definitions no ref uses are sent checked too, as the API checks them all
        for name in schema.get(key) or ():
            if name in defs:
                raise _refused(f"{WHERE}.{key}.{name}", "defined in both $defs and definitions")
            checker.ref(f"#/{key}/{name}", f"{WHERE}.{key}.{name}")
            defs[name] = checker.definitions[f"#/{key}/{name}"]
    if defs:
        out["$defs"] = defs
    return out


def tool_input_schema(schema: Mapping[str, Any]) -> dict[str, Any]:
    """The schema as the forced tool's ``input_schema``: a root ``$ref`` resolved, the root an object."""
    out = dict(schema)
    seen: set[str] = set()
    while "$ref" in out:
        ref = out["$ref"]
        definitions = _definitions(schema)
        if not isinstance(ref, str) or ref not in definitions or ref in seen:
            raise _refused(f"{WHERE}.$ref", f"{ref!r} must name one of the root's $defs or definitions "
                                            "(#/$defs/Name) and lead to an object schema")
        seen.add(ref)
        del out["$ref"]
        out = {**definitions[ref], **out}
    if out.get("type") != "object":
        raise _refused(f"{WHERE}.type", "the answer must be a JSON object (type: object) for Anthropic's "
                                        "json_tool_call tool")
    return out
