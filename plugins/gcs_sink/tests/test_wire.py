"""The gcs_bucket sink against the real fake-gcs-server, authenticating for real.

Each service account is a real key file (an RSA key made here) whose ``token_uri`` is the loopback token
endpoint in ``conftest.py``; google-auth runs the JWT-bearer grant against it and google-cloud-storage sends
the issued bearer token to the storage API, where the loopback IAM gate checks it before fake-gcs-server
(which checks no auth itself) stores the object. ``STORAGE_EMULATOR_HOST`` routes the library there.
"""

from __future__ import annotations

import asyncio
import re
import threading

import msgspec
import pytest

from sluicegate.sinks.vars import decode_vars
from sluicegate.testing import make_event, wait_until_async
from sluicegate_gcs_sink.sink import GcsBucketSink, GcsBucketVars

NAME = re.compile(r"^(?:(?P<prefix>.+)/)?(?P<day>\d{4}-\d{2}-\d{2})/(?P<stamp>\d{8}T\d{6}\.\d{6}Z)-"
                  r"(?P<unique>[0-9a-f]{32})\.ndjson$")


def make_sink(bucket: str, key_file=None) -> GcsBucketSink:
    raw = {"gcs_bucket_name": bucket}
    if key_file is not None:
        raw["gcs_path_service_account"] = str(key_file)
    return GcsBucketSink(decode_vars(GcsBucketVars, raw))


def stored_events(fake_gcs, bucket: str) -> list[dict]:
    events = []
    for data in fake_gcs.objects(bucket).values():
        assert data.endswith(b"\n")
        events.extend(msgspec.json.decode(line) for line in data.splitlines())
    return events


async def test_two_teams_each_bucket_holds_exactly_its_teams_events(gcs_env, fake_gcs, new_bucket):
    bucket_a, bucket_b = new_bucket("team-a"), new_bucket("team-b")
    account_a = gcs_env.account("team-a", bucket_a)
    account_b = gcs_env.account("team-b", bucket_b)
    sink_a = make_sink(bucket_a, account_a.key_file)
    sink_b = make_sink(bucket_b, account_b.key_file)
    sent_a = [[make_event(team_id="team-a") for _ in range(n)] for n in (3, 1, 7)]
    sent_b = [[make_event(team_id="team-b") for _ in range(n)] for n in (2, 5)]

    async def deliver(sink, batches):
        for batch in batches:
            await sink.send(batch)

    await asyncio.gather(deliver(sink_a, sent_a), deliver(sink_b, sent_b))

    in_a, in_b = stored_events(fake_gcs, bucket_a), stored_events(fake_gcs, bucket_b)
    assert sorted(e["id"] for e in in_a) == sorted(e.id for batch in sent_a for e in batch)
    assert sorted(e["id"] for e in in_b) == sorted(e.id for batch in sent_b for e in batch)
    assert {e["metadata"]["user_api_key_team_id"] for e in in_a} == {"team-a"}
    assert {e["metadata"]["user_api_key_team_id"] for e in in_b} == {"team-b"}
    # One object per batch, each line the event exactly as msgspec encodes it.
    objects_a = fake_gcs.objects(bucket_a)
    assert len(objects_a) == 3
    first = sent_a[0]
    assert b"".join(msgspec.json.encode(e) + b"\n" for e in first) in objects_a.values()
    # Authentication ran: each account got a token from its own key, and used it only on its bucket.
    emails = {email for email, _ in gcs_env.token_grants}
    assert {account_a.email, account_b.email} <= emails
    assert (account_a.email, account_a.key_id) in gcs_env.token_grants
    used = {(email, bucket) for email, _, bucket in gcs_env.storage_requests
            if email in (account_a.email, account_b.email)}
    assert used == {(account_a.email, bucket_a), (account_b.email, bucket_b)}


