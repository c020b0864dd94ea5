"""Unit tests of the wire layer: framing (`flrunner.transport.wire`), the Shareable wire form, and op validation.

Decoding must never trust the peer: whatever bytes arrive, `decode` returns a `Message` or raises
`FrameError` with a reason, and never anything else (a stray exception would reach the parent's
loop).
"""

from __future__ import annotations

import msgpack
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flrunner.protocol import Channel, Field, Op, Rc, admin_ops, aux_ops, job_ops, site_ops  # noqa: F401
from flrunner.errors import BadRequest, EncodeError, FrameError
from flrunner.shareable import ReservedHeaderKey, Shareable
from flrunner.transport.wire import (MAX_HEADER_BYTES, MAX_RAW_FRAMES, PROTOCOL_VERSION, Message, decode, encode, pack,
                           peek_id, unpack)


def header(**fields) -> dict:
    h = {"v": PROTOCOL_VERSION, "op": "ping", "id": 7, "b": {}}
    h.update(fields)
    return {k: v for k, v in h.items() if v is not _DROP}


_DROP = object()


def raw(h: dict) -> bytes:
    return msgpack.packb(h, use_bin_type=True)


# --- round trip ---------------------------------------------------------------------------------

def test_request_round_trip_keeps_raw_frames_untouched():
    blob = bytes(range(256)) * 1000
    frames = [blob, b"", b"\xc1\xff not msgpack", memoryview(b"mv")]
    msg = Message("aux", {"topic": "train", "n": 3, "nested": {"a": [1, None, True, 2.5, b"\x00"]}}, id=42,
                  frames=frames)
    out = encode(msg)
    assert len(out) == 1 + len(frames)
    assert all(a is b for a, b in zip(out[1:], frames))  # not copied, not re-encoded
    back = decode(out)
    assert (back.op, back.body, back.id, back.re, back.rc) == ("aux", msg.body, 42, None, None)
    assert not back.is_reply
    assert [bytes(f) for f in back.frames] == [bytes(f) for f in frames]


def test_reply_round_trip_and_zmq_frames_are_accepted():
    out = encode(Message("ping", {"ok": True}, id=3, re=99, rc="NOT_FOUND"))
    back = decode([zmq.Frame(f) for f in out])
    assert back.is_reply and back.re == 99 and back.rc == "NOT_FOUND" and back.body == {"ok": True}


def test_reply_without_rc_defaults_to_ok_and_ids_are_assigned():
    a, b = decode(encode(Message("x", re=1))), decode(encode(Message("x", re=1)))
    assert a.rc == "OK"
    assert isinstance(a.id, int) and a.id != b.id


def test_missing_body_is_an_empty_map():
    assert decode([raw(header(b=_DROP))]).body == {}


# --- every header field of the wrong type -------------------------------------------------------

@pytest.mark.parametrize("field, value", [
    ("v", 2), ("v", "1"), ("v", True), ("v", 1.0), ("v", None), ("v", _DROP),
    ("op", 5), ("op", ""), ("op", None), ("op", ["ping"]), ("op", b"ping"), ("op", _DROP),
    ("id", "7"), ("id", True), ("id", 7.0), ("id", None), ("id", [7]), ("id", _DROP),
    ("re", "1"), ("re", False), ("re", 1.5), ("re", {}),
    ("rc", 200), ("rc", True), ("rc", ["OK"]), ("rc", b"OK"),
    ("b", []), ("b", "body"), ("b", 1), ("b", None), ("b", b"\x80"),
])
def test_header_field_of_wrong_type_is_refused_naming_the_field(field, value):
    with pytest.raises(FrameError) as ei:
        decode([raw(header(**{field: value}))])
    assert f"'{field}'" in str(ei.value)
    assert isinstance(ei.value, BadRequest) and ei.value.rc == "BAD_REQUEST"


def test_error_text_about_a_huge_or_deep_field_stays_short():
    deep: list = []
    for _ in range(1000):  # deep enough that repr() would blow Python's recursion limit
        deep = [deep]
    for bad in ("x" * 100_000, deep, list(range(100_000))):
        h = header(op=5, id=bad) if isinstance(bad, str) else header(op=bad)
        with pytest.raises(FrameError) as ei:
            decode([raw(h)])
        assert len(str(ei.value)) < 300


