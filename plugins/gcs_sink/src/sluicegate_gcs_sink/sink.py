"""The ``gcs_bucket`` sink: each batch becomes newline-delimited JSON objects in a Google Cloud Storage bucket.

``google-cloud-storage`` is a blocking library, so every call runs on one small thread pool shared by all
instances. Clients and credentials are shared too: credentials are cached per service-account file (reloaded
when the file changes, token refreshed by google-auth when it expires) and clients per credentials, both in
bounded LRU caches, so 10,000 teams cost 10,000 small objects, not 10,000 clients or threads.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import stat
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import msgspec

from sluicegate import CallbackVars, HealthResult, SecretStr, Sink
from sluicegate.sinks.scrub import Scrubber

if TYPE_CHECKING:
    from google.auth.credentials import Credentials
    from google.cloud.storage import Client

    from sluicegate import LogEvent

__all__ = (
    "GcsBucketSink",
    "GcsDeliveryError",
    "GcsBucketVars",
    "ServiceAccountFileError",
    "object_name",
    "split_bucket_name",
    "validation_problems",
)

_T = TypeVar("_T")

SCOPES = ("https://www.googleapis.com/auth/devstorage.read_write",)
"""Least privilege: uploading objects and testing permissions needs nothing more."""

EMULATOR_ENV = "STORAGE_EMULATOR_HOST"
CONTENT_TYPE = "application/x-ndjson"
_WRITE_PERMISSION = "storage.objects.create"

# Bucket naming rules (https://cloud.google.com/storage/docs/buckets#naming): lowercase letters, digits,
# dashes, underscores and dots; starts and ends with a letter or digit; 3-63 characters (222 with dots).
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]$")
_IPV4_RE = re.compile(r"^\d{1,3}(?:\.\d{1,3}){3}$")
_MAX_PREFIX_BYTES = 1024 - len("/YYYY-MM-DD/YYYYMMDDTHHMMSS.ffffffZ-") - 32 - len(".ndjson")
"""Object names are at most 1,024 bytes; :func:`object_name` adds this much after the prefix."""

_encoder = msgspec.json.Encoder()

MAX_KEY_FILE_BYTES = 64 * 1024
"""A service-account key file is 2-3 KiB; anything far bigger is not one, and is not read whole."""
KEY_FILE_TIMEOUT = 2.0
"""Seconds a key file read may take before it is reported as unreadable."""
_KEY_READERS = threading.BoundedSemaphore(4)
"""Key file reads in flight at once (each on a thread of its own, so a hung one parks only that thread)."""


class GcsBucketVars(CallbackVars, frozen=True):
    """Callback variables of the ``gcs_bucket`` sink (LiteLLM's names)."""

    gcs_bucket_name: str
    """Bucket, optionally followed by an object prefix: ``my-bucket/llm-logs/prod``."""
    gcs_path_service_account: SecretStr | None = None
    """Path of a service-account JSON key file; without it, Application Default Credentials."""


class ServiceAccountFileError(ValueError):
    """The service-account file cannot be used. The message never contains the path or the key."""


def split_bucket_name(value: str) -> tuple[str, str]:
    """Split ``"bucket/some/prefix"`` (or ``gs://bucket/some/prefix``) into ``("bucket", "some/prefix")``."""
    text = value.strip()
    text = text.removeprefix("gs://")
    bucket, _, prefix = text.partition("/")
    return bucket, "/".join(part for part in prefix.split("/") if part)


def _bucket_name_problem(bucket: str) -> str | None:
    if not bucket:
        return "no bucket name given"
    if not _BUCKET_RE.match(bucket):
        # Not echoed: the value may hold anything (control characters, a pasted secret).
        return ("not a valid bucket name (3-63 lowercase letters, digits, '-', '_' or '.', "
                "starting and ending with a letter or digit)")
    if "." not in bucket and len(bucket) > 63:
        return f"{bucket!r} is longer than 63 characters"
    if any(not 0 < len(part) <= 63 for part in bucket.split(".")):
        return f"{bucket!r}: each dot-separated part must be 1-63 characters (no '..')"
    if _IPV4_RE.match(bucket):
        return f"{bucket!r}: a bucket name cannot be an IP address"
    if bucket.startswith("goog") or "google" in bucket or "g00gle" in bucket:
        return f"{bucket!r}: bucket names cannot start with 'goog' or contain 'google' (Google reserves them)"
    return None


def _prefix_problem(prefix: str) -> str | None:
    """Why object names under ``prefix`` could never be written (GCS object naming rules), else ``None``."""
    if any(c < " " or "\x7f" <= c <= "\x9f" for c in prefix):
        return "the object prefix must not contain control characters (CR, LF, NUL, ...)"
    try:
        size = len(prefix.encode("utf-8"))
    except UnicodeEncodeError:
        return "the object prefix is not valid Unicode text"
    if size > _MAX_PREFIX_BYTES:
        return (f"the object prefix is {size} bytes; at most {_MAX_PREFIX_BYTES} leave room for the object "
                "names under it (GCS allows 1,024 bytes)")
    if (prefix + "/").startswith(".well-known/acme-challenge/"):
        return "objects cannot be written under .well-known/acme-challenge/"
    return None


def _event_time(event: LogEvent) -> float:
    # The event's own time (not the upload time) keeps the name of a re-delivered batch stable.
    return event.endTime or event.startTime or time.time()


def object_name(prefix: str, events: Sequence[LogEvent]) -> str:
    """``{prefix}/{YYYY-MM-DD}/{timestamp}-{unique}.ndjson`` for ``events`` (the first event dates it).

    ``unique`` is a digest of the events' ids: the same batch always gets the same name, so a retried
    upload finds its object already there instead of writing a duplicate, and two batches never collide.
    """
    seconds = _event_time(events[0])
    stamp = time.gmtime(seconds)
    micros = int(round((seconds % 1) * 1_000_000)) % 1_000_000
    day = time.strftime("%Y-%m-%d", stamp)
    timestamp = time.strftime("%Y%m%dT%H%M%S", stamp) + f".{micros:06d}Z"
    unique = hashlib.sha256("\n".join(event.id for event in events).encode()).hexdigest()[:32]
    name = f"{day}/{timestamp}-{unique}.ndjson"
    return f"{prefix}/{name}" if prefix else name


def _read_key_file(path: str) -> bytes:
    """The bytes of the regular file at ``path``, at most ``MAX_KEY_FILE_BYTES`` (blocking; see :func:`_read_bounded`).

    Anything but a regular file is refused before it is opened (opening a device can act: a tape rewinds, a
    watchdog starts), and opened with ``O_NONBLOCK`` so a FIFO swapped in meanwhile cannot block the open;
    ``fstat`` then checks what was really opened.
    """
    try:
        mode = os.stat(path).st_mode
        if not stat.S_ISREG(mode):
            raise ServiceAccountFileError(_not_regular(mode))
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | getattr(os, "O_NOCTTY", 0))
    except FileNotFoundError:
        raise ServiceAccountFileError("file does not exist") from None
    except PermissionError:
        raise ServiceAccountFileError("file is not readable (permission denied)") from None
    except OSError as exc:
        raise ServiceAccountFileError(f"file cannot be read ({type(exc).__name__})") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ServiceAccountFileError(_not_regular(info.st_mode))
        if info.st_size > MAX_KEY_FILE_BYTES:
            raise ServiceAccountFileError(_too_large())
        chunks, size = [], 0
        while size <= MAX_KEY_FILE_BYTES:  # st_size can be 0 or stale (procfs, a growing file): count what comes
            chunk = os.read(fd, MAX_KEY_FILE_BYTES + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > MAX_KEY_FILE_BYTES:
            raise ServiceAccountFileError(_too_large())
        return b"".join(chunks)
    except OSError as exc:
        raise ServiceAccountFileError(f"file cannot be read ({type(exc).__name__})") from None
    finally:
        os.close(fd)


def _not_regular(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "is a directory, not a key file"
    return "is not a regular file (a pipe, socket or device); give the path of a JSON key file"


def _too_large() -> str:
    return f"file is larger than {MAX_KEY_FILE_BYTES // 1024} KiB; a service-account key file is a few KiB"


def _read_bounded(path: str) -> bytes:
    """:func:`_read_key_file` on a daemon thread, waited for at most ``KEY_FILE_TIMEOUT`` seconds.

    Validation calls this on the event loop: a file on a hung network filesystem then costs a parked thread
    (at most ``_KEY_READERS`` of them), never the loop or a delivery thread.
    """
    deadline = time.monotonic() + KEY_FILE_TIMEOUT
    if not _KEY_READERS.acquire(timeout=KEY_FILE_TIMEOUT):
        raise ServiceAccountFileError("earlier key file reads are still hanging (check the filesystem)")
    outcome: list[bytes | BaseException] = []
    done = threading.Event()

    def read() -> None:
        try:
            outcome.append(_read_key_file(path))
        except BaseException as exc:  # handed to the waiting caller
            outcome.append(exc)
        finally:
            _KEY_READERS.release()
            done.set()

    threading.Thread(target=read, name="sluicegate-gcs-key-file", daemon=True).start()
    if not done.wait(max(deadline - time.monotonic(), 0.0)):
        raise ServiceAccountFileError(f"file could not be read within {KEY_FILE_TIMEOUT:g}s")
    result = outcome[0]
    if isinstance(result, BaseException):
        raise result
    return result


def _load_service_account(path: str) -> Credentials:
    """Read and parse a service-account key file; raise :class:`ServiceAccountFileError` saying why not.

    No message quotes the file: whatever it holds (a key, or another secret file named by mistake) stays out of
    API answers and logs.
    """
    from google.oauth2 import service_account

    raw = _read_bounded(path)
    try:
        info = json.loads(raw)
    except ValueError:
        raise ServiceAccountFileError("file is not valid JSON") from None
    if not isinstance(info, dict):
        raise ServiceAccountFileError("file is not a JSON object") from None
    if info.get("type") != "service_account":
        raise ServiceAccountFileError("not a service-account key file (its \"type\" is not \"service_account\")")
    missing = [key for key in ("client_email", "private_key", "token_uri") if not info.get(key)]
    if missing:
        raise ServiceAccountFileError(f"key file lacks {', '.join(missing)}")
    try:
        return service_account.Credentials.from_service_account_info(info, scopes=SCOPES)
    except Exception as exc:  # google-auth raises ValueError or a cryptography error for a bad key
        raise ServiceAccountFileError(f"private_key cannot be loaded ({type(exc).__name__})") from None


def _file_signature(path: str) -> tuple[int, int, int]:
    try:
        stat = os.stat(path)
    except FileNotFoundError:
        raise ServiceAccountFileError("file does not exist") from None
    except OSError as exc:
        raise ServiceAccountFileError(f"file cannot be read ({type(exc).__name__})") from None
    return stat.st_mtime_ns, stat.st_size, stat.st_ino


def validation_problems(callback_vars: Mapping[str, Any]) -> list[str]:
    """Problems knowable at configuration time, as ``"field: reason"`` (never echoing the path or key)."""
    problems: list[str] = []
    bucket_value = callback_vars.get("gcs_bucket_name")
    if isinstance(bucket_value, str):
        bucket, prefix = split_bucket_name(bucket_value)
        problem = _bucket_name_problem(bucket) or _prefix_problem(prefix)
        if problem:
            problems.append(f"gcs_bucket_name: {problem}")
    path = callback_vars.get("gcs_path_service_account")
    if isinstance(path, SecretStr):
        path = path.get_secret_value()
    if isinstance(path, str):
        if not path.strip():
            problems.append("gcs_path_service_account: empty path; omit it to use Application Default "
                            "Credentials")
        else:
            try:
                _load_service_account(os.path.expanduser(path))
            except ServiceAccountFileError as exc:
                problems.append(f"gcs_path_service_account: {exc}")
    return problems


class _LRU(OrderedDict):
    """A small bounded mapping; the least recently used entry goes first. Callers hold the lock."""

    def __init__(self, bound: int) -> None:
        super().__init__()
        self.bound = bound

    def lookup(self, key: Any) -> Any:
        value = self.get(key)
        if value is not None:
            self.move_to_end(key)
        return value

    def store(self, key: Any, value: Any) -> None:
        self[key] = value
        self.move_to_end(key)
        while len(self) > self.bound:
            # An evicted client is only dropped, not closed: an upload on another thread may still use it;
            # its connections close when it is garbage-collected.
            self.popitem(last=False)


class _Shared:
    """What every ``GcsBucketSink`` shares: the thread pool, credentials and clients.

    Nothing here is bound to an event loop (the pool's threads run blocking code and hand results back
    through ``run_in_executor``), so one instance serves the whole process.
    """

    token_timeout = 10.0

    def __init__(self, max_threads: int, max_clients: int, max_credentials: int) -> None:
        self._transport: Any = None
        self.executor = ThreadPoolExecutor(max_workers=max_threads, thread_name_prefix="sluicegate-gcs")
        self.lock = threading.Lock()
        self.credentials: _LRU = _LRU(max_credentials)
        self.clients: _LRU = _LRU(max_clients)

    def credentials_for(self, path: str) -> tuple[tuple[int, int, int], Credentials]:
        """Cached, currently valid credentials for ``path``; reloaded when the file changed (mtime, size or
        inode), so a rotated key takes effect at the next send."""
        signature = _file_signature(path)
        with self.lock:
            cached = self.credentials.lookup(path)
        if cached is None or cached[0] != signature:
            loaded = (signature, _load_service_account(path), threading.Lock())
            with self.lock:
                # Another thread may have loaded the same file meanwhile: keep one copy (one token).
                cached = self.credentials.lookup(path)
                if cached is None or cached[0] != signature:
                    cached = loaded
                    self.credentials.store(path, cached)
        signature, credentials, refresh_lock = cached
        if not credentials.valid:
            # One token request per account, not one per pool thread that finds the token expired at once.
            with refresh_lock:
                if not credentials.valid:
                    credentials.refresh(self._token_request)
        return signature, credentials

    def _token_request(self, url: str, method: str = "GET", body: Any = None, headers: Any = None,
                       timeout: float | None = None, **kwargs: Any) -> Any:
        if self._transport is None:
            from google.auth.transport.requests import Request

            with self.lock:
                if self._transport is None:
                    self._transport = Request()
        return self._transport(url, method=method, body=body, headers=headers,
                               timeout=timeout or self.token_timeout, **kwargs)

    def client_for(self, path: str | None) -> Client:
        """A client for ``path``'s credentials (ADC when ``None``) and the current emulator setting."""
        from google.cloud import storage

        emulator = os.environ.get(EMULATOR_ENV)
        if path is None:
            key: tuple[Any, ...] = (None, emulator)
            credentials = None
        else:
            signature, credentials = self.credentials_for(path)
            key = (path, signature, emulator)
        with self.lock:
            client = self.clients.lookup(key)
        if client is not None:
            return client
        # project=None: uploads need no project, and it spares ADC a project lookup. With credentials=None
        # the library uses ADC, or anonymous credentials when STORAGE_EMULATOR_HOST is set.
        client = storage.Client(project=None, credentials=credentials)
        # The bucket-metadata cache (tracing attributes) starts a thread and a GET bucket per unseen bucket,
        # outside this pool and needing storage.buckets.get: with thousands of team buckets that is
        # thousands of threads and requests. The library tests the attribute for truth before each use.
        if getattr(client, "_bucket_metadata_cache", None) is not None:
            client._bucket_metadata_cache = None
        with self.lock:
            existing = self.clients.lookup(key)
            if existing is not None:
                return existing
            self.clients.store(key, client)
        return client

    def close(self) -> None:
        self.executor.shutdown(wait=True, cancel_futures=True)
        with self.lock:
            clients = list(self.clients.values())
            self.clients.clear()
            self.credentials.clear()
        if self._transport is not None:
            clients.append(self._transport.session)
        for client in clients:
            try:
                client.close()
            except Exception:  # closing is best effort at shutdown
                pass


_REQUEST_LINE = re.compile(r"^[A-Z]+ \S+: ")


class GcsDeliveryError(RuntimeError):
    """An upload failed. The message says why in the sink's words, with at most a short, scrubbed excerpt of the
    storage API's own message; ``kind`` is the health check's error kind for the same failure."""

    retryable: bool | None = None

    def __init__(self, message: str, *, kind: str, status_code: int | None = None,
                 retryable: bool | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.status_code = status_code
        if retryable is not None:
            self.retryable = retryable


class GcsBucketSink(Sink):
    """Writes each batch as NDJSON objects (one event per line) to a GCS bucket, never overwriting one."""

    callback_name = "gcs_bucket"
    Vars = GcsBucketVars
    max_batch_size = 500
    send_timeout = 60.0
    callback_vars: GcsBucketVars

    max_threads: ClassVar[int] = 8
    """Threads shared by all instances for the blocking library."""
    max_clients: ClassVar[int] = 64
    """Storage clients kept (one per service-account file); each holds a small connection pool."""
    max_credentials: ClassVar[int] = 4096
    """Parsed service-account credentials kept (with their access tokens)."""
    max_object_bytes: ClassVar[int] = 16 * 1024 * 1024
    """A batch larger than this is split into several objects."""
    upload_timeout: ClassVar[float] = 25.0
    """Seconds for one HTTP request of an upload (connect and read)."""
    health_timeout: ClassVar[float] = 5.0
    """Seconds a health check may take in all."""

    _shared: ClassVar[_Shared | None] = None
    _shared_lock: ClassVar[threading.Lock] = threading.Lock()

    __slots__ = ("_bucket", "_prefix", "_closed")

    def __init__(self, callback_vars: GcsBucketVars) -> None:
        super().__init__(callback_vars)
        self._bucket, self._prefix = split_bucket_name(callback_vars.gcs_bucket_name)
        self._closed = False

    @classmethod
    def env_defaults(cls, environ: Mapping[str, str]) -> dict[str, Any]:
        defaults: dict[str, Any] = {}
        if environ.get("GCS_BUCKET_NAME"):
            defaults["gcs_bucket_name"] = environ["GCS_BUCKET_NAME"]
        if environ.get("GCS_PATH_SERVICE_ACCOUNT"):
            defaults["gcs_path_service_account"] = environ["GCS_PATH_SERVICE_ACCOUNT"]
        return defaults

    @classmethod
    def _get_shared(cls) -> _Shared:
        shared = GcsBucketSink._shared
        if shared is None:
            with GcsBucketSink._shared_lock:
                shared = GcsBucketSink._shared
                if shared is None:
                    shared = _Shared(cls.max_threads, cls.max_clients, cls.max_credentials)
                    GcsBucketSink._shared = shared
        return shared

    @classmethod
    async def shutdown(cls) -> None:
        with GcsBucketSink._shared_lock:
            shared, GcsBucketSink._shared = GcsBucketSink._shared, None
        if shared is not None:
            # Waiting for running uploads blocks, so it happens off the event loop.
            await asyncio.to_thread(shared.close)

    async def _run(self, function: Callable[..., _T], *args: Any) -> _T:
        shared = self._get_shared()
        return await asyncio.get_running_loop().run_in_executor(shared.executor, function, shared, *args)

    def _service_account_path(self) -> str | None:
        secret = self.callback_vars.gcs_path_service_account
        return os.path.expanduser(secret.get_secret_value()) if secret else None

    def _objects(self, batch: Sequence[LogEvent]) -> list[tuple[str, bytes]]:
        objects: list[tuple[str, bytes]] = []
        events: list[LogEvent] = []
        lines: list[bytes] = []
        size = 0
        for event in batch:
            line = _encoder.encode(event) + b"\n"
            if lines and size + len(line) > self.max_object_bytes:
                objects.append((object_name(self._prefix, events), b"".join(lines)))
                events, lines, size = [], [], 0
            events.append(event)
            lines.append(line)
            size += len(line)
        if lines:
            objects.append((object_name(self._prefix, events), b"".join(lines)))
        return objects

    async def send(self, batch: Sequence[LogEvent]) -> None:
        if not batch:
            return
        if self._closed:
            raise RuntimeError("gcs_bucket: sink is closed")
        try:
            await self._run(self._upload, self._objects(batch))
        except Exception as exc:
            safe = self._without_answer(exc)
            if safe is exc:
                raise
            raise safe from None

    def _without_answer(self, exc: Exception) -> Exception:
        """``exc``, or when its message quotes a destination's answer, an exception of the same type (so the same
        status and retry flag) saying why in the sink's words, with at most a short scrubbed excerpt.

        The storage library puts the whole answer into an API error's message: an excerpt stays. google-auth puts
        the token endpoint's answer into a ``RefreshError``: none stays, since it may quote the signed assertion,
        which no scrubber knows. Other failures (a key file, a refused connection) carry no answer.
        """
        from google.api_core import exceptions as api
        from google.auth import exceptions as auth

        reason = self._classify(exc).details
        try:
            if isinstance(exc, api.GoogleAPICallError) and isinstance(exc.code, int):
                text = _REQUEST_LINE.sub("", exc.message or "")  # the library puts the request line first
                return api.from_http_status(exc.code, f"{reason}: {Scrubber.for_sink(self).excerpt(text)}",
                                            response=exc.response)
            if isinstance(exc, auth.RefreshError):
                return type(exc)(reason, retryable=exc.retryable)
        except Exception:  # an exception type that cannot be rebuilt so: ours, with the same kind and status
            pass
        else:
            return exc
        flag = getattr(exc, "retryable", None)
        return GcsDeliveryError(reason, kind=self._classify(exc).error_kind or "error",
                                status_code=exc.code if isinstance(getattr(exc, "code", None), int) else None,
                                retryable=flag if isinstance(flag, bool) else None)

    def secret_forms(self) -> Iterable[str]:
        """The key file's path and the access token the storage requests carry now (from the shared caches; a
        token refreshed later is found by the next error's scrubber)."""
        yield from super().secret_forms()
        shared = GcsBucketSink._shared
        if shared is None:
            return
        path = self._service_account_path()
        with shared.lock:
            if path is not None:
                cached = shared.credentials.get(path)
                credentials = cached[1] if cached else None
            else:  # Application Default Credentials: the client holds them
                client = shared.clients.get((None, os.environ.get(EMULATOR_ENV)))
                credentials = getattr(client, "_credentials", None)
        token = getattr(credentials, "token", None)
        if isinstance(token, str):
            yield token

    def _upload(self, shared: _Shared, objects: list[tuple[str, bytes]]) -> None:
        from google.api_core.exceptions import PreconditionFailed

        bucket = shared.client_for(self._service_account_path()).bucket(self._bucket)
        for name, data in objects:
            try:
                # if_generation_match=0: create only, never overwrite. retry=None: the core retries the
                # whole batch with backoff, and a thread must not spend minutes in the library's own loop.
                bucket.blob(name).upload_from_string(
                    data, content_type=CONTENT_TYPE, if_generation_match=0,
                    timeout=self.upload_timeout, retry=None)
            except PreconditionFailed:
                # The object exists: an earlier attempt of this very batch wrote it (the name is a digest
                # of the event ids), so this part is delivered.
                continue

    async def health_check(self) -> HealthResult:
        try:
            granted = await asyncio.wait_for(self._run(self._probe), self.health_timeout)
        except TimeoutError:
            return self._unhealthy("timeout", f"no answer within {self.health_timeout:g}s")
        except Exception as exc:
            return self._classify(exc)
        if _WRITE_PERMISSION not in granted:
            return self._unhealthy("permission", f"the account may not create objects in bucket "
                                                 f"{self._bucket!r} ({_WRITE_PERMISSION} not granted)")
        return HealthResult(healthy=True, details=f"gcs_bucket: bucket {self._bucket!r} exists and is writable")

    def _probe(self, shared: _Shared) -> list[str]:
        # testIamPermissions needs no permission of its own and has no side effect: it answers whether
        # this account may create objects, and 404 when the bucket does not exist.
        bucket = shared.client_for(self._service_account_path()).bucket(self._bucket)
        timeout = max(self.health_timeout - 0.5, 0.5)
        return list(bucket.test_iam_permissions([_WRITE_PERMISSION], timeout=timeout, retry=None))

    def _unhealthy(self, kind: str, reason: str) -> HealthResult:
        return HealthResult(healthy=False, details=f"gcs_bucket: {reason}", error_kind=kind)

    def _classify(self, exc: BaseException) -> HealthResult:
        from google.api_core import exceptions as api
        from google.auth import exceptions as auth

        if isinstance(exc, ServiceAccountFileError):
            return self._unhealthy("config", f"gcs_path_service_account: {exc}")
        if isinstance(exc, api.NotFound):
            return self._unhealthy("not_found", f"bucket {self._bucket!r} does not exist")
        if isinstance(exc, api.Forbidden):
            return self._unhealthy("permission", f"access to bucket {self._bucket!r} denied (403)")
        if isinstance(exc, api.Unauthorized):
            return self._unhealthy("auth", "credentials rejected by the storage API (401)")
        if isinstance(exc, auth.RefreshError):
            return self._unhealthy("auth", "the token endpoint refused the service account's credentials")
        if isinstance(exc, auth.DefaultCredentialsError):
            return self._unhealthy("auth", "no Application Default Credentials found")
        if isinstance(exc, auth.TransportError | OSError) or type(exc).__module__.startswith("requests"):
            return self._unhealthy("unreachable", f"storage API or token endpoint unreachable "
                                                  f"({type(exc).__name__})")
        if isinstance(exc, auth.GoogleAuthError):  # e.g. anonymous credentials answered with 401
            return self._unhealthy("auth", f"credentials rejected ({type(exc).__name__})")
        if isinstance(exc, api.GoogleAPICallError):
            return self._unhealthy("error", f"storage API answered {exc.code} ({type(exc).__name__})")
        return self._unhealthy("error", type(exc).__name__)

    async def aclose(self) -> None:
        self._closed = True
