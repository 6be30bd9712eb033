"""``/health/liveliness`` (process up) and ``/health/readiness`` (database reachable), without a key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url


def test_liveliness_and_readiness(app_client: Any) -> None:
    live = app_client.get("/health/liveliness")
    assert live.status_code == 200 and live.json() == {"status": "healthy"}
    ready = app_client.get("/health/readiness")
    assert ready.status_code == 200, ready.text
    body = ready.json()
    assert body["status"] == "healthy" and body["db"] == "connected"
    assert body["checks"]["database"]["healthy"] is True


def test_readiness_is_503_when_the_database_goes_away(new_database: Any, make_settings: Any, postgres_admin: Any,
                                                      tmp_path: Path) -> None:
    from litestar.testing import TestClient

    from sluicegate.app import create_app

    with new_database("postgresql", tmp_path) as url:
        role = make_url(url).username
        with TestClient(create_app(make_settings(database_url=url)), timeout=30) as client:
            assert client.get("/health/readiness").status_code == 200  # negative control
            postgres_admin(f'ALTER ROLE "{role}" NOLOGIN')
            postgres_admin(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{role}'")
            ready = client.get("/health/readiness")
            assert ready.status_code == 503, ready.text
            assert ready.json()["status"] == "unhealthy" and ready.json()["db"] == "disconnected"
            assert "Traceback" not in ready.text
            assert client.get("/health/liveliness").status_code == 200  # the process itself is fine
            postgres_admin(f'ALTER ROLE "{role}" LOGIN')
            assert client.get("/health/readiness").status_code == 200  # and it recovers
