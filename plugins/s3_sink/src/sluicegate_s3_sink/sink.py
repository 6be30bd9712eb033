"""The ``s3`` sink: each batch becomes newline-delimited JSON objects in an S3 bucket (AWS, or an S3-compatible
store: MinIO, Cloudflare R2, Ceph RGW), created only if absent so a redelivered batch never duplicates events.

Requests are signed with botocore's own Signature Version 4 signer (``botocore.auth.S3SigV4Auth``) and sent
through the core's pooled HTTP client, one per event loop, shared by every instance, under the instance's
``destination_policy``. Signing is CPU work of a few dozen microseconds, done on the loop: no thread, client or
connection pool exists per instance, so 10,000 teams cost 10,000 small objects. botocore's default credential
chain (environment, profile, instance role) is used only for callbacks from config.yaml that name no key, and
it is resolved on the shared default executor, never on the loop.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import re
import time
import weakref
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import quote, urlsplit

import msgspec

from sluicegate import CallbackVars, HealthResult, SecretStr, Sink
from sluicegate.net.http import HttpClient, HttpClientError, Response, encode_headers
from sluicegate.sinks.scrub import Scrubber
from sluicegate_s3_sink import __version__

if TYPE_CHECKING:
    from botocore.credentials import Credentials, ReadOnlyCredentials
    from sluicegate import LogEvent

__all__ = (
    "CONTENT_TYPE",
    "DEFAULT_REGION",
    "S3DeliveryError",
    "S3Sink",
    "S3Vars",
    "bucket_url",
    "object_key",
    "validation_problems",
)

CONTENT_TYPE = "application/x-ndjson"
DEFAULT_REGION = "us-east-1"
_USER_AGENT = f"sluicegate-s3-sink/{__version__}"
_encoder = msgspec.json.Encoder()

# Bucket naming rules (general purpose buckets): 3-63 lowercase letters, digits, '.' and '-', starting and
# ending with a letter or digit, no '..', not an IP address, none of the reserved prefixes and suffixes.
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_RESERVED_PREFIXES = ("xn--", "sthree-", "amzn-s3-demo-")
_RESERVED_SUFFIXES = ("-s3alias", "--ol-s3", ".mrap", "--x-s3", "--table-s3")
_REGION_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
_KEY_TAIL = len("/YYYY-MM-DD/YYYYMMDDTHHMMSS.ffffffZ-") + 32 + len(".ndjson")
_MAX_PREFIX_BYTES = 1024 - _KEY_TAIL
"""Object keys are at most 1,024 bytes; :func:`object_key` adds this much after the prefix."""
_ERROR_CODE = re.compile(rb"<Code>([A-Za-z0-9.]{1,64})</Code>")
_ERROR_MESSAGE = re.compile(rb"<Message>([^<]{0,400})</Message>")

_AUTH_CODES = frozenset({
    "InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken", "TokenRefreshRequired",
    "InvalidSecurity", "AuthorizationHeaderMalformed", "CredentialsNotSupported", "AccountProblem",
})


class S3Vars(CallbackVars, frozen=True):
    """Callback variables of the ``s3`` sink (LiteLLM's names)."""

    s3_bucket_name: str
    """The bucket."""
    s3_region_name: str | None = None
    """Region the requests are signed for (``us-east-1`` when not given; ``auto`` for Cloudflare R2)."""
    s3_aws_access_key_id: str | None = None
    """Access key id; with the secret key, or neither (botocore's default chain, for config.yaml callbacks only)."""
    s3_aws_secret_access_key: SecretStr | None = None
    """Secret access key: signs the requests (SigV4), never sent itself."""
    s3_aws_session_token: SecretStr | None = None
    """Temporary (STS) credentials carry a session token beside the key pair."""
    s3_endpoint_url: str | None = None
    """An S3-compatible service (MinIO, R2, Ceph): objects are addressed path-style under this URL."""
    s3_path: str | None = None
    """Object key prefix: ``llm-logs/prod`` writes ``llm-logs/prod/YYYY-MM-DD/...``."""


class S3DeliveryError(RuntimeError):
    """S3 did not store a batch. The message says why in the sink's words with at most a short scrubbed excerpt
    of the answer; ``status_code`` 4xx (not 408/429) tells the core not to retry; ``code`` is S3's error code."""

    def __init__(self, message: str, *, status_code: int | None = None, code: str | None = None,
                 retryable: bool | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.code = code
        if retryable is not None:
            self.retryable = retryable


# --- configuration ----------------------------------------------------------------------------------------


def _normalize_prefix(value: str | None) -> str:
    return "/".join(part for part in (value or "").split("/") if part)


def _bucket_problem(bucket: str) -> str | None:
    if not _BUCKET_RE.match(bucket):
        # Not echoed: the value may hold anything (control characters, a pasted secret).
        return ("not a valid bucket name (3-63 lowercase letters, digits, '.' or '-', starting and ending "
                "with a letter or digit)")
    if ".." in bucket or ".-" in bucket or "-." in bucket:
        return f"{bucket!r}: no '..', '.-' or '-.' in a bucket name"
    try:
        ipaddress.IPv4Address(bucket)
        return f"{bucket!r}: a bucket name cannot be an IP address"
    except ValueError:
        pass
    if bucket.startswith(_RESERVED_PREFIXES) or bucket.endswith(_RESERVED_SUFFIXES):
        return f"{bucket!r} uses a prefix or suffix S3 reserves"
    return None


def _prefix_problem(prefix: str) -> str | None:
    if any(c < " " or "\x7f" <= c <= "\x9f" for c in prefix):
        return "the object prefix must not contain control characters (CR, LF, NUL, ...)"
    try:
        size = len(prefix.encode("utf-8"))
    except UnicodeEncodeError:
        return "the object prefix is not valid Unicode text"
    if size > _MAX_PREFIX_BYTES:
        return (f"the object prefix is {size} bytes; at most {_MAX_PREFIX_BYTES} leave room for the object keys "
                "under it (S3 allows 1,024 bytes)")
    if any(part in (".", "..") for part in prefix.split("/")):
        return "the object prefix must not contain '.' or '..' segments"
    return None


def _endpoint_problem(url: str) -> str | None:
    if any(c <= " " or c == "\x7f" for c in url):
        return "must not contain spaces or control characters"
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        return f"not a valid URL ({exc})"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "must be an http(s) URL with a host, e.g. https://minio.example.com:9000"
    if parts.username or parts.password:
        return "must not carry credentials; use s3_aws_access_key_id / s3_aws_secret_access_key"
    if parts.query or parts.fragment:
        return "must not have a query or fragment"
    if port == 0:
        return "port 0 cannot be connected to"
    return None


def _secret(value: SecretStr | str | None) -> str | None:
    return value.get_secret_value() if isinstance(value, SecretStr) else value


def validation_problems(callback_vars: Mapping[str, Any]) -> list[str]:
    """Problems knowable at configuration time, as ``"field: reason"`` (never echoing a key)."""
    problems: list[str] = []
    bucket = callback_vars.get("s3_bucket_name")
    if isinstance(bucket, str):
        problem = _bucket_problem(bucket.strip())
        if problem:
            problems.append(f"s3_bucket_name: {problem}")
    prefix = callback_vars.get("s3_path")
    if isinstance(prefix, str):
        problem = _prefix_problem(_normalize_prefix(prefix))
        if problem:
            problems.append(f"s3_path: {problem}")
    region = callback_vars.get("s3_region_name")
    if isinstance(region, str) and not _REGION_RE.match(region):
        problems.append("s3_region_name: not a region name (lowercase letters, digits and '-', e.g. eu-west-1)")
    endpoint = callback_vars.get("s3_endpoint_url")
    if isinstance(endpoint, str):
        problem = _endpoint_problem(endpoint.strip())
        if problem:
            problems.append(f"s3_endpoint_url: {problem}")
    key_id = callback_vars.get("s3_aws_access_key_id")
    secret = _secret(callback_vars.get("s3_aws_secret_access_key"))
    token = _secret(callback_vars.get("s3_aws_session_token"))
    if bool(key_id) != bool(secret):
        problems.append("s3_aws_secret_access_key: give both s3_aws_access_key_id and s3_aws_secret_access_key, "
                        "or neither (to use the gateway's AWS credentials, config.yaml only)")
    if token and not key_id:
        problems.append("s3_aws_session_token: a session token goes with s3_aws_access_key_id and "
                        "s3_aws_secret_access_key")
    for field, value in (("s3_aws_access_key_id", key_id), ("s3_aws_secret_access_key", secret),
                         ("s3_aws_session_token", token)):
        if isinstance(value, str) and any(c < " " or c == "\x7f" for c in value):
            problems.append(f"{field}: must not contain control characters (CR, LF, NUL, ...)")
    return problems


# --- object keys and URLs ---------------------------------------------------------------------------------


def _event_time(event: LogEvent) -> float:
    # The event's own time (not the upload time) keeps the key of a re-delivered batch stable.
    return event.endTime or event.startTime or time.time()


def object_key(prefix: str, events: Sequence[LogEvent]) -> str:
    """``{prefix}/{YYYY-MM-DD}/{timestamp}-{unique}.ndjson`` for ``events`` (the first event dates it).

    ``unique`` is a digest of the events' ids: the same batch always gets the same key, so a retried upload
    finds its object already there (412 to the create-only PUT) instead of writing a duplicate.
    """
    seconds = _event_time(events[0])
    stamp = time.gmtime(seconds)
    micros = int(round((seconds % 1) * 1_000_000)) % 1_000_000
    day = time.strftime("%Y-%m-%d", stamp)
    timestamp = time.strftime("%Y%m%dT%H%M%S", stamp) + f".{micros:06d}Z"
    unique = hashlib.sha256("\n".join(event.id for event in events).encode()).hexdigest()[:32]
    name = f"{day}/{timestamp}-{unique}.ndjson"
    return f"{prefix}/{name}" if prefix else name


def bucket_url(callback_vars: S3Vars) -> str:
    """The URL of the bucket: path-style under ``s3_endpoint_url``; on AWS virtual-hosted
    (``https://{bucket}.s3.{region}.amazonaws.com``), or path-style for a dotted name (TLS wildcards cover one
    label only)."""
    bucket = callback_vars.s3_bucket_name.strip()
    if callback_vars.s3_endpoint_url:
        return f"{callback_vars.s3_endpoint_url.strip().rstrip('/')}/{bucket}"
    region = callback_vars.s3_region_name or DEFAULT_REGION
    if "." in bucket:
        return f"https://s3.{region}.amazonaws.com/{bucket}"
    return f"https://{bucket}.s3.{region}.amazonaws.com"


# --- the sink ---------------------------------------------------------------------------------------------


class _Shared:
    """What every instance on one event loop shares: the HTTP client and the gate on bodies in flight."""

    __slots__ = ("http", "in_flight")

    def __init__(self, connections: int) -> None:
        self.http = HttpClient(user_agent=_USER_AGENT, max_per_origin=connections, max_connections=512)
        self.in_flight = asyncio.Semaphore(connections)


class S3Sink(Sink):
    """Writes each batch as NDJSON objects (one event per line) to an S3 bucket, never overwriting one."""

    callback_name = "s3"
    Vars = S3Vars
    max_batch_size = 500
    send_timeout = 60.0
    callback_vars: S3Vars

    max_connections: ClassVar[int] = 64
    """Connections (and request bodies in flight) shared by all instances of one event loop."""
    max_object_bytes: ClassVar[int] = 16 * 1024 * 1024
    """A batch larger than this is split into several objects."""
    request_timeout: ClassVar[float] = 25.0
    """Seconds for one request, connecting included."""
    health_timeout: ClassVar[float] = 5.0

    _shared: ClassVar[weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Shared]] = weakref.WeakKeyDictionary()
    _default_credentials: ClassVar[Credentials | None] = None
    """botocore's default chain, resolved once per process (for config.yaml callbacks naming no key)."""

    __slots__ = ("_base", "_path_style", "_prefix", "_region", "_credentials", "_closed")

    def __init__(self, callback_vars: S3Vars) -> None:
        super().__init__(callback_vars)
        self._base = bucket_url(callback_vars)
        self._path_style = bool(urlsplit(self._base).path)
        self._prefix = _normalize_prefix(callback_vars.s3_path)
        self._region = callback_vars.s3_region_name or DEFAULT_REGION
        secret = callback_vars.s3_aws_secret_access_key
        token = callback_vars.s3_aws_session_token
        from botocore.credentials import ReadOnlyCredentials  # botocore (~40 ms): imported by the sinks in use only

        self._credentials = ReadOnlyCredentials(
            callback_vars.s3_aws_access_key_id, secret.get_secret_value(), token.get_secret_value() if token else None,
        ) if callback_vars.s3_aws_access_key_id and secret else None
        self._closed = False

    def __repr__(self) -> str:
        return f"S3Sink(url={self._base!r}, prefix={self._prefix!r})"

    @classmethod
    def destinations(cls, callback_vars: CallbackVars) -> list[tuple[str, str]]:
        assert isinstance(callback_vars, S3Vars)
        field = "s3_endpoint_url" if callback_vars.s3_endpoint_url else "s3_bucket_name"
        return [(field, bucket_url(callback_vars))]

    @classmethod
    def env_defaults(cls, environ: Mapping[str, str]) -> dict[str, Any]:
        """For ``s3`` named globally without variables: ``S3_BUCKET_NAME``, ``S3_PATH``, ``S3_ENDPOINT_URL`` and
        ``AWS_REGION`` / ``AWS_DEFAULT_REGION`` (credentials then come from botocore's default chain)."""
        found: dict[str, Any] = {}
        for env, var in (("S3_BUCKET_NAME", "s3_bucket_name"), ("S3_PATH", "s3_path"),
                         ("S3_ENDPOINT_URL", "s3_endpoint_url")):
            if environ.get(env):
                found[var] = environ[env]
        region = environ.get("AWS_REGION") or environ.get("AWS_DEFAULT_REGION") or environ.get("AWS_REGION_NAME")
        if region:
            found["s3_region_name"] = region
        return found

    @classmethod
    def _state(cls) -> _Shared:
        loop = asyncio.get_running_loop()
        shared = S3Sink._shared.get(loop)
        if shared is None or shared.http.closed:
            shared = S3Sink._shared[loop] = _Shared(cls.max_connections)
        return shared

    @classmethod
    async def shutdown(cls) -> None:
        """Close the running loop's shared client (others are dropped: their loop owns their sockets)."""
        states, S3Sink._shared = S3Sink._shared, weakref.WeakKeyDictionary()
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        shared = states.get(loop)
        if shared is not None:
            await shared.http.aclose()

    def secret_forms(self) -> Iterable[str]:
        """The configured secret key and session token, or those of the default chain now in use."""
        yield from super().secret_forms()
        if self._credentials is None and S3Sink._default_credentials is not None:
            frozen = getattr(S3Sink._default_credentials, "_frozen_credentials", None) or S3Sink._default_credentials
            for value in (getattr(frozen, "secret_key", None), getattr(frozen, "token", None)):
                if isinstance(value, str) and value:
                    yield value

    async def _resolve_credentials(self) -> ReadOnlyCredentials:
        if self._credentials is not None:
            return self._credentials
        if not self.destination_policy.trusted:
            # The gateway's own AWS identity writes only where the operator's config.yaml says.
            raise S3DeliveryError("s3: no s3_aws_access_key_id / s3_aws_secret_access_key; callbacks written "
                                  "through the admin API must bring their own credentials", retryable=False,
                                  code="NoCredentials")
        loop = asyncio.get_running_loop()
        chain = S3Sink._default_credentials
        if chain is None:
            chain = await loop.run_in_executor(None, _default_chain)
            if chain is None:
                raise S3DeliveryError("s3: no AWS credentials (none given, none found by botocore's default "
                                      "chain)", retryable=False, code="NoCredentials")
            S3Sink._default_credentials = chain
        # Refreshable credentials may call STS or the instance metadata service: never on the loop.
        return await loop.run_in_executor(None, chain.get_frozen_credentials)

    def _signed(self, method: str, url: str, body: bytes, headers: dict[str, str],
                credentials: ReadOnlyCredentials) -> bytes:
        from botocore.auth import S3SigV4Auth
        from botocore.awsrequest import AWSRequest

        request = AWSRequest(method=method, url=url, data=body, headers=headers)
        S3SigV4Auth(credentials, "s3", self._region).add_auth(request)
        return encode_headers({name: value for name, value in request.headers.items()
                               if name.lower() not in ("host", "content-length")})

    async def _request(self, method: str, key: str, body: bytes, headers: dict[str, str], *,
                       query: str = "", timeout: float) -> Response:
        credentials = await self._resolve_credentials()
        if key:
            url = f"{self._base}/{quote(key, safe='/~')}"
        else:  # the bucket itself: /bucket path-style (not /bucket/, an object's path), / virtual-hosted
            url = self._base if self._path_style else self._base + "/"
        url += f"?{query}" if query else ""
        signed = self._signed(method, url, body, headers, credentials)
        return await self._state().http.request(method, url, body=body, headers=signed, timeout=timeout,
                                                policy=self.destination_policy)

    def _objects(self, batch: Sequence[LogEvent]) -> list[tuple[str, bytes]]:
        objects: list[tuple[str, bytes]] = []
        events: list[LogEvent] = []
        lines: list[bytes] = []
        size = 0
        for event in batch:
            line = _encoder.encode(event) + b"\n"
            if lines and size + len(line) > self.max_object_bytes:
                objects.append((object_key(self._prefix, events), b"".join(lines)))
                events, lines, size = [], [], 0
            events.append(event)
            lines.append(line)
            size += len(line)
        if lines:
            objects.append((object_key(self._prefix, events), b"".join(lines)))
        return objects

    async def send(self, batch: Sequence[LogEvent]) -> None:
        if not batch:
            return
        if self._closed:
            raise S3DeliveryError("s3: sink is closed")
        shared = self._state()
        # Bodies are encoded only once a slot is free: memory follows the connection limit, not the teams.
        async with shared.in_flight:
            for key, data in self._objects(batch):
                await self._put(key, data)

    async def _put(self, key: str, data: bytes) -> None:
        try:
            # If-None-Match: * makes the PUT create-only: S3 answers 412 when the key exists.
            response = await self._request("PUT", key, data, {"Content-Type": CONTENT_TYPE, "If-None-Match": "*"},
                                           timeout=self.request_timeout)
        except HttpClientError as exc:
            raise S3DeliveryError(f"s3: {self._base} unreachable ({exc.kind})") from None
        if 200 <= response.status < 300:
            return
        if response.status == 412:
            # The object exists: an earlier attempt of this very batch stored it (the key is a digest of the
            # event ids), so this part is delivered.
            return
        raise self._error(response, "storing an object")

    def _error(self, response: Response, doing: str) -> S3DeliveryError:
        code = _code(response.body)
        status = response.status
        reason = self._reason(status, code)
        message = _ERROR_MESSAGE.search(response.body)
        excerpt = Scrubber.for_sink(self).excerpt(message.group(1) if message else response.body, 160)
        # 409 ConditionalRequestConflict (a concurrent write of the same key) is worth a retry; so are 5xx.
        retryable = True if status == 409 else None
        return S3DeliveryError(f"s3: {doing} in bucket {self.callback_vars.s3_bucket_name!r}: {reason} "
                               f"(HTTP {status} {code or ''}): {excerpt}".replace(" )", ")"),
                               status_code=status, code=code, retryable=retryable)

    def _reason(self, status: int, code: str | None) -> str:
        if code in _AUTH_CODES or status == 401:
            return "credentials rejected"
        if code == "NoSuchBucket":
            return "the bucket does not exist"
        if code == "AccessDenied" or status == 403:
            return "access denied"
        if code == "PermanentRedirect" or status in (301, 307):
            return "the bucket is in another region (set s3_region_name)"
        if status >= 500:
            return "server error"
        return "refused"

    async def health_check(self) -> HealthResult:
        """An authenticated ``ListObjectsV2`` of at most zero keys; where listing is not granted, a create-only
        ``PUT`` of an empty marker object (``{prefix}/.sluicegate-write-check``) proves writing instead."""
        try:
            async with asyncio.timeout(self.health_timeout):
                answer = await self._request("GET", "", b"", {}, query="list-type=2&max-keys=0",
                                             timeout=self.health_timeout)
                if answer.status == 403 and _code(answer.body) == "AccessDenied":
                    key = f"{self._prefix}/.sluicegate-write-check" if self._prefix else ".sluicegate-write-check"
                    answer = await self._request("PUT", key, b"", {"If-None-Match": "*"},
                                                 timeout=self.health_timeout)
                    if answer.status == 412 or 200 <= answer.status < 300:  # 412: the marker is there already
                        return self._healthy("writable (listing not granted)")
        except TimeoutError:
            return self._unhealthy("timeout", f"no answer within {self.health_timeout:g}s")
        except HttpClientError as exc:
            return self._unhealthy("unreachable", f"cannot connect ({exc.kind})")
        except S3DeliveryError as exc:
            return self._unhealthy("auth" if exc.code == "NoCredentials" else "rejected", str(exc).removeprefix("s3: "))
        if 200 <= answer.status < 300:
            return self._healthy("exists and accepts these credentials")
        code = _code(answer.body)
        reason = self._reason(answer.status, code)
        kind = ("auth" if reason == "credentials rejected" else "not_found" if code == "NoSuchBucket"
                else "permission" if reason == "access denied" else "rejected")
        return self._unhealthy(kind, f"{reason} (HTTP {answer.status}{' ' + code if code else ''})")

    def _healthy(self, what: str) -> HealthResult:
        return HealthResult(healthy=True, details=f"s3: bucket {self.callback_vars.s3_bucket_name!r} at "
                                                  f"{self._base}: {what}")

    def _unhealthy(self, kind: str, reason: str) -> HealthResult:
        return HealthResult(healthy=False, error_kind=kind,
                            details=f"s3: bucket {self.callback_vars.s3_bucket_name!r} at {self._base}: {reason}")

    async def aclose(self) -> None:
        # Nothing per instance to release: the connection pool is shared and closed by shutdown().
        self._closed = True


def _code(body: bytes) -> str | None:
    found = _ERROR_CODE.search(body)
    return found.group(1).decode("ascii") if found else None


def _default_chain() -> Credentials | None:
    """botocore's default credential chain (blocking: it may read files or ask the instance metadata service)."""
    import botocore.session

    return botocore.session.get_session().get_credentials()
