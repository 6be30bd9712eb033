"""The sink against Azurite through Sluicegate's real dispatcher (``deliver``): blobs as written, create-only
redelivery, a wrong key and a missing container (permanent, scrubbed), a SAS token, an outage, redaction, and
10,000 instances with threads flat and memory bounded. Each positive case has its negative control beside it."""

from __future__ import annotations

import asyncio
import gc
import threading
from datetime import UTC, datetime, timedelta

from azure.storage.blob import ContainerSasPermissions, generate_container_sas

from sluicegate.sinks.vars import decode_vars
from sluicegate.testing import deliver, make_event
from sluicegate_azure_storage_sink.sink import AzureStorageSink, blob_name

from .conftest import ACCOUNT, ACCOUNT_KEY, OTHER_ACCOUNT, OTHER_KEY, Azurite


def _vars(azurite: Azurite, container: str, **extra: str) -> dict[str, str]:
    return {"azure_storage_account_name": ACCOUNT, "azure_storage_account_key": ACCOUNT_KEY,
            "azure_storage_container": container, "azure_storage_endpoint": azurite.url(), **extra}


async def test_a_batch_becomes_one_ndjson_blob_under_the_prefix(azurite: Azurite) -> None:
    container = azurite.new_container("wire")
    events = [make_event(), make_event(status="failure")]
    report = await deliver(AzureStorageSink, _vars(azurite, container, azure_storage_path_prefix="/llm/prod/"), events)
    assert report.delivered, report
    blobs = azurite.blobs(container)
    assert list(blobs) == [blob_name("llm/prod", events)]
    assert [e["id"] for e in azurite.events(container)] == [e.id for e in events]
    properties = azurite.service().get_blob_client(container, next(iter(blobs))).get_blob_properties()
    assert properties.blob_type == "BlockBlob" and properties.content_settings.content_type == "application/x-ndjson"


async def test_redelivering_a_batch_writes_no_duplicate(azurite: Azurite) -> None:
    container = azurite.new_container("redeliver")
    sink = AzureStorageSink(decode_vars(AzureStorageSink.Vars, _vars(azurite, container)))
    batch = [make_event(), make_event()]
    await sink.send(batch)
    await sink.send(batch)  # the answer to the first upload was "lost": the core sends the batch again
    assert len(azurite.blobs(container)) == 1 and len(azurite.events(container)) == 2
    await sink.send([make_event()])  # control: a different batch is a new blob
    assert len(azurite.blobs(container)) == 2
    await sink.aclose()


async def test_a_wrong_key_is_permanent_and_scrubbed(azurite: Azurite) -> None:
    container = azurite.new_container("wrongkey")
    report = await deliver(AzureStorageSink, _vars(azurite, container, azure_storage_account_key=OTHER_KEY),
                           make_event())
    assert (report.sent, report.dropped, report.retried) == (0, 1, 0), report
    # Azure answers AuthenticationFailed to a wrong signature, Azurite AuthorizationFailure: both are 403s.
    assert "credentials refused (HTTP 403 Authorization" in (report.last_error or ""), report
    assert OTHER_KEY not in (report.last_error or "") and azurite.blobs(container) == {}
    sink = AzureStorageSink(decode_vars(AzureStorageSink.Vars, _vars(azurite, container,
                                                                     azure_storage_account_key=OTHER_KEY)))
    health = await sink.health_check()
    assert not health.healthy and health.error_kind == "auth" and OTHER_KEY not in health.details
    # control: the right key to the same container
    assert (await deliver(AzureStorageSink, _vars(azurite, container), make_event())).delivered


async def test_a_missing_container_is_permanent_and_named(azurite: Azurite) -> None:
    report = await deliver(AzureStorageSink, _vars(azurite, "never-created"), make_event())
    assert (report.sent, report.dropped, report.retried) == (0, 1, 0), report
    assert "devstoreaccount1/never-created: the container does not exist (HTTP 404 ContainerNotFound)" in (
        report.last_error or "")
    sink = AzureStorageSink(decode_vars(AzureStorageSink.Vars, _vars(azurite, "never-created")))
    health = await sink.health_check()
    assert not health.healthy and health.error_kind == "not_found"


