"""The sink on the wire: events go through Sluicegate's real dispatcher to a recording server on loopback.

``deliver`` batches, retries, redacts and drops exactly as the gateway does, so these tests check behaviour
an operator sees. Each positive case has its negative control beside it.
"""

from __future__ import annotations

from sluicegate.testing import HttpReceiver, deliver, make_event
from sluicegate_azure_storage_sink.sink import AzureStorageSink

API_KEY = "test-key-0123456789"


def _vars(receiver: HttpReceiver) -> dict[str, str]:
    return {"endpoint": f"{receiver.url}/ingest", "api_key": API_KEY}


async def test_events_arrive_as_a_json_array_with_the_key(http_receiver: HttpReceiver) -> None:
    http_receiver.behave("/ingest", require_header=("authorization", f"Bearer {API_KEY}"))
    events = [make_event(), make_event(status="failure")]
    report = await deliver(AzureStorageSink, _vars(http_receiver), events)
    assert report.delivered, report
    assert [e["id"] for e in http_receiver.events("/ingest")] == [e.id for e in events]
    assert len(http_receiver.received("/ingest")) == 1  # one batch, one request


async def test_a_wrong_key_is_a_permanent_failure(http_receiver: HttpReceiver) -> None:
    http_receiver.behave("/ingest", require_header=("authorization", "Bearer the-right-key"))
    report = await deliver(AzureStorageSink, _vars(http_receiver), make_event())
    assert (report.sent, report.dropped, report.retried) == (0, 1, 0)  # 401: dropped at once, not retried
    assert "HTTP 401" in (report.last_error or "")
    assert API_KEY not in (report.last_error or "")
    assert http_receiver.events("/ingest") == []


async def test_a_temporary_outage_is_retried(http_receiver: HttpReceiver) -> None:
    http_receiver.behave("/ingest", fail_times=2, fail_status=503)
    report = await deliver(AzureStorageSink, _vars(http_receiver), make_event())
    assert report.delivered and report.retried == 2, report
    assert len(http_receiver.events("/ingest")) == 1


async def test_redacted_routes_send_no_message_content(http_receiver: HttpReceiver) -> None:
    event = make_event()
    assert (await deliver(AzureStorageSink, _vars(http_receiver), event, redact=True)).delivered
    assert (await deliver(AzureStorageSink, _vars(http_receiver), event, redact=False)).delivered
    redacted, plain = http_receiver.events("/ingest")
    assert "capital of France" not in str(redacted["messages"])
    assert "capital of France" in str(plain["messages"])
