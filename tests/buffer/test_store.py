"""The SQLite buffer on real files: round trip, durability settings, ids, cursors, size bound, gaps, migrations."""

from __future__ import annotations

import os
import sqlite3
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from edge.buffer import COUNTERS, Batch, Buffer, NewUplink
from edge.buffer.migrations import MIGRATIONS
from edge.errors import StorageCorrupt, StorageError
from edge.model import DecodeStatus, DeviceEvent, DeviceInfo, Malformed, RadioInfo, Reading, Uplink

T0 = 1795600800.0
DEV = "a81758fffe0346f1"
READINGS = [Reading("temperature", 22.4, "Cel"), Reading("door-open", True), Reading("tilt", "normal")]


def uplink(n: int, *, dev_eui: str = DEV, payload_size: int = 16, fcnt: int | None = None,
           readings: list[Reading] | None = None, status: int = DecodeStatus.DECODED) -> NewUplink:
    """The n-th test uplink; times increase with n."""
    up = Uplink(
        uplink_id=f"00000000-0000-4000-8000-{n:012d}",
        device=DeviceInfo(dev_eui, application_id="app-1", application_name="climate", device_name=f"dev-{dev_eui}",
                          device_profile_name="Elsys ERS"),
        time=T0 + n,
        fport=5,
        payload=b"\x01" * payload_size,
        radio=RadioInfo(fcnt=n if fcnt is None else fcnt, fport=5, frequency=868100000, spreading_factor=7, dr=5,
                        rssi=-87.0 - n % 5, snr=9.5, gateway_id="acde48fffe000001", gateways=2),
    )
    return NewUplink(up, f"application/app-1/device/{dev_eui}/event/up", b"raw" * payload_size, T0 + n + 0.5,
                     status, "elsys/ers" if status == DecodeStatus.DECODED else "", "",
                     READINGS if readings is None else readings)


def batch_of(*uplinks: NewUplink) -> Batch:
    b = Batch()
    b.uplinks.extend(uplinks)
    b.count("received", len(uplinks))
    return b


def all_ids(buf: Buffer) -> list[int]:
    return [e.id for e in buf.read(0, 1_000_000)]


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "buffer.sqlite"


@pytest.fixture
def buf(path: Path) -> Iterator[Buffer]:
    b = Buffer(path)
    yield b
    b.close()


# -- round trip -------------------------------------------------------------------------------------

def test_store_append_read_advance_round_trip(buf: Buffer) -> None:
    ids = buf.append(batch_of(uplink(1), uplink(2, readings=[]), uplink(3, dev_eui="0016c001f153a14c")))
    assert ids == [1, 2, 3]
    entries = buf.read(0, 10)
    assert [e.id for e in entries] == ids
    first = entries[0]
    assert first.uplink_id == "00000000-0000-4000-8000-000000000001"
    assert (first.dev_eui, first.application_id, first.gateway_id, first.time) == (DEV, "app-1",
                                                                                   "acde48fffe000001", T0 + 1)
    assert first.readings == READINGS  # float, bool and string values and None units survive
    assert first.radio == uplink(1).uplink.radio
    assert entries[1].readings == []
    assert entries[2].dev_eui == "0016c001f153a14c"

    assert buf.register_sink("city") == 0
    buf.advance("city", 2, 2)
    assert buf.register_sink("city") == 2  # registering again keeps the cursor
    assert [e.id for e in buf.read(2, 10)] == [3]
    (city,) = buf.sinks()
    assert (city["name"], city["cursor"], city["backlog"], city["delivered"], city["dropped"]) == ("city", 2, 1, 2, 0)
    assert city["last_delivery"] is not None
    assert buf.read(3, 10) == []


def test_store_read_limit_and_order(buf: Buffer) -> None:
    buf.append(batch_of(*(uplink(n) for n in range(1, 11))))
    assert [e.id for e in buf.read(0, 3)] == [1, 2, 3]
    assert [e.id for e in buf.read(8, 100)] == [9, 10]
    assert buf.last_id() == 10
    assert buf.recent_uplink_ids(3) == [f"00000000-0000-4000-8000-{n:012d}" for n in (10, 9, 8)]
    assert buf.uplink_ids_of([2, 4]) == [f"00000000-0000-4000-8000-{n:012d}" for n in (2, 4)]


