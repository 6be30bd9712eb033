"""The spool's write-ahead log on a real directory: O(1) files for many instances, a segment deleted only when
every instance in it acknowledged, replay after a crash (torn tail cut, acknowledged events not replayed), the
size limit, and spilled events read back in order. The gateway-level behaviour (SIGKILL, outages) is in
test_delivery.py and test_faults.py."""

from __future__ import annotations

import os
from pathlib import Path

import msgspec

from sluicegate.events import LogEvent
from sluicegate.sinks.spool import InstanceLog, Spool


def make_spool(base: Path, *, segment_bytes: int = 4 * 1024 * 1024, max_bytes: int = 1 << 30) -> Spool:
    spool = Spool(base, max_bytes=max_bytes, segment_bytes=segment_bytes, fsync=False)
    spool.acquire()
    return spool


def event(text: str) -> bytes:
    """An event as the dispatcher hands it to the spool: its JSON."""
    return msgspec.json.encode(LogEvent(id=text, trace_id=text, messages=[{"role": "user", "content": text}]))


def instance(spool: Spool, name: str) -> InstanceLog:
    header = msgspec.json.encode({"callback_name": "acme", "callback_vars": {"url": f"http://x/{name}"}})
    return spool.log_for(name, header)


def crash(spool: Spool) -> None:
    """What SIGKILL leaves: the files as written, nothing pending flushed, the lock gone."""
    spool._close_current()
    spool.release()


def files(spool: Spool) -> list[Path]:
    return sorted(p for p in spool.root.rglob("*") if p.is_file() and p.name != ".lock")


def contents(found: list[tuple[int, bytes]]) -> list[str]:
    return [msgspec.json.decode(e, type=LogEvent).id for _, e in found]


def test_many_instances_share_one_file_and_no_directory_each(tmp_path):
    spool = make_spool(tmp_path)
    logs = [instance(spool, f"i{n:04d}") for n in range(500)]
    for round_ in range(3):
        for n, instance_log in enumerate(logs):
            instance_log.add(event(f"{n}-{round_}"))
        assert spool.flush() == 500
    assert len(files(spool)) == 1  # one segment for 1,500 events of 500 instances
    assert [p for p in spool.root.iterdir() if p.is_dir()] == [spool.wal_dir]
    assert sum(log.bytes for log in logs) < spool.total_bytes  # headers and acks are shared overhead
    # negative control: the file count follows bytes, not instances: small segments rotate
    small = make_spool(tmp_path / "small", segment_bytes=4096)
    for n in range(500):
        instance(small, f"i{n:04d}").add(event(f"{n}-{'x' * 200}"))
    small.flush()
    assert len(files(small)) > 10


def test_a_segment_is_deleted_only_when_every_instance_in_it_acknowledged(tmp_path):
    spool = make_spool(tmp_path, segment_bytes=4096)
    a, b = instance(spool, "a"), instance(spool, "b")
    a.add(event("a1"))
    b.add(event("b1"))
    spool.flush()
    first = spool.segment_path(spool.current.number)
    a.add(event("a2-" + "x" * 5000))  # fills the segment: the next write starts a new one
    spool.flush()
    assert len(spool.segments) == 2 and os.path.exists(first)
    a.ack(2)
    spool.flush()
    assert os.path.exists(first)  # b has not acknowledged b1 yet
    b.ack(1)
    spool.flush()
    assert not os.path.exists(first)
    assert spool.segments == {} and files(spool) == [] and spool.total_bytes == 0  # the last one too, when all done


def test_events_delivered_before_the_flush_are_not_written(tmp_path):
    spool = make_spool(tmp_path)
    a, b = instance(spool, "a"), instance(spool, "b")
    a.add(event("a1"))
    a.mem_seq = 1
    a.ack(1)  # delivered from memory within the flush interval
    b.add(event("b1"))  # negative control: still undelivered
    assert spool.flush() == 1
    assert a.bytes == 0 and b.bytes > 0


def test_replay_after_a_crash_rebuilds_each_instance_in_order_and_skips_acknowledged(tmp_path):
    spool = make_spool(tmp_path, segment_bytes=4096)
    a, b, c = instance(spool, "a"), instance(spool, "b"), instance(spool, "c")
    for i in range(40):
        a.add(event(f"a{i}-" + "x" * 100))
        b.add(event(f"b{i}-" + "y" * 100))
        if i % 10 == 0:
            spool.flush()
    c.add(event("c0"))
    spool.flush()
    assert len(spool.segments) > 2  # spans several segments
    a.mem_seq = 25
    a.ack(25)
    c.mem_seq = 1
    c.ack(1)
    spool.flush()
    b.add(event("lost"))  # accepted after the last flush: the crash loses it
    crash(spool)

    again = make_spool(tmp_path, segment_bytes=4096)
    assert again.root == spool.root  # the dead process's slot is claimed again
    loaded = {log.instance_id: log for log in again.load_existing()}
    assert sorted(loaded) == ["a", "b"]  # c was fully acknowledged: nothing to replay
    assert loaded["a"].spilled == 15 and loaded["b"].spilled == 40
    assert [e.split("-")[0] for e in contents(loaded["a"].read(100))] == [f"a{i}" for i in range(25, 40)]
    assert [e.split("-")[0] for e in contents(loaded["b"].read(100))] == [f"b{i}" for i in range(40)]
    assert loaded["a"].header_info == {"callback_name": "acme", "callback_vars": {"url": "http://x/a"}}
    # new events continue the sequence after the replayed ones
    assert loaded["b"].add(event("b40")) == 41


