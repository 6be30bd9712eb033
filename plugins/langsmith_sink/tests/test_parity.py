"""Parity with the official ``langsmith`` SDK: the receiver accepts what the SDK sends, and the sink's requests have
the SDK's shape (endpoint, headers, part names, content types, main-part fields) and are accepted the same way.

The SDK runs in a thread (its background tracing thread sends through its own HTTP client).
"""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

import pytest
from langsmith import Client

from sluicegate.testing import make_event
from sluicegate_langsmith_sink.sink import LangsmithSink, event_to_run
from sluicegate.sinks.vars import decode_vars

from .conftest import tenant_of


def _sdk_send(url: str, api_key: str, run: dict[str, Any]) -> None:
    client = Client(api_url=url, api_key=api_key)
    fields = {k: v for k, v in run.items()
              if k not in ("session_name", "start_time", "end_time") and v is not None}  # as an app passes them
    client.create_run(project_name=run["session_name"], start_time=dt.datetime.fromisoformat(run["start_time"]),
                      end_time=dt.datetime.fromisoformat(run["end_time"]), **fields)
    client.flush()
    client.cleanup()


def _shape(request) -> tuple[list[str], set[str], str]:
    suffixes = [name.split(".", 2)[2] if name.count(".") == 2 else "<run>" for name, _, _ in request.parts]
    content_types = {content_type for _, content_type, _ in request.parts}
    return suffixes, content_types, request.headers["Content-Type"].split(";")[0]


@pytest.mark.parametrize("status", ["success", "failure"])
async def test_sdk_and_sink_send_the_same_runs_the_same_way(langsmith_receiver, tenant, status) -> None:
    event = make_event(status=status)
    sdk_vars, sink_vars = tenant(project="parity"), tenant(project="parity")
    run = event_to_run(event, "parity")
    before = len(langsmith_receiver.requests)
    await asyncio.to_thread(_sdk_send, langsmith_receiver.url, sdk_vars["langsmith_api_key"], run)
    sdk_requests = [r for r in langsmith_receiver.requests[before:] if r.path == "/runs/multipart"]
    before = len(langsmith_receiver.requests)
    await LangsmithSink(decode_vars(LangsmithSink.Vars, sink_vars)).send([event])
    sink_requests = langsmith_receiver.requests[before:]

    assert [r.status for r in sdk_requests] == [202]  # the receiver accepts what the official SDK sends
    assert [r.status for r in sink_requests] == [202]
    assert _shape(sink_requests[0]) == _shape(sdk_requests[0])
    for request in (*sdk_requests, *sink_requests):
        assert set(request.headers) >= {"x-api-key", "Content-Type"}
        assert all("Content-Length" in headers for _, _, headers in request.parts)
    (from_sdk,) = langsmith_receiver.runs(tenant_of(langsmith_receiver, sdk_vars), "parity").values()
    (from_sink,) = langsmith_receiver.runs(tenant_of(langsmith_receiver, sink_vars), "parity").values()
    sdk_main = {k for k in from_sdk if k not in ("inputs", "outputs", "extra", "error")}
    sink_main = {k for k in from_sink if k not in ("inputs", "outputs", "extra", "error")}
    assert sink_main == sdk_main
    for field in ("id", "trace_id", "dotted_order", "name", "run_type", "inputs", "outputs", "error", "tags"):
        assert from_sink.get(field) == from_sdk.get(field), field
    assert from_sink["extra"]["metadata"].items() <= from_sdk["extra"]["metadata"].items()  # the SDK adds its own
    assert dt.datetime.fromisoformat(from_sink["start_time"]) == dt.datetime.fromisoformat(from_sdk["start_time"])


async def test_the_receiver_refuses_what_langsmith_refuses(langsmith_receiver, tenant) -> None:
    """Negative controls: the SDK's own request shape with one thing wrong is refused, so acceptance means something."""
    run = event_to_run(make_event(), "parity")
    sdk_vars = tenant(project="parity")
    broken = {**run, "dotted_order": run["dotted_order"].replace("Z", "", 1)}
    before = len(langsmith_receiver.requests)
    await asyncio.to_thread(_sdk_send, langsmith_receiver.url, sdk_vars["langsmith_api_key"], broken)
    wrong_type = {**run, "run_type": "completion"}
    await asyncio.to_thread(_sdk_send, langsmith_receiver.url, sdk_vars["langsmith_api_key"], wrong_type)
    await asyncio.to_thread(_sdk_send, langsmith_receiver.url, "lsv2_pt_unknown", run)
    statuses = [r.status for r in langsmith_receiver.requests[before:] if r.path == "/runs/multipart"]
    assert statuses[:1] == [422] and 422 in statuses[1:] and statuses[-1] == 401, statuses
    assert langsmith_receiver.runs(tenant_of(langsmith_receiver, sdk_vars), "parity") == {}
