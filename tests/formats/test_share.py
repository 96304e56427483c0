"""Sharing rules: device selection, quantity filters, rounding and thinning."""

from __future__ import annotations

from edge.config import ShareRules
from edge.formats.share import ShareFilter
from edge.model import Entry, RadioInfo, Reading

META = {
    "dev-a": {"applications": {"app-1", "indoor"}, "device_profiles": {"p1", "Elsys ERS"}, "tags": {"owner": "city"}},
    "dev-b": {"applications": {"app-2", "water"}, "device_profiles": {"p2", "Meter"}, "tags": {"owner": "acme"}},
}


def entry(i: int, dev: str = "dev-a", t: float = 1000.0) -> Entry:
    return Entry(i, f"u{i}", dev, "app", "gw", t, [Reading("temperature", 22.46, "Cel"), Reading("humidity", 41, "%RH"),
                                                  Reading("battery-voltage", 3.6, "V")], RadioInfo())


def lookup(devs):
    return {d: META[d] for d in devs if d in META}


def test_share_without_rules_is_inactive():
    assert not ShareFilter(ShareRules()).active


def test_share_selects_devices_by_every_set_selector():
    entries = [entry(1, "dev-a"), entry(2, "dev-b"), entry(3, "dev-unknown")]
    assert [e.id for e in ShareFilter(ShareRules(applications=("indoor",)), lookup).apply(entries)] == [1]
    assert [e.id for e in ShareFilter(ShareRules(tags=(("owner", "acme"),)), lookup).apply(entries)] == [2]
    assert [e.id for e in ShareFilter(ShareRules(device_profiles=("Meter",), applications=("indoor",)),
                                      lookup).apply(entries)] == []
    # A DevEUI rule alone admits a device whose metadata was never seen.
    assert [e.id for e in ShareFilter(ShareRules(devices=("dev-unknown",)), lookup).apply(entries)] == [3]


def test_share_quantities_drop_and_round():
    out = ShareFilter(ShareRules(quantities=("temperature", "humidity"), round=(("temperature", 1),))).apply([entry(1)])
    assert [(r.name, r.value) for r in out[0].readings] == [("temperature", 22.5), ("humidity", 41)]
    out = ShareFilter(ShareRules(drop_quantities=("battery-voltage",), round=(("*", 0),))).apply([entry(1)])
    assert [(r.name, r.value) for r in out[0].readings] == [("temperature", 22.0), ("humidity", 41)]


def test_share_thinning_keeps_one_uplink_per_device_and_interval_and_is_stable_on_resend():
    share = ShareFilter(ShareRules(thin_s=600))
    first = [entry(1, t=1000), entry(2, t=1100), entry(3, "dev-b", t=1100), entry(4, t=1300)]
    assert [e.id for e in share.apply(first)] == [1, 3, 4]  # 1000 and 1100 share a bucket; 1300 is the next one
    # After a reconnect the same entries are formatted again: the kept ones are kept again.
    assert [e.id for e in share.apply(first[2:])] == [3, 4]
    # Also when the re-read starts before a later interval was served (a whole window re-sent):
    # uplink 1 was kept once, so it is kept again, never lost.
    assert [e.id for e in share.apply(first)] == [1, 3, 4]


def test_share_thinning_ignores_uplinks_left_without_readings():
    share = ShareFilter(ShareRules(thin_s=600, quantities=("temperature",)))
    status_only = Entry(1, "u1", "dev-a", "app", "gw", 1000.0, [Reading("battery-voltage", 3.6, "V")], RadioInfo())
    undecoded = Entry(2, "u2", "dev-a", "app", "gw", 1010.0, [], RadioInfo())
    # Neither is sent at a thinned rate, and neither takes the interval from the measurement after it.
    assert [e.id for e in share.apply([status_only, undecoded, entry(3, t=1020), entry(4, t=1030)])] == [3]


def store(tmp_path, sink: str = "opendata", readonly: bool = False):
    from edge.buffer import Buffer
    from edge.buffer.adapters import BufferThinStore

    buf = Buffer(tmp_path / "buffer.sqlite", readonly=readonly)
    if not readonly:
        buf.register_sink(sink)
    return buf, BufferThinStore(buf, sink, readonly=readonly)


