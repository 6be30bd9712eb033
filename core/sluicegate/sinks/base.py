"""The interface every sink implements, and the typed callback variables it is built with."""

from __future__ import annotations

import abc
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import msgspec

from sluicegate.sinks.destinations import TRUSTED

if TYPE_CHECKING:
    from sluicegate.events import LogEvent
    from sluicegate.sinks.destinations import DestinationPolicy

__all__ = ("MASK", "CallbackVars", "HealthCheck", "HealthResult", "SecretStr", "Sink")

MASK = "***REDACTED***"
"""What a secret looks like wherever it is shown (LiteLLM's placeholder, so scripts keep working)."""


class SecretStr:
    """A string that never shows itself: ``repr``, ``str`` and JSON encoding all give :data:`MASK`.

    Use :meth:`get_secret_value` at the single place the secret is needed (an auth header).
    """

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        if not isinstance(value, str):
            raise TypeError("SecretStr takes a str")
        self._value = value

    def get_secret_value(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return f"SecretStr({MASK!r})"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SecretStr) and other._value == self._value

    def __hash__(self) -> int:
        return hash(("SecretStr", self._value))

    def __bool__(self) -> bool:
        return bool(self._value)


class CallbackVars(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Base of every sink's ``Vars``: frozen, keyword-only, unknown keys rejected.

    Declare secret fields as ``SecretStr``. ``aliases`` maps accepted alternative names to field names
    (e.g. LiteLLM's ``langfuse_secret`` for ``langfuse_secret_key``).
    """

    aliases: ClassVar[Mapping[str, str]] = {}


class HealthResult(msgspec.Struct, frozen=True, kw_only=True):
    """The outcome of a health check.

    ``details`` is shown to admins, scrubbed of the instance's secrets; a key holder sees only the sink's name and
    ``error_kind`` reduced to one of auth, unreachable, timeout, protocol or rejected. Never put a secret in it.
    """

    healthy: bool
    details: str = ""
    error_kind: str | None = None


HealthCheck = Callable[[], Awaitable[HealthResult]]


class Sink(abc.ABC):
    """A destination for log events, built by the core as ``SinkClass(callback_vars)``.

    Subclasses set ``callback_name`` and ``Vars`` and implement :meth:`send`. One instance serves one set of
    callback variables; the core pools instances, batches events, applies timeouts and retries.
    ``send`` raises on failure (any exception): the core counts it and retries the batch with backoff, so a
    sink should make re-delivery of the same event id harmless where its destination allows. A permanent
    failure (bad credentials, payload refused) is marked ``exc.retryable = False`` or carries an HTTP
    ``status_code`` 4xx other than 408/429: the core then drops the batch at once, counts and logs it.
    """

    callback_name: ClassVar[str]
    Vars: ClassVar[type[CallbackVars]] = CallbackVars
    max_batch_size: ClassVar[int] = 100
    """Upper bound on ``len(batch)`` passed to :meth:`send`."""
    send_timeout: ClassVar[float] = 30.0
    """Seconds one ``send`` may take before the core cancels it and retries."""

    __slots__ = ("callback_vars", "destination_policy")

    def __init__(self, callback_vars: CallbackVars) -> None:
        self.callback_vars = callback_vars
        self.destination_policy: DestinationPolicy = TRUSTED
        """Where this instance may connect: the core sets it for callbacks written through the admin API. Pass it
        to :class:`sluicegate.net.http.HttpClient` (``policy=``) or check resolved addresses with its
        ``address_problem`` before connecting by other means."""

    @classmethod
    def destinations(cls, callback_vars: CallbackVars) -> list[tuple[str, str]]:
        """Return ``(field, url)`` for every network destination ``callback_vars`` name (default: none).

        A URL may also be ``host:port`` or a bare host. Callbacks written through the admin API are refused
        (422 naming the field) when ``sluicegate_settings.sink_destinations`` refuses one.
        """
        return []

    @classmethod
    def destination_problems(cls, callback_vars: CallbackVars, policy: DestinationPolicy) -> list[tuple[str, str]]:
        """Return ``(field, reason)`` for each destination of ``callback_vars`` that ``policy`` refuses.

        The default checks :meth:`destinations`; a sink writing somewhere other than a network (a file)
        overrides this. Runs when a callback is written and when it is resolved: no I/O beyond a stat.
        """
        found = []
        for field, url in cls.destinations(callback_vars):
            problem = policy.url_problem(url)
            if problem is not None:
                found.append((field, problem))
        return found

    @classmethod
    def env_defaults(cls, environ: Mapping[str, str]) -> dict[str, Any]:
        """Return callback variables taken from the process environment.

        Used only for a sink named in the global config without variables (e.g. ``callbacks: ["langfuse"]``
        with ``LANGFUSE_PUBLIC_KEY`` set). A team's or key's own entry never falls back to these.
        """
        return {}

    @abc.abstractmethod
    async def send(self, batch: Sequence[LogEvent]) -> None:
        """Deliver ``batch`` (1..``max_batch_size`` events, possibly redacted). Raise on failure."""

    async def health_check(self) -> HealthResult:
        """Check that the destination is reachable and accepts these credentials, with a real call."""
        return HealthResult(healthy=True, details=f"{self.callback_name}: no health check implemented")

    def secret_forms(self) -> Iterable[str]:
        """Return every secret this instance sends, in each form it puts on the wire.

        The core masks each of them (and their JSON-escaped, percent-encoded and base64 forms) in every text that
        leaves the instance: health details, ``last_error``, log lines. Override to add what the destination
        receives beyond the raw values (a ``Basic`` token, each header parsed out of one secret field, a current
        access token). Called only on error paths; must not do I/O. Default: the values of the ``SecretStr``
        fields.
        """
        callback_vars = self.callback_vars
        for name in callback_vars.__struct_fields__:
            value = getattr(callback_vars, name, None)
            if isinstance(value, SecretStr) and value:
                yield value.get_secret_value()

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release what this instance holds. Called once when it is evicted or at shutdown; idempotent."""

    @classmethod
    async def shutdown(cls) -> None:  # noqa: B027 - optional hook
        """Release what instances of this class share (a pooled HTTP client, a thread pool).

        Called once at gateway shutdown after every instance was closed; must be idempotent, and a later
        instance must be able to start the shared resources again (tests build many apps in one process).
        """
