"""The serving loop (``sluicegate.serving``): uvloop whose TCP servers accept every waiting connection at once.

Real sockets on loopback and the real uvloop; the clients are plain blocking sockets in a thread. "Turns" are counted
by a task that keeps the loop busy and yields once per turn, so the tests count turns of the loop, not milliseconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import tempfile
import threading
import time
from pathlib import Path

import pytest
import uvloop

from sluicegate.serving import AcceptingServer, GatewayLoop, new_event_loop
from sluicegate.testing import wait_until_async

CONNECTIONS = 64


class _Echo(asyncio.Protocol):
    made: list[int]
    turn: list[int]

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.made.append(self.turn[0])

    def data_received(self, data: bytes) -> None:
        self.transport.write(data.upper())  # type: ignore[attr-defined]


def _protocol(made: list[int], turn: list[int]) -> type[_Echo]:
    return type("Echo", (_Echo,), {"made": made, "turn": turn})


def _burst_turns(loop_factory) -> list[int]:
    """Open CONNECTIONS connections at once to a server on a loop busy ~2 ms a turn; the turn each was accepted."""
    made: list[int] = []
    turn = [0]

    async def scenario() -> list[int]:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(_protocol(made, turn), "127.0.0.1", 0, backlog=1024)
        port = server.sockets[0].getsockname()[1]
        stop = False

        async def busy() -> None:  # a loaded gateway: every turn has work in it
            while not stop:
                until = time.perf_counter() + 0.002
                while time.perf_counter() < until:
                    pass
                turn[0] += 1
                await asyncio.sleep(0)  # deliberate: one yield is one turn of the loop, the unit the test counts

        clients: list[socket.socket] = []
        go, queued = threading.Event(), threading.Event()

        def connect_all() -> None:
            go.wait(30)
            for _ in range(CONNECTIONS):
                clients.append(socket.create_connection(("127.0.0.1", port)))
            queued.set()

        threading.Thread(target=connect_all).start()
        # Block the loop (the GIL released) while every connection completes in the kernel and waits to be
        # accepted, as happens while a loaded gateway is busy in a long turn.
        go.set()
        queued.wait(30)
        spinner = loop.create_task(busy())
        deadline = loop.time() + 30
        while len(made) < CONNECTIONS and loop.time() < deadline:
            await asyncio.sleep(0)  # deliberate: a condition with a deadline, polled once a turn
        stop = True
        await spinner
        for client in clients:
            client.close()
        server.close()
        await server.wait_closed()
        return made

    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(scenario())


def test_a_burst_of_connections_is_accepted_in_a_few_turns_of_a_busy_loop() -> None:
    made = _burst_turns(GatewayLoop)
    assert len(made) == CONNECTIONS
    assert made[-1] - made[0] <= 3, f"accepted over {made[-1] - made[0]} turns"


def test_plain_uvloop_accepts_one_connection_a_turn_which_is_why_the_gateway_does_not_use_its_server() -> None:
    """The behaviour the module works around, so a uvloop that stops doing it is noticed (and the module can go)."""
    made = _burst_turns(uvloop.new_event_loop)
    assert len(made) == CONNECTIONS
    assert made[-1] - made[0] >= CONNECTIONS // 2


def _serve_and_talk(create) -> tuple[bytes, type]:
    async def scenario() -> tuple[bytes, type]:
        server = await create(asyncio.get_running_loop())
        try:
            address = server.sockets[0].getsockname()

            def talk() -> bytes:
                family = socket.AF_UNIX if isinstance(address, str) else socket.AF_INET
                with socket.socket(family, socket.SOCK_STREAM) as client:
                    client.connect(address)
                    client.sendall(b"hello")
                    return client.recv(16)

            return await asyncio.to_thread(talk), type(server)
        finally:
            server.close()
            await server.wait_closed()

    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        return runner.run(scenario())


def test_a_tcp_server_by_host_and_port_serves_through_uvloop_transports() -> None:
    answer, kind = _serve_and_talk(lambda loop: loop.create_server(_protocol([], [0]), "127.0.0.1", 0))
    assert (answer, kind) == (b"HELLO", AcceptingServer)


def test_a_server_on_a_given_socket_serves_it() -> None:
    """What ``--workers N`` does: the supervisor binds, each worker serves the inherited socket."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))

    answer, kind = _serve_and_talk(lambda loop: loop.create_server(_protocol([], [0]), sock=sock, backlog=16))
    assert (answer, kind) == (b"HELLO", AcceptingServer)


