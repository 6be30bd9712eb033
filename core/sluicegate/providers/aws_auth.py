"""AWS credentials for providers that sign with SigV4: resolved and refreshed off the request path.

Where credentials come from, in order: keys given in the config (``aws_access_key_id`` /
``aws_secret_access_key`` / ``aws_session_token``), else botocore's standard chain (environment, shared files and
``aws_profile_name``, web identity, container and instance metadata). With ``aws_role_name`` those credentials
assume the role through STS (botocore's own ``AssumeRoleCredentialFetcher``), and the role's temporary
credentials are refreshed before they expire.

Everything that may block (files, STS, instance metadata) runs in a worker thread when the gateway starts and then
in a background task shortly before the credentials would expire; a request only reads the frozen credentials
already held and signs them (CPU only).

Signing: requests of the gateway's own shape (POST or GET, ``http(s)`` URL with a host name, ASCII header values,
none of the headers SigV4 itself writes) are signed by :func:`sigv4_headers`, a SigV4 implementation for that shape
that caches each URL's canonical path, query and host and each derived signing key per (secret, date, region,
service): ~10 µs instead of botocore's ~220 µs. ``tests/test_core_sigv4.py`` holds its headers byte-equal to
botocore's ``SigV4Auth`` over generated inputs; anything outside the shape is signed by botocore's ``SigV4Auth``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import time
from collections.abc import Mapping
from functools import partial
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit

from sluicegate.net.http import encode_headers

if TYPE_CHECKING:
    from botocore.credentials import ReadOnlyCredentials

# botocore (~0.3 s to import) is imported where it is first used, so a gateway without Bedrock models does not pay
# for it at start-up.

__all__ = ("AwsCredentialSource", "botocore_sigv4_headers", "sigv4_headers", "sign_headers")

log = logging.getLogger("sluicegate.providers.aws")

ADVISORY_WINDOW = 15 * 60
"""botocore refreshes temporary credentials once they are this close to expiry (its advisory window): the
background refresh wakes just inside it, well before the 10-minute mandatory window in which a request would
have to wait for STS."""
MAX_SLEEP = 300.0
RETRY_DELAYS = (1.0, 2.0, 5.0, 10.0, 30.0, 60.0)


class AwsCredentialSource:
    """One model's AWS credentials: :meth:`current` is what a request signs with (never blocks)."""

    def __init__(self, *, what: str, region: str, access_key_id: str | None = None,
                 secret_access_key: str | None = None, session_token: str | None = None,
                 profile_name: str | None = None, role_arn: str | None = None, session_name: str | None = None,
                 external_id: str | None = None, sts_endpoint: str | None = None,
                 environ: Mapping[str, str] | None = None) -> None:
        self.what = what
        self.region = region
        self._static = (access_key_id, secret_access_key, session_token)
        self._profile = profile_name
        self._role = role_arn
        self._session_name = session_name or "sluicegate-bedrock-session"
        self._external_id = external_id
        self._sts_endpoint = sts_endpoint
        self._environ = environ
        self._credentials: Any = None  # botocore Credentials (maybe refreshable)
        self._frozen: ReadOnlyCredentials | None = None
        self._task: asyncio.Task[None] | None = None
        self.last_error: str | None = None
        self.refreshes = 0

    # resolution (worker thread) -----------------------------------------------------------------------
    def _build(self) -> Any:
        from botocore.credentials import AssumeRoleCredentialFetcher, Credentials, DeferredRefreshableCredentials
        from botocore.session import Session

        key, secret, token = self._static
        session = Session(profile=self._profile) if self._profile else Session()
        if key and secret:
            source: Any = Credentials(key, secret, token)
        else:
            source = session.get_credentials()
            if source is None:
                raise LookupError("no AWS credentials found: set aws_access_key_id and aws_secret_access_key, or "
                                  "provide them through the standard AWS chain (environment, shared files, "
                                  "instance or container role)")
        if not self._role:
            return source
        extra: dict[str, Any] = {"RoleSessionName": self._session_name}
        if self._external_id:
            extra["ExternalId"] = self._external_id
        create_client = partial(session.create_client, region_name=self.region,
                                endpoint_url=self._sts_endpoint or None)
        fetcher = AssumeRoleCredentialFetcher(create_client, source, self._role, extra_args=extra)
        return DeferredRefreshableCredentials(refresh_using=fetcher.fetch_credentials, method="assume-role")

    def _resolve(self) -> ReadOnlyCredentials:
        if self._credentials is None:
            self._credentials = self._build()
        frozen = self._credentials.get_frozen_credentials()
        if not frozen.access_key or not frozen.secret_key:
            raise LookupError("the AWS credentials found are incomplete")
        return frozen

    def _expiry(self) -> float | None:
        expiry = getattr(self._credentials, "_expiry_time", None)  # botocore's RefreshableCredentials
        return expiry.timestamp() if expiry is not None else None

    # lifecycle ----------------------------------------------------------------------------------------
    async def start(self, timeout: float = 30.0) -> None:
        """Resolve once (bounded by ``timeout``); keep refreshing in the background when the credentials expire,
        or keep trying when none could be found yet."""
        try:
            await asyncio.wait_for(self._refresh(), timeout)
        except Exception as exc:  # noqa: BLE001 - reported, and retried in the background
            self._failed(exc)
        if self._frozen is None or self._expiry() is not None:
            self._task = asyncio.get_running_loop().create_task(self._refresh_loop(),
                                                                name=f"aws credentials {self.what}")

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _refresh(self) -> None:
        frozen = await asyncio.to_thread(self._resolve)
        if self._frozen is not None and frozen.access_key != self._frozen.access_key:
            self.refreshes += 1
        self._frozen = frozen
        self.last_error = None

    def _failed(self, exc: BaseException) -> None:
        # The exception's class and botocore's message name the problem; neither carries a secret.
        reason = str(exc).split("\n", 1)[0][:300] or type(exc).__name__
        self.last_error = f"{type(exc).__name__}: {reason}"
        log.warning("%s: AWS credentials not available: %s", self.what, self.last_error)

    def _next_wake(self) -> float:
        expiry = self._expiry()
        if expiry is None:
            return MAX_SLEEP
        return min(MAX_SLEEP, max(0.5, expiry - ADVISORY_WINDOW - time.time() + 0.5))

    async def _refresh_loop(self) -> None:
        failures = 0
        while True:
            if self._frozen is None or failures:  # start-up's attempt failed too: back off from the first step
                delay = RETRY_DELAYS[min(failures, len(RETRY_DELAYS) - 1)]
            else:
                delay = self._next_wake()
            await asyncio.sleep(delay)
            try:
                await self._refresh()
                failures = 0
            except Exception as exc:  # noqa: BLE001 - the held credentials stay in use until they work again
                failures += 1
                self._failed(exc)
            if self._frozen is not None and self._expiry() is None:
                return  # long-lived credentials: nothing to refresh

    # the request path ---------------------------------------------------------------------------------
    def current(self) -> ReadOnlyCredentials | None:
        return self._frozen


