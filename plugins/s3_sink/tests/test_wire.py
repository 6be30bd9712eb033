"""The sink on the wire: events go through Sluicegate's real dispatcher to moto's S3 server, which checks every
request's SigV4 signature and the account's IAM policy. Each positive case has its negative control beside it.
"""

from __future__ import annotations

import re
import time

import msgspec

from sluicegate.sinks.destinations import DestinationPolicy
from sluicegate.sinks.vars import decode_vars
from sluicegate.testing import deliver, make_event
from sluicegate_s3_sink.sink import CONTENT_TYPE, S3Sink, object_key

KEY_PATTERN = re.compile(r"^logs/prod/\d{4}-\d{2}-\d{2}/\d{8}T\d{6}\.\d{6}Z-[0-9a-f]{32}\.ndjson$")


async def test_a_batch_becomes_one_ndjson_object_under_the_prefix_and_day(moto_s3, new_bucket) -> None:
    bucket = new_bucket("wire")
    events = [make_event(), make_event(status="failure")]
    report = await deliver(S3Sink, moto_s3.writer.vars(moto_s3, bucket, s3_path="/logs/prod/"), events)
    assert report.delivered, report
    (key,) = moto_s3.keys(bucket)
    assert KEY_PATTERN.match(key), key
    assert key.split("/")[2] == time.strftime("%Y-%m-%d", time.gmtime(events[0].endTime))
    body, content_type = moto_s3.body(bucket, key)
    assert content_type == CONTENT_TYPE
    assert body == b"".join(msgspec.json.encode(e) + b"\n" for e in events)  # one event per line, as encoded


async def test_redelivery_never_duplicates_and_other_batches_still_land(moto_s3, new_bucket) -> None:
    bucket = new_bucket("redeliver")
    sink = S3Sink(decode_vars(S3Sink.Vars, moto_s3.writer.vars(moto_s3, bucket)))
    batch = [make_event(), make_event()]
    await sink.send(batch)
    await sink.send(batch)  # a retry after a timeout that hid the success: S3 answers 412, counted delivered
    assert len(moto_s3.keys(bucket)) == 1 and len(moto_s3.events(bucket)) == 2
    await sink.send([make_event()])  # control: a different batch is a new object
    assert len(moto_s3.keys(bucket)) == 2
    await sink.aclose()


async def test_a_large_batch_is_split_into_several_objects(moto_s3, new_bucket) -> None:
    class SmallObjects(S3Sink):
        max_object_bytes = 3_000

    bucket = new_bucket("split")
    events = [make_event() for _ in range(6)]
    assert (await deliver(SmallObjects, moto_s3.writer.vars(moto_s3, bucket), events)).delivered
    assert len(moto_s3.keys(bucket)) > 1
    assert sorted(e["id"] for e in moto_s3.events(bucket)) == sorted(e.id for e in events)


async def test_a_wrong_secret_is_a_permanent_failure_and_never_echoed(moto_s3, new_bucket) -> None:
    bucket = new_bucket("wrong")
    wrong = "wrong-secret-0123456789abcdefghijklmnop"
    report = await deliver(S3Sink, moto_s3.writer.vars(moto_s3, bucket, s3_aws_secret_access_key=wrong),
                           make_event())
    assert (report.sent, report.dropped, report.retried) == (0, 1, 0), report  # 403: not retried
    assert "credentials rejected" in report.last_error and "SignatureDoesNotMatch" in report.last_error
    assert wrong not in report.last_error
    unknown = await deliver(S3Sink, moto_s3.writer.vars(moto_s3, bucket, s3_aws_access_key_id="AKIANOTAKEY00000000",
                                                        s3_aws_session_token="session-token-never-shown"),
                            make_event())
    assert unknown.dropped == 1 and "credentials rejected" in unknown.last_error, unknown
    assert "session-token-never-shown" not in unknown.last_error
    assert moto_s3.keys(bucket) == []
    control = await deliver(S3Sink, moto_s3.writer.vars(moto_s3, bucket), make_event())
    assert control.delivered and len(moto_s3.keys(bucket)) == 1


