"""`edge devices import|verify|export` against the real gRPC test server: 500 rows, interruptions, bad sheets."""

from __future__ import annotations

import csv
import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from chirpstack_api import api
from click.testing import CliRunner, Result

from edge.buffer import Batch, Buffer, NewUplink
from edge.cli import main
from edge.model import DecodeStatus, DeviceEvent, DeviceInfo, RadioInfo, Reading, Uplink
from tests.grpc_server import FakeChirpStack, State

TENANT = "52f14cd4-c6f1-4fbd-8f87-4025e1d49242"
APP = "a1a1a1a1-0000-4000-8000-000000000001"
OTHER_APP = "a2a2a2a2-0000-4000-8000-000000000002"
ERS = "b1b1b1b1-0000-4000-8000-000000000001"
LHT = "b2b2b2b2-0000-4000-8000-000000000002"


def eui(i: int) -> str:
    return f"a81758fffe{i:06x}"


def key(i: int) -> str:
    return f"{i:032x}"[::-1].replace("0", "5")


@pytest.fixture
def chirpstack() -> Iterator[FakeChirpStack]:
    state = State(tenant_ids=[TENANT])
    state.applications[TENANT] = [api.ApplicationListItem(id=APP, name="Floor 3"),
                                  api.ApplicationListItem(id=OTHER_APP, name="Parking")]
    state.profiles[ERS] = api.DeviceProfile(id=ERS, name="Elsys ERS", tenant_id=TENANT)
    state.profiles[LHT] = api.DeviceProfile(id=LHT, name="Dragino LHT65", tenant_id=TENANT)
    fake = FakeChirpStack(state).start()
    yield fake
    fake.stop()


@pytest.fixture
def config(tmp_path: Path, chirpstack: FakeChirpStack) -> Path:
    token = tmp_path / "token"
    token.write_text("secret-token\n")
    token.chmod(0o600)
    cfg = tmp_path / "edge.toml"
    cfg.write_text(f"""
[edge]
id = "test"

[chirpstack]
mqtt_url = "mqtt://127.0.0.1:1883"
api_url = "{chirpstack.url}"
api_token_file = "{token}"
tenant_id = "{TENANT}"

[buffer]
path = "{tmp_path / 'buffer.db'}"

[[upstream]]
name = "up"
url = "mqtt://127.0.0.1:1884"
""")
    return cfg


def sheet(path: Path, rows: list[list[str]], header: list[str] | None = None, delimiter: str = ",") -> Path:
    with path.open("w", newline="") as out:
        writer = csv.writer(out, delimiter=delimiter)
        writer.writerow(header or ["DevEUI", "AppEUI", "AppKey", "Name", "Device profile", "Tags"])
        writer.writerows(rows)
    return path


def floor(n: int, start: int = 0) -> list[list[str]]:
    return [[eui(i).upper(), "70B3D57ED0000001", key(i), f"room-{i}", "Elsys ERS", f"floor=3;room={i}"]
            for i in range(start, start + n)]


