"""The ``Redactor`` contract and the registry of redactor classes, filled through ``register_redactors``.

A redactor is built once per distinct set of options when a policy is resolved (at start-up or after a change),
never per event; :meth:`Redactor.redact` then runs on the delivery side, once per string field of an event the
policy scans. It must be pure (no I/O, no shared mutable state): one instance serves every team using it.
"""

from __future__ import annotations

import abc
import difflib
import re
from typing import Any, ClassVar

import msgspec

from sluicegate.plugin_registry import PluginRegistry

__all__ = ("DuplicateRedactorName", "Redactor", "RedactorOptions", "RedactorRegistry", "UnknownRedactorName")

_NAME = re.compile(r"[a-z][a-z0-9_]*\Z")


class RedactorOptions(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Base of every redactor's ``Options``: frozen, keyword-only, unknown keys refused (a misspelt option would
    otherwise switch a detector's behaviour back to its default without a word)."""


class Redactor(abc.ABC):
    """A detector that replaces what it finds in a text with a typed placeholder (``<EMAIL>``, ``<PHONE>``...).

    Subclasses set ``name`` (what policies write: ``redactors: [email]``), ``Options`` (a :class:`RedactorOptions`
    subclass; a policy writes them as ``{name: {option: value}}``) and ``placeholder``, and implement
    :meth:`redact`. The core builds one instance per distinct options with ``RedactorClass(options)`` and keeps it
    as long as a policy uses it.
    """

    name: ClassVar[str]
    Options: ClassVar[type[RedactorOptions]] = RedactorOptions
    placeholder: ClassVar[str] = "<REDACTED>"
    """What replaces each find. Typed (``<EMAIL>``) so a reader of the log still knows what was there."""
    order: ClassVar[int] = 100
    """Policies run their redactors by ascending ``order`` (then as written): the specific detectors first, so a
    card number is replaced whole before the phone detector could take part of it."""

    __slots__ = ("options",)

    def __init__(self, options: RedactorOptions) -> None:
        self.options = options

    @abc.abstractmethod
    def redact(self, text: str) -> tuple[str, int]:
        """Return ``text`` with every find replaced by the placeholder, and how many replacements were made.

        Called on the delivery side for every string a policy scans; it must not fail on any input (a detector
        that raises is counted as an error and the field is dropped rather than logged unscanned) and should
        return ``(text, 0)`` quickly when there is nothing to find. Never log or keep what was found.
        """

    def placeholders(self) -> list[str]:
        """What this redactor writes in place of its finds (the console shows them): ``[placeholder]`` unless it
        writes several."""
        return [self.placeholder]

    def describe(self) -> dict[str, Any]:
        """The redactor as shown by ``/key/health`` and ``sluicegate plugins``: its name and non-default options."""
        options = msgspec.to_builtins(self.options)
        return {"name": self.name, **({"options": options} if options else {})}


class DuplicateRedactorName(RuntimeError):
    pass


class UnknownRedactorName(LookupError):
    def __init__(self, name: str, message: str) -> None:
        self.name = name
        super().__init__(message)


class RedactorRegistry(PluginRegistry[Redactor]):
    """Maps a redactor ``name`` to its class and remembers which plugin registered it."""

    hook = "register_redactors"
    what = "redactor"
    duplicate_error = DuplicateRedactorName
    __slots__ = ()

    def check(self, redactor_class: type[Redactor], owner: str) -> str:
        if not (isinstance(redactor_class, type) and issubclass(redactor_class, Redactor)):
            raise TypeError(f"{owner} registered {redactor_class!r}, which is not a sluicegate.Redactor subclass")
        name = getattr(redactor_class, "name", None)
        if not isinstance(name, str) or not _NAME.match(name):
            raise TypeError(f"{owner}: {redactor_class.__qualname__}.name must be lower-case letters, digits and "
                            f"'_' (got {name!r})")
        if not (isinstance(redactor_class.Options, type) and issubclass(redactor_class.Options, RedactorOptions)):
            raise TypeError(f"{owner}: {redactor_class.__qualname__}.Options must subclass sluicegate.RedactorOptions")
        return name

    def unknown(self, name: str) -> UnknownRedactorName:
        hint = difflib.get_close_matches(name, self.names(), n=1, cutoff=0.6)
        return UnknownRedactorName(name, f"unknown redactor {name!r}" + (
            f"; did you mean {hint[0]!r}?" if hint else "") + f" (installed: {', '.join(self.names()) or 'none'})")
