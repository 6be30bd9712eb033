"""Finding #9's serving part: a request head must arrive within ``header_timeout`` and fit ``max_header_bytes``.

Run against ``sluicegate serve`` in a subprocess (the real uvicorn + protocol stack) over loopback sockets.
"""

from __future__ import annotations

import socket
import time

import httpx
import pytest

MASTER = "sk-master-limits-test"


@pytest.fixture(scope="module")
def gateway(module_gateway_process, write_config, tmp_path_factory):
    directory = tmp_path_factory.mktemp("limits")
    config = write_config({
        "model_list": [{"model_name": "mock", "litellm_params": {"model": "openai/m", "mock_response": "ok"}}],
        "general_settings": {"master_key": MASTER, "database_url": f"sqlite+aiosqlite:///{directory}/gw.db"},
        "sluicegate_settings": {"header_timeout": 1.0, "max_header_bytes": 16384}})
    return module_gateway_process(config)


def _read_until_closed(sock: socket.socket, deadline: float) -> bytes:
    """Everything the server sends until it closes the connection; fails if it is still open at ``deadline``."""
    received = b""
    while True:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"the connection is still open; received so far {received[:200]!r}"
        sock.settimeout(remaining)
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return received
        if not chunk:
            return received
        received += chunk


def _connect(gateway) -> socket.socket:
    return socket.create_connection(("127.0.0.1", gateway.port), timeout=5)


def test_slow_and_silent_heads_are_closed_after_the_header_timeout(gateway):
    slow = [_connect(gateway) for _ in range(5)]
    for sock in slow:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer sk-")
    silent = _connect(gateway)
    started = time.monotonic()
    for sock in [*slow, silent]:
        answer = _read_until_closed(sock, started + 8)
        assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
        sock.close()
    # The server is fine meanwhile.
    assert httpx.get(f"{gateway.url}/health/liveliness", timeout=5).status_code == 200


def test_a_complete_head_with_a_slowly_sent_body_is_not_cut_by_the_header_timeout(gateway):
    """Negative control: the head deadline ends when the head is complete (the body has its own deadline)."""
    body = b'{"metadata": {"sent": "slowly, after the head"}}'  # fields /key/generate takes (others are a 400)
    with _connect(gateway) as sock:
        sock.sendall(b"POST /key/generate HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + MASTER.encode()
                     + b"\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body))
        sock.settimeout(1.5)  # past the 1 s head deadline: the connection must still be open
        with pytest.raises(TimeoutError):
            sock.recv(1)
        sock.sendall(body)
        sock.settimeout(10)
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")


def test_an_oversized_head_gets_431_and_a_normal_one_is_served(gateway):
    head = b"GET /health/liveliness HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer sk-" + b"a" * (8 * 1024 * 1024)
    with _connect(gateway) as sock:
        sent = 0
        try:
            while sent < len(head):
                sent += sock.send(head[sent:sent + 65536])
            answer = _read_until_closed(sock, time.monotonic() + 10)
        except (BrokenPipeError, ConnectionResetError):
            answer = b"reset"  # closed on us while we were still sending: the 431 went out before the reset
        assert sent < len(head) or answer.startswith(b"HTTP/1.1 431"), (sent, answer[:200])
    big_but_allowed = "a" * 12000
    response = httpx.get(f"{gateway.url}/health/liveliness", headers={"x-big": big_but_allowed}, timeout=5)
    assert response.status_code == 200
    too_big = httpx.get(f"{gateway.url}/health/liveliness", headers={"x-big": "a" * 20000}, timeout=5)
    assert too_big.status_code == 431 and too_big.json()["error"]["code"] == "431"
