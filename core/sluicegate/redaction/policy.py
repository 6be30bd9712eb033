"""Redaction policies: ``redaction: {redactors: [...], fields: [...]}`` compiled once, applied on the delivery side.

A policy names redactors (``email``, or ``{regex: {patterns: {...}}}`` with options) and the fields of an event
they scan or drop. It is compiled when a configuration is resolved (start-up, or a key or team change), never per
request; identical policies compile to one shared :class:`CompiledPolicy` whose ``key`` identifies it. The
dispatcher applies a route's policy when a batch goes out (:class:`RedactionMemo`: once per distinct policy per
event, whatever the number of destinations sharing it) and the event records the counts, never the values.
"""

from __future__ import annotations

import difflib
import hashlib
import logging
import re
from collections.abc import Mapping
from typing import Any, Literal

import msgspec

from sluicegate.events import REDACTED, LogEvent
from sluicegate.redaction.base import Redactor, RedactorRegistry, UnknownRedactorName

__all__ = ("FIELDS", "CompiledPolicy", "PolicyCompiler", "PolicyError", "RedactionMemo", "RedactionSpec")

log = logging.getLogger("sluicegate.redaction")

FIELDS = ("messages", "response", "tool_arguments", "metadata", "end_user")
"""What a policy can scan or drop: ``messages`` (the request's messages or input: contents, text parts,
reasoning), ``response`` (the answer's contents and reasoning, streamed ones as assembled), ``tool_arguments``
(tool- and function-call arguments in both), ``metadata`` (the request's own metadata: ``requester_metadata``,
``spend_logs_metadata``, ``trace_metadata``, trace and generation names, the client's IP address and user agent)
and ``end_user`` (the request's ``user``, ``trace_user_id``)."""
DEFAULT_FIELDS: dict[str, str] = {"messages": "scan", "response": "scan", "tool_arguments": "scan"}
FAILED = "<REDACTION_FAILED>"
"""What a string becomes when a redactor raised on it: never logged unscanned."""

class PolicyError(ValueError):
    """A policy that cannot be used; ``problems`` are ``"path: reason"`` (``redactors[1].regex.patterns: ...``)."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("; ".join(problems))


class RedactionSpec(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``redaction:`` as written. ``redactors``: names, or ``{name: {option: value}}``; ``fields``: a list of
    fields to scan, or ``{field: scan | drop}`` (default: messages, response and tool_arguments scanned)."""

    redactors: list[str | dict[str, Any]] = msgspec.field(default_factory=list)
    fields: list[str] | dict[str, Literal["scan", "drop"]] | None = None


