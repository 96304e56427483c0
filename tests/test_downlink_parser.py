"""The downlink command parser over arbitrary JSON (Hypothesis): it accepts only what it documents, and never
raises anything but CommandError."""

from __future__ import annotations

import json
import math
import time

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.downlinks import MAX_COMMAND_BYTES, MAX_PAYLOAD, parse_command
from edge.errors import CommandError

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=6) | st.dictionaries(st.text(max_size=8), children, max_size=6),
    max_leaves=40)

FIELD_VALUES = {
    "id": st.text(max_size=70) | JSON,
    "time": st.floats(allow_nan=False) | st.integers() | st.text(max_size=40) | st.just(time.time()) | JSON,
    "dev_eui": st.just("a81758fffe0346f1") | st.text(alphabet="0123456789abcdefABCDEFxz", max_size=18) | JSON,
    "fport": st.integers(-5, 300) | st.booleans() | st.floats() | JSON,
    "hex": st.text(alphabet="0123456789abcdefg", max_size=600) | JSON,
    "object": JSON,
    "confirmed": st.booleans() | st.text(max_size=5) | st.integers(0, 1) | JSON,
}
COMMANDS = st.fixed_dictionaries({}, optional={**FIELD_VALUES, "extra": JSON})


def _check(payload: bytes) -> None:
    try:
        command = parse_command(payload)
    except CommandError:
        return
    raw = orjson.loads(payload)
    assert len(payload) <= MAX_COMMAND_BYTES
    assert set(raw) <= {"id", "time", "dev_eui", "fport", "hex", "object", "confirmed"}
    assert type(raw["fport"]) is int and 1 <= command.fport == raw["fport"] <= 223
    assert type(command.confirmed) is bool and command.confirmed is raw.get("confirmed", False)
    assert len(command.dev_eui) == 16 and int(command.dev_eui, 16) >= 0
    assert math.isfinite(command.time)
    assert (command.payload is None) != (command.object is None)
    if command.payload is not None:
        assert len(command.payload) <= MAX_PAYLOAD
    else:
        assert isinstance(command.object, dict)


@settings(max_examples=400, deadline=None)
@given(COMMANDS)
def test_command_parser_accepts_only_documented_shapes(command: dict[str, object]) -> None:
    _check(json.dumps(command).encode())


@settings(max_examples=200, deadline=None)
@given(JSON)
def test_command_parser_any_json_value_is_refused_or_valid(value: object) -> None:
    _check(json.dumps(value).encode())


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_command_parser_arbitrary_bytes_never_crash(payload: bytes) -> None:
    try:
        parse_command(payload)
    except CommandError:
        pass


def test_command_parser_deep_and_huge_inputs_are_refused_before_walking() -> None:
    base = {"id": "c1", "time": time.time(), "dev_eui": "a81758fffe0346f1", "fport": 2}
    deep: object = 1
    for _ in range(200):
        deep = [deep]
    for bad in (b"[" * 100_000, orjson.dumps(base | {"object": {"a": deep}}),
                orjson.dumps(base | {"object": {"x": "y" * 50_000}}), orjson.dumps(base | {"hex": "00" * 243})):
        try:
            parse_command(bad)
        except CommandError:
            continue
        raise AssertionError(f"accepted {bad[:40]!r}")
    assert parse_command(orjson.dumps(base | {"hex": "00" * 242, "confirmed": True})).payload == bytes(242)
    assert parse_command(orjson.dumps(base | {"time": "2026-12-05T10:00:00Z", "object": {"a": [1, {"b": 2}]}}))


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 5000), st.sampled_from(["[", '{"a":']), st.booleans())
def test_command_parser_any_depth_is_refused_without_recursion(depth: int, opener: str, in_object: bool) -> None:
    closer = "]" if opener == "[" else "}"
    nested = opener * depth + "1" + closer * depth
    text = (f'{{"id":"d","time":{time.time()},"dev_eui":"a81758fffe0346f1","fport":2,"object":{{"x":{nested}}}}}'
            if in_object else nested)
    try:
        parse_command(text.encode())
    except CommandError:
        return
    assert in_object and depth <= 7  # the object holding "x" is level 1, so 7 more levels fit in 8


@settings(max_examples=300, deadline=None)
@given(COMMANDS, st.booleans())
def test_command_handler_never_raises_and_accounts_for_every_message(command: dict[str, object],
                                                                     retained: bool) -> None:
    from edge.config import ChirpStackConfig, MqttEndpoint
    from edge.downlinks import CommandRelay

    relay = CommandRelay(ChirpStackConfig(mqtt=MqttEndpoint(url="mqtt://127.0.0.1:1", client_id="t")))
    handle = relay.handler("city", frozenset({"a81758fffe0346f1"}), lambda dev: True, 600.0, 12)
    handle(json.dumps(command).encode(), retained)
    assert relay.accepted + relay.refused == 1
    if retained:
        assert relay.refused == 1
