"""Unit tests of `flrunner.shareable`: headers, return codes, the wire form."""

from __future__ import annotations

import pytest

from flrunner.errors import BadRequest, EncodeError
from flrunner.shareable import ReservedHeaderKey, ReturnCode, Shareable, make_reply
from flrunner.transport.wire import pack, unpack


def test_headers_are_separate_from_data():
    s = Shareable({"w": [1, 2]})
    s.set_header("round", 3)
    s.set_header(ReservedHeaderKey.TOPIC, "train")
    assert s.get_header("round") == 3
    assert s.get_header("missing") is None
    assert s.get_header("missing", "d") == "d"
    assert s.get_headers() == {"round": 3, ReservedHeaderKey.TOPIC: "train"}
    h = s.get_headers()
    h["round"] = 99  # a copy
    assert s.get_header("round") == 3
    assert s["w"] == [1, 2]


def test_return_code_defaults_to_ok():
    s = Shareable()
    assert s.get_return_code() == ReturnCode.OK == "OK"
    assert s.get_return_code(ReturnCode.ERROR) == ReturnCode.ERROR
    s.set_return_code(ReturnCode.TOPIC_UNKNOWN)
    assert s.get_return_code() == "TOPIC_UNKNOWN"
    assert s.get_header(ReservedHeaderKey.RC) == "TOPIC_UNKNOWN"


def test_broken_headers_entry_is_replaced():
    s = Shareable()
    s[ReservedHeaderKey.HEADERS] = "garbage"
    assert s.get_headers() == {}
    s.set_header("a", 1)
    assert s.get_header("a") == 1


def test_make_reply():
    r = make_reply(ReturnCode.EXECUTION_EXCEPTION, {"why": "boom", ReservedHeaderKey.RC: "OK"})
    assert isinstance(r, Shareable)
    assert r.get_return_code() == ReturnCode.EXECUTION_EXCEPTION  # rc wins over the extra headers
    assert r.get_header("why") == "boom"
    assert {k: v for k, v in r.items() if k != ReservedHeaderKey.HEADERS} == {}
    assert make_reply(ReturnCode.OK).get_headers() == {ReservedHeaderKey.RC: "OK"}


def test_wire_round_trip_through_msgpack():
    s = Shareable({"weights": b"\x00\x01\xff", "n": 3, "f": 0.5, "nested": {"a": [1, "x", None, True]}})
    s.set_return_code(ReturnCode.OK)
    s.set_header("round", 7)
    wire = s.to_wire()
    assert set(wire) == {"h", "d"}
    assert ReservedHeaderKey.HEADERS not in wire["d"]
    assert wire["h"] == {ReservedHeaderKey.RC: "OK", "round": 7}
    back = Shareable.from_wire(unpack(pack(wire)))
    assert isinstance(back, Shareable)
    assert back == s
    assert back.get_headers() == s.get_headers()
    assert back.get_return_code() == "OK"
    assert back["weights"] == b"\x00\x01\xff"


def test_from_wire_defaults_and_isolation():
    back = Shareable.from_wire({})
    assert back.get_headers() == {} and back.get_return_code() == "OK"
    wire = {"h": {"a": 1}, "d": {"x": 1}}
    s = Shareable.from_wire(wire)
    s.set_header("b", 2)
    assert wire["h"] == {"a": 1}  # the received header map is copied


@pytest.mark.parametrize("wire", [None, [], "x", {"h": [], "d": {}}, {"h": {}, "d": 5}, {"d": "str"}])
def test_from_wire_rejects_bad_shapes(wire):
    with pytest.raises(BadRequest):
        Shareable.from_wire(wire)


def test_to_wire_refuses_unencodable_value_naming_the_key():
    s = Shareable({"model": {"layer1": object()}})
    with pytest.raises(EncodeError) as ei:
        s.to_wire()
    assert "model.layer1" in str(ei.value)


# Regression: at HEAD to_wire() accepted int map keys that every receiver (strict_map_key=True) refused.
def test_to_wire_output_is_decodable_by_the_receiver():
    s = Shareable({"per_round": {1: 0.5, 2: 0.7}})
    try:
        wire = s.to_wire()
    except EncodeError as exc:  # refused at the sender, naming the key: acceptable
        assert "per_round" in str(exc)
        return
    assert Shareable.from_wire(unpack(pack(wire)))["per_round"] == {1: 0.5, 2: 0.7}