class CompiledPolicy:
    """A usable policy: redactor instances in run order, what to scan and drop, and a stable ``key``."""

    __slots__ = ("_arguments_mode", "_dropped", "_messages_mode", "_metadata_plan", "_response_mode", "_scanned",
                 "drop", "fields", "key", "names", "redactors", "scan", "spec")

    def __init__(self, redactors: tuple[Redactor, ...], fields: dict[str, str], spec: dict[str, Any]) -> None:
        self.redactors = redactors
        self.names = tuple(r.name for r in redactors)
        self.fields = fields
        self.scan = frozenset(f for f, how in fields.items() if how == "scan") if redactors else frozenset()
        self.drop = frozenset(f for f, how in fields.items() if how == "drop")
        self.spec = spec
        self.key = hashlib.sha256(msgspec.json.encode(spec, order="deterministic")).hexdigest()[:12]
        self._messages_mode = self._mode("messages")
        self._arguments_mode = self._mode("tool_arguments")
        self._response_mode = self._mode("response")
        self._scanned, self._dropped = sorted(self.scan), sorted(self.drop)
        # the metadata fields scanned or dropped, with whether they are dropped (most policies name none)
        self._metadata_plan = tuple((names, field in self.drop) for field, names in (
            ("metadata", _METADATA_FIELDS), ("end_user", _END_USER_FIELDS)) if field in self.drop or field in self.scan)

    def _mode(self, field: str) -> str | None:
        return "drop" if field in self.drop else "scan" if field in self.scan else None

    def __repr__(self) -> str:
        return f"CompiledPolicy({self.key}: {list(self.names)}, {self.fields})"

    def describe(self) -> dict[str, Any]:
        """What ``/key/health`` shows: redactors (with options, regex patterns by name only) and fields."""
        return {"redactors": [r.describe() for r in self.redactors], "fields": dict(self.fields)}

    # applying ------------------------------------------------------------------------------------------
    def apply(self, event: LogEvent) -> LogEvent:
        """A copy of ``event`` with the policy's fields scanned or dropped and ``metadata.redaction`` recording
        which redactors ran and how many replacements each made. ``event`` itself is not changed.

        One walk copies the containers that hold a string to scan and remembers where each string goes; the
        redactors then run once each over all the strings joined by a separator no built-in detector crosses (one
        call per redactor per event, not per string), and the results are put in their places.
        """
        walk = _Walk()
        changes: dict[str, Any] = {}
        messages_mode, arguments_mode, response_mode = self._messages_mode, self._arguments_mode, self._response_mode
        if messages_mode or arguments_mode:
            changes["messages"] = walk.messages(event.messages, messages_mode, arguments_mode)
        if response_mode or arguments_mode:
            changes["response"] = walk.response(event.response, response_mode, arguments_mode)
        metadata = event.metadata
        meta_changes: dict[str, Any] = {}
        for names, dropped in self._metadata_plan:
            if dropped:
                meta_changes.update(dict.fromkeys(names))
            else:
                for name in names:
                    value = getattr(metadata, name)
                    if isinstance(value, str):
                        walk.take(meta_changes, name, value)
                    elif value is not None:
                        meta_changes[name] = walk.any(value)
        if "end_user" in self.drop:
            changes["end_user"] = None
        elif "end_user" in self.scan and event.end_user is not None:
            walk.take(changes, "end_user", event.end_user)
        counts, errors, results = self._scan_all(walk.strings)
        if results is not walk.strings:  # else nothing was replaced: the copies hold the strings already
            for (container, key), value in zip(walk.slots, results):
                container[key] = value
        if type(changes.get("messages")) is _Scanned:
            changes["messages"] = changes["messages"].box[0]
        if type(changes.get("response")) is _Scanned:
            changes["response"] = changes["response"].box[0]
        record: dict[str, Any] = {"policy": self.key, "redactors": dict(zip(self.names, counts)),
                                  "scanned": [*self._scanned], "dropped": [*self._dropped]}
        if errors:
            record["errors"] = errors
        meta_changes["redaction"] = record
        changes["metadata"] = msgspec.structs.replace(metadata, **meta_changes)
        return msgspec.structs.replace(event, **changes)

    def _scan_all(self, strings: list[str]) -> tuple[list[int], int, list[str]]:
        counts = [0] * len(self.redactors)
        if not strings or not self.redactors:
            return counts, 0, strings
        # (a test per string, not a count over the joined text: a one-character ``in`` is the cheapest search)
        joined = None
        if len(strings) > 1:
            for value in strings:
                if _SEPARATOR in value:  # one holds the separator: scanned one string at a time
                    break
            else:
                joined = _SEPARATOR.join(strings)
        if joined is not None:
            original = joined
            for index, redactor in enumerate(self.redactors):
                try:
                    joined, counts[index] = redactor.redact(joined)
                except Exception as exc:  # never log a string a detector could not scan
                    log.error("redactor %s failed (%s): the scanned fields are replaced by %s", redactor.name,
                              type(exc).__name__, FAILED)
                    return [0] * len(self.redactors), 1, [FAILED] * len(strings)
            if joined is original:  # nothing replaced (every detector returns the text it was given)
                return counts, 0, strings
            # Checked once, at the end: a redactor that matched across a join (a user pattern like ``.*``) took
            # part of it away (none writes one), and then the event is scanned again one string at a time.
            results = joined.split(_SEPARATOR)
            if len(results) == len(strings):
                return counts, 0, results
            counts = [0] * len(self.redactors)
        errors = 0
        strings = list(strings)
        for index, redactor in enumerate(self.redactors):
            for position, value in enumerate(strings):
                try:
                    strings[position], found = redactor.redact(value)
                except Exception as exc:
                    errors += 1
                    log.error("redactor %s failed (%s): a field is replaced by %s", redactor.name,
                              type(exc).__name__, FAILED)
                    strings[position], found = FAILED, 0
                counts[index] += found
        return counts, errors, strings


