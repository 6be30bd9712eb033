"""The ``azure_storage`` sink: each batch becomes a block blob of newline-delimited JSON in an Azure Storage container.

Requests are made by the official SDK's asyncio client (``azure.storage.blob.aio``): it signs them itself
(SharedKey, an HMAC computed on the loop in microseconds) or appends the SAS token, so no thread is involved. The
SDK would open one aiohttp session per client; here every client on an event loop shares one session per
destination policy (bounded connections), and clients are kept in a bounded LRU keyed by account, container and
credential, so 10,000 teams cost 10,000 small instances holding parsed settings, not 10,000 clients or sessions.

Blob names are a digest of the batch's event ids and are written create-only (``If-None-Match: *``): a batch the
core re-delivers after a lost answer finds its blob there and counts as delivered, never as a duplicate.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import collections
import hashlib
import re
import time
import urllib.parse
import weakref
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import msgspec

from sluicegate import CallbackVars, HealthResult, SecretStr, Sink
from sluicegate.sinks.destinations import DestinationPolicy, aiohttp_connector_factory

if TYPE_CHECKING:
    import aiohttp
    from azure.storage.blob.aio import ContainerClient

    from sluicegate import LogEvent

__all__ = ("AzureStorageDeliveryError", "AzureStorageSink", "AzureStorageVars", "blob_name", "validation_problems")

CONTENT_TYPE = "application/x-ndjson"
_encoder = msgspec.json.Encoder()

# https://learn.microsoft.com/rest/api/storageservices/naming-and-referencing-containers--blobs--and-metadata
_ACCOUNT_RE = re.compile(r"^[a-z0-9]{3,24}$")
_CONTAINER_RE = re.compile(r"^(?!.*--)[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$")
_AUTH_CODES = ("AuthenticationFailed", "AuthorizationFailure", "InvalidAuthenticationInfo", "NoAuthenticationInformation")
"""Error codes of a refused key or token (the others of a 403 say the credential lacks a permission)."""
_MAX_PREFIX_BYTES = 1024 - len("/YYYY-MM-DD/YYYYMMDDTHHMMSS.ffffffZ-") - 32 - len(".ndjson")
"""Blob names are at most 1,024 characters; :func:`blob_name` adds this much after the prefix."""


class AzureStorageVars(CallbackVars, frozen=True):
    """Callback variables of the ``azure_storage`` sink."""

    aliases = {"azure_storage_file_system": "azure_storage_container",
               "azure_storage_prefix": "azure_storage_path_prefix"}
    azure_storage_account_name: str
    """Storage account name (3-24 lower-case letters and digits)."""
    azure_storage_container: str
    """Container the blobs are written to; it must exist."""
    azure_storage_account_key: SecretStr | None = None
    """Account key (base64), signed with SharedKey. Give this or ``azure_storage_sas_token``."""
    azure_storage_sas_token: SecretStr | None = None
    """A SAS token (``sv=...&sig=...``, a leading ``?`` is accepted) with create and write permission."""
    azure_storage_path_prefix: str = ""
    """Blob name prefix: blobs are ``{prefix}/{YYYY-MM-DD}/{timestamp}-{digest}.ndjson``."""
    azure_storage_endpoint: str | None = None
    """Blob service URL; default ``https://{account}.blob.core.windows.net`` (set it for Azurite or sovereign
    clouds, e.g. ``http://127.0.0.1:10000/devstoreaccount1``)."""