def test_share_thinning_decisions_survive_a_restart(tmp_path):
    buf, thin = store(tmp_path)
    rules = ShareRules(thin_s=600)
    share = ShareFilter(rules, store=thin)
    assert [e.id for e in share.apply([entry(1, t=1000), entry(2, t=1100), entry(3, "dev-b", t=1100)])] == [1, 3]
    buf.advance("opendata", 2, 2)  # 1 and 2 acknowledged; 3 was formatted but not acknowledged
    buf.close()

    # A new process: a fresh filter over the same file. Uplink 3 is read again and kept again; a
    # later uplink of dev-a in the interval already served is not let through.
    buf, thin = store(tmp_path)
    share = ShareFilter(rules, store=thin)
    assert [e.id for e in share.apply([entry(3, "dev-b", t=1100), entry(4, t=1150), entry(5, t=1250)])] == [3, 5]
    # Only the newest decision at or below the cursor is kept per device.
    buf.advance("opendata", 5, 3)
    share.apply([entry(6, t=1900)])
    rows = buf.db.execute("SELECT dev_eui, entry_id FROM share_thinning ORDER BY dev_eui, entry_id").fetchall()
    assert rows == [("dev-a", 5), ("dev-a", 6), ("dev-b", 3)]
    buf.close()

    # `edge shares explain` reads the decisions without writing.
    ro, thin = store(tmp_path, readonly=True)
    assert [e.id for e in ShareFilter(rules, store=thin).apply([entry(5, t=1250)])] == [5]
    assert ShareFilter(rules, store=thin).apply([entry(7, t=1950)]) == []
    ro.close()


def test_share_thinning_is_per_upstream(tmp_path):
    buf, thin = store(tmp_path, "a")
    ShareFilter(ShareRules(thin_s=600), store=thin).apply([entry(1, t=1000)])
    buf.register_sink("b")
    from edge.buffer.adapters import BufferThinStore

    other = ShareFilter(ShareRules(thin_s=600), store=BufferThinStore(buf, "b"))
    assert [e.id for e in other.apply([entry(2, t=1100)])] == [2]
    buf.close()


def test_share_enrich_adds_chosen_metadata_only():
    meta = {"dev-a": {**META["dev-a"], "name": "library-1", "application": "indoor", "device_profile": "Elsys ERS"}}
    share = ShareFilter(ShareRules(enrich=("name", "tag:owner", "tag:missing")), lambda devs: meta)
    out = share.apply([entry(1)])
    assert [(r.name, r.value) for r in out[0].readings][-2:] == [("device-name", "library-1"), ("tag-owner", "city")]
    assert len(ShareFilter(ShareRules()).apply([entry(1)])[0].readings) == 3  # nothing added unless configured


def test_share_allows_device_for_commands():
    share = ShareFilter(ShareRules(applications=("indoor",)), lookup)
    assert share.allows_device("dev-a") and not share.allows_device("dev-b")


def test_share_wildcard_rounding_spares_ratio_and_concentration_units():
    air = Entry(1, "u1", "dev-a", "app", "gw", 1000.0, [Reading("co2", 4.2e-4, "/"), Reading("pm2.5", 1.2e-8, "kg/m3"),
                                                       Reading("temperature", 21.47, "Cel")], RadioInfo())
    out = ShareFilter(ShareRules(round=(("*", 1),))).apply([air])
    assert [(r.name, r.value) for r in out[0].readings] == [("co2", 4.2e-4), ("pm2.5", 1.2e-8), ("temperature", 21.5)]
    # Named explicitly, a rule applies as written (6 decimals of a ratio: 1 ppm).
    out = ShareFilter(ShareRules(round=(("co2", 6), ("*", 0)))).apply([air])
    assert [(r.name, r.value) for r in out[0].readings] == [("co2", 4.2e-4), ("pm2.5", 1.2e-8), ("temperature", 21.0)]


def test_share_rounding_keeps_a_history_samples_own_time():
    meter = Entry(1, "u1", "dev-a", "app", "gw", 1000.0, [Reading("volume", 123.4567, "m3", "history[0].volume", 400.0),
                                                         Reading("volume", 123.4999, "m3", "volume")], RadioInfo())
    out = ShareFilter(ShareRules(round=(("volume", 2),))).apply([meter])
    assert [(r.value, r.time) for r in out[0].readings] == [(123.46, 400.0), (123.5, None)]
