"""Fixtures for the otel sink's tests: loopback OTLP receivers and the real rotel collector."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
from sluicegate_otel_sink.sink import OtelSink


def _load_helpers():
    # --import-mode=importlib puts no tests dir on sys.path; a unique module name avoids clashes.
    name = "sluicegate_otel_sink_tests_receiver"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name("otel_receiver.py"))
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


@pytest.fixture(scope="session")
def otel_helpers():
    return _load_helpers()


@pytest.fixture(scope="session")
def otlp_receiver(otel_helpers):
    """A receiver without auth, shared by the tests (each test filters spans by its own ids)."""
    receiver = otel_helpers.OtlpReceiver(name="otlp").start()
    yield receiver
    receiver.stop()


@pytest.fixture(scope="session")
def rotel(otel_helpers, tmp_path_factory):
    """The real rotel collector, forwarding to its own receiver (``rotel.forward_to``)."""
    downstream = otel_helpers.OtlpReceiver(name="behind-rotel").start()
    collector = otel_helpers.Rotel(downstream, tmp_path_factory.mktemp("rotel")).start()
    yield collector
    collector.stop()
    downstream.stop()


@pytest.fixture(autouse=True)
async def _close_shared_transports():
    # Each test has its own loop: close that loop's shared aiohttp session and gRPC channels with it.
    yield
    await OtelSink.shutdown()