def test_a_unix_socket_keeps_uvloops_own_server() -> None:
    with tempfile.TemporaryDirectory() as directory:
        path = str(Path(directory) / "s.sock")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(path)
        answer, kind = _serve_and_talk(lambda loop: loop.create_server(_protocol([], [0]), sock=sock))
    assert answer == b"HELLO"
    assert kind is not AcceptingServer


def test_closing_stops_accepting_and_keeps_accepted_connections() -> None:
    async def scenario() -> tuple[bytes, bool]:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(_protocol([], [0]), "127.0.0.1", 0)
        address = server.sockets[0].getsockname()
        client = await asyncio.to_thread(socket.create_connection, address)
        server.close()
        await server.wait_closed()

        def talk_then_try_another() -> tuple[bytes, bool]:
            client.sendall(b"still here")
            answer = client.recv(16)
            client.close()
            refused = False
            try:
                socket.create_connection(address, timeout=5).close()
            except ConnectionRefusedError:
                refused = True
            return answer, refused

        return await asyncio.to_thread(talk_then_try_another)

    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        answer, refused = runner.run(scenario())
    assert answer == b"STILL HERE"
    assert refused


def test_host_and_sock_together_are_refused() -> None:
    async def scenario() -> None:
        with socket.socket() as sock:
            await asyncio.get_running_loop().create_server(_protocol([], [0]), "127.0.0.1", 0, sock=sock)

    with asyncio.Runner(loop_factory=new_event_loop) as runner, pytest.raises(ValueError, match="sock"):
        runner.run(scenario())


def test_a_port_in_use_is_reported_and_nothing_is_left_open() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]

        async def scenario() -> None:
            await asyncio.get_running_loop().create_server(_protocol([], [0]), "127.0.0.1", port,
                                                           reuse_address=False)

        with asyncio.Runner(loop_factory=new_event_loop) as runner, pytest.raises(OSError) as raised:
            runner.run(scenario())
    assert raised.value.errno is not None


def test_connections_arriving_from_many_threads_are_all_served() -> None:
    """Accepting in bulk hands every connection over: none is lost between accept() and its transport."""
    async def scenario() -> int:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(_protocol([], [0]), "127.0.0.1", 0, backlog=512)
        address = server.sockets[0].getsockname()
        answers: list[bytes] = []
        lock = threading.Lock()

        def one() -> None:
            with contextlib.closing(socket.create_connection(address, timeout=10)) as client:
                client.sendall(b"x")
                answer = client.recv(4)
            with lock:
                answers.append(answer)

        def many() -> None:
            threads = [threading.Thread(target=one) for _ in range(200)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(30)

        await asyncio.to_thread(many)
        server.close()
        await server.wait_closed()
        return sum(answer == b"X" for answer in answers)

    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        assert runner.run(scenario()) == 200


def test_a_server_made_without_serving_listens_only_once_started_and_serve_forever_ends_at_close() -> None:
    async def scenario() -> tuple[bool, bytes]:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(_protocol([], [0]), "127.0.0.1", 0, start_serving=False)
        address = server.sockets[0].getsockname()
        refused = False
        try:
            await asyncio.to_thread(lambda: socket.create_connection(address, timeout=5).close())
        except ConnectionRefusedError:
            refused = True  # bound, not listening yet
        forever = loop.create_task(server.serve_forever())
        # serve_forever starts listening once its task runs: wait for that, not for a connection race
        await wait_until_async(server.is_serving, timeout=10, what="serve_forever to start listening")

        def talk() -> bytes:
            with socket.create_connection(address, timeout=10) as client:
                client.sendall(b"up")
                return client.recv(16)

        answer = await asyncio.to_thread(talk)
        server.close()
        await asyncio.wait_for(forever, 10)
        return refused, answer

    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        assert runner.run(scenario()) == (True, b"UP")