async def test_a_sas_token_writes_and_a_forged_one_is_refused(azurite: Azurite) -> None:
    container = azurite.new_container("sas")
    expiry = datetime.now(UTC) + timedelta(hours=1)
    token = generate_container_sas(ACCOUNT, container, account_key=ACCOUNT_KEY, expiry=expiry,
                                   permission=ContainerSasPermissions(read=True, create=True, write=True))
    sas_vars = {"azure_storage_account_name": ACCOUNT, "azure_storage_sas_token": "?" + token,
                "azure_storage_container": container, "azure_storage_endpoint": azurite.url()}
    assert (await deliver(AzureStorageSink, sas_vars, make_event())).delivered
    assert len(azurite.events(container)) == 1
    forged = generate_container_sas(ACCOUNT, container, account_key=OTHER_KEY, expiry=expiry,
                                    permission=ContainerSasPermissions(create=True, write=True))
    report = await deliver(AzureStorageSink, {**sas_vars, "azure_storage_sas_token": forged}, make_event())
    assert report.dropped == 1 and "HTTP 403" in (report.last_error or "")
    signature = dict(p.split("=", 1) for p in forged.split("&"))["sig"]
    assert signature not in (report.last_error or "") and len(azurite.events(container)) == 1


async def test_an_outage_is_retried_until_the_service_is_back(azurite: Azurite) -> None:
    container = azurite.new_container("outage")
    azurite.stop()
    try:
        down = await deliver(AzureStorageSink, _vars(azurite, container), make_event(), max_retries=1)
        assert down.dropped == 1 and down.retried == 1 and "unreachable" in (down.last_error or ""), down
    finally:
        azurite.start()
    report = await deliver(AzureStorageSink, _vars(azurite, container), make_event())
    assert report.delivered and len(azurite.events(container)) == 1


async def test_redacted_routes_send_no_message_content(azurite: Azurite) -> None:
    redacted_container, plain_container = azurite.new_container("redacted"), azurite.new_container("plain")
    event = make_event()
    assert (await deliver(AzureStorageSink, _vars(azurite, redacted_container), event, redact=True)).delivered
    assert (await deliver(AzureStorageSink, _vars(azurite, plain_container), event, redact=False)).delivered
    assert "capital of France" not in str(azurite.events(redacted_container))
    assert "capital of France" in str(azurite.events(plain_container))


def _proc_status(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise LookupError(field)


async def test_ten_thousand_instances_keep_threads_flat_and_memory_bounded(azurite: Azurite) -> None:
    """10,000 teams, each its own instance (own prefix; half on a second account): threads as the kernel counts
    them do not grow, memory grows by the instances' own few hundred bytes, and a sample of them delivers."""
    container_a = azurite.new_container("scale")
    container_b = azurite.new_container("scale", OTHER_ACCOUNT, OTHER_KEY)
    warm = AzureStorageSink(decode_vars(AzureStorageSink.Vars, _vars(azurite, container_a)))
    await warm.send([make_event()])
    gc.collect()
    threads_before, rss_before = _proc_status("Threads"), _proc_status("VmRSS")

    def make(n: int) -> AzureStorageSink:
        account, key = (ACCOUNT, ACCOUNT_KEY) if n % 2 else (OTHER_ACCOUNT, OTHER_KEY)
        return AzureStorageSink(decode_vars(AzureStorageSink.Vars, {
            "azure_storage_account_name": account, "azure_storage_account_key": key,
            "azure_storage_container": container_a if n % 2 else container_b,
            "azure_storage_endpoint": azurite.url(account), "azure_storage_path_prefix": f"team-{n}"}))

    sinks = [make(n) for n in range(10_000)]
    sample = sinks[::250]  # 40 of them send, concurrently, through the shared sessions
    await asyncio.gather(*(s.send([make_event(team_id=f"team-{n}")]) for n, s in enumerate(sample)))
    gc.collect()
    threads_after, rss_after = _proc_status("Threads"), _proc_status("VmRSS")
    grown_mb = (rss_after - rss_before) / 1024
    print(f"\nazure_storage, 10,000 instances: threads {threads_before} -> {threads_after}, "
          f"RSS +{grown_mb:.1f} MB, python threads {threading.active_count()}")
    assert threads_after <= threads_before + 1  # aiohttp may resolve "127.0.0.1"-free names on the default pool
    assert grown_mb < 48
    assert len(azurite.blobs(container_a)) + len(azurite.blobs(container_b, OTHER_ACCOUNT, OTHER_KEY)) == 41
    for sink in [warm, *sinks]:
        await sink.aclose()
