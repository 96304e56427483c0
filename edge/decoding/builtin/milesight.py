"""Milesight IoT AM307, AM319, EM300-DI, EM310-UDL and WS101: the Milesight channel payload.

Written from Milesight's user guides (section "Uplink Packet"): a payload is a run of channels,
each a channel id byte, a channel type byte and a fixed-size little-endian value. The pair of
bytes says what the value is, so each model has a table of the pairs it sends. Output keys are
the names Milesight's own codecs use (they differ by model, e.g. `pir` vs `activity`), so the
TTN Device Repository examples compare one to one.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from edge.decoding.base import DecodeResult, DeviceContext

# How one channel value lands in the output: it gets the value bytes and the output dict.
Put = Callable[[bytes, dict[str, Any]], None]


def _u(b: bytes) -> int:
    return int.from_bytes(b, "little")


def _s(b: bytes) -> int:
    return int.from_bytes(b, "little", signed=True)


def _store(key: str, size: int, conv: Callable[[bytes], Any]) -> tuple[int, Put]:
    def put(b: bytes, out: dict[str, Any]) -> None:
        out[key] = conv(b)

    return size, put


def _scaled(divisor: int, signed: bool = False) -> Callable[[bytes], float]:
    read = _s if signed else _u
    return lambda b: read(b) / divisor


def _label(labels: Mapping[int, str], default: str | None = None) -> Callable[[bytes], str | None]:
    return lambda b: labels.get(b[0], default)


_TRIGGER = _label({1: "trigger"}, "idle")
_YES_NO = _label({1: "yes"}, "no")

# Channels every Milesight ambience and EM300 model shares.
_BATTERY = {(0x01, 0x75): _store("battery", 1, _u)}
_TEMP_HUM = {
    (0x03, 0x67): _store("temperature", 2, _scaled(10, signed=True)),
    (0x04, 0x68): _store("humidity", 1, _scaled(2)),
}


def _ambience(motion_key: str, pm25_key: str) -> dict[tuple[int, int], tuple[int, Put]]:
    """The AM300 channel table; the codecs name the PIR and PM2.5 keys differently per model."""
    return {
        **_BATTERY,
        **_TEMP_HUM,
        (0x05, 0x00): _store(motion_key, 1, _TRIGGER),
        (0x06, 0xCB): _store("light_level", 1, _u),
        (0x07, 0x7D): _store("co2", 2, _u),
        (0x08, 0x7D): _store("tvoc", 2, _u),
        (0x09, 0x73): _store("pressure", 2, _scaled(10)),
        (0x0A, 0x7D): _store("hcho", 2, _scaled(100)),
        (0x0B, 0x7D): _store(pm25_key, 2, _u),
        (0x0C, 0x7D): _store("pm10", 2, _u),
        (0x0D, 0x7D): _store("o3", 2, _scaled(100)),
        (0x0E, 0x01): _store("beep", 1, _YES_NO),
    }


def _history(b: bytes, out: dict[str, Any]) -> None:
    # EM300-DI history record: time, temperature, humidity, then the input in the mode it was in.
    point: dict[str, Any] = {
        "timestamp": _u(b[0:4]),
        "temperature": _s(b[4:6]) / 10,
        "humidity": b[6] / 2,
    }
    if b[7] == 1:
        point["gpio"] = b[8]
    elif b[7] == 2:
        point["pulse"] = _u(b[9:13])
    out.setdefault("history", []).append(point)


def _button(b: bytes, out: dict[str, Any]) -> None:
    press = {1: "short", 2: "long", 3: "double"}.get(b[0])
    if press is not None:
        out["button"] = press



class MilesightDecoder:
    """Decoder for one Milesight model, driven by its channel table."""

    def __init__(self, model: str, channels: Mapping[tuple[int, int], tuple[int, Put]],
                 ttn_codecs: tuple[str, ...],
                 aliases: tuple[str, ...] = ()) -> None:
        self.id = f"milesight-iot/{model}"
        self.aliases = aliases
        self.ttn_codecs = ttn_codecs
        self._channels = channels

    def decode(self, payload: bytes, fport: int, context: DeviceContext) -> DecodeResult:
        """Decode a channel payload; a known channel cut short is an error."""
        if not payload:
            return DecodeResult(None, errors=["empty payload"])
        data: dict[str, Any] = {}
        i = 0
        while i < len(payload):
            if i + 2 > len(payload):
                return DecodeResult(None, errors=[f"channel header truncated at byte {i}"])
            channel_id, channel_type = payload[i], payload[i + 1]
            spec = self._channels.get((channel_id, channel_type))
            if spec is None:
                # Channel sizes come only from the table, so an unknown channel cannot be
                # skipped. Milesight's codecs stop here and return what came before, and the
                # AM307 example relies on it (it carries an AM107-style 05 6A channel), so do too;
                # only a payload with no known channel at all is an error.
                if not data:
                    return DecodeResult(
                        None, errors=[f"unknown channel 0x{channel_id:02x} 0x{channel_type:02x} at byte {i}"]
                    )
                break
            size, put = spec
            value = payload[i + 2 : i + 2 + size]
            if len(value) != size:
                return DecodeResult(
                    None, errors=[f"channel 0x{channel_id:02x} 0x{channel_type:02x} truncated at byte {i}"]
                )
            put(value, data)
            i += 2 + size
        return DecodeResult(data)


DECODERS = (
    MilesightDecoder(
        "am307",
        _ambience("pir", "pm2_5"),
        ("milesight-iot/am307-codec",),
        aliases=("milesight-iot/am307l",),
    ),
    MilesightDecoder(
        "am319",
        _ambience("activity", "pm2.5"),
        ("milesight-iot/am319-codec",),
    ),
    MilesightDecoder(
        "em300-di",
        {
            **_BATTERY,
            **_TEMP_HUM,
            (0x05, 0x00): _store("gpio", 1, _u),
            (0x05, 0xC8): _store("pulse", 4, _u),
            (0x20, 0xCE): (13, _history),
        },
        ("milesight-iot/em300-di-codec",),
    ),
    MilesightDecoder(
        "em310-udl",
        {
            **_BATTERY,
            (0x03, 0x82): _store("distance", 2, _u),
            (0x04, 0x00): _store("tilt", 1, _label({0: "normal"}, "tilt")),
        },
        ("milesight-iot/em310-udl-codec",),
    ),
    MilesightDecoder(
        "ws101",
        {**_BATTERY, (0xFF, 0x2E): (1, _button)},
        ("milesight-iot/ws101-codec",),
    ),
)


def _th_history(b: bytes, out: dict[str, Any]) -> None:
    # EM300-TH history record (20 CE): time, temperature, humidity.
    out.setdefault("history", []).append(
        {"timestamp": _u(b[0:4]), "temperature": _s(b[4:6]) / 10, "humidity": b[6] / 2}
    )


# EM300-TH: battery, temperature, humidity and stored history records. EM300-MCS (06 00 magnet)
# and EM300-SLD/ZLD (05 00 leak) add channels this table lacks, so they are not aliases.
# Appended here rather than in the tuple above, hence the longer tuple type.
DECODERS = (  # type: ignore[assignment]
    *DECODERS,
    MilesightDecoder(
        "em300-th",
        {**_BATTERY, **_TEMP_HUM, (0x20, 0xCE): (7, _th_history)},
        (),
    ),
)