def test_store_raw_message_and_decode_outcome_kept(buf: Buffer, path: Path) -> None:
    failed = uplink(1, readings=[], status=DecodeStatus.FAILED)
    failed = NewUplink(failed.uplink, failed.topic, b"\x00\xffraw", failed.received, DecodeStatus.FAILED,
                       "elsys/ers", "unknown Elsys type 0xff at byte 1", [])
    buf.append(batch_of(failed))
    with sqlite3.connect(path) as db:
        status, decoder, error = db.execute("SELECT status, decoder, error FROM uplinks WHERE id = 1").fetchone()
        topic, payload, received = db.execute("SELECT topic, payload, received FROM raw WHERE id = 1").fetchone()
    db.close()
    assert (status, decoder, error) == (DecodeStatus.FAILED, "elsys/ers", "unknown Elsys type 0xff at byte 1")
    assert (topic, payload, received) == (failed.topic, b"\x00\xffraw", failed.received)


def test_store_events_malformed_and_counters(buf: Buffer) -> None:
    b = batch_of(uplink(1))
    b.events.append((DeviceEvent("join", DEV, "app-1", T0, "devAddr=00189440"), "t/join", b"{}"))
    b.events.append((DeviceEvent("status", DEV, "app-1", T0 + 1, "margin=10 battery=88.3"), "t/status", b"{}"))
    b.malformed.append((Malformed("t/up", b"\xff", "neither JSON nor protobuf"), T0 + 2))
    b.count("events", 2)
    b.count("malformed")
    b.count("decoded")
    assert len(b) == 4
    buf.append(b)
    counters = buf.counters()
    assert set(counters) == set(COUNTERS)
    assert {k: v for k, v in counters.items() if v} == {"received": 1, "events": 2, "malformed": 1, "decoded": 1}
    assert [(e["kind"], e["summary"]) for e in buf.recent_events()] == [("status", "margin=10 battery=88.3"),
                                                                         ("join", "devAddr=00189440")]
    (bad,) = buf.recent_malformed()
    assert bad == {"id": 1, "received": T0 + 2, "topic": "t/up", "error": "neither JSON nor protobuf"}


def test_store_devices_last_uplink_per_device(buf: Buffer) -> None:
    buf.append(batch_of(uplink(1), uplink(2, dev_eui="0016c001f153a14c")))
    buf.append(batch_of(uplink(3, readings=[Reading("humidity", 41, "%RH")])))
    devices = buf.devices()
    assert [d["dev_eui"] for d in devices] == [DEV, "0016c001f153a14c"]  # most recent first
    mine = devices[0]
    assert (mine["last_time"], mine["fcnt"], mine["decoder"], mine["status"]) == (T0 + 3, 3, "elsys/ers",
                                                                                  DecodeStatus.DECODED)
    assert mine["readings"] == [{"n": "humidity", "u": "%RH", "v": 41}]
    assert mine["name"] == f"dev-{DEV}" and mine["application_name"] == "climate"
    assert buf.devices(limit=1) == devices[:1]


def test_store_failed_batch_commits_nothing(buf: Buffer) -> None:
    buf.append(batch_of(uplink(1)))
    before = buf.counters()
    bad = batch_of(uplink(2), uplink(3, fcnt=2**64))  # the second row cannot be stored
    bad.malformed.append((Malformed("t", b"x", "e"), T0))
    with pytest.raises((OverflowError, TypeError)):
        buf.append(bad)
    assert all_ids(buf) == [1]
    assert buf.counters() == before
    assert buf.recent_malformed() == []
    assert not buf.db.in_transaction
    # The rolled-back id was never committed, so no sink can have seen it: giving it again is safe.
    assert buf.append(batch_of(uplink(4))) == [2]


# -- durability settings ----------------------------------------------------------------------------

def test_store_writer_wal_and_synchronous_full(buf: Buffer) -> None:
    assert buf.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert buf.db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def test_store_sink_connection_synchronous_normal(path: Path) -> None:
    Buffer(path).close()
    sink = Buffer(path, synchronous="NORMAL")
    try:
        assert sink.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert sink.db.execute("PRAGMA synchronous").fetchone()[0] == 1
    finally:
        sink.close()