def run(*args: str | Path) -> Result:
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def test_import_500_rows_creates_devices_and_keys_then_rerun_changes_nothing(
        tmp_path: Path, config: Path, chirpstack: FakeChirpStack) -> None:
    path = sheet(tmp_path / "floor.csv", floor(500))
    dry = run("devices", "import", path, "--application", "Floor 3", "-c", config, "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert "dry run: 500 to create, 0 to update, 0 unchanged; keys for 500" in dry.output
    assert chirpstack.state.devices == {}
    assert not any(c.startswith("DeviceService.Create") for c in chirpstack.state.calls)

    result = run("devices", "import", path, "--application", "Floor 3", "-c", config, "--pause", "0")
    assert result.exit_code == 0, result.output
    assert "created 500, updated 0, unchanged 0; keys set for 500" in result.output
    state = chirpstack.state
    assert len(state.devices) == 500 and len(state.keys) == 500
    device = state.devices[eui(7)]
    assert (device.name, device.application_id, device.device_profile_id, device.join_eui) == \
        ("room-7", APP, ERS, "70b3d57ed0000001")
    assert dict(device.tags) == {"floor": "3", "room": "7"}
    # LoRaWAN 1.0.x: the AppKey is ChirpStack's nwk_key.
    assert (state.keys[eui(7)].nwk_key, state.keys[eui(7)].app_key) == (key(7), "")
    assert key(7) not in result.output and key(7) not in dry.output  # keys are never shown

    again = run("devices", "import", path, "--application", "Floor 3", "-c", config, "--pause", "0")
    assert again.exit_code == 0, again.output
    assert "created 0, updated 0, unchanged 500; keys set for 0" in again.output


def test_import_interrupted_half_way_finishes_on_rerun_without_duplicates(
        tmp_path: Path, config: Path, chirpstack: FakeChirpStack) -> None:
    path = sheet(tmp_path / "floor.csv", floor(500))
    creates: list[int] = []

    def cut(method: str, request: Any, context: grpc.ServicerContext) -> None:
        if method == "DeviceService.Create":
            creates.append(1)
            if len(creates) > 250:
                context.abort(grpc.StatusCode.UNAVAILABLE, "failed to connect to all addresses")

    chirpstack.state.hook = cut
    first = run("devices", "import", path, "--application", APP, "-c", config, "--pause", "0")
    assert first.exit_code == 1
    assert "run the same command again" in first.output
    assert len(chirpstack.state.devices) == 250

    chirpstack.state.hook = None
    chirpstack.state.lose_replies = 3  # and some writes go through while their answers are lost
    second = run("devices", "import", path, "--application", APP, "-c", config, "--pause", "0")
    assert second.exit_code == 0, second.output
    assert "created 250, updated 0, unchanged 250" in second.output
    assert len(chirpstack.state.devices) == 500 and len(chirpstack.state.keys) == 500
    assert {d for d in chirpstack.state.devices} == {eui(i) for i in range(500)}


def test_import_malformed_sheet_lists_every_problem_and_changes_nothing(
        tmp_path: Path, config: Path, chirpstack: FakeChirpStack) -> None:
    chirpstack.state.add_device(TENANT, OTHER_APP, eui(900), LHT)
    rows = [
        *floor(3),
        ["A81758FFFE00000", "70B3D57ED0000001", key(3), "short eui", "Elsys ERS", ""],  # row 5
        [eui(1), "70B3D57ED0000001", key(4), "duplicate", "Elsys ERS", ""],  # row 6
        [eui(5), "70B3D57ED00001", "0011", "bad keys", "Elsys ERS", ""],  # row 7
        [eui(6), "", "", "no key", "Elsys ERS", ""],  # row 8
        [eui(7), "", key(7), "unknown profile", "Acme 9000", ""],  # row 9
        [eui(900), "", key(9), "lives elsewhere", "Elsys ERS", ""],  # row 10
        [eui(10), "", key(10), "bad tags", "Elsys ERS", "floor"],  # row 11
    ]
    path = sheet(tmp_path / "bad.csv", rows)
    result = run("devices", "import", path, "--application", "Floor 3", "-c", config)
    assert result.exit_code == 1
    out = result.output
    for expected in ("row 5: DevEUI must be 16 hex digits", "row 6: DevEUI a81758fffe000001 is also on row 3",
                     "row 7: JoinEUI must be 16 hex digits", "row 7: AppKey must be 32 hex digits, got '4 characters'",
                     "row 8: no AppKey", "row 9: ChirpStack has no device profile 'Acme 9000'",
                     "row 10: DevEUI a81758fffe000384 already exists in ChirpStack in application 'Parking'",
                     "row 11: tag 'floor' is not key=value", "nothing was changed in ChirpStack"):
        assert expected in out, out
    assert set(chirpstack.state.devices) == {eui(900)}
    assert not any(c in ("DeviceService.Create", "DeviceService.CreateKeys") for c in chirpstack.state.calls)


def test_import_xlsx_vendor_layout_with_column_mapping(tmp_path: Path, config: Path,
                                                        chirpstack: FakeChirpStack) -> None:
    import openpyxl

    book = openpyxl.Workbook()
    sheet_ = book.active
    sheet_.append(["Serial", "Device EUI", "Join EUI", "Root key", "Model"])
    for i in range(5):
        sheet_.append([f"SN{i}", eui(i), "70b3d57ed0000001", key(i), "Dragino LHT65"])
    book.save(tmp_path / "vendor.xlsx")
    result = run("devices", "import", tmp_path / "vendor.xlsx", "-c", config, "--application", APP, "--pause", "0",
                 "--columns", "app_key=Root key,device_profile=Model,name=Serial")
    assert result.exit_code == 0, result.output
    assert chirpstack.state.devices[eui(4)].name == "SN4"
    assert chirpstack.state.devices[eui(4)].device_profile_id == LHT


def test_import_updates_changed_rows_and_keeps_chirpstack_tags(tmp_path: Path, config: Path,
                                                              chirpstack: FakeChirpStack) -> None:
    run("devices", "import", sheet(tmp_path / "a.csv", floor(3)), "--application", APP, "-c", config)
    chirpstack.state.devices[eui(1)].tags["installer"] = "anna"
    rows = floor(3)
    rows[1][3] = "room-1-renamed"
    rows[2][2] = key(99)
    result = run("devices", "import", sheet(tmp_path / "b.csv", rows, delimiter=";"), "--application", APP,
                 "-c", config, "--dry-run")
    assert "update a81758fffe000001" in result.output and "(name)" in result.output
    assert "keys: replace" in result.output
    result = run("devices", "import", sheet(tmp_path / "b.csv", rows, delimiter=";"), "--application", APP,
                 "-c", config)
    assert "created 0, updated 1, unchanged 2; keys set for 1" in result.output, result.output
    assert chirpstack.state.devices[eui(1)].name == "room-1-renamed"
    assert dict(chirpstack.state.devices[eui(1)].tags)["installer"] == "anna"
    assert chirpstack.state.keys[eui(2)].nwk_key == key(99)


def test_export_round_trips_through_import_and_keys_need_a_private_file(
        tmp_path: Path, config: Path, chirpstack: FakeChirpStack) -> None:
    run("devices", "import", sheet(tmp_path / "a.csv", floor(20)), "--application", APP, "-c", config,
        "--pause", "0")
    plain = run("devices", "export", "-c", config)
    assert plain.exit_code == 0
    assert key(3) not in plain.output and eui(3) in plain.output
    assert run("devices", "export", "-c", config, "--with-keys").exit_code == 2  # never keys on a terminal

    out = tmp_path / "export.csv"
    result = run("devices", "export", "-c", config, "--with-keys", "-o", out)
    assert result.exit_code == 0, result.output
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o600
    assert key(3) in out.read_text()

    # Another ChirpStack takes the export as it is.
    saved = {d: (v.name, v.device_profile_id, v.join_eui, dict(v.tags)) for d, v in chirpstack.state.devices.items()}
    chirpstack.state.devices.clear()
    chirpstack.state.keys.clear()
    again = run("devices", "import", out, "-c", config, "--pause", "0")
    assert again.exit_code == 0, again.output
    assert {d: (v.name, v.device_profile_id, v.join_eui, dict(v.tags))
            for d, v in chirpstack.state.devices.items()} == saved
    assert chirpstack.state.keys[eui(3)].nwk_key == key(3)


def _store(buffer_path: Path, dev_eui: str, status: int, when: float, join: bool = False) -> None:
    buffer = Buffer(buffer_path)
    try:
        batch = Batch()
        if join:
            batch.events.append((DeviceEvent("join", dev_eui, APP, when - 5, "joined"), "application/x/join", b"{}"))
        uplink = Uplink(f"id-{dev_eui}", DeviceInfo(dev_eui, APP, "Floor 3", "room"), when, 1, b"\x01",
                        RadioInfo(fcnt=1, fport=1, rssi=-81.0, snr=7.5, gateway_id="0016c001ff10a235"))
        batch.uplinks.append(NewUplink(uplink, "application/x/device/y/event/up", b"{}", when, status,
                                       "elsys/ers", "", [Reading("temperature", 22.4, "Cel")]))
        buffer.append(batch)
    finally:
        buffer.close()


def test_verify_lists_each_imported_device_with_join_uplink_decoder_and_radio(
        tmp_path: Path, config: Path, chirpstack: FakeChirpStack) -> None:
    import time

    run("devices", "import", sheet(tmp_path / "a.csv", floor(3)), "--application", APP, "-c", config)
    now = time.time()
    _store(tmp_path / "buffer.db", eui(0), DecodeStatus.DECODED, now, join=True)
    _store(tmp_path / "buffer.db", eui(1), DecodeStatus.FAILED, now)
    result = run("devices", "verify", "-c", config, "--json")
    assert result.exit_code == 1  # one still waiting, one failing to decode
    rows = {r["dev_eui"]: r for r in json.loads(result.output)["devices"]}
    assert rows[eui(0)]["state"] == "ok" and rows[eui(0)]["joined"] is not None
    assert rows[eui(0)]["rssi_dbm"] == -81.0 and rows[eui(0)]["decoder"] == "elsys/ers"
    assert rows[eui(0)]["readings"] == [{"n": "temperature", "u": "Cel", "v": 22.4}]
    assert rows[eui(1)]["state"] == "decode-failed"
    assert rows[eui(2)]["state"] == "waiting" and rows[eui(2)]["first_uplink"] is None
    text = run("devices", "verify", "-c", config).output
    assert "-81 dBm" in text and "temperature 22.4 °C" in text
    assert "1 of 3 devices sent a decoded uplink; needing attention" in text

    _store(tmp_path / "buffer.db", eui(1), DecodeStatus.DECODED, now + 1)
    _store(tmp_path / "buffer.db", eui(2), DecodeStatus.DECODED, now + 2)
    waited = run("devices", "verify", "-c", config, "--wait", "--timeout", "5")
    assert waited.exit_code == 0, waited.output
    assert "3 of 3 devices sent a decoded uplink" in waited.output


def test_verify_without_imports_says_what_to_do(config: Path) -> None:
    result = run("devices", "verify", "-c", config)
    assert result.exit_code == 1
    assert "run `edge devices import` first" in result.output