def sign_headers(credentials: ReadOnlyCredentials, service: str, region: str, url: str, payload: bytes,
                 headers: Mapping[str, str], method: str = "POST") -> bytes:
    """``headers`` plus SigV4's (``X-Amz-Date``, ``X-Amz-Security-Token``, ``Authorization``) for a request of
    ``payload`` to ``url``, encoded as request-head lines: :func:`sigv4_headers` for the gateway's request shape,
    botocore's ``SigV4Auth`` for anything else."""
    signed = sigv4_headers(credentials.access_key, credentials.secret_key, credentials.token, service, region,
                           method, url, payload, headers)
    if signed is None:
        signed = botocore_sigv4_headers(credentials, service, region, method, url, payload, headers)
    return encode_headers(signed)


def botocore_sigv4_headers(credentials: Any, service: str, region: str, method: str, url: str, payload: bytes,
                           headers: Mapping[str, str]) -> dict[str, str]:
    """The request's headers after botocore's ``SigV4Auth.add_auth`` (the reference, and the fallback)."""
    from botocore.auth import SigV4Auth  # imported once, then a sys.modules lookup
    from botocore.awsrequest import AWSRequest

    request = AWSRequest(method=method, url=url, data=payload, headers=dict(headers))
    SigV4Auth(credentials, service, region).add_auth(request)
    return dict(request.headers.items())


# SigV4 for the gateway's request shape -----------------------------------------------------------------------
# What botocore's SigV4Auth leaves out of the signature (its SIGNED_HEADERS_BLACKLIST).
_UNSIGNED = frozenset({"baggage", "connection", "expect", "keep-alive", "proxy-authenticate", "proxy-authorization",
                       "te", "traceparent", "tracestate", "trailer", "transfer-encoding", "upgrade", "user-agent",
                       "x-amzn-trace-id"})
# Headers SigV4Auth removes and rewrites (or, for Date, signs in another form): outside the fast shape.
_REWRITTEN = frozenset({"authorization", "x-amz-date", "x-amz-security-token", "date", "host"})
_DEFAULT_PORTS = {"http": 80, "https": 443}
_MAX_CACHED = 256
_targets: dict[str, tuple[str, str, str] | None] = {}
_signing_keys: dict[tuple[str, str, str, str], bytes] = {}
_stamp: list[Any] = [None, "", ""]  # [second, "YYYYMMDDTHHMMSSZ", "YYYYMMDD"]


