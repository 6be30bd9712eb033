"""Fixtures of the langfuse sink tests: a loopback Langfuse receiver and sink factories."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator

import pytest

from sluicegate.sinks.vars import decode_vars
from sluicegate_langfuse_sink.sink import LangfuseSink
from sluicegate_langfuse_sink.testing import LangfuseReceiver


@pytest.fixture
def langfuse_receiver() -> Iterator[LangfuseReceiver]:
    with LangfuseReceiver() as receiver:
        receiver.add_project("pk-lf-1", "sk-lf-1", project_id="project-1")
        receiver.add_project("pk-lf-2", "sk-lf-2", project_id="project-2")
        yield receiver


@pytest.fixture(autouse=True)
async def _release_shared_client() -> AsyncIterator[None]:
    yield
    await LangfuseSink.shutdown()


@pytest.fixture
def make_sink(langfuse_receiver: LangfuseReceiver) -> Callable[..., LangfuseSink]:
    def make(public_key: str = "pk-lf-1", secret_key: str = "sk-lf-1", host: str | None = None) -> LangfuseSink:
        return LangfuseSink(decode_vars(LangfuseSink.Vars, {
            "langfuse_public_key": public_key, "langfuse_secret": secret_key,
            "langfuse_host": host or langfuse_receiver.url}))
    return make
