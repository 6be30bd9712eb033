"""Hook specifications for Sluicegate plugins.

Every hook is synchronous and runs at start-up or when a configuration changes, never per request.
Call hooks with keyword arguments only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

import pluggy

if TYPE_CHECKING:
    from collections.abc import Mapping

    from sluicegate.providers.base import Provider
    from sluicegate.redaction.base import Redactor
    from sluicegate.sinks.base import HealthCheck, Sink

__all__ = ("PROJECT_NAME", "hookimpl", "hookspec")

PROJECT_NAME = "sluicegate"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@hookspec
def register_sinks(register: Callable[[type[Sink]], None]) -> None:
    """Register sink classes by calling ``register(SinkClass)`` once per class.

    Called once when the plugin manager is loaded. Each class names its ``callback_name``; two classes with
    one ``callback_name`` stop start-up with an error naming both distributions.

    :param register: Takes a :class:`sluicegate.Sink` subclass.
    """


@hookspec
def register_providers(register: Callable[[type[Provider]], None]) -> None:
    """Register provider classes by calling ``register(ProviderClass)`` once per class.

    Called once when the gateway starts (and by ``sluicegate plugins``). Each class names its
    ``custom_llm_provider``, the prefix of ``litellm_params.model`` it answers for; two classes with one name stop
    start-up with an error naming both distributions. The built-in providers register through this hook too.

    :param register: Takes a :class:`sluicegate.Provider` subclass.
    """


@hookspec
def register_redactors(register: Callable[[type[Redactor]], None]) -> None:
    """Register redactor classes by calling ``register(RedactorClass)`` once per class.

    Called once when the gateway starts (and by ``sluicegate plugins``). Each class names its ``name``, the word
    a ``redaction: {redactors: [...]}`` policy uses; two classes with one name stop start-up with an error naming
    both distributions. The built-in detectors (email, phone, card, iban, ip, secret, regex) register through
    this hook too. Instances are built when a policy is resolved and run on the delivery side, never per request.

    :param register: Takes a :class:`sluicegate.Redactor` subclass.
    """


@hookspec
def register_health_checks(register: Callable[[str, HealthCheck], None]) -> None:
    """Register gateway-level health checks by calling ``register(name, check)``.

    Called once at start-up. ``check`` is an ``async`` callable taking no argument and returning a
    :class:`sluicegate.HealthResult`; ``GET /health/readiness`` runs every registered check under a timeout.

    :param register: Takes a unique check name and the check.
    """


@hookspec(firstresult=True)
def resolve_callback_var(value: str, key: str, callback_name: str) -> str | None:
    """Resolve a reference in an admin-written callback variable to its real value.

    Called when a sink is configured (config load, ``/team/{id}/callback``, ``/key/generate``), never per
    request, and only for values an admin wrote. The first implementation returning a non-``None`` value
    wins (``firstresult``); the built-in ``os.environ/NAME`` resolver runs last. Raise ``LookupError`` with a
    message naming the reference when it cannot be resolved.

    :param value: The value as written, e.g. ``"os.environ/LANGFUSE_SECRET"``.
    :param key: The callback variable name, e.g. ``"langfuse_secret_key"``.
    :param callback_name: The sink the variable belongs to, e.g. ``"langfuse"``.
    :return: The resolved string, or ``None`` when this implementation does not handle ``value``.
    """


@hookspec
def validate_callback_vars(callback_name: str, callback_vars: Mapping[str, Any]) -> list[str] | None:
    """Check a sink's resolved callback variables beyond what its ``Vars`` struct expresses.

    Called at write time, after the variables decoded into the sink's ``Vars``. Every implementation runs and
    all returned messages are reported together (HTTP 422 from the admin API, a start-up error from config).

    :param callback_name: The sink being configured.
    :param callback_vars: The resolved variables (secrets included: never log them).
    :return: Messages of the form ``"field: reason"``, or ``None``/``[]`` when all is well.
    """
