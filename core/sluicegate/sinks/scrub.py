"""What may leave a sink instance: texts with its secrets masked in every form it sends them, short excerpts of a
destination's answers, and the coarse error kind a key holder sees instead of the destination's words.

A destination (or a proxy, or a debugging endpoint) that answers an error with the request it received hands back
the credentials the sink sent, in whatever form the sink sent them and the destination re-encoded them: a header
value, a Basic token, JSON-escaped inside an error object, percent-encoded in a query, base64 inside a dump.
:class:`Scrubber` masks each known secret in all those forms, then masks what no list can know: a per-request
bearer token or JWT, user info in a URL, the value after an echoed ``Authorization:``-like header name.

Scrubbing happens only on the error path (a failed send, a health check, a log line about a destination's
answer); the request path never sees it.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterable
from urllib.parse import quote, quote_plus

from sluicegate.sinks.base import MASK, Sink

__all__ = ("ERROR_KINDS", "EXCERPT_CHARS", "Scrubber", "error_kind_of", "public_error_kind")

MIN_SECRET_CHARS = 4
"""Shorter strings are not masked by value: they would mangle ordinary words and protect nothing."""
EXCERPT_CHARS = 200
"""The most of a destination's answer ever copied into an error text (after scrubbing)."""
_SCAN_CHARS = 4096
"""How much of an answer is scrubbed before an excerpt is cut from it: more than any excerpt, so a secret that
straddles the cut is masked whole, and bounded, so an 8 MB answer costs no more than a short one."""

ERROR_KINDS = ("auth", "unreachable", "timeout", "protocol", "rejected")
"""What a key holder is told about a failing sink (``/key/health``): one of these, never the destination's words."""

_KINDS = {
    # credentials missing, refused or not allowed
    "auth": "auth", "unauthorized": "auth", "unauthenticated": "auth", "forbidden": "auth",
    "permission": "auth", "permission_denied": "auth", "config": "auth",
    # no usable answer
    "unreachable": "unreachable", "connection": "unreachable", "connect": "unreachable", "closed": "unreachable",
    "tls": "unreachable", "unavailable": "unreachable", "server_error": "unreachable",
    "timeout": "timeout", "deadline_exceeded": "timeout",
    # an answer, refusing
    "rejected": "rejected", "http_status": "rejected", "http_error": "rejected", "grpc_status": "rejected",
    "not_found": "rejected", "too_large": "rejected", "rate_limited": "rejected",
    # an answer we could not make sense of, or a failure we did not foresee
    "protocol": "protocol", "unexpected": "protocol", "error": "protocol",
}

_URLSAFE = str.maketrans("+/", "-_")

# Header (or field) names whose echoed value is a credential whatever it is.
_CREDENTIAL_NAMES = (r"(?:proxy-)?authorization|x-api-key|api[-_]?key|dd-api-key|dd-application-key"
                     r"|x-goog-api-key|x-auth-token|set-cookie|cookie|access[-_]token|refresh[-_]token|id[-_]token"
                     r"|client[-_]secret|secret[-_]key|private[-_]key(?:[-_]id)?|password|passwd|assertion")