async def test_a_bucket_that_does_not_exist(moto_s3, new_bucket) -> None:
    callback_vars = moto_s3.writer.vars(moto_s3, "never-created-bucket")
    report = await deliver(S3Sink, callback_vars, make_event())
    assert (report.sent, report.dropped, report.retried) == (0, 1, 0), report
    assert "does not exist" in report.last_error and "NoSuchBucket" in report.last_error
    sink = S3Sink(decode_vars(S3Sink.Vars, callback_vars))
    health = await sink.health_check()
    assert not health.healthy and health.error_kind == "not_found", health
    control = S3Sink(decode_vars(S3Sink.Vars, moto_s3.writer.vars(moto_s3, new_bucket("exists"))))
    assert (await control.health_check()).healthy


async def test_health_check_authenticates_and_falls_back_to_a_create_only_write(moto_s3, new_bucket) -> None:
    bucket = new_bucket("health")
    wrong = S3Sink(decode_vars(S3Sink.Vars, moto_s3.writer.vars(moto_s3, bucket, s3_aws_secret_access_key="nope")))
    result = await wrong.health_check()
    assert not result.healthy and result.error_kind == "auth" and "credentials rejected" in result.details
    assert "nope" not in result.details
    # An account that may write but not list: healthy, proven by a create-only PUT of an empty marker.
    put_only = S3Sink(decode_vars(S3Sink.Vars, moto_s3.put_only.vars(moto_s3, bucket, s3_path="team")))
    result = await put_only.health_check()
    assert result.healthy and "listing not granted" in result.details, result
    assert (await put_only.health_check()).healthy  # the marker exists now: 412 still proves the right to write
    assert moto_s3.keys(bucket) == ["team/.sluicegate-write-check"]
    writer = S3Sink(decode_vars(S3Sink.Vars, moto_s3.writer.vars(moto_s3, bucket)))
    assert (await writer.health_check()).healthy


async def test_redacted_routes_send_no_message_content(moto_s3, new_bucket) -> None:
    bucket = new_bucket("redact")
    event = make_event()
    callback_vars = moto_s3.writer.vars(moto_s3, bucket)
    assert (await deliver(S3Sink, callback_vars, event, redact=True)).delivered
    (redacted,) = moto_s3.events(bucket)
    assert "capital of France" not in str(redacted["messages"])
    bucket_plain = new_bucket("plain")
    assert (await deliver(S3Sink, moto_s3.writer.vars(moto_s3, bucket_plain), event, redact=False)).delivered
    (plain,) = moto_s3.events(bucket_plain)
    assert "capital of France" in str(plain["messages"])


async def test_api_written_callbacks_keep_to_the_destination_policy(moto_s3, new_bucket) -> None:
    bucket = new_bucket("policy")
    callback_vars = decode_vars(S3Sink.Vars, moto_s3.writer.vars(moto_s3, bucket))
    refusing = DestinationPolicy(deny=["127.0.0.0/8"])
    assert [field for field, _ in S3Sink.destination_problems(callback_vars, refusing)] == ["s3_endpoint_url"]
    assert S3Sink.destination_problems(callback_vars, DestinationPolicy()) == []  # control: loopback allowed
    sink = S3Sink(callback_vars)
    sink.destination_policy = refusing  # as the core sets it for a callback written through the admin API
    health = await sink.health_check()
    assert not health.healthy and health.error_kind == "unreachable", health
    try:
        await sink.send([make_event()])
        raise AssertionError("send must fail")
    except Exception as exc:
        assert "refused" in str(exc)
    assert moto_s3.keys(bucket) == []  # refused before a connection was opened


async def test_api_written_callbacks_never_borrow_the_gateways_aws_identity(moto_s3, new_bucket) -> None:
    bucket = new_bucket("identity")
    callback_vars = decode_vars(S3Sink.Vars, {"s3_bucket_name": bucket, "s3_endpoint_url": moto_s3.url})
    sink = S3Sink(callback_vars)
    sink.destination_policy = DestinationPolicy()
    try:
        await sink.send([make_event()])
        raise AssertionError("send must fail")
    except Exception as exc:
        assert getattr(exc, "retryable", None) is False and "bring their own credentials" in str(exc)
    health = await sink.health_check()
    assert not health.healthy and health.error_kind == "auth"


def test_object_keys_are_stable_per_batch() -> None:
    events = [make_event(), make_event()]
    assert object_key("p", events) == object_key("p", list(events))
    assert object_key("p", events) != object_key("p", events[:1])
    assert object_key("", events).count("/") == 1