# --- limits and shapes --------------------------------------------------------------------------

def test_header_over_the_size_limit_is_refused():
    big = raw(header(b={"pad": "x" * 5000}))
    with pytest.raises(FrameError, match="limit"):
        decode([big], max_header=4096)
    assert decode([big], max_header=len(big)).body["pad"] == "x" * 5000
    with pytest.raises(FrameError, match="limit"):
        unpack(b"\x00" * 11, max_bytes=10)


def test_header_over_the_default_limit_is_refused():
    with pytest.raises(FrameError, match="limit"):
        decode([b"\xc0" * (MAX_HEADER_BYTES + 1)])


@pytest.mark.parametrize("ext", [
    msgpack.ExtType(5, b"abc"),
    msgpack.Timestamp(1_700_000_000, 5),  # the timestamp extension (code -1)
    msgpack.ExtType(1, b""),
])
def test_msgpack_extension_types_are_refused(ext):
    with pytest.raises(FrameError):
        decode([raw(header(b={"x": ext}))])
    with pytest.raises(FrameError):
        unpack(msgpack.packb(ext))


@pytest.mark.parametrize("value", [[1, 2], "ping", 7, None, b"bytes", 1.5, True])
def test_header_that_is_not_a_map_is_refused(value):
    with pytest.raises(FrameError, match="map"):
        decode([msgpack.packb(value, use_bin_type=True)])


@pytest.mark.parametrize("data", [
    b"", b"\xc1", b"\xff\xfe\xfd", b"\x85\xa1v", b"\xdf\xff\xff\xff\xff",  # truncated / huge claims
    b"\x81\xa1v\x01\x00",  # trailing bytes after one value
    b"\xa3\xff\xfe\xfd",  # a str that is not UTF-8
    b"\x81\x01\x02",  # an int map key (strict_map_key)
    b"\x81\x80\x01",  # a map as a map key
    "garbage that is not msgpack at all \U0001F600".encode(),
])
def test_garbage_bytes_are_refused(data):
    with pytest.raises(FrameError):
        decode([data])


def test_empty_message_is_refused():
    with pytest.raises(FrameError, match="empty"):
        decode([])


def test_too_many_raw_frames():
    head = raw(header())
    assert len(decode([head] + [b"x"] * MAX_RAW_FRAMES).frames) == MAX_RAW_FRAMES
    with pytest.raises(FrameError, match="raw frames"):
        decode([head] + [b"x"] * (MAX_RAW_FRAMES + 1))
    with pytest.raises(EncodeError, match="raw frames"):
        encode(Message("ping", frames=[b"x"] * (MAX_RAW_FRAMES + 1)))


def test_deep_nesting_is_refused_cleanly():
    deep = b"\x91" * 100_000 + b"\xc0"  # 100k nested one-element lists
    with pytest.raises(FrameError):
        decode([deep])
    with pytest.raises(FrameError):
        decode([b"\x84\xa1v\x01\xa2op\xa4ping\xa2id\x01\xa1b\x81\xa1x" + deep])
    assert peek_id([deep]) is None


def test_peek_id_finds_the_id_of_a_message_that_does_not_decode():
    assert peek_id([raw(header(op=5, id=12))]) == 12
    assert peek_id([raw(header(id=True))]) is None
    assert peek_id([b"\xc1"]) is None
    assert peek_id([]) is None


# --- pack refuses what cannot travel, naming it ---------------------------------------------------

@pytest.mark.parametrize("value, path", [
    ({"a": {"b": [1, {2, 3}]}}, "a.b[1]"),
    ({"model": {"layer1": object()}}, "model.layer1"),
    ({"x": [1, 2, {"when": 1j}]}, "x[2].when"),
    ({"per_round": {1: 0.5}}, "per_round"),  # msgpack packs int keys; every receiver refuses them
    ({"k": {(1, 2): "tuple key"}}, "k"),
    ({"big": 2 ** 70}, "big"),
    ({"s": ["ok", "\udc80"]}, "s[1]"),
])
def test_pack_names_the_offending_key_path(value, path):
    with pytest.raises(EncodeError) as ei:
        pack(value, "the thing")
    text = str(ei.value)
    assert f"'{path} (" in text and "the thing" in text


