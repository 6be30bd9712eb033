"""pytest fixtures for sink authors (registered through the ``pytest11`` entry point).

- ``http_receiver``: a running :class:`~sluicegate.testing.receiver.HttpReceiver` on loopback.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from sluicegate.testing.receiver import HttpReceiver


@pytest.fixture
def http_receiver() -> Iterator[HttpReceiver]:
    with HttpReceiver() as receiver:
        yield receiver
