"""The loopback LangSmith receiver (one per session) and the shared client's cleanup."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest

from sluicegate_langsmith_sink.sink import LangsmithSink
from sluicegate_langsmith_sink.testing import LangsmithReceiver

_tenants = itertools.count()


@pytest.fixture(scope="session")
def langsmith_receiver() -> Iterator[LangsmithReceiver]:
    with LangsmithReceiver() as receiver:
        yield receiver


@pytest.fixture
def tenant(langsmith_receiver: LangsmithReceiver) -> Callable[..., dict[str, Any]]:
    """A new tenant with its own API key: returns callback_vars for it (``project`` and more as keywords)."""
    langsmith_receiver.outage(None)

    def make(project: str = "proj", **extra: Any) -> dict[str, Any]:
        n = next(_tenants)
        key = f"lsv2_pt_{n:04d}_0123456789abcdef"
        langsmith_receiver.add_key(key, f"tenant-{n}")
        return {"langsmith_api_key": key, "langsmith_project": project, "langsmith_base_url": langsmith_receiver.url,
                **extra}

    return make


def tenant_of(receiver: LangsmithReceiver, callback_vars: dict[str, Any]) -> str:
    return receiver.keys[callback_vars["langsmith_api_key"]]


@pytest.fixture(autouse=True)
async def _close_shared_client() -> AsyncIterator[None]:
    yield
    await LangsmithSink.shutdown()
