"""The console's sessions: held server-side, in the serving process's memory, found by a random id in a
cookie.

Why memory and not the database: a session is a short-lived grant made by typing a key into this process, and
the store of the whole gateway stays free of a table written on every login and logout. The cost: a restart
ends every session (people log in again), and with ``--workers N`` > 1 a session lives in the worker that made
it (the kernel spreads connections over the workers, so a second worker answers with the login page). The
class below is the one place to change for a database-backed store.

The cookie carries the id; the store keys sessions by the id's sha256, so a dump of this memory lists no
usable cookie. Every session has an absolute lifetime and an idle timeout; expired sessions are dropped when
met and the store is bounded (the oldest go first).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections import OrderedDict, deque
from collections.abc import Callable

import msgspec

__all__ = ("IDLE_TIMEOUT", "LIFETIME", "LoginFailures", "Session", "SessionStore")

LIFETIME = 8 * 3600.0
"""Seconds a session lasts from login, however busy."""
IDLE_TIMEOUT = 3600.0
"""Seconds without a request after which a session ends."""
MAX_SESSIONS = 10_000


def _digest(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


class Session(msgspec.Struct, kw_only=True):
    """Who logged in (the key's hash; ``"master"`` for the master key's), the form token, and the clock."""

    token_id: str
    csrf_token: str
    created: float
    last_seen: float
    flash: str | None = None

    def csrf_matches(self, sent: str | None) -> bool:
        if not sent:
            return False
        return hmac.compare_digest(sent.encode(), self.csrf_token.encode())


class SessionStore:
    __slots__ = ("_clock", "_sessions", "idle_timeout", "lifetime", "max_sessions")

    def __init__(self, *, lifetime: float = LIFETIME, idle_timeout: float = IDLE_TIMEOUT,
                 max_sessions: int = MAX_SESSIONS, clock: Callable[[], float] = time.monotonic) -> None:
        self._sessions: OrderedDict[str, Session] = OrderedDict()
        self.lifetime = lifetime
        self.idle_timeout = idle_timeout
        self.max_sessions = max_sessions
        self._clock = clock

    def create(self, token_id: str) -> tuple[str, Session]:
        """A new session with a fresh id (never one the client chose: no fixation) and a fresh form token."""
        now = self._clock()
        session_id = secrets.token_urlsafe(32)
        session = Session(token_id=token_id, csrf_token=secrets.token_urlsafe(32), created=now, last_seen=now)
        self._sessions[_digest(session_id)] = session
        while len(self._sessions) > self.max_sessions:
            self._sessions.popitem(last=False)
        return session_id, session

    def get(self, session_id: str | None) -> Session | None:
        """The live session for the cookie's id (its idle clock restarted), or ``None``."""
        if not session_id:
            return None
        digest = _digest(session_id)
        session = self._sessions.get(digest)
        if session is None:
            return None
        now = self._clock()
        if now - session.created >= self.lifetime or now - session.last_seen >= self.idle_timeout:
            del self._sessions[digest]
            return None
        session.last_seen = now
        self._sessions.move_to_end(digest)
        return session

    def delete(self, session_id: str | None) -> None:
        if session_id:
            self._sessions.pop(_digest(session_id), None)

    def __len__(self) -> int:
        return len(self._sessions)


class LoginFailures:
    """Failed logins per client address in a sliding window: past ``limit``, the address is refused (429)
    before its key is even looked at, so the login form cannot be used to guess keys quickly. Successful
    logins do not count."""

    __slots__ = ("_clock", "_failures", "limit", "window")

    def __init__(self, limit: int = 10, window: float = 60.0, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()
        self.limit = limit
        self.window = window
        self._clock = clock

    def retry_after(self, client: str) -> int:
        """Seconds until ``client`` may try again; 0 when it may now."""
        failures = self._failures.get(client)
        if not failures:
            return 0
        now = self._clock()
        while failures and now - failures[0] >= self.window:
            failures.popleft()
        if len(failures) < self.limit:
            return 0
        return max(1, int(self.window - (now - failures[0])) + 1)

    def failed(self, client: str) -> None:
        failures = self._failures.setdefault(client, deque(maxlen=self.limit))
        self._failures.move_to_end(client)
        failures.append(self._clock())
        while len(self._failures) > MAX_SESSIONS:
            self._failures.popitem(last=False)
