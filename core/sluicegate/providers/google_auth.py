"""Google credentials for Vertex AI: loaded with ``google-auth`` at start-up, access tokens refreshed in the background.

``vertex_credentials`` is a service-account (or other ``google-auth``) key as a JSON string, a mapping, or the path of
a JSON file; without it, application default credentials (``GOOGLE_APPLICATION_CREDENTIALS``, gcloud's user
credentials, the metadata server). Loading happens when the gateway starts, and every problem is reported naming
the YAML field, never quoting the key.

:class:`AccessTokens` keeps one bearer token per credentials and refreshes it ahead of expiry in a background task;
``google-auth``'s blocking refresh runs on a worker thread, so the event loop never waits on the token endpoint. A
request finds the cached token; only when none is valid (the first request after start, or after failed refreshes)
does it wait, asynchronously and sharing the one refresh in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import logging
import os
import stat
import time
from collections.abc import Mapping
from typing import Any

__all__ = ("CLOUD_PLATFORM_SCOPE", "AccessTokens", "CredentialsProblem", "load_credentials")

log = logging.getLogger("sluicegate.providers.google_auth")

CLOUD_PLATFORM_SCOPE = "https://www.googleapis.com/auth/cloud-platform"
MAX_KEY_FILE_BYTES = 1 << 20
REFRESH_AHEAD = 300.0   # refresh this long before expiry (or at half the lifetime of a shorter-lived token)
USABLE_MARGIN = 30.0    # a token this close to expiry (or a tenth of its lifetime) is not handed out
RETRY_DELAYS = (1.0, 2.0, 5.0, 10.0, 30.0, 60.0)


class CredentialsProblem(ValueError):
    """A configuration problem with the credentials, as ``"field: reason"`` (no secret in it)."""


def _read_key_file(path: str) -> Any:
    """The JSON of a key file: a regular file only (a FIFO or device is never opened for reading), at most 1 MiB."""
    try:
        info = os.stat(path)
    except OSError as exc:
        raise CredentialsProblem(f"vertex_credentials: no readable key file at that path ({exc.strerror})") from None
    if not stat.S_ISREG(info.st_mode):
        raise CredentialsProblem("vertex_credentials: not a regular file (expected a JSON key file or a JSON string)")
    if info.st_size > MAX_KEY_FILE_BYTES:
        raise CredentialsProblem("vertex_credentials: the key file is larger than 1 MiB")
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        with os.fdopen(fd, "rb") as handle:
            if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
                raise CredentialsProblem("vertex_credentials: not a regular file")
            raw = handle.read(MAX_KEY_FILE_BYTES + 1)
    except OSError as exc:
        raise CredentialsProblem(f"vertex_credentials: cannot read the key file ({exc.strerror})") from None
    try:
        return json.loads(raw)
    except ValueError:
        raise CredentialsProblem("vertex_credentials: the key file is not JSON") from None


def load_credentials(value: str | Mapping[str, Any] | None) -> tuple[Any, str | None]:
    """``(google.auth credentials scoped to cloud-platform, the project they name or None)``.

    ``value`` is a key as JSON text or a mapping, a path to a JSON key file, or None for application default
    credentials. Raises :class:`CredentialsProblem` (never quoting the key)."""
    import google.auth
    import google.auth.exceptions

    scopes = [CLOUD_PLATFORM_SCOPE]
    if value is None or value == "":
        try:
            credentials, project = google.auth.default(scopes=scopes)
        except google.auth.exceptions.DefaultCredentialsError:
            raise CredentialsProblem(
                "vertex_credentials: required: no application default credentials were found (set "
                "vertex_credentials to a service-account key file or JSON, VERTEXAI_CREDENTIALS, or "
                "GOOGLE_APPLICATION_CREDENTIALS)") from None
        return credentials, project
    if isinstance(value, Mapping):
        info: Any = dict(value)
    elif value.lstrip().startswith("{"):
        try:
            info = json.loads(value)
        except ValueError:
            raise CredentialsProblem("vertex_credentials: not valid JSON (give a key as JSON, or the path of a "
                                     "key file)") from None
    else:
        info = _read_key_file(value)
    if not isinstance(info, dict):
        raise CredentialsProblem("vertex_credentials: expected a JSON object (a google-auth key)")
    try:
        credentials, project = google.auth.load_credentials_from_dict(info, scopes=scopes)
    except (google.auth.exceptions.GoogleAuthError, ValueError, TypeError, KeyError) as exc:
        reason = type(exc).__name__
        if isinstance(exc, google.auth.exceptions.DefaultCredentialsError) and "type" not in info:
            reason = "no 'type' field"
        elif isinstance(exc, google.auth.exceptions.DefaultCredentialsError):
            reason = f"unsupported or incomplete key of type {str(info.get('type'))[:40]!r}"
        elif isinstance(exc, ValueError) and info.get("type") == "service_account":
            reason = "the service-account key is incomplete or its private_key cannot be read"
        raise CredentialsProblem(f"vertex_credentials: not usable google-auth credentials ({reason})") from None
    return credentials, project or info.get("project_id") or info.get("quota_project_id")


class AccessTokens:
    """Bearer tokens for one set of credentials, refreshed ahead of expiry off the request path."""

    __slots__ = ("_credentials", "_name", "_token", "_usable_until", "_refresh_at", "_inflight", "_task",
                 "_transport", "_last_error", "refreshes")

    def __init__(self, credentials: Any, *, name: str) -> None:
        self._credentials = credentials
        self._name = name
        self._token: str | None = None
        self._usable_until = 0.0
        self._refresh_at = 0.0
        self._inflight: asyncio.Future[None] | None = None
        self._task: asyncio.Task[None] | None = None
        self._transport: Any = None
        self._last_error: str | None = None
        self.refreshes = 0

    def start(self) -> None:
        """Begin refreshing in the background (call on the gateway's event loop)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name=f"google-token-{self._name}")

    async def aclose(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._transport is not None:
            session = getattr(self._transport, "session", None)
            if session is not None:
                session.close()

    async def token(self, timeout: float) -> str:
        """A valid access token: the cached one, or (when none is valid) the result of the refresh in flight."""
        token = self._token
        if token is not None and time.monotonic() < self._usable_until:
            return token
        try:
            await asyncio.wait_for(asyncio.shield(self._refresh()), timeout)
        except TimeoutError:
            raise TimeoutError(f"no access token from the token endpoint within {timeout:g}s") from None
        assert self._token is not None
        return self._token

    def _refresh(self) -> asyncio.Future[None]:
        """The one refresh in flight, started if none is."""
        if self._inflight is None or self._inflight.done():
            self._inflight = asyncio.ensure_future(self._do_refresh())
            # a failure nobody awaits any more (the request timed out) is still retrieved, not reported at exit
            self._inflight.add_done_callback(lambda done: done.cancelled() or done.exception())
        return self._inflight

    def _refresh_blocking(self) -> tuple[str, datetime.datetime | None]:
        # runs on a worker thread: google-auth signs the assertion and calls the token endpoint synchronously
        if self._transport is None:
            import google.auth.transport.requests

            self._transport = google.auth.transport.requests.Request()
        self._credentials.refresh(self._transport)
        return self._credentials.token, self._credentials.expiry

    async def _do_refresh(self) -> None:
        try:
            token, expiry = await asyncio.to_thread(self._refresh_blocking)
        except Exception as exc:
            self._last_error = _describe(exc)
            raise TokenError(self._last_error) from None
        now = time.monotonic()
        if expiry is not None:  # google-auth keeps expiry as naive UTC
            lifetime = (expiry - datetime.datetime.now(datetime.UTC).replace(tzinfo=None)).total_seconds()
        else:
            lifetime = 3600.0
        lifetime = max(lifetime, 0.2)
        self._token = token
        self._usable_until = now + lifetime - min(USABLE_MARGIN, lifetime / 10)
        self._refresh_at = now + lifetime - min(REFRESH_AHEAD, lifetime / 2)
        self._last_error = None
        self.refreshes += 1

    async def _run(self) -> None:
        failures = 0
        while True:
            try:
                await self._refresh()
                failures = 0
                delay = max(self._refresh_at - time.monotonic(), 0.05)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                delay = RETRY_DELAYS[min(failures, len(RETRY_DELAYS) - 1)]
                failures += 1
                log.warning("%s: access token refresh failed (%s); retrying in %gs", self._name, exc, delay)
            await asyncio.sleep(delay)  # the schedule of the background refresher, not a synchronisation


class TokenError(RuntimeError):
    """The token endpoint refused or could not be reached (the message names the error, never a secret)."""


def _describe(exc: BaseException) -> str:
    """A short, secret-free description of a refresh failure (google-auth's message carries the endpoint's error
    code, e.g. ``invalid_grant``, never the assertion or a token)."""
    text = str(exc.args[0]) if exc.args else ""
    return f"{type(exc).__name__}: {text[:200]}" if text else type(exc).__name__