def test_store_ids_never_reused_after_table_emptied(path: Path) -> None:
    buf = Buffer(path)
    assert buf.append(batch_of(uplink(1), uplink(2), uplink(3))) == [1, 2, 3]
    buf.db.execute("DELETE FROM uplinks")
    assert buf.append(batch_of(uplink(4))) == [4]
    buf.db.execute("DELETE FROM uplinks")
    buf.close()
    reopened = Buffer(path)
    try:
        assert reopened.last_id() == 4
        assert reopened.append(batch_of(uplink(5))) == [5]
    finally:
        reopened.close()


def test_store_ids_never_reused_after_size_bound_empties_table(path: Path) -> None:
    buf = Buffer(path, max_bytes=1)  # everything must go
    try:
        buf.append(batch_of(*(uplink(n, payload_size=500) for n in range(1, 21))))
        buf.enforce_size()
        assert all_ids(buf) == []
        assert buf.append(batch_of(uplink(21))) == [21]
    finally:
        buf.close()


def test_store_sink_cursors_independent(buf: Buffer) -> None:
    buf.append(batch_of(*(uplink(n) for n in range(1, 6))))
    for name in ("a", "b", "c"):
        assert buf.register_sink(name) == 0
    buf.advance("a", 4, 4)
    buf.advance("b", 1, 1)
    buf.advance("b", 3, 2)
    buf.advance("a", 2, 0)  # a lower id never moves a cursor back
    progress = {s["name"]: (s["cursor"], s["backlog"], s["delivered"]) for s in buf.sinks()}
    assert progress == {"a": (4, 1, 4), "b": (3, 2, 3), "c": (0, 5, 0)}
    buf.advance("unknown", 5, 5)  # a sink that never registered is not created by advance
    assert {s["name"] for s in buf.sinks()} == {"a", "b", "c"}


# -- size bound and gaps -----------------------------------------------------------------------------

def _fill_more(buf: Buffer, first: int, n: int) -> list[int]:
    ids: list[int] = []
    for start in range(first, first + n, 50):
        ids += buf.append(batch_of(*(uplink(i, payload_size=300) for i in range(start, min(start + 50, first + n)))))
    return ids


def _fill(buf: Buffer, n: int) -> list[int]:
    return _fill_more(buf, 1, n)


def test_store_enforce_size_drops_oldest_and_records_gaps(path: Path) -> None:
    buf = Buffer(path)
    try:
        ids = _fill(buf, 600)
        for name in ("behind", "half", "done"):
            buf.register_sink(name)
        buf.advance("half", 300, 300)
        buf.advance("done", ids[-1], len(ids))
        times = {e.id: e.time for e in buf.read(0, 10_000)}
        buf.max_bytes = buf.used_bytes() // 3
        dropped_rows = buf.enforce_size()
        assert buf.used_bytes() <= buf.max_bytes
        left = all_ids(buf)
        dropped = sorted(set(ids) - set(left))
        assert dropped and dropped == list(range(1, len(dropped) + 1))  # oldest first
        assert left == list(range(len(dropped) + 1, 601))
        assert dropped_rows == len(dropped)

        def covered(sink: str) -> list[int]:
            out: list[int] = []
            for gap in buf.gaps(sink):
                assert gap.sink == sink
                assert gap.count == gap.last_id - gap.first_id + 1
                assert (gap.first_time, gap.last_time) == (times[gap.first_id], times[gap.last_id])
                out += range(gap.first_id, gap.last_id + 1)
            return out

        assert covered("behind") == dropped  # every undelivered dropped row is in a gap, in order
        assert covered("half") == [i for i in dropped if i > 300]
        assert buf.gaps("done") == []  # it had delivered them: no gap
        sinks = {s["name"]: s for s in buf.sinks()}
        assert sinks["behind"]["dropped"] == len(dropped)
        assert sinks["half"]["dropped"] == len([i for i in dropped if i > 300])
        assert sinks["done"]["dropped"] == 0
        assert all(s["cursor"] >= dropped[-1] for s in sinks.values())  # nobody reads a dropped id
        assert buf.counters()["dropped"] == len(dropped)
    finally:
        buf.close()