def test_pack_refuses_deep_nesting_and_cycles_with_encode_error():
    deep: list = []
    for _ in range(100_000):
        deep = [deep]
    with pytest.raises(EncodeError, match="nested deeper"):
        pack({"a": deep})
    loop: list = []
    loop.append(loop)
    with pytest.raises(EncodeError, match="nested deeper"):
        pack({"loop": loop})


def test_pack_output_always_decodes():
    value = {"b": {"n": [1, 2.5, None, True, "s", b"\x00", {"k": [[]]}], "t": (1, 2)}}
    assert unpack(pack(value)) == {"b": {"n": [1, 2.5, None, True, "s", b"\x00", {"k": [[]]}], "t": [1, 2]}}


def test_encode_of_an_unencodable_body_names_op_and_key():
    with pytest.raises(EncodeError) as ei:
        encode(Message("run_status", {"progress": {"when": {1, 2}}}))
    assert "run_status" in str(ei.value) and "b.progress.when" in str(ei.value)


# --- Shareable on the wire -------------------------------------------------------------------------

def test_shareable_round_trip():
    s = Shareable({"weights": b"\x00\x01", "n": 3, "nested": {"a": [1.5, None]}})
    s.set_header("round", 2)
    s.set_return_code("OK")
    wire = s.to_wire()
    assert wire == {"h": {"round": 2, ReservedHeaderKey.RC: "OK"}, "d": {"weights": b"\x00\x01", "n": 3,
                                                                          "nested": {"a": [1.5, None]}}}
    back = Shareable.from_wire(decode(encode(Message("aux", {"s": wire}))).body["s"])
    assert back == s and back.get_headers() == s.get_headers()


def test_shareable_to_wire_names_the_key():
    with pytest.raises(EncodeError, match=r"d\.model\.w"):
        Shareable({"model": {"w": {1.0, 2.0}}}).to_wire()


@pytest.mark.parametrize("wire", [None, [], "x", 3, {"h": [], "d": {}}, {"h": {}, "d": 5}, {"d": "str"},
                                  {"h": None}])
def test_shareable_from_wire_rejects_bad_shapes(wire):
    with pytest.raises(BadRequest):
        Shareable.from_wire(wire)


# --- Op.validate ---------------------------------------------------------------------------------

def test_validate_fills_absent_optional_fields():
    assert job_ops.RUN_STATUS.validate({"status": "RUNNING"}) == {"status": "RUNNING", "progress": None, "error": None}
    assert job_ops.HELLO.validate({"job_id": "j", "secret": "s", "pid": 5}) == {"job_id": "j", "secret": "s", "pid": 5,
                                                                          "sealing_key": None}


@pytest.mark.parametrize("op, body, words", [
    (job_ops.HELLO, {"secret": "s", "pid": 1}, ["'hello'", "missing", "'job_id'"]),
    (job_ops.HELLO, {"job_id": None, "secret": "s", "pid": 1}, ["'hello'", "missing", "'job_id'"]),
    (job_ops.HELLO, {"job_id": "j", "secret": "s", "pid": "1"}, ["'hello'", "'pid'", "int", "str"]),
    (job_ops.HELLO, {"job_id": "j", "secret": "s", "pid": True}, ["'hello'", "'pid'", "bool"]),
    (job_ops.HELLO, {"job_id": "j", "secret": "s", "pid": 1.0}, ["'hello'", "'pid'", "float"]),
    (job_ops.HELLO, {"job_id": "j" * 200, "secret": "s", "pid": 1}, ["'hello'", "'job_id'", "longer"]),
    (job_ops.SYNC_CLIENTS, {"since": False}, ["'sync_clients'", "'since'", "bool"]),
    (aux_ops.FROM_JOB, {"topic": "t", "timeout": True}, ["'aux'", "'timeout'", "bool"]),
    (aux_ops.FROM_JOB, {"topic": "t", "timeout": "1"}, ["'aux'", "'timeout'", "float or int"]),
    (site_ops.LOGIN, {"name": ["s1"]}, ["'login'", "'name'", "list"]),
    (site_ops.LOGIN, {"name": "s1", "resources": "lots"}, ["'login'", "'resources'", "dict"]),
    (site_ops.HEARTBEAT, {"token": 12}, ["'heartbeat'", "'token'"]),
    (admin_ops.SUBMIT, {"job_dir": "/x", "extra": 1, "more": 2}, ["'submit'", "unknown", "extra", "more"]),
    (admin_ops.PING, {"x": 1}, ["'ping'", "unknown", "x"]),
])
def test_validate_names_op_and_field(op, body, words):
    with pytest.raises(BadRequest) as ei:
        op.validate(body)
    for w in words:
        assert w in str(ei.value)
    assert ei.value.rc == "BAD_REQUEST"


