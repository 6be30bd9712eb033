"""``sluicegate serve``'s parent process with the delivery process: the serving workers (uvicorn, itself the
workers' supervisor with ``--workers N > 1``) and one delivery process, each a child of this one.

- The delivery process is restarted when it dies, after a backoff (0.5 s doubling to 30 s; back to 0.5 s once a
  run lasted a minute); the workers keep appending to their logs meanwhile and it reads on where it stopped.
- A hung one (alive, not answering) is treated as dead: it is pinged over its status socket every
  ``delivery.watchdog_interval`` seconds; after ``watchdog_misses`` pings in a row without an answer within
  ``watchdog_timeout`` it gets SIGKILL and is restarted the same way. Before its first answer (start-up: waiting for
  the host's delivery lock, replaying the spool) misses count only once it has run ``_STARTUP_GRACE`` seconds.
- SIGTERM or SIGINT: the workers stop first (uvicorn's graceful shutdown writes their logs), then the delivery
  process reads what they wrote, delivers within its grace period and exits; this process exits last, with the
  workers' exit status.
- SIGHUP is passed on to the workers' process: a single worker reloads config.yaml in place, uvicorn's supervisor
  over several replaces them one at a time (docs/operations.md, "Live reload"); and to the delivery process, which
  re-reads the callbacks and team settings it decides which sink instances to close by.
- If the workers' process exits on its own, the delivery process is stopped the same way.
- Both children get SIGTERM if this process dies (``PR_SET_PDEATHSIG``): nothing is left running without it.

Run as ``python -m sluicegate.delivery.supervisor [--grace S] [--spool DIR --watchdog INTERVAL,TIMEOUT,MISSES] --
<uvicorn command line>``; the configuration reaches the children through the environment ``sluicegate serve`` set.
With ``--workers 1``, ``sluicegate serve`` forks the serving worker and the first delivery process itself (they
start from its imports and plugins instead of loading everything again), then becomes this program with
``--adopt SERVING_PID,DELIVERY_PID`` and no uvicorn command line: exec keeps the pid, so both stay its children.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time

__all__ = ("main",)

log = logging.getLogger("sluicegate.delivery")

_BACKOFF_FIRST = 0.5
_BACKOFF_MAX = 30.0
_STABLE_AFTER = 60.0
_POLL = 0.1
_STARTUP_GRACE = 120.0
"""Seconds a new delivery process may run before its first answer without its missed pings counting (it may wait
up to 60 s for the previous one's lock, then replay its spool)."""


class Watchdog:
    """How often and how patiently the delivery process is pinged (``sluicegate_settings.delivery.watchdog_*``)."""

    __slots__ = ("address", "interval", "misses", "timeout")

    def __init__(self, address: str, interval: float, timeout: float, misses: int) -> None:
        self.address = address
        self.interval = interval
        self.timeout = timeout
        self.misses = misses


class _Ping:
    """One ``ping`` over the status socket, advanced without blocking by the supervisor's loop (which must keep
    watching the workers and answering signals)."""

    __slots__ = ("data", "deadline", "sock")

    def __init__(self, address: str, timeout: float) -> None:
        self.deadline = time.monotonic() + timeout
        self.data = b""
        self.sock: socket.socket | None = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.setblocking(False)
        try:
            self.sock.connect(address)  # a UNIX socket connects at once (queued even if the listener is stopped)
            self.sock.send(b"ping\n")
        except OSError:  # not listening (starting, dead), or its backlog is full (hung for a while)
            self.close()

    def answer(self) -> dict[str, object] | None | bool:
        """The answer once complete; False if it failed or the deadline passed; None while still waiting."""
        while self.sock is not None:
            try:
                chunk = self.sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                if time.monotonic() >= self.deadline:
                    self.close()
                    return False
                return None
            except OSError:
                break
            if not chunk:  # the answer is complete when the delivery process closes the connection
                self.close()
                try:
                    answer = json.loads(self.data)
                except ValueError:
                    return False
                return answer if isinstance(answer, dict) else False
            self.data += chunk
        self.close()
        return False

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM when the parent dies (Linux; elsewhere nothing)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class _Adopted:
    """A child this process had before it exec'd this program: the parts of :class:`subprocess.Popen` used here."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:  # reaped elsewhere: gone, status unknown
                self.returncode = 1
                return self.returncode
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def send_signal(self, signum: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, signum)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while (code := self.poll()) is None:
            if deadline is not None and time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired(f"pid {self.pid}", timeout or 0.0)
            time.sleep(0.02)
        return code


class Supervisor:
    def __init__(self, serving_argv: list[str], grace: float, watchdog: Watchdog | None = None,
                 adopted: tuple[int, int] | None = None) -> None:
        self.serving_argv = serving_argv
        self.grace = grace
        self.adopted = adopted
        self.watchdog = watchdog if watchdog is not None and watchdog.interval > 0 else None
        self.ping: _Ping | None = None
        self.ping_at = 0.0
        self.missed = 0
        self.answered = False
        self.hung = False  # the running delivery process was killed for not answering
        self.serving: subprocess.Popen[bytes] | _Adopted | None = None
        self.delivery: subprocess.Popen[bytes] | _Adopted | None = None
        self.delivery_started = 0.0
        self.restarts = 0
        self.backoff = _BACKOFF_FIRST
        self.restart_at = 0.0
        self.stopping = False

    def _start_delivery(self, adopted: int | None = None) -> None:
        if adopted is not None:
            self.delivery = _Adopted(adopted)
        else:
            env = {**os.environ, "SLUICEGATE_DELIVERY_RESTARTS": str(self.restarts)}
            self.delivery = subprocess.Popen([sys.executable, "-P", "-m", "sluicegate.delivery"], env=env,
                                             preexec_fn=_die_with_parent)
        self.delivery_started = time.monotonic()
        self.missed = 0
        self.answered = False
        self.hung = False
        if self.ping is not None:
            self.ping.close()
            self.ping = None
        self.ping_at = self.delivery_started + (self.watchdog.interval if self.watchdog else 0.0)

    def _on_signal(self, signum: int, _frame: object) -> None:
        self.stopping = True
        if self.serving is not None and self.serving.poll() is None:
            # SIGTERM either way: after a Ctrl-C (the whole group got SIGINT already) a second SIGINT would make
            # uvicorn skip its graceful shutdown
            self.serving.send_signal(signal.SIGTERM)

    def _on_hangup(self, _signum: int, _frame: object) -> None:
        if self.serving is not None and self.serving.poll() is None:
            self.serving.send_signal(signal.SIGHUP)
        if self.delivery is not None and self.delivery.poll() is None:
            self.delivery.send_signal(signal.SIGHUP)

    def run(self) -> int:
        signal.signal(signal.SIGHUP, self._on_hangup)
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        if self.adopted is not None:
            self._start_delivery(self.adopted[1])
            self.serving = _Adopted(self.adopted[0])
        else:
            self._start_delivery()
            self.serving = subprocess.Popen(self.serving_argv, preexec_fn=_die_with_parent)
        if self.stopping:  # a signal came before the workers existed
            self.serving.send_signal(signal.SIGTERM)
        while True:
            code = self.serving.poll()
            if code is not None:
                break
            self._watch_delivery()
            time.sleep(_POLL)
        self._stop_delivery()
        return code if code >= 0 else 128 - code

    def _watch_delivery(self) -> None:
        now = time.monotonic()
        if self.delivery is None:
            if now >= self.restart_at and not self.stopping:
                self.restarts += 1
                self._start_delivery()
            return
        code = self.delivery.poll()
        if self.stopping:
            return
        if code is None:
            self._check_health(now)
            return
        ran = now - self.delivery_started
        if ran >= _STABLE_AFTER:
            self.backoff = _BACKOFF_FIRST
        if self.hung and self.watchdog is not None:
            log.error("the delivery process (pid %d) did not answer %d health pings in a row (every %gs, %gs "
                      "deadline): killed it after %.1fs; restarting it in %.1fs (the workers keep writing their logs "
                      "meanwhile)", self.delivery.pid, self.missed, self.watchdog.interval, self.watchdog.timeout,
                      ran, self.backoff)
        else:
            log.error("the delivery process (pid %d) exited with %s after %.1fs; restarting it in %.1fs (the "
                      "workers keep writing their logs meanwhile)", self.delivery.pid, code, ran, self.backoff)
        if self.ping is not None:
            self.ping.close()
            self.ping = None
        self.delivery = None
        self.restart_at = now + self.backoff
        self.backoff = min(_BACKOFF_MAX, self.backoff * 2)

    def _check_health(self, now: float) -> None:
        """Ping the running delivery process every ``watchdog.interval``; SIGKILL it after ``watchdog.misses``
        pings in a row without an answer (its exit is then seen, and it is restarted, like any other death)."""
        watchdog, delivery = self.watchdog, self.delivery
        if watchdog is None or delivery is None or self.hung:
            return
        if self.ping is None:
            if now >= self.ping_at:
                self.ping = _Ping(watchdog.address, watchdog.timeout)
                self.ping_at = now + watchdog.interval
            return
        answer = self.ping.answer()
        if answer is None:
            return
        self.ping = None
        if answer is not False and answer.get("pid") == delivery.pid:
            self.missed = 0
            self.answered = True
            return
        if not self.answered and now - self.delivery_started < _STARTUP_GRACE:
            return  # still starting: its socket is not open yet
        self.missed += 1
        if self.missed >= watchdog.misses:
            self.hung = True
            delivery.kill()

    def _stop_delivery(self) -> None:
        delivery = self.delivery
        if delivery is None or delivery.poll() is not None:
            return
        delivery.send_signal(signal.SIGTERM)
        try:
            delivery.wait(self.grace + 15)
        except subprocess.TimeoutExpired:
            log.error("the delivery process did not stop within %.0fs; killed (its spool keeps what it held)",
                      self.grace + 15)
            delivery.kill()
            delivery.wait(5)


def main(argv: list[str] | None = None) -> int:
    from sluicegate.cli import _setup_logging, name_process

    name_process("sg-supervisor")
    args = list(sys.argv[1:] if argv is None else argv)
    if "--" not in args:
        print("usage: python -m sluicegate.delivery.supervisor [--grace SECONDS] -- <uvicorn command line>",
              file=sys.stderr)
        return 2
    split = args.index("--")
    own, serving = args[:split], args[split + 1:]
    grace = float(own[own.index("--grace") + 1]) if "--grace" in own else 20.0
    watchdog = None
    if "--spool" in own and "--watchdog" in own:
        from sluicegate.delivery.status import status_address

        interval, timeout, misses = own[own.index("--watchdog") + 1].split(",")
        watchdog = Watchdog(status_address(own[own.index("--spool") + 1]), float(interval), float(timeout),
                            int(misses))
    adopted = None
    if "--adopt" in own:
        serving_pid, delivery_pid = own[own.index("--adopt") + 1].split(",")
        adopted = (int(serving_pid), int(delivery_pid))
    _setup_logging(os.environ.get("SLUICEGATE_LOG_LEVEL", "info"))
    return Supervisor(serving, grace, watchdog, adopted).run()


if __name__ == "__main__":
    sys.exit(main())