_SEPARATOR = "\x00"
"""Joins the strings of one event for one pass per redactor: a NUL, which none of the built-in detectors crosses or
takes in (an event with a string that itself holds one is scanned one string at a time)."""
_METADATA_FIELDS = ("requester_metadata", "spend_logs_metadata", "trace_metadata", "trace_name", "generation_name",
                    "requester_ip_address", "user_agent")
_END_USER_FIELDS = ("trace_user_id", "user_api_key_end_user_id")
_TEXT_KEYS = frozenset(("content", "reasoning_content", "reasoning", "refusal", "text"))


class _Walk:
    """Copies the parts of an event that hold strings to scan; ``slots`` and ``strings`` say where each goes.
    A top-level string (a completion's ``prompt``) is held in a one-item list: the caller unwraps it."""

    __slots__ = ("slots", "strings")

    def __init__(self) -> None:
        self.slots: list[tuple[Any, Any]] = []
        self.strings: list[str] = []

    def take(self, container: Any, key: Any, value: str) -> None:
        container[key] = value
        self.slots.append((container, key))
        self.strings.append(value)

    def any(self, value: Any) -> Any:
        """A copy of a JSON-like value with every string in it taken (keys kept)."""
        if isinstance(value, dict):
            copy: Any = dict(value)
            items: Any = value.items()
        elif isinstance(value, list):
            copy = list(value)
            items = enumerate(value)
        else:
            return value
        for key, item in items:
            if isinstance(item, str):
                self.take(copy, key, item)
            elif isinstance(item, dict | list):
                copy[key] = self.any(item)
        return copy

    def _text(self, container: Any, key: Any, value: str, mode: str) -> None:
        if mode == "drop":
            container[key] = REDACTED
        else:
            self.take(container, key, value)

    def call(self, call: Any, mode: str | None) -> Any:
        if mode is None or not isinstance(call, dict):
            return call
        call = dict(call)
        function = call.get("function")
        if isinstance(function, dict) and isinstance(function.get("arguments"), str):
            function = call["function"] = dict(function)
            self._text(function, "arguments", function["arguments"], mode)
        if isinstance(call.get("arguments"), str):
            self._text(call, "arguments", call["arguments"], mode)
        return call

    def message(self, message: Any, mode: str | None, arguments: str | None) -> Any:
        if not isinstance(message, dict):
            return message
        copy = dict(message)
        if len(message) == 2 and mode == "scan" and "role" in message and type(
                content := message.get("content")) is str:  # the common message: its one string, no loop
            self.slots.append((copy, "content"))
            self.strings.append(content)
            return copy
        for key, value in message.items():
            if key in _TEXT_KEYS:
                if mode is None or value is None:
                    continue
                if isinstance(value, str):  # the common case, inline: the copy holds the value already
                    if mode == "drop":
                        copy[key] = REDACTED
                    else:
                        self.slots.append((copy, key))
                        self.strings.append(value)
                elif isinstance(value, list):  # content parts: text parts scanned, images and audio kept
                    parts = copy[key] = list(value)
                    for index, part in enumerate(value):
                        if isinstance(part, dict) and isinstance(part.get("text"), str):
                            part = parts[index] = dict(part)
                            self._text(part, "text", part["text"], mode)
                        elif isinstance(part, str):
                            self._text(parts, index, part, mode)
            elif key == "tool_calls" and isinstance(value, list):
                copy[key] = [self.call(c, arguments) for c in value]
            elif key == "function_call" and value is not None:
                copy[key] = self.call(value, arguments)
        return copy

    def messages(self, messages: Any, mode: str | None, arguments: str | None) -> Any:
        if isinstance(messages, list):  # chat messages, or an embeddings/completions input list
            copy = list(messages)
            slots, strings = self.slots, self.strings
            for index, message in enumerate(messages):
                if type(message) is dict and len(message) == 2 and mode == "scan" and "role" in message and type(
                        content := message.get("content")) is str:  # what message() does for it, inline
                    copy[index] = message = dict(message)
                    slots.append((message, "content"))
                    strings.append(content)
                elif isinstance(message, str):
                    if mode is not None:
                        self._text(copy, index, message, mode)
                else:
                    copy[index] = self.message(message, mode, arguments)
            return copy
        if isinstance(messages, str) and mode is not None:
            return self._top(messages, mode)
        return messages

    def response(self, response: Any, mode: str | None, arguments: str | None) -> Any:
        if not isinstance(response, dict):
            return self._top(response, mode) if isinstance(response, str) and mode is not None else response
        choices = response.get("choices")
        if not isinstance(choices, list):
            return response
        copied = []
        for choice in choices:
            if isinstance(choice, dict):
                choice = dict(choice)
                for part in ("message", "delta"):
                    if isinstance(choice.get(part), dict):
                        choice[part] = self.message(choice[part], mode, arguments)
                if isinstance(choice.get("text"), str) and mode is not None:
                    self._text(choice, "text", choice["text"], mode)
            copied.append(choice)
        return {**response, "choices": copied}

    def _top(self, value: str, mode: str) -> Any:
        if mode == "drop":
            return REDACTED
        return _Scanned(self, value)


