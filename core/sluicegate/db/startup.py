"""Reaching the database at start-up: one line naming the URL (password masked) and the cause, and retries while
the server is not up yet (containers start out of order)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

__all__ = ("DatabaseStartError", "describe_url", "explain", "is_transient", "url_problem", "with_retries")

# Python driver modules → what to install for them.
_DRIVER_PACKAGES = {"asyncpg": "asyncpg", "aiosqlite": "aiosqlite", "psycopg": "psycopg[binary]",
                    "psycopg2": "psycopg2-binary", "aiomysql": "aiomysql", "asyncmy": "asyncmy", "pymysql": "pymysql"}


class DatabaseStartError(Exception):
    """The database cannot be used; ``str()`` is the one line to print."""


def describe_url(url: str) -> str:
    """``url`` with its password masked (the URL as given when it does not parse)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url if "@" not in url else "<not a database URL: it has an '@', so maybe a password>"


def _causes(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen:
        seen.append(current)
        current = getattr(current, "orig", None) or current.__cause__ or current.__context__
    return seen


def url_problem(url: str, exc: BaseException) -> str | None:
    """The line for ``exc`` when it comes from the database URL itself (scheme, syntax, driver), else None."""
    for cause in _causes(exc):
        if isinstance(cause, ModuleNotFoundError) and (cause.name or "").split(".")[0] in _DRIVER_PACKAGES:
            return explain(url, cause)
        if type(cause).__name__ in ("NoSuchModuleError", "ArgumentError"):
            return explain(url, cause)
    return None


def is_transient(exc: BaseException) -> bool:
    """Whether waiting may help: the server refuses connections, does not answer, or is still starting."""
    for cause in _causes(exc):
        name = type(cause).__name__
        if name in ("CannotConnectNowError", "TooManyConnectionsError"):
            return True
        if isinstance(cause, ConnectionRefusedError | TimeoutError | asyncio.TimeoutError):
            return True
        if isinstance(cause, OSError) and cause.errno in (111, 113, 101, 110, 99):  # refused, unreachable, timeout
            return True
    return False


def explain(url: str, exc: BaseException) -> str:
    """One line: the masked URL and why it cannot be used."""
    where = f"database {describe_url(url)}"
    for cause in _causes(exc):
        name = type(cause).__name__
        if isinstance(cause, ModuleNotFoundError):
            module = (cause.name or "").split(".")[0]
            package = _DRIVER_PACKAGES.get(module, module)
            return f"{where}: the driver {module!r} is not installed (pip install {package})"
        if name == "NoSuchModuleError":
            return f"{where}: unknown database scheme ({cause}); use postgresql:// or sqlite:///PATH"
        if name == "ArgumentError":
            return (f"{where}: not a database URL ({cause}); use postgresql://USER:PASSWORD@HOST:PORT/DB or "
                    "sqlite:///PATH")
        if name == "InvalidCatalogNameError":
            return f"{where}: the database does not exist ({cause}); create it (createdb) or fix the URL"
        if name in ("InvalidPasswordError", "InvalidAuthorizationSpecificationError"):
            return f"{where}: authentication failed ({cause})"
        if isinstance(cause, ConnectionRefusedError) or (isinstance(cause, OSError) and cause.errno == 111):
            return f"{where}: connection refused (is the server running and listening on that host and port?)"
        if isinstance(cause, TimeoutError | asyncio.TimeoutError):
            return f"{where}: no answer (timed out connecting)"
        if name == "gaierror":
            return f"{where}: unknown host ({cause})"
        if name == "OperationalError" and "unable to open database file" in str(cause):
            return f"{where}: cannot open the SQLite file (does its directory exist and is it writable?)"
    last = _causes(exc)[-1]
    return f"{where}: {type(last).__name__}: {last}".splitlines()[0]


async def with_retries(url: str, attempt: Callable[[], Awaitable[Any]], timeout: float,
                       progress: Callable[[str], None], *, passthrough: tuple[type[BaseException], ...] = (),
                       clock: Callable[[], float] = time.monotonic) -> Any:
    """``attempt()`` until it succeeds, retrying transient failures with backoff (0.25 s doubling to 5 s) for up to
    ``timeout`` seconds, calling ``progress`` with a line before each wait. Raises :class:`DatabaseStartError`."""
    deadline = clock() + timeout
    delay = 0.25
    while True:
        try:
            return await attempt()
        except passthrough:
            raise
        except Exception as exc:
            line = explain(url, exc)
            remaining = deadline - clock()
            if not is_transient(exc) or remaining <= 0:
                if is_transient(exc) and timeout > 0:
                    line += f"; gave up after {timeout:g} s (sluicegate_settings.database_connect_timeout)"
                raise DatabaseStartError(line) from None
            wait = min(delay, remaining)
            progress(f"{line}; retrying in {wait:.2g} s ({remaining:.0f} s left)")
            await asyncio.sleep(wait)  # a backoff between connection attempts, not test synchronisation
            delay = min(delay * 2, 5.0)
