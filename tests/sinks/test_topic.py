"""Topic placeholders from data are validated; a published topic never holds a wildcard, NUL or control character."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from edge.sinks import topic

APP = "5e0c2a4e-9d1b-4f7a-8c3e-2b6f1d0a9c11"


def test_topic_fields_keep_valid_values_and_replace_the_rest() -> None:
    assert topic.fields("A81758FFFE0346F1", APP.upper(), "0016c001f153a14c", "gw-01") == {
        "dev_eui": "a81758fffe0346f1", "application": APP, "application_id": APP,
        "gateway_id": "0016c001f153a14c", "edge_id": "gw-01"}
    assert topic.fields("a81758fffe0346f1", "17", None, "gw")["application"] == "17"  # ChirpStack v3
    for hostile in ("evil/#", "other-city/sensors/x", "a\x00b", "+", "x" * 200, "../..", "\u202e"):
        values = topic.fields(hostile, hostile, hostile, hostile)
        assert set(values.values()) == {"invalid"}, hostile
    assert topic.fields("", "", "", "gw")["gateway_id"] == "unknown"  # no gateway heard it


@given(st.text(), st.text(), st.text())
def test_topic_rendered_from_any_values_is_publishable(dev: str, app: str, gateway: str) -> None:
    values = topic.fields(dev, app, gateway, "gw-01")
    rendered = "lorawan/{application}/{gateway_id}/{dev_eui}".format(**values)
    assert topic.problem(rendered) == ""
    assert rendered.count("/") == 3


def test_topic_problem_names_what_is_wrong() -> None:
    assert topic.problem("") == "empty topic"
    assert "'#'" in topic.problem("a/#")
    assert "'+'" in topic.problem("a/+/b")
    assert "'\\x00'" in topic.problem("a\x00b")
    assert "'\\n'" in topic.problem("a\nb")
    assert "longer than 65535" in topic.problem("a" * 70000)
    assert topic.problem("lorawan/a81758fffe0346f1/ümlaut") == ""