def test_store_gap_delivered_removes_it(path: Path) -> None:
    buf = Buffer(path)
    try:
        _fill(buf, 200)
        buf.register_sink("a")
        buf.register_sink("b")
        buf.max_bytes = buf.used_bytes() // 2
        buf.enforce_size()
        a_gaps, b_gaps = buf.gaps("a"), buf.gaps("b")
        assert a_gaps and b_gaps
        buf.gap_delivered(a_gaps[0].id)
        assert buf.gaps("a") == a_gaps[1:]
        assert buf.gaps("b") == b_gaps  # the other sink's notice stays
        for gap in a_gaps[1:]:
            buf.gap_delivered(gap.id)
        assert buf.gaps("a") == []
    finally:
        buf.close()


def test_store_enforce_size_under_bound_does_nothing(buf: Buffer) -> None:
    _fill(buf, 50)
    buf.register_sink("a")
    assert buf.enforce_size() == 0
    assert len(all_ids(buf)) == 50 and buf.gaps("a") == []
    assert buf.counters()["dropped"] == 0


def test_store_enforce_size_trims_events_when_no_uplinks_left(path: Path) -> None:
    buf = Buffer(path, max_bytes=1)
    try:
        b = Batch()
        b.events.extend((DeviceEvent("status", DEV, "app", T0 + i, "x" * 200), "t", b"p" * 500) for i in range(200))
        b.malformed.extend((Malformed("t", b"m" * 500, "bad"), T0 + i) for i in range(200))
        buf.append(b)
        buf.enforce_size()  # must terminate although the bound cannot be met
        assert len(buf.recent_events(1000)) < 200
        assert len(buf.recent_malformed(1000)) < 200
    finally:
        buf.close()


def test_store_one_overflow_records_one_gap_per_sink(path: Path) -> None:
    """Trimming runs in 5 % rounds; adjacent drops for a sink that has not moved extend one gap."""
    buf = Buffer(path)
    try:
        _fill(buf, 600)
        buf.register_sink("behind")
        buf.max_bytes = buf.used_bytes() // 3
        buf.enforce_size()
        (gap,) = buf.gaps("behind")
        assert gap.first_id == 1 and gap.count == gap.last_id
        # More overflow while the sink is still away extends the same gap ...
        _fill_more(buf, 601, 200)
        buf.enforce_size()
        (longer,) = buf.gaps("behind")
        assert (longer.id, longer.first_id) == (gap.id, 1) and longer.last_id > gap.last_id
        assert longer.count == longer.last_id
        # ... but once its notice was delivered, the next drop is a new gap.
        buf.gap_delivered(longer.id)
        _fill_more(buf, 801, 200)
        buf.enforce_size()
        (fresh,) = buf.gaps("behind")
        assert fresh.first_id == longer.last_id + 1
    finally:
        buf.close()


def test_store_gap_not_merged_across_delivered_rows(path: Path) -> None:
    buf = Buffer(path)
    try:
        _fill(buf, 600)
        buf.register_sink("slow")
        buf.max_bytes = buf.used_bytes() // 2
        buf.enforce_size()
        (first,) = buf.gaps("slow")
        cursor = buf.register_sink("slow")
        delivered = buf.read(cursor, 10)
        buf.advance("slow", delivered[-1].id, len(delivered))  # the sink delivered 10 rows in between
        buf.max_bytes = buf.used_bytes() // 2
        buf.enforce_size()
        gaps = buf.gaps("slow")
        assert len(gaps) == 2 and gaps[0].id == first.id
        assert gaps[1].first_id == delivered[-1].id + 1
    finally:
        buf.close()


# -- files, migrations, corruption ---------------------------------------------------------------------

def test_store_fresh_file_reaches_latest_schema(buf: Buffer) -> None:
    assert buf.db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS) >= 1
    tables = {r[0] for r in buf.db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"uplinks", "raw", "events", "malformed", "devices", "sinks", "gaps", "counters"} <= tables


def test_store_reopen_is_a_no_op(path: Path) -> None:
    buf = Buffer(path)
    buf.append(batch_of(uplink(1)))
    buf.register_sink("city")
    buf.advance("city", 1, 1)
    schema = buf.db.execute("SELECT type, name, sql FROM sqlite_master ORDER BY name").fetchall()
    counters = buf.counters()
    buf.close()
    again = Buffer(path)
    try:
        assert again.db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
        assert again.db.execute("SELECT type, name, sql FROM sqlite_master ORDER BY name").fetchall() == schema
        assert again.counters() == counters  # counters are not reset
        assert all_ids(again) == [1]
        assert again.register_sink("city") == 1
    finally:
        again.close()