def test_validate_unknown_fields_of_mixed_key_types_and_many_of_them():
    with pytest.raises(BadRequest, match=r"unknown field\(s\) b'x', y"):
        admin_ops.PING.validate({b"x": 1, "y": 2})  # bytes and str keys do not sort together
    with pytest.raises(BadRequest) as ei:
        admin_ops.PING.validate({f"f{i:05}": i for i in range(10_000)})
    assert "and 9990 more" in str(ei.value) and len(str(ei.value)) < 1000


def test_validate_refuses_deeply_nested_field_values():
    deep: dict = {}
    for _ in range(200):
        deep = {"a": deep}
    with pytest.raises(BadRequest, match="'resources' is nested deeper"):
        site_ops.LOGIN.validate({"name": "s1", "resources": deep})
    assert site_ops.LOGIN.validate({"name": "s1", "resources": {"gpu": [{"mem": 1}], "n": list(range(10_000))}})


def test_op_table_unknown_op_names_it_and_the_socket():
    with pytest.raises(BadRequest) as ei:
        admin_ops.FROM_ADMIN.get("frobnicate")
    assert "'frobnicate'" in str(ei.value) and "admin" in str(ei.value) and "ping" in str(ei.value)


# --- fuzzing: decode only ever returns a Message or raises FrameError ---------------------------------

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

scalars = (st.none() | st.booleans() | st.integers(min_value=-(2 ** 63), max_value=2 ** 64 - 1)
           | st.floats(allow_nan=True) | st.text(max_size=20) | st.binary(max_size=20))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=5)
                      | st.dictionaries(st.text(max_size=8), inner, max_size=5), max_leaves=30)
header_like = st.fixed_dictionaries({}, optional={
    "v": st.just(1) | values, "op": st.sampled_from(["ping", "hello", "login", ""]) | values,
    "id": st.integers(min_value=0, max_value=2 ** 32) | values,
    "re": st.none() | st.integers(min_value=0, max_value=2 ** 64 - 1) | values, "rc": st.sampled_from(["OK", "ERROR"]) | values,
    "b": st.dictionaries(st.text(max_size=8), values, max_size=5) | values,
}) | values


def _decode_or_frame_error(frames) -> Message | None:
    try:
        msg = decode(frames)
    except FrameError:
        return None
    assert isinstance(msg, Message) and isinstance(msg.op, str) and isinstance(msg.body, dict)
    return msg


@FUZZ
@given(st.binary(max_size=512), st.lists(st.binary(max_size=16), max_size=3))
def test_fuzz_arbitrary_bytes(head, rest):
    _decode_or_frame_error([head, *rest])
    assert peek_id([head]) is None or isinstance(peek_id([head]), int)


@FUZZ
@given(header_like)
def test_fuzz_arbitrary_msgpack_headers(value):
    data = msgpack.packb(value, use_bin_type=True)
    msg = _decode_or_frame_error([data])
    if msg is not None:
        assert msg.body == value["b"] if "b" in value else msg.body == {}
        # What decodes re-encodes and decodes to the same message.
        again = decode(encode(msg))
        assert (again.op, again.id, again.re) == (msg.op, msg.id, msg.re)


@FUZZ
@given(header_like, st.integers(min_value=0, max_value=60))
def test_fuzz_truncated_and_corrupted_headers(value, cut):
    data = msgpack.packb(value, use_bin_type=True)
    _decode_or_frame_error([data[: max(0, len(data) - cut)]])
    if data:
        flipped = bytearray(data)
        flipped[cut % len(data)] ^= 0xFF
        _decode_or_frame_error([bytes(flipped)])


@FUZZ
@given(values)
def test_fuzz_pack_either_encodes_decodably_or_raises_encode_error(value):
    try:
        data = pack({"b": value})
    except EncodeError:
        return
    back = unpack(data)
    assert pack(back) == data  # same bytes again (compares NaN too)