class AzureStorageDeliveryError(RuntimeError):
    """A request failed. The message names the account, container and the service's error code, never a secret
    or the service's free text (it quotes the string it signed); ``kind`` is the health check's error kind."""

    retryable: bool | None = None

    def __init__(self, message: str, *, kind: str, status_code: int | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.status_code = status_code


# --- configuration -----------------------------------------------------------------------------------------


def _prefix(value: str) -> str:
    return "/".join(part for part in value.split("/") if part)


def _sas(value: str) -> str:
    return value.strip().lstrip("?")


def account_url(callback_vars: AzureStorageVars) -> str:
    """The blob service URL of the account (no trailing slash)."""
    if callback_vars.azure_storage_endpoint:
        return callback_vars.azure_storage_endpoint.strip().rstrip("/")
    return f"https://{callback_vars.azure_storage_account_name}.blob.core.windows.net"


def _endpoint_problem(endpoint: str) -> str | None:
    if any(c <= " " or c == "\x7f" for c in endpoint):
        return "must not contain spaces or control characters"
    try:
        parsed = urllib.parse.urlsplit(endpoint)
        parsed.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        return "is not a URL (give https://<account>.blob.core.windows.net or the emulator's URL)"
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        return "must be an http(s) URL (https://<account>.blob.core.windows.net or the emulator's URL)"
    if parsed.username is not None or parsed.password is not None or parsed.query or parsed.fragment:
        return "must carry no credentials, query or fragment (put a SAS token in azure_storage_sas_token)"
    return None


def validation_problems(callback_vars: Mapping[str, Any]) -> list[str]:
    """Problems knowable at configuration time, as ``"field: reason"`` (never echoing a key or token)."""
    found: list[str] = []
    account = callback_vars.get("azure_storage_account_name")
    if isinstance(account, str) and not _ACCOUNT_RE.match(account):
        found.append("azure_storage_account_name: 3-24 lower-case letters and digits")
    container = callback_vars.get("azure_storage_container")
    if isinstance(container, str) and container != "$root" and not _CONTAINER_RE.match(container):
        found.append("azure_storage_container: 3-63 lower-case letters, digits and single hyphens, starting and "
                     "ending with a letter or digit")
    key, sas = (callback_vars.get(name) for name in ("azure_storage_account_key", "azure_storage_sas_token"))
    key = key.get_secret_value() if isinstance(key, SecretStr) else key
    sas = sas.get_secret_value() if isinstance(sas, SecretStr) else sas
    if not key and not sas:
        found.append("azure_storage_account_key: give the account key or azure_storage_sas_token")
    elif key and sas:
        found.append("azure_storage_sas_token: give either the account key or a SAS token, not both")
    if isinstance(key, str) and key:
        try:
            base64.b64decode(key.strip(), validate=True)
        except (binascii.Error, ValueError):
            found.append("azure_storage_account_key: not base64 (copy the key as the portal shows it)")
    if isinstance(sas, str) and sas:
        fields = urllib.parse.parse_qs(_sas(sas))
        if "sig" not in fields or any(c <= " " or c == "\x7f" for c in sas.strip()):
            found.append("azure_storage_sas_token: not a SAS token (a query string with sv=...&sig=...)")
    prefix = callback_vars.get("azure_storage_path_prefix")
    if isinstance(prefix, str):
        if any(c < " " or "\x7f" <= c <= "\x9f" or c == "\\" for c in prefix):
            found.append("azure_storage_path_prefix: no control characters or backslashes")
        elif len(_prefix(prefix)) > _MAX_PREFIX_BYTES:
            found.append(f"azure_storage_path_prefix: at most {_MAX_PREFIX_BYTES} characters (blob names are at "
                         "most 1,024)")
    endpoint = callback_vars.get("azure_storage_endpoint")
    if isinstance(endpoint, str):
        problem = _endpoint_problem(endpoint.strip())
        if problem:
            found.append(f"azure_storage_endpoint: {problem}")
    return found


# --- blob names --------------------------------------------------------------------------------------------


def blob_name(prefix: str, events: Sequence[LogEvent]) -> str:
    """``{prefix}/{YYYY-MM-DD}/{timestamp}-{digest}.ndjson`` for ``events``, dated by the first event.

    The digest covers the events' ids: the same batch always gets the same name (a retry finds its blob), and two
    batches never share one.
    """
    first = events[0]
    seconds = first.endTime or first.startTime or time.time()
    stamp = time.gmtime(seconds)
    micros = int(round((seconds % 1) * 1_000_000)) % 1_000_000
    digest = hashlib.sha256("\n".join(event.id for event in events).encode()).hexdigest()[:32]
    name = (f"{time.strftime('%Y-%m-%d', stamp)}/{time.strftime('%Y%m%dT%H%M%S', stamp)}.{micros:06d}Z-"
            f"{digest}.ndjson")
    return f"{prefix}/{name}" if prefix else name


# --- clients shared by every instance on a loop ------------------------------------------------------------


class _Clients:
    """One aiohttp session per destination policy and an LRU of container clients, for one event loop."""

    MAX_CLIENTS: ClassVar[int] = 256
    MAX_CONNECTIONS: ClassVar[int] = 64
    __slots__ = ("_sessions", "_clients")

    def __init__(self) -> None:
        self._sessions: dict[DestinationPolicy, aiohttp.ClientSession] = {}
        self._clients: collections.OrderedDict[tuple[Any, ...], ContainerClient] = collections.OrderedDict()

    def _session(self, policy: DestinationPolicy) -> aiohttp.ClientSession:
        session = self._sessions.get(policy)
        if session is None or session.closed:
            session = aiohttp_connector_factory(policy, limit=self.MAX_CONNECTIONS)()
            self._sessions[policy] = session
        return session

    def container(self, sink: AzureStorageSink) -> ContainerClient:
        key = (sink._url, sink._container, sink._credential_key, sink.destination_policy)
        client = self._clients.get(key)
        if client is not None:
            self._clients.move_to_end(key)
            return client
        from azure.core.pipeline.transport import AioHttpTransport
        from azure.storage.blob.aio import ContainerClient

        transport = AioHttpTransport(session=self._session(sink.destination_policy), session_owner=False)
        # retry_total=0: the core retries the whole batch with backoff; the SDK must not loop inside a send.
        client = ContainerClient(sink._url, sink._container, credential=sink._credential(), transport=transport,
                                 retry_total=0, connection_timeout=5, read_timeout=20)
        self._clients[key] = client
        while len(self._clients) > self.MAX_CLIENTS:
            # An evicted client owns nothing (the session is shared and stays open): dropping it is enough.
            self._clients.popitem(last=False)
        return client

    async def aclose(self) -> None:
        self._clients.clear()
        sessions, self._sessions = list(self._sessions.values()), {}
        for session in sessions:
            await session.close()


# --- the sink ----------------------------------------------------------------------------------------------


class AzureStorageSink(Sink):
    """Writes each batch as NDJSON block blobs (one event per line), create-only, to one container."""

    callback_name = "azure_storage"
    Vars = AzureStorageVars
    max_batch_size = 500
    send_timeout = 30.0
    callback_vars: AzureStorageVars

    max_blob_bytes: ClassVar[int] = 16 * 1024 * 1024
    """A batch larger than this is split into several blobs (each under the SDK's single-request upload size)."""
    health_timeout: ClassVar[float] = 5.0

    _shared: ClassVar[weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Clients]] = weakref.WeakKeyDictionary()

    __slots__ = ("_url", "_container", "_prefix", "_credential_key", "_display", "_closed")

    def __init__(self, callback_vars: AzureStorageVars) -> None:
        super().__init__(callback_vars)
        problems = validation_problems(msgspec.structs.asdict(callback_vars))
        if problems:
            raise ValueError("; ".join(problems))
        self._url = account_url(callback_vars)
        self._container = callback_vars.azure_storage_container
        self._prefix = _prefix(callback_vars.azure_storage_path_prefix)
        secret = callback_vars.azure_storage_account_key or callback_vars.azure_storage_sas_token
        assert secret is not None
        # Clients are shared by instances with the same credential: keyed by a digest, never the secret itself.
        self._credential_key = hashlib.sha256(secret.get_secret_value().encode()).hexdigest()[:32]
        self._display = f"{callback_vars.azure_storage_account_name}/{self._container}"
        self._closed = False

    @classmethod
    def destinations(cls, callback_vars: CallbackVars) -> list[tuple[str, str]]:
        assert isinstance(callback_vars, AzureStorageVars)
        field = "azure_storage_endpoint" if callback_vars.azure_storage_endpoint else "azure_storage_account_name"
        return [(field, account_url(callback_vars))]

    @classmethod
    def env_defaults(cls, environ: Mapping[str, str]) -> dict[str, Any]:
        """``AZURE_STORAGE_ACCOUNT_NAME``, ``AZURE_STORAGE_ACCOUNT_KEY``, ``AZURE_STORAGE_SAS_TOKEN``,
        ``AZURE_STORAGE_CONTAINER`` (or LiteLLM's ``AZURE_STORAGE_FILE_SYSTEM``), ``AZURE_STORAGE_PATH_PREFIX``
        and ``AZURE_STORAGE_ENDPOINT``, for a global ``azure_storage`` entry written without vars."""
        names = {"AZURE_STORAGE_ACCOUNT_NAME": "azure_storage_account_name",
                 "AZURE_STORAGE_ACCOUNT_KEY": "azure_storage_account_key",
                 "AZURE_STORAGE_SAS_TOKEN": "azure_storage_sas_token",
                 "AZURE_STORAGE_FILE_SYSTEM": "azure_storage_container",
                 "AZURE_STORAGE_CONTAINER": "azure_storage_container",
                 "AZURE_STORAGE_PATH_PREFIX": "azure_storage_path_prefix",
                 "AZURE_STORAGE_ENDPOINT": "azure_storage_endpoint"}
        return {var: environ[env] for env, var in names.items() if environ.get(env)}

    def _credential(self) -> Any:
        key, sas = self.callback_vars.azure_storage_account_key, self.callback_vars.azure_storage_sas_token
        if key:
            from azure.core.credentials import AzureNamedKeyCredential

            return AzureNamedKeyCredential(self.callback_vars.azure_storage_account_name, key.get_secret_value().strip())
        assert sas is not None
        return _sas(sas.get_secret_value())

    def secret_forms(self) -> Iterable[str]:
        """The key, the SAS token as given and as sent (without ``?``), and its signature, raw and decoded."""
        yield from super().secret_forms()
        sas = self.callback_vars.azure_storage_sas_token
        if sas:
            token = _sas(sas.get_secret_value())
            yield token
            for name, value in urllib.parse.parse_qsl(token):
                if name == "sig":
                    yield value
                    yield urllib.parse.quote(value, safe="")

    @classmethod
    def _clients(cls) -> _Clients:
        loop = asyncio.get_running_loop()
        shared = cls._shared.get(loop)
        if shared is None:
            shared = cls._shared[loop] = _Clients()
        return shared

    def _blobs(self, batch: Sequence[LogEvent]) -> list[tuple[str, bytes]]:
        blobs: list[tuple[str, bytes]] = []
        events: list[LogEvent] = []
        lines: list[bytes] = []
        size = 0
        for event in batch:
            line = _encoder.encode(event) + b"\n"
            if lines and size + len(line) > self.max_blob_bytes:
                blobs.append((blob_name(self._prefix, events), b"".join(lines)))
                events, lines, size = [], [], 0
            events.append(event)
            lines.append(line)
            size += len(line)
        if lines:
            blobs.append((blob_name(self._prefix, events), b"".join(lines)))
        return blobs

    async def send(self, batch: Sequence[LogEvent]) -> None:
        if not batch:
            return
        if self._closed:
            raise RuntimeError("azure_storage: sink is closed")
        from azure.core.exceptions import AzureError, ResourceExistsError
        from azure.storage.blob import ContentSettings

        container = self._clients().container(self)
        settings = ContentSettings(content_type=CONTENT_TYPE)
        for name, data in self._blobs(batch):
            try:
                await container.upload_blob(name, data, overwrite=False, content_settings=settings,
                                            blob_type="BlockBlob", timeout=int(self.send_timeout * 0.8))
            except ResourceExistsError:
                # The blob exists: an earlier attempt of this very batch wrote it (its name is a digest of the
                # event ids), so this part is delivered.
                continue
            except AzureError as exc:
                raise self._error(exc) from None

    def _error(self, exc: BaseException) -> AzureStorageDeliveryError:
        """The failure in the sink's words: status and the service's error code, no free text."""
        from azure.core.exceptions import (
            ClientAuthenticationError,
            HttpResponseError,
            ResourceNotFoundError,
            ServiceRequestError,
            ServiceResponseError,
        )

        status = getattr(exc, "status_code", None)
        code = getattr(exc, "error_code", None)
        code = getattr(code, "value", code)  # the SDK gives a StorageErrorCode (a str enum) or the raw text
        code_text = f" {code}" if isinstance(code, str) and re.fullmatch(r"[A-Za-z]{1,64}", code) else ""
        where = f"azure_storage: {self._display}"
        if isinstance(exc, ClientAuthenticationError) or status in (401, 403):
            kind = "auth" if code in (None, *_AUTH_CODES) else "permission"
            return AzureStorageDeliveryError(f"{where}: credentials refused (HTTP {status}{code_text})", kind=kind,
                                             status_code=status if isinstance(status, int) else 403)
        if isinstance(exc, ResourceNotFoundError) or status == 404:
            what = "the container does not exist" if code in (None, "ContainerNotFound") else "not found"
            return AzureStorageDeliveryError(f"{where}: {what} (HTTP 404{code_text})", kind="not_found",
                                             status_code=404)
        if isinstance(exc, HttpResponseError) and isinstance(status, int):
            return AzureStorageDeliveryError(f"{where}: the service answered HTTP {status}{code_text}",
                                             kind="rejected" if status < 500 else "unavailable", status_code=status)
        if isinstance(exc, ServiceRequestError | ServiceResponseError):
            text = "timed out" if "timeout" in type(exc).__name__.lower() or "Timeout" in str(type(
                getattr(exc, "inner_exception", None))) else f"unreachable ({type(exc).__name__})"
            kind = "timeout" if text == "timed out" else "unreachable"
            return AzureStorageDeliveryError(f"{where}: {self._url} {text}", kind=kind)
        return AzureStorageDeliveryError(f"{where}: {type(exc).__name__}", kind="error")

    async def health_check(self) -> HealthResult:
        """Read the container's properties with the instance's credential: proves the endpoint answers, the key
        or token is accepted and the container exists (a SAS token needs read permission for this)."""
        try:
            container = self._clients().container(self)
            await asyncio.wait_for(container.get_container_properties(timeout=int(self.health_timeout)),
                                   self.health_timeout)
        except TimeoutError:
            return HealthResult(healthy=False, details=f"azure_storage: {self._display}: no answer within "
                                f"{self.health_timeout:g}s", error_kind="timeout")
        except Exception as exc:  # a health check reports, it does not raise
            error = self._error(exc)
            return HealthResult(healthy=False, details=str(error), error_kind=error.kind)
        return HealthResult(healthy=True, details=f"azure_storage: container {self._display} is reachable")

    async def aclose(self) -> None:
        """Nothing to release but the flag: clients and sessions are shared (see :meth:`shutdown`)."""
        self._closed = True

    @classmethod
    async def shutdown(cls) -> None:
        """Close the sessions of the running loop (and forget those of loops that are gone)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        for other in [lp for lp in list(cls._shared) if lp is not loop and lp.is_closed()]:
            cls._shared.pop(other, None)
        shared = cls._shared.pop(loop, None) if loop is not None else None
        if shared is not None:
            await shared.aclose()
