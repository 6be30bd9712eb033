"""AWS credentials for providers that sign with SigV4: resolved and refreshed off the request path.

Where credentials come from, in order: keys given in the config (``aws_access_key_id`` /
``aws_secret_access_key`` / ``aws_session_token``), else botocore's standard chain (environment, shared files and
``aws_profile_name``, web identity, container and instance metadata). With ``aws_role_name`` those credentials
assume the role through STS (botocore's own ``AssumeRoleCredentialFetcher``), and the role's temporary
credentials are refreshed before they expire.

Everything that may block (files, STS, instance metadata) runs in a worker thread when the gateway starts and then
in a background task shortly before the credentials would expire; a request only reads the frozen credentials
already held and signs with botocore's ``SigV4Auth`` (CPU only).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping
from functools import partial
from typing import TYPE_CHECKING, Any

from sluicegate.net.http import encode_headers

if TYPE_CHECKING:
    from botocore.credentials import ReadOnlyCredentials

# botocore (~0.3 s to import) is imported where it is first used, so a gateway without Bedrock models does not pay
# for it at start-up.

__all__ = ("AwsCredentialSource", "sign_headers")

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
                 headers: Mapping[str, str]) -> bytes:
    """``headers`` plus SigV4's (``Authorization``, ``X-Amz-Date``, ``X-Amz-Security-Token``) for a POST of
    ``payload`` to ``url``, signed by botocore's ``SigV4Auth``; encoded as request-head lines."""
    from botocore.auth import SigV4Auth  # imported once, then a sys.modules lookup
    from botocore.awsrequest import AWSRequest

    request = AWSRequest(method="POST", url=url, data=payload, headers=dict(headers))
    SigV4Auth(credentials, service, region).add_auth(request)
    return encode_headers(dict(request.headers.items()))