def test_store_newer_schema_is_refused(path: Path) -> None:
    path.parent.mkdir(parents=True)
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    db.close()
    with pytest.raises(StorageError, match="newer") as info:
        Buffer(path)
    assert not isinstance(info.value, StorageCorrupt)
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS) + 1  # left untouched
    assert db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0] == 0
    db.close()


def test_store_not_a_database_is_corrupt(path: Path) -> None:
    path.parent.mkdir(parents=True)
    path.write_bytes(b"this is a text file, not an SQLite database\n" * 100)
    with pytest.raises(StorageCorrupt):
        Buffer(path)


def test_store_existing_empty_file_is_initialised(path: Path) -> None:
    path.parent.mkdir(parents=True)
    path.touch()
    buf = Buffer(path)
    try:
        assert buf.append(batch_of(uplink(1))) == [1]
    finally:
        buf.close()


def test_store_files_created_owner_only(path: Path) -> None:
    old = os.umask(0)  # even with a permissive umask
    try:
        buf = Buffer(path)
        buf.append(batch_of(uplink(1)))
        modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in path.parent.iterdir()}
        buf.close()
    finally:
        os.umask(old)
    assert modes[path.name] == 0o600
    assert all(mode == 0o600 for name, mode in modes.items() if name.startswith(path.name)), modes


def test_store_readonly_missing_file_is_storage_error(path: Path) -> None:
    with pytest.raises(StorageError):
        Buffer(path, readonly=True)
    assert not path.exists()


def test_store_readonly_status_while_writer_open(path: Path) -> None:
    writer = Buffer(path)
    try:
        b = batch_of(uplink(1), uplink(2, dev_eui="0016c001f153a14c"))
        b.events.append((DeviceEvent("join", DEV, "app-1", T0, "devAddr=00189440"), "t", b"{}"))
        b.malformed.append((Malformed("t/up", b"\xff", "bad"), T0))
        b.count("events")
        b.count("malformed")
        writer.append(b)
        writer.register_sink("city")
        reader = Buffer(path, readonly=True)
        try:
            assert reader.counters()["received"] == 2
            assert [s["backlog"] for s in reader.sinks()] == [2]
            assert len(reader.devices()) == 2
            assert reader.recent_events()[0]["kind"] == "join"
            assert reader.recent_malformed()[0]["error"] == "bad"
            assert reader.used_bytes() > 0
            writer.append(batch_of(uplink(3)))  # the writer goes on; the reader sees it
            assert reader.sinks()[0]["backlog"] == 3
            with pytest.raises(sqlite3.OperationalError, match="readonly"):
                reader.register_sink("other")
        finally:
            reader.close()
    finally:
        writer.close()


# -- model test -----------------------------------------------------------------------------------------