async def test_other_teams_bucket_is_refused_and_left_untouched(gcs_env, fake_gcs, new_bucket):
    bucket_a, bucket_b = new_bucket("team-a"), new_bucket("team-b")
    account_a = gcs_env.account("team-a", bucket_a)
    gcs_env.account("team-b", bucket_b)
    wrong = make_sink(bucket_b, account_a.key_file)
    right = make_sink(bucket_a, account_a.key_file)

    from google.api_core.exceptions import Forbidden

    with pytest.raises(Forbidden):
        await wrong.send([make_event()])
    assert fake_gcs.objects(bucket_b) == {}
    # Control: the same account with its own bucket writes.
    await right.send([make_event()])
    assert len(fake_gcs.objects(bucket_a)) == 1


async def test_object_names_and_path_prefix(gcs_env, fake_gcs, new_bucket):
    bucket = new_bucket()
    account = gcs_env.account("prefixed", bucket)
    event = make_event(startTime=1735732800.0, endTime=1735732800.25)  # 2025-01-01T12:00:00.25Z
    await make_sink(f"{bucket}/llm-logs/prod", account.key_file).send([event])
    await make_sink(bucket, account.key_file).send([make_event(endTime=1735732800.5)])

    names = sorted(fake_gcs.objects(bucket))
    matches = [NAME.match(name) for name in names]
    assert all(matches), names
    by_prefix = {m["prefix"]: m for m in matches}
    assert set(by_prefix) == {None, "llm-logs/prod"}
    prefixed = by_prefix["llm-logs/prod"]
    assert prefixed["day"] == "2025-01-01"
    assert prefixed["stamp"] == "20250101T120000.250000Z"


async def test_redelivery_writes_once_and_nothing_is_overwritten(gcs_env, fake_gcs, new_bucket):
    bucket = new_bucket()
    account = gcs_env.account("redeliver", bucket)
    sink = make_sink(bucket, account.key_file)
    batch = [make_event() for _ in range(4)]
    await sink.send(batch)
    before = fake_gcs.objects(bucket)
    await sink.send(batch)  # what the core does after a timeout that hid a success
    assert fake_gcs.objects(bucket) == before
    assert len(stored_events(fake_gcs, bucket)) == 4

    # Control: a different batch with the same timestamp gets its own object; the first stays intact.
    twin = [make_event(startTime=batch[0].startTime, endTime=batch[0].endTime)]
    await sink.send(twin)
    after = fake_gcs.objects(bucket)
    assert len(after) == 2 and all(after[name] == data for name, data in before.items())


async def test_transient_errors_are_raised_and_the_retry_delivers(gcs_env, fake_gcs, new_bucket):
    from google.api_core.exceptions import ServiceUnavailable

    bucket = new_bucket()
    account = gcs_env.account("transient", bucket)
    sink = make_sink(bucket, account.key_file)
    batch = [make_event() for _ in range(3)]
    gcs_env.fail_next("upload", 503)
    with pytest.raises(ServiceUnavailable):
        await sink.send(batch)
    assert fake_gcs.objects(bucket) == {}
    await sink.send(batch)  # the core's retry
    assert sorted(e["id"] for e in stored_events(fake_gcs, bucket)) == sorted(e.id for e in batch)