_GENERIC = (
    # -----BEGIN PRIVATE KEY----- ... -----END PRIVATE KEY----- (also JSON-escaped, also cut off)
    (re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?(?:-----END [A-Z ]*PRIVATE KEY-----|$)", re.S), MASK),
    # a JWT (an OAuth assertion, an ID or access token)
    (re.compile(r"\beyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*"), MASK),
    # user info in a URL: scheme://user:password@host
    (re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/\s@'\"<>\\]+@"), rf"\1{MASK}@"),
    # an echoed credential header or field, raw, JSON or form style: `Authorization: Basic x`, `"api_key": "x"`
    (re.compile(rf"(?i)(\b(?:{_CREDENTIAL_NAMES})\b\\?[\"']?\s*[:=]\s*\\?[\"']?\s*)"
                r"((?:bearer|basic|token|apikey)(?:\s+|%20|\+))?[^\s\"'\\,;&}\]<>]+"), rf"\1\2{MASK}"),
    # short credential names in a query string: ?key=x&sig=y
    (re.compile(r"(?i)([?&;](?:key|token|auth|sig|signature|code)=)[^&\s\"'#<>\\]+"), rf"\1{MASK}"),
    # `Bearer x` / `Basic x` anywhere else (a token has a digit or a symbol; an English word has neither)
    (re.compile(r"(?i)\b(bearer|basic)(\s+|%20|\+)(?=[A-Za-z0-9._~+/=-]*[0-9._~+/=-])[A-Za-z0-9._~+/=-]{8,}"),
     rf"\1\2{MASK}"),
)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")


def _base64_cores(data: bytes) -> set[str]:
    """The base64 characters that encode ``data`` alone, for each of the three alignments it can have inside a
    longer encoded text (a header dump, ``pk:sk``), in the standard and the URL-safe alphabet.

    Behind ``k`` bytes of something else (k = 0, 1, 2) the first 0, 2 or 3 characters also carry bits of those
    bytes, and the last one carries bits of whatever follows unless the bits end on a character boundary.
    """
    cores = set()
    for offset, skip in ((0, 0), (1, 2), (2, 3)):
        encoded = base64.b64encode(b"\0" * offset + data).decode("ascii").rstrip("=")
        end = len(encoded) - (1 if (8 * (offset + len(data))) % 6 else 0)
        core = encoded[skip:end]
        if len(core) >= MIN_SECRET_CHARS:
            cores.add(core)
            cores.add(core.translate(_URLSAFE))
    return cores


def _forms(secret: str) -> set[str]:
    """``secret`` as it may come back: raw, JSON-escaped (once and twice, ASCII or not, ``/`` escaped or not),
    in a Python repr, percent-encoded (either hex case) and base64 at any alignment."""
    forms = {secret}
    for ascii_only in (True, False):
        once = json.dumps(secret, ensure_ascii=ascii_only)[1:-1]
        forms |= {once, once.replace("/", "\\/"), json.dumps(once, ensure_ascii=ascii_only)[1:-1]}
    forms.add(repr(secret)[1:-1])
    for encoded in (quote(secret, safe=""), quote(secret), quote_plus(secret)):
        forms |= {encoded, re.sub(r"%[0-9A-F]{2}", lambda m: m.group(0).lower(), encoded)}
    forms |= _base64_cores(secret.encode("utf-8"))
    return {form for form in forms if len(form) >= MIN_SECRET_CHARS}


class Scrubber:
    """Masks a sink instance's secrets (see :meth:`Sink.secret_forms`) in texts about it.

    Build one where a text is about to leave (an error, a log line): it costs a few microseconds per secret, and a
    sink's secrets may change (a refreshed access token), so none is kept.
    """

    __slots__ = ("_forms",)

    def __init__(self, secrets: Iterable[str]) -> None:
        found: set[str] = set()
        for secret in secrets:
            if isinstance(secret, str) and len(secret) >= MIN_SECRET_CHARS:
                found |= _forms(secret)
        # Longest first: a form that contains another (a Basic token holding a secret) goes whole.
        self._forms = sorted(found, key=len, reverse=True)

    @classmethod
    def for_sink(cls, sink: Sink) -> Scrubber:
        """A scrubber for ``sink``'s :meth:`~Sink.secret_forms`; the declared secrets alone if that method fails
        (an error path must not raise)."""
        try:
            secrets = list(sink.secret_forms())
        except Exception:
            secrets = list(Sink.secret_forms(sink))
        return cls(secrets)

    def __call__(self, text: str) -> str:
        """``text`` with every form of every secret, and every credential-looking value, replaced by the mask."""
        for form in self._forms:
            if form in text:
                text = text.replace(form, MASK)
        for pattern, replacement in _GENERIC:
            text = pattern.sub(replacement, text)
        return text

    def line(self, text: str, limit: int = 500) -> str:
        """``text`` scrubbed, on one line (control characters become spaces: no forged log lines), cut to
        ``limit`` characters."""
        text = _CONTROL.sub(" ", self(text[:max(limit, _SCAN_CHARS)])).strip()
        return text if len(text) <= limit else text[:limit - 1] + "…"

    def excerpt(self, body: bytes | str, limit: int = EXCERPT_CHARS) -> str:
        """The start of a destination's answer, fit to quote in an error: scrubbed, one line, ``limit`` chars."""
        if isinstance(body, bytes):
            body = body[:_SCAN_CHARS].decode("utf-8", "replace")
        return self.line(body, limit)


def public_error_kind(kind: str | None) -> str:
    """One of :data:`ERROR_KINDS` for a sink's own ``HealthResult.error_kind`` (``protocol`` when unknown)."""
    return _KINDS.get((kind or "").lower(), "protocol")


def error_kind_of(exc: BaseException) -> str:
    """One of :data:`ERROR_KINDS` for an exception from a sink: its ``kind``, else its HTTP status, else its
    type."""
    if isinstance(exc, TimeoutError):
        return "timeout"
    kind = getattr(exc, "kind", None) or getattr(exc, "error_kind", None)
    if isinstance(kind, str) and kind.lower() in _KINDS:
        return _KINDS[kind.lower()]
    status = getattr(exc, "status_code", None) or getattr(exc, "status", None)
    if status is None:
        status = getattr(getattr(exc, "response", None), "status_code", None)
    if isinstance(status, int):
        if status in (401, 403, 407):
            return "auth"
        if status == 408:
            return "timeout"
        if 400 <= status < 500:
            return "rejected"
        if status >= 500:
            return "unreachable"
    if isinstance(exc, (ConnectionError, OSError)):
        return "unreachable"
    return "protocol"
