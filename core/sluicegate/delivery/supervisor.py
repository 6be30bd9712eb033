"""``sluicegate serve``'s parent process with the delivery process: the serving workers (uvicorn, itself the
workers' supervisor with ``--workers N > 1``) and one delivery process, each a child of this one.

- The delivery process is restarted when it dies, after a backoff (0.5 s doubling to 30 s; back to 0.5 s once a
  run lasted a minute); the workers keep appending to their logs meanwhile and it reads on where it stopped.
- SIGTERM or SIGINT: the workers stop first (uvicorn's graceful shutdown writes their logs), then the delivery
  process reads what they wrote, delivers within its grace period and exits; this process exits last, with the
  workers' exit status.
- SIGHUP is passed on to the workers' process: a single worker reloads config.yaml in place, uvicorn's supervisor
  over several replaces them one at a time (docs/operations.md, "Live reload").
- If the workers' process exits on its own, the delivery process is stopped the same way.
- Both children get SIGTERM if this process dies (``PR_SET_PDEATHSIG``): nothing is left running without it.

Run as ``python -m sluicegate.delivery.supervisor -- <uvicorn command line>``; the configuration reaches the
children through the environment ``sluicegate serve`` set.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import sys
import time

__all__ = ("main",)

log = logging.getLogger("sluicegate.delivery")

_BACKOFF_FIRST = 0.5
_BACKOFF_MAX = 30.0
_STABLE_AFTER = 60.0
_POLL = 0.1


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM when the parent dies (Linux; elsewhere nothing)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class Supervisor:
    def __init__(self, serving_argv: list[str], grace: float) -> None:
        self.serving_argv = serving_argv
        self.grace = grace
        self.serving: subprocess.Popen[bytes] | None = None
        self.delivery: subprocess.Popen[bytes] | None = None
        self.delivery_started = 0.0
        self.restarts = 0
        self.backoff = _BACKOFF_FIRST
        self.restart_at = 0.0
        self.stopping = False

    def _start_delivery(self) -> None:
        env = {**os.environ, "SLUICEGATE_DELIVERY_RESTARTS": str(self.restarts)}
        self.delivery = subprocess.Popen([sys.executable, "-P", "-m", "sluicegate.delivery"], env=env,
                                         preexec_fn=_die_with_parent)
        self.delivery_started = time.monotonic()

    def _on_signal(self, signum: int, _frame: object) -> None:
        self.stopping = True
        if self.serving is not None and self.serving.poll() is None:
            # SIGTERM either way: after a Ctrl-C (the whole group got SIGINT already) a second SIGINT would make
            # uvicorn skip its graceful shutdown
            self.serving.send_signal(signal.SIGTERM)

    def _on_hangup(self, _signum: int, _frame: object) -> None:
        if self.serving is not None and self.serving.poll() is None:
            self.serving.send_signal(signal.SIGHUP)

    def run(self) -> int:
        signal.signal(signal.SIGHUP, self._on_hangup)
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
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
        if code is None or self.stopping:
            return
        ran = now - self.delivery_started
        if ran >= _STABLE_AFTER:
            self.backoff = _BACKOFF_FIRST
        log.error("the delivery process (pid %d) exited with %s after %.1fs; restarting it in %.1fs (the workers "
                  "keep writing their logs meanwhile)", self.delivery.pid, code, ran, self.backoff)
        self.delivery = None
        self.restart_at = now + self.backoff
        self.backoff = min(_BACKOFF_MAX, self.backoff * 2)

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
    from sluicegate.cli import _setup_logging

    args = list(sys.argv[1:] if argv is None else argv)
    if "--" not in args:
        print("usage: python -m sluicegate.delivery.supervisor [--grace SECONDS] -- <uvicorn command line>",
              file=sys.stderr)
        return 2
    split = args.index("--")
    own, serving = args[:split], args[split + 1:]
    grace = float(own[own.index("--grace") + 1]) if "--grace" in own else 20.0
    _setup_logging(os.environ.get("SLUICEGATE_LOG_LEVEL", "info"))
    return Supervisor(serving, grace).run()


if __name__ == "__main__":
    sys.exit(main())
