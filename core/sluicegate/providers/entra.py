"""Microsoft Entra ID access tokens by the OAuth 2.0 client-credentials grant, kept fresh off the request path.

``POST {authority}/{tenant_id}/oauth2/v2.0/token`` with ``grant_type=client_credentials``, the app's
``client_id`` / ``client_secret`` and a ``scope`` (for Azure OpenAI ``https://cognitiveservices.azure.com/.default``),
sent through the gateway's own non-blocking HTTP client. The token is fetched when the gateway starts and again in a
background task before it expires (five minutes before, or half-way through a shorter life); a request only reads
the token already held. (``azure-identity``'s ``ClientSecretCredential`` does the same exchange through MSAL, but
its synchronous form blocks the event loop and its async form brings azure-core's own HTTP stack: one plain form
POST is all the grant needs.)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING
from urllib.parse import quote, urlencode

import msgspec

from sluicegate.net.http import HttpClientError, encode_headers

if TYPE_CHECKING:
    from sluicegate.net.http import HttpClient

__all__ = ("DEFAULT_AUTHORITY", "DEFAULT_SCOPE", "EntraTokenSource")

log = logging.getLogger("sluicegate.providers.entra")

DEFAULT_AUTHORITY = "https://login.microsoftonline.com"
DEFAULT_SCOPE = "https://cognitiveservices.azure.com/.default"
REFRESH_MARGIN = 300.0
RETRY_DELAYS = (1.0, 2.0, 5.0, 10.0, 30.0, 60.0)
_FORM = encode_headers({"content-type": "application/x-www-form-urlencoded", "accept": "application/json"})
_decoder = msgspec.json.Decoder()


class EntraTokenError(Exception):
    """The token endpoint refused or could not be reached; the message carries no secret."""


class EntraTokenSource:
    """One app registration's token for one scope: :meth:`current` never blocks."""

    def __init__(self, *, what: str, tenant_id: str, client_id: str, client_secret: str, scope: str | None = None,
                 authority_host: str | None = None, on_token: Callable[[str], None] | None = None) -> None:
        self.what = what
        self.url = f"{(authority_host or DEFAULT_AUTHORITY).rstrip('/')}/{quote(tenant_id, safe='')}/oauth2/v2.0/token"
        self._form = urlencode({"grant_type": "client_credentials", "client_id": client_id,
                                "client_secret": client_secret, "scope": scope or DEFAULT_SCOPE}).encode()
        self._on_token = on_token
        self._token: str | None = None
        self._refresh_at = 0.0
        self._http: HttpClient | None = None
        self._task: asyncio.Task[None] | None = None
        self.last_error: str | None = None
        self.fetches = 0

    def current(self) -> str | None:
        return self._token

    async def start(self, http: HttpClient, timeout: float = 30.0) -> None:
        self._http = http
        try:
            await self._fetch(timeout)
        except EntraTokenError as exc:
            self._failed(exc)
        self._task = asyncio.get_running_loop().create_task(self._refresh_loop(0 if self._token else 1),
                                                            name=f"entra token {self.what}")

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _fetch(self, timeout: float = 30.0) -> None:
        assert self._http is not None
        try:
            response = await self._http.post(self.url, self._form, headers=_FORM, timeout=timeout)
        except HttpClientError as exc:
            raise EntraTokenError(f"token endpoint unreachable ({exc.kind})") from None
        try:
            data = _decoder.decode(response.body)
        except (msgspec.DecodeError, UnicodeDecodeError):
            data = None
        if not isinstance(data, dict):
            raise EntraTokenError(f"token endpoint answered HTTP {response.status} without JSON")
        if response.status >= 400 or not data.get("access_token"):
            # Entra's error codes and descriptions (AADSTS...) name the problem and never echo the secret.
            description = str(data.get("error_description") or "").split("\n", 1)[0][:200]
            raise EntraTokenError(f"HTTP {response.status} {data.get('error') or 'no access_token'}: {description}")
        try:
            lifetime = float(data.get("expires_in") or 3600)
        except (TypeError, ValueError):
            lifetime = 3600.0
        self._token = str(data["access_token"])
        self._refresh_at = time.monotonic() + max(lifetime - REFRESH_MARGIN, lifetime / 2)
        self.fetches += 1
        self.last_error = None
        if self._on_token is not None:
            self._on_token(self._token)

    def _failed(self, exc: BaseException) -> None:
        self.last_error = str(exc)
        log.warning("%s: Entra ID token not available: %s", self.what, self.last_error)

    async def _refresh_loop(self, failures: int) -> None:
        while True:
            if failures or self._token is None:
                delay = RETRY_DELAYS[min(failures, len(RETRY_DELAYS) - 1)] if failures else 0.0
            else:
                delay = max(0.0, self._refresh_at - time.monotonic())
            await asyncio.sleep(delay)
            try:
                await self._fetch()
                failures = 0
            except EntraTokenError as exc:  # the held token stays in use until it expires
                failures += 1
                self._failed(exc)