class BufferModel(RuleBasedStateMachine):
    """Against a plain model: ids only grow, reads follow cursors, and no id vanishes for a sink unnoticed.

    For every sink, each appended id is delivered (read and advanced past), covered by a gap
    notice, or still readable after its cursor -- whatever enforce_size dropped in between.
    """

    SINKS = ("a", "b")

    def __init__(self) -> None:
        super().__init__()
        self.dir: Path | None = None
        self.buf: Buffer | None = None
        self.n = 0
        self.ids: list[int] = []
        self.delivered: dict[str, set[int]] = {s: set() for s in self.SINKS}
        self.noticed: dict[str, set[int]] = {s: set() for s in self.SINKS}

    @initialize(tmp=st.just(None))
    def open(self, tmp: None) -> None:
        import tempfile

        self.dir = Path(tempfile.mkdtemp(prefix="edge-model-"))
        self.buf = Buffer(self.dir / "b.sqlite", max_bytes=1 << 30, synchronous="OFF")
        for s in self.SINKS:
            self.buf.register_sink(s)

    @property
    def b(self) -> Buffer:
        assert self.buf is not None
        return self.buf

    @rule(count=st.integers(1, 8), size=st.sampled_from([10, 600, 2000]))
    def append(self, count: int, size: int) -> None:
        new = self.b.append(batch_of(*(uplink(self.n + i + 1, payload_size=size) for i in range(count))))
        self.n += count
        assert len(new) == count and new == sorted(new)
        assert not self.ids or new[0] > self.ids[-1]
        self.ids += new

    @rule(sink=st.sampled_from(SINKS), limit=st.integers(1, 10))
    def deliver(self, sink: str, limit: int) -> None:
        cursor = self.b.register_sink(sink)
        entries = self.b.read(cursor, limit)
        assert [e.id for e in entries] == sorted(e.id for e in entries)
        assert all(e.id > cursor for e in entries)
        if entries:
            self.b.advance(sink, entries[-1].id, len(entries))
            self.delivered[sink] |= {e.id for e in entries}

    @rule(sink=st.sampled_from(SINKS))
    def send_notices(self, sink: str) -> None:
        for gap in self.b.gaps(sink):
            self.noticed[sink] |= set(range(gap.first_id, gap.last_id + 1))
            self.b.gap_delivered(gap.id)

    @precondition(lambda self: self.ids)
    @rule(fraction=st.sampled_from([0.3, 0.6, 0.9]))
    def overflow(self, fraction: float) -> None:
        self.b.max_bytes = int(self.b.used_bytes() * fraction)
        self.b.enforce_size()
        self.b.max_bytes = 1 << 30

    @invariant()
    def nothing_lost_unnoticed(self) -> None:
        if self.buf is None:
            return
        pending = {g.first_id: g for s in self.SINKS for g in self.b.gaps(s)}
        for sink in self.SINKS:
            cursor = self.b.register_sink(sink)
            readable = {e.id for e in self.b.read(cursor, 1_000_000)}
            gaps = set(self.noticed[sink])
            for g in self.b.gaps(sink):
                gaps |= set(range(g.first_id, g.last_id + 1))
            assert set(self.ids) <= self.delivered[sink] | gaps | readable, (sink, pending)
            assert not (self.delivered[sink] & gaps), sink  # a delivered id is never reported as a gap

    @invariant()
    def stored_ids_are_a_suffix(self) -> None:
        if self.buf is None:
            return
        stored = all_ids(self.b)
        assert stored == self.ids[len(self.ids) - len(stored):]

    def teardown(self) -> None:
        if self.buf is not None:
            self.buf.close()
        if self.dir is not None:
            for p in self.dir.iterdir():
                p.unlink()
            self.dir.rmdir()


BufferModel.TestCase.settings = settings(max_examples=25, stateful_step_count=25, deadline=None,
                                         suppress_health_check=[HealthCheck.too_slow])
test_store_model = BufferModel.TestCase


def test_dead_letters_are_capped_to_their_share_of_the_size_bound(tmp_path):
    from edge.buffer import DEAD_LETTER_SHARE

    buf = Buffer(tmp_path / "b.sqlite", max_bytes=1_000_000)
    letter = b"x" * 30_000
    dropped = [buf.add_dead_letter("broker", 400, "application/ld+json", "", letter, "bad") for _ in range(5)]
    assert dropped == [0, 0, 0, 1, 1]  # 100 kB allowed: three letters fit, then the oldest go
    kept = buf.dead_letters()
    assert len(kept) == 3 and sum(len(d["payload"]) for d in kept) <= 1_000_000 * DEAD_LETTER_SHARE
    assert [d["id"] for d in kept] == [3, 4, 5]
    # A single letter larger than the share is still kept (the newest is never dropped).
    assert buf.add_dead_letter("broker", 400, "application/ld+json", "", b"y" * 200_000, "big") == 3
    assert [d["id"] for d in buf.dead_letters()] == [6]
    buf.close()


def test_store_gap_extended_while_its_notice_was_in_flight_keeps_the_extension(tmp_path):
    buf = Buffer(tmp_path / "b.sqlite")
    buf.register_sink("city")
    _fill(buf, 40)
    buf._drop_through(10)
    [sent] = buf.gaps("city")  # announced: 10 dropped
    buf._drop_through(25)  # more dropped before the notice's PUBACK came back: the gap grows
    buf.gap_delivered(sent.id, sent)
    [rest] = buf.gaps("city")
    assert (rest.count, rest.first_id, rest.last_id) == (15, 11, 25)
    buf.gap_delivered(rest.id, rest)
    assert buf.gaps("city") == []