def _remove_dot_segments(path: str) -> str:
    """RFC 3986 §5.2.4, and consecutive slashes collapsed as AWS services require (as botocore does)."""
    if not path:
        return "/"
    out: list[str] = []
    for segment in path.split("/"):
        if segment and segment != ".":
            if segment == "..":
                if out:
                    out.pop()
            else:
                out.append(segment)
    return ("/" if path[0] == "/" else "") + "/".join(out) + ("/" if path[-1] == "/" and out else "")


def _target(url: str) -> tuple[str, str, str] | None:
    """(canonical URI, canonical query string, host) of ``url``, or ``None`` outside the fast shape; cached."""
    try:
        return _targets[url]
    except KeyError:
        pass
    target: tuple[str, str, str] | None = None
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        parts = None
    if (parts is not None and parts.scheme in _DEFAULT_PORTS and parts.hostname and "@" not in parts.netloc
            and "[" not in parts.netloc and url.isascii() and not any(c in url for c in " \t\r\n")):
        host = parts.hostname
        if port is not None and port != _DEFAULT_PORTS[parts.scheme]:
            host = f"{host}:{port}"
        # AWS services other than S3 sign the path percent-encoded once more (``%3A`` becomes ``%253A``).
        path = quote(_remove_dot_segments(parts.path), safe="/~")
        query = ""
        if parts.query:  # sorted by (name, value) as they stand in the URL, as botocore does for a URL's query
            query = "&".join(f"{k}={v}" for k, v in sorted(p.partition("=")[::2] for p in parts.query.split("&")))
        target = (path, query, host)
    if len(_targets) >= _MAX_CACHED:
        _targets.clear()
    _targets[url] = target
    return target


def _signing_key(secret: str, date: str, region: str, service: str) -> bytes:
    cache_key = (secret, date, region, service)
    key = _signing_keys.get(cache_key)
    if key is None:
        key = ("AWS4" + secret).encode()
        for part in (date, region, service, "aws4_request"):
            key = hmac.digest(key, part.encode(), "sha256")
        if len(_signing_keys) >= _MAX_CACHED:
            _signing_keys.clear()
        _signing_keys[cache_key] = key
    return key


def sigv4_headers(access_key: str, secret_key: str, token: str | None, service: str, region: str, method: str,
                  url: str, payload: bytes, headers: Mapping[str, str],
                  now: float | None = None) -> dict[str, str] | None:
    """``headers`` plus SigV4's, exactly as botocore's ``SigV4Auth.add_auth`` would leave them, or ``None`` when
    the request is outside the shape this implements (then sign with :func:`botocore_sigv4_headers`).

    ``now`` (seconds since the epoch) defaults to the current time."""
    if method not in ("POST", "GET"):
        return None
    target = _target(url)
    if target is None:
        return None
    path, query, host = target
    signed: dict[str, str] = {}
    payload_hash = None
    for name, value in headers.items():
        if not isinstance(value, str) or not value.isascii():
            return None
        lname = name.lower()
        if lname in _REWRITTEN or lname in signed:
            return None
        if lname == "x-amz-content-sha256":
            payload_hash = value
        if lname not in _UNSIGNED:
            signed[lname] = " ".join(value.split())
    if token is not None and not token.isascii():
        return None
    signed["host"] = host
    second = int(time.time() if now is None else now)
    if _stamp[0] != second:
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(second))
        _stamp[:] = [second, stamp, stamp[:8]]
    stamp, date = _stamp[1], _stamp[2]
    signed["x-amz-date"] = stamp
    if token:
        signed["x-amz-security-token"] = " ".join(token.split())
    names = sorted(signed)
    signed_names = ";".join(names)
    if payload_hash is None:
        payload_hash = hashlib.sha256(payload).hexdigest()
    canonical = (f"{method}\n{path}\n{query}\n" + "".join(f"{n}:{signed[n]}\n" for n in names)
                 + f"\n{signed_names}\n{payload_hash}")
    scope = f"{date}/{region}/{service}/aws4_request"
    to_sign = f"AWS4-HMAC-SHA256\n{stamp}\n{scope}\n{hashlib.sha256(canonical.encode()).hexdigest()}"
    signature = hmac.new(_signing_key(secret_key, date, region, service), to_sign.encode(), "sha256").hexdigest()
    result = dict(headers)
    result["X-Amz-Date"] = stamp
    if token:
        result["X-Amz-Security-Token"] = token
    result["Authorization"] = (f"AWS4-HMAC-SHA256 Credential={access_key}/{scope}, SignedHeaders={signed_names}, "
                               f"Signature={signature}")
    return result