class _Scanned:
    """A top-level string being scanned: resolved to its result by :meth:`CompiledPolicy.apply`."""

    __slots__ = ("box",)

    def __init__(self, walk: _Walk, value: str) -> None:
        self.box = [value]
        walk.take(self.box, 0, value)


class PolicyCompiler:
    """Compiles written policies against the installed redactors; identical policies (and identical redactor
    options) share one compiled object, so 1,000 teams with one policy hold one set of redactors."""

    __slots__ = ("_instances", "_policies", "registry")

    def __init__(self, registry: RedactorRegistry) -> None:
        self.registry = registry
        self._policies: dict[bytes, CompiledPolicy | None] = {}
        self._instances: dict[bytes, Redactor] = {}

    def compile(self, raw: Any) -> CompiledPolicy | None:
        """The policy ``raw`` describes; ``None`` for one that does nothing (no redactors and nothing dropped:
        how a layer switches off a policy it would inherit). Raises :class:`PolicyError`."""
        try:
            canonical = msgspec.json.encode(raw, order="deterministic")
        except (TypeError, msgspec.EncodeError):
            raise PolicyError(["(policy): expected an object {redactors: [...], fields: [...]}"]) from None
        if canonical in self._policies:
            return self._policies[canonical]
        policy = self._compile(raw)
        self._policies[canonical] = policy
        return policy

    def _compile(self, raw: Any) -> CompiledPolicy | None:
        if not isinstance(raw, Mapping):
            raise PolicyError([f"(policy): expected an object {{redactors: [...], fields: [...]}}, got "
                               f"{type(raw).__name__}"])
        try:
            spec = msgspec.convert(raw, RedactionSpec, strict=False)
        except msgspec.ValidationError as exc:
            message = str(exc)
            path = message.rsplit("at `$", 1)[-1].rstrip("`").lstrip(".") if "at `$" in message else ""
            reason = message.split(" - at ")[0]
            unknown = re.match(r"Object contains unknown field `([^`]*)`", reason)
            if unknown and not path:
                path = unknown.group(1)
                hint = difflib.get_close_matches(path, ("redactors", "fields"), n=1, cutoff=0.6)
                reason = "unknown key" + (f"; did you mean {hint[0]!r}?" if hint else "") + " (known: redactors, fields)"
            raise PolicyError([f"{path or '(policy)'}: {reason}"]) from None
        problems: list[str] = []
        built: list[tuple[int, int, Redactor]] = []
        seen: set[str] = set()
        for index, item in enumerate(spec.redactors):
            where = f"redactors[{index}]"
            if isinstance(item, str):
                name, options_raw = item, {}
            elif len(item) == 1:
                name, options_raw = next(iter(item.items()))
                options_raw = {} if options_raw is None else options_raw
            else:
                problems.append(f"{where}: write a name, or {{name: {{options}}}} with exactly one name")
                continue
            try:
                redactor_class = self.registry.get(name)
            except UnknownRedactorName as exc:
                problems.append(f"{where}: {exc}")
                continue
            if name in seen:
                problems.append(f"{where}: {name!r} is listed twice; give it once (the regex redactor takes "
                                "several patterns)")
                continue
            seen.add(name)
            if not isinstance(options_raw, Mapping):
                problems.append(f"{where}.{name}: options must be an object")
                continue
            try:
                options = msgspec.convert(options_raw, redactor_class.Options, strict=False)
            except msgspec.ValidationError as exc:
                message = str(exc)
                path = message.rsplit("at `$", 1)[-1].rstrip("`") if "at `$" in message else ""
                reason = message.split(" - at ")[0]
                if reason.startswith("Object contains unknown field"):
                    known = ", ".join(redactor_class.Options.__struct_fields__) or "none"
                    reason += f"; known options: {known}"
                problems.append(f"{where}.{name}{path}: {reason}")
                continue
            key = msgspec.json.encode([name, msgspec.to_builtins(options)], order="deterministic")
            instance = self._instances.get(key)
            if instance is None:
                try:
                    instance = redactor_class(options)
                except Exception as exc:  # a third-party redactor refusing its options
                    problems.append(f"{where}.{name}: {type(exc).__name__}: {exc}")
                    continue
                self._instances[key] = instance
            built.append((redactor_class.order, index, instance))
        fields: dict[str, str]
        if spec.fields is None:
            fields = dict(DEFAULT_FIELDS)
        elif isinstance(spec.fields, list):
            fields = {f: "scan" for f in spec.fields}
        else:
            fields = dict(spec.fields)
        for field in fields:
            if field not in FIELDS:
                hint = difflib.get_close_matches(field, FIELDS, n=1, cutoff=0.6)
                problems.append(f"fields.{field}: not a field" + (f"; did you mean {hint[0]!r}?" if hint else "")
                                + f" (known: {', '.join(FIELDS)})")
        if problems:
            raise PolicyError(problems)
        redactors = tuple(r for _, _, r in sorted(built, key=lambda t: (t[0], t[1])))
        if not redactors and "drop" not in fields.values():
            return None
        canonical = {"redactors": [{r.name: msgspec.to_builtins(r.options)} for r in redactors],
                     "fields": dict(sorted(fields.items()))}
        return CompiledPolicy(redactors, dict(sorted(fields.items())), canonical)


_MEMO_SIZE = 1024


class RedactionMemo:
    """Redacted copies of recent events by (event JSON, policy), in two generations of ``_MEMO_SIZE``.

    Every route of an event shares one bytes object (the dispatcher encodes an event once); routes with one
    policy get one redacted copy: a policy runs once per event however many destinations use it. ``applied``
    counts the policy runs (tests and ``/-/sinks`` read it)."""

    __slots__ = ("_older", "_recent", "applied")

    def __init__(self) -> None:
        self._recent: dict[tuple[int, str], tuple[bytes, LogEvent]] = {}
        self._older: dict[tuple[int, str], tuple[bytes, LogEvent]] = {}
        self.applied = 0

    def redacted(self, payload: bytes, event: LogEvent, policy: CompiledPolicy) -> LogEvent:
        key = (id(payload), policy.key)
        hit = self._recent.get(key) or self._older.get(key)
        if hit is not None and hit[0] is payload:
            return hit[1]
        redacted = policy.apply(event)
        self.applied += 1
        self._recent[key] = (payload, redacted)
        if len(self._recent) >= _MEMO_SIZE:
            self._older, self._recent = self._recent, {}
        return redacted