async def test_large_batch_is_split_into_objects_and_retry_is_idempotent(gcs_env, fake_gcs, new_bucket,
                                                                         monkeypatch):
    bucket = new_bucket()
    account = gcs_env.account("split", bucket)
    sink = make_sink(bucket, account.key_file)
    times = {"startTime": 1735732800.0, "endTime": 1735732801.0, "completionStartTime": 1735732800.5}
    batch = [make_event(**times) for _ in range(10)]
    lines = {len(msgspec.json.encode(e)) + 1 for e in batch}
    assert len(lines) == 1  # same-size events make the split points exact
    line = lines.pop()
    monkeypatch.setattr(GcsBucketSink, "max_object_bytes", line * 4)
    gcs_env.fail_next("upload", 503)  # fails the first part; the rest is not attempted
    with pytest.raises(Exception):
        await sink.send(batch)
    await sink.send(batch)
    await sink.send(batch)
    objects = fake_gcs.objects(bucket)
    assert sorted(len(data) // line for data in objects.values()) == [2, 4, 4]
    assert sorted(e["id"] for e in stored_events(fake_gcs, bucket)) == sorted(e.id for e in batch)


async def test_credentials_are_cached_and_a_changed_key_file_takes_effect(gcs_env, fake_gcs, new_bucket):
    bucket = new_bucket()
    account = gcs_env.account("rotating", bucket)
    sink = make_sink(bucket, account.key_file)
    twin = make_sink(f"{bucket}/other-prefix", account.key_file)  # another instance, same key file
    for _ in range(3):
        await sink.send([make_event()])
        await twin.send([make_event()])
    grants = [g for g in gcs_env.token_grants if g[0] == account.email]
    assert grants == [(account.email, account.key_id)]  # one token for six uploads by two instances

    old_key = account.key_id
    new_key = account.rotate()
    account.revoke(old_key)
    await sink.send([make_event()])
    grants = [g for g in gcs_env.token_grants if g[0] == account.email]
    assert grants == [(account.email, old_key), (account.email, new_key)]
    assert len(fake_gcs.objects(bucket)) == 7


async def test_unusable_key_file_fails_send_without_revealing_its_path(gcs_env, fake_gcs, new_bucket,
                                                                       tmp_path):
    from sluicegate_gcs_sink.sink import ServiceAccountFileError

    bucket = new_bucket()
    missing = tmp_path / "secret-location" / "key.json"
    sink = make_sink(bucket, missing)
    with pytest.raises(ServiceAccountFileError) as info:
        await sink.send([make_event()])
    assert "secret-location" not in str(info.value)
    health = await sink.health_check()
    assert not health.healthy and health.error_kind == "config"
    assert "secret-location" not in health.details
    assert fake_gcs.objects(bucket) == {}


async def test_emulator_host_is_honoured(gcs_env, fake_gcs, new_bucket, monkeypatch):
    bucket = new_bucket()
    account = gcs_env.account("emulated", bucket)
    sink = make_sink(bucket, account.key_file)
    await sink.send([make_event()])
    assert len(fake_gcs.objects(bucket)) == 1
    # Control: pointing STORAGE_EMULATOR_HOST elsewhere (a closed port) makes the same sink fail.
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{closed}")
    with pytest.raises(OSError):
        await sink.send([make_event()])
    assert len(fake_gcs.objects(bucket)) == 1


async def test_health_check(gcs_env, new_bucket):
    bucket, other = new_bucket(), new_bucket()
    account = gcs_env.account("health", bucket)
    outsider = gcs_env.account("outsider", other)

    healthy = await make_sink(f"{bucket}/p", account.key_file).health_check()
    assert healthy.healthy, healthy
    assert bucket in healthy.details

    missing = await make_sink("no-such-bucket-" + bucket[-8:], account.key_file).health_check()
    assert (missing.healthy, missing.error_kind) == (False, "not_found")

    denied = await make_sink(bucket, outsider.key_file).health_check()
    assert (denied.healthy, denied.error_kind) == (False, "permission")

    revoked_key = outsider.key_id
    outsider.revoke(revoked_key)
    await GcsBucketSink.shutdown()  # forget the cached token so the revoked key must be used
    refused = await make_sink(other, outsider.key_file).health_check()
    assert (refused.healthy, refused.error_kind) == (False, "auth")
    for result in (healthy, missing, denied, refused):
        assert str(account.key_file) not in result.details and "PRIVATE KEY" not in result.details


async def test_health_check_times_out(gcs_env, new_bucket, monkeypatch):
    bucket = new_bucket()
    account = gcs_env.account("slow", bucket)
    monkeypatch.setattr(GcsBucketSink, "health_timeout", 0.5)
    gcs_env.stalled_paths.add(f"/storage/v1/b/{bucket}/iam/testPermissions")
    try:
        loop = asyncio.get_running_loop()
        started = loop.time()
        result = await make_sink(bucket, account.key_file).health_check()
        elapsed = loop.time() - started
    finally:
        gcs_env.stalled_paths.clear()
        gcs_env.stall_release.set()
    assert (result.healthy, result.error_kind) == (False, "timeout")
    assert elapsed < 2.0
    # Control: the same check without the stall is healthy.
    gcs_env.stall_release.clear()
    assert (await make_sink(bucket, account.key_file).health_check()).healthy


async def test_threads_stay_bounded_with_many_instances(gcs_env, fake_gcs, new_bucket):
    """300 instances (300 teams sharing one bucket under their own prefixes) deliver concurrently.

    The shared pool's threads (``sluicegate-gcs_N``) are counted apart from the short-lived key-file readers
    (``sluicegate-gcs-key-file``): a reader is released just before its thread ends, so a new one may start
    while the old one is still alive, and only the pool has a fixed size.
    """
    bucket = new_bucket()
    account = gcs_env.account("many", bucket)
    sinks = [make_sink(f"{bucket}/team-{i}", account.key_file) for i in range(300)]
    peak: list[int] = []
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            peak.append(sum(t.name.startswith("sluicegate-gcs_") for t in threading.enumerate()))
            done.wait(0.005)

    watcher = threading.Thread(target=watch, name="watcher")
    watcher.start()
    batches = {i: [make_event(team_id=f"team-{i}") for _ in range(2)] for i in range(300)}
    try:
        await asyncio.gather(*(sink.send(batches[i]) for i, sink in enumerate(sinks)))
    finally:
        done.set()
        watcher.join()
    assert 0 < max(peak) <= GcsBucketSink.max_threads
    # 300 concurrent first sends with one key file: one credentials object, one token request.
    assert [g for g in gcs_env.token_grants if g[0] == account.email] == [(account.email, account.key_id)]
    # The library's own per-bucket background threads are switched off.
    assert not [t for t in threading.enumerate() if "_fetch_background" in t.name]
    objects = fake_gcs.objects(bucket)
    assert len(objects) == 300
    for name, data in objects.items():
        team = name.split("/", 1)[0]
        ids = {msgspec.json.decode(line)["id"] for line in data.splitlines()}
        assert ids == {e.id for e in batches[int(team.removeprefix("team-"))]}

    await GcsBucketSink.shutdown()
    # Shutdown joins the pool; a key-file reader that has handed over its result ends on its own.
    assert not [t for t in threading.enumerate() if t.name.startswith("sluicegate-gcs_")]
    await wait_until_async(lambda: not [t for t in threading.enumerate() if t.name.startswith("sluicegate-gcs")],
                           timeout=5.0, what="the key-file readers to end")
    # Shared resources come back after shutdown.
    await sinks[0].send([make_event()])
    assert len(fake_gcs.objects(bucket)) == 301


async def test_token_endpoint_outage_is_raised_then_the_retry_delivers(gcs_env, fake_gcs, new_bucket):
    from google.auth.exceptions import RefreshError

    bucket = new_bucket()
    account = gcs_env.account("outage", bucket)
    sink = make_sink(bucket, account.key_file)
    batch = [make_event()]
    gcs_env.fail_next("token", 503, times=3)  # google-auth tries the token endpoint three times
    try:
        with pytest.raises(RefreshError):
            await sink.send(batch)
    finally:
        gcs_env.failures.clear()
    assert fake_gcs.objects(bucket) == {}
    await sink.send(batch)  # the core's retry
    assert [e["id"] for e in stored_events(fake_gcs, bucket)] == [batch[0].id]


async def test_without_a_key_file_the_library_default_credentials_apply(gcs_env, fake_gcs, new_bucket):
    """Under STORAGE_EMULATOR_HOST the library's default is anonymous: the IAM gate refuses it (401)."""
    from google.auth.exceptions import InvalidOperation

    bucket = new_bucket()
    sink = make_sink(bucket)
    with pytest.raises(InvalidOperation, match="Anonymous"):  # the 401 makes the library try a refresh
        await sink.send([make_event()])
    assert ("", "POST", bucket) in gcs_env.anonymous_requests
    health = await sink.health_check()
    assert (health.healthy, health.error_kind) == (False, "auth")
    assert fake_gcs.objects(bucket) == {}