def test_acks_survive_when_the_segment_holding_them_is_deleted_before_an_older_one(tmp_path):
    spool = make_spool(tmp_path, segment_bytes=4096)
    stuck, done, other = instance(spool, "stuck"), instance(spool, "done"), instance(spool, "other")
    stuck.add(event("s1"))
    done.add(event("d1"))
    spool.flush()  # segment 1: s1, d1
    done.add(event("d2-" + "x" * 5000))
    spool.flush()  # segment 2: d2
    done.mem_seq = 2
    done.ack(2)  # the only ack of d1 is written to segment 2 ...
    spool.flush()
    other.add(event("o1-" + "x" * 5000))
    spool.flush()  # ... segment 3 starts with an ack snapshot; segment 2 (all acknowledged) is deleted
    other.mem_seq = 1
    other.ack(1)
    spool.flush()
    assert sorted(spool.segments) == [1, 3]  # segment 1 kept for "stuck", segment 3 the newest
    crash(spool)
    again = make_spool(tmp_path, segment_bytes=4096)
    loaded = {log.instance_id: log for log in again.load_existing()}
    assert sorted(loaded) == ["stuck"]  # d1 (in segment 1) is not replayed: its ack survived
    assert contents(loaded["stuck"].read(10)) == ["s1"]


def test_a_torn_last_record_is_cut_off(tmp_path):
    spool = make_spool(tmp_path)
    a = instance(spool, "a")
    for i in range(5):
        a.add(event(f"t{i}"))
    spool.flush()
    path = spool.segment_path(spool.current.number)
    intact = os.path.getsize(path)
    a.add(event("torn-" + "z" * 500))
    spool.flush()
    crash(spool)
    with open(path, "r+b") as handle:  # the kill came in the middle of the last write
        handle.truncate(intact + 40)
    again = make_spool(tmp_path)
    (loaded,) = again.load_existing()
    assert contents(loaded.read(10)) == [f"t{i}" for i in range(5)]
    assert os.path.getsize(path) == intact
    loaded.add(event("after"))  # the log goes on cleanly after the cut
    again.flush()
    crash(again)
    third = make_spool(tmp_path)
    (reloaded,) = third.load_existing()
    assert contents(reloaded.read(10)) == [f"t{i}" for i in range(5)] + ["after"]


def test_spilled_events_are_read_back_in_order_from_disk_then_from_pending(tmp_path):
    spool = make_spool(tmp_path, segment_bytes=4096)
    a, other = instance(spool, "a"), instance(spool, "other")
    for i in range(30):
        a.add(event(f"s{i}-" + "x" * 200))
        other.add(event(f"o{i}"))
        if i % 7 == 0:
            spool.flush()
    assert a.pending  # some still unwritten
    first = a.read(12)
    second = a.read(100)
    assert [e.split("-")[0] for e in contents(first + second)] == [f"s{i}" for i in range(30)]
    assert a.spilled == 0 and a.read(5) == []  # negative control: nothing read twice
    spool.flush()
    assert a.indexed == 0  # nothing indexed for events already in memory


def test_over_the_size_limit_the_oldest_segment_goes_and_each_instance_counts_its_loss(tmp_path):
    # a segment holds a few pairs of events (each ~2 KB of JSON), so the oldest one holds some of both instances
    spool = make_spool(tmp_path, segment_bytes=4 * len(event("a0-" + "x" * 300)))
    a, b = instance(spool, "a"), instance(spool, "b")
    for i in range(20):
        a.add(event(f"a{i}-" + "x" * 300))
        b.add(event(f"b{i}-" + "y" * 300))
        spool.flush()
    oldest = next(iter(spool.segments))
    lost = {log.instance_id: (last, acked, mem) for log, last, acked, mem in spool.drop_oldest()}
    assert oldest not in spool.segments and not os.path.exists(spool.segment_path(oldest))
    assert set(lost) == {"a", "b"} and all(acked == 0 for _, acked, _ in lost.values())
    last_a = lost["a"][0]
    assert a.acked == last_a and a.spilled == 20 - last_a
    assert [e.split("-")[0] for e in contents(a.read(100))] == [f"a{i}" for i in range(last_a, 20)]


def test_old_per_instance_segments_are_reported_not_silently_ignored(tmp_path, caplog):
    spool = make_spool(tmp_path)
    crash(spool)
    old = spool.root / "0123456789abcdef"
    old.mkdir()
    (old / "000000000001.seg").write_bytes(b"\x00" * 8)
    again = make_spool(tmp_path)
    assert again.load_existing() == []
    assert "old per-instance layout" in caplog.text and "0123456789abcdef" in caplog.text
    caplog.clear()
    third = make_spool(tmp_path / "fresh")  # negative control: a clean slot says nothing
    third.load_existing()
    assert "old per-instance layout" not in caplog.text
