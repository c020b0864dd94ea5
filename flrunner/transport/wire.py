"""Transport framing: one msgpack header frame plus optional raw frames.

This module knows sockets' byte frames and size limits, nothing of jobs or sites. Decoding never
trusts the peer: every limit is explicit, msgpack extension types are refused, and nothing is
ever unpickled.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any, Sequence

import msgpack

from flrunner.errors import EncodeError, FrameError

PROTOCOL_VERSION = 1

#: Largest header frame accepted. Bulk data travels in raw frames, not in the header.
MAX_HEADER_BYTES = 16 * 1024 * 1024
#: Largest number of raw frames after the header.
MAX_RAW_FRAMES = 64

_ids = itertools.count(1)


def next_id() -> int:
    """A message id unique within this process."""
    return next(_ids)


@dataclass
class Message:
    """One decoded wire message.

    Attributes:
        op: operation name.
        body: the ``b`` map of the header.
        id: message id, unique per sender.
        re: for a reply, the id it answers.
        rc: for a reply, its return code.
        frames: raw frames that followed the header, untouched.
    """

    op: str
    body: dict = field(default_factory=dict)
    id: int | None = None
    re: int | None = None
    rc: str | None = None
    frames: list = field(default_factory=list)

    @property
    def is_reply(self) -> bool:
        return self.re is not None


def _limits(max_bytes: int) -> dict[str, Any]:
    return {
        "raw": False,
        "strict_map_key": True,
        "use_list": True,
        "max_str_len": max_bytes,
        "max_bin_len": max_bytes,
        "max_array_len": 1_000_000,
        "max_map_len": 1_000_000,
        "max_ext_len": 0,
    }


def _refuse_ext(code: int, data: bytes) -> None:
    raise FrameError(f"msgpack extension type {code} is not allowed")


def unpack(data: bytes, max_bytes: int = MAX_HEADER_BYTES) -> Any:
    """Decode one msgpack value with explicit limits; raise `FrameError` on anything wrong."""
    if len(data) > max_bytes:
        raise FrameError(f"frame of {len(data)} bytes is over the {max_bytes}-byte limit")
    try:
        return msgpack.unpackb(data, ext_hook=_refuse_ext, **_limits(max_bytes))
    except FrameError:
        raise
    except Exception as exc:  # msgpack raises several unrelated types for bad input
        raise FrameError(f"undecodable msgpack ({type(exc).__name__}: {exc})") from None


#: Deepest nesting `pack` accepts. msgpack packs and unpacks about 1024 levels; half of that
#: leaves room for the envelope a reply wraps around a value it echoes.
MAX_DEPTH = 512
#: Largest list or map any receiver accepts (the Unpacker limits in `_limits`).
MAX_ITEMS = 1_000_000
_INT_MIN, _INT_MAX = -(1 << 63), (1 << 64) - 1
_SCALAR_TYPES = frozenset((type(None), bool, int, float, str, bytes))


def _problem(value: Any, depth: int) -> str | None:
    """What makes ``value`` itself (not its items) unable to travel, or None."""
    if depth > MAX_DEPTH:
        return f"nested deeper than {MAX_DEPTH} levels"
    if value is None or isinstance(value, (bool, float, bytes, bytearray, memoryview)):
        return None
    if isinstance(value, int):
        return None if _INT_MIN <= value <= _INT_MAX else "integer out of the 64-bit range"
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return "string that is not valid UTF-8 (lone surrogate)"
        return None
    if isinstance(value, (list, tuple, dict)):
        if len(value) > MAX_ITEMS:
            return f"{type(value).__name__} of {len(value)} items (over the limit of {MAX_ITEMS})"
        return None
    return f"type {type(value).__name__}"


def _find_unencodable(value: Any, path: str = "") -> str | None:
    """The path of the first value (or map key) that cannot travel, with the reason; iterative."""
    stack: list[tuple[Any, str, int]] = [(value, path, 1)]
    while stack:
        item, where, depth = stack.pop()
        problem = _problem(item, depth)
        if problem:
            return f"{_short(where) or '<top>'} ({problem})"
        if isinstance(item, dict):
            children = []
            for k, v in item.items():
                if not isinstance(k, (str, bytes)):
                    shown = f" {_show(k)}" if k is None or isinstance(k, (bool, int, float)) else ""
                    return f"{_short(where) or '<top>'} (map key{shown} of type {type(k).__name__}; " \
                           "only str or bytes keys can travel)"
                key = k if isinstance(k, str) else repr(k)
                children.append((v, f"{where}.{key}" if where else key, depth + 1))
            stack.extend(reversed(children))
        elif isinstance(item, (list, tuple)):
            stack.extend((v, f"{where}[{i}]", depth + 1) for i, v in reversed(list(enumerate(item))))
    return None


def _has_bad_key_or_size(value: Any) -> bool:
    """Fast check of what msgpack packs but receivers refuse: non-str keys, oversized or too deep."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_DEPTH or len(item) > MAX_ITEMS:
            return True
        if isinstance(item, dict):
            for k, v in item.items():
                if not isinstance(k, (str, bytes)):
                    return True
                if isinstance(v, (dict, list, tuple)):
                    stack.append((v, depth + 1))
        elif not _SCALAR_TYPES.issuperset(map(type, item)):  # map(type, ...) runs in C: fast on big lists
            stack.extend((v, depth + 1) for v in item if isinstance(v, (dict, list, tuple)))
    return False


def has_bad_key_or_size(value: Any) -> bool:
    """Whether ``value`` holds what msgpack packs but receivers refuse (see `pack`)."""
    return isinstance(value, (dict, list, tuple)) and _has_bad_key_or_size(value)


def find_unencodable(value: Any) -> str | None:
    """Where in ``value`` something cannot be encoded, and why (None if nothing is found)."""
    return _find_unencodable(value)


def _short(path: str, limit: int = 200) -> str:
    return path if len(path) <= limit else path[:limit] + "..."


def _show(value: Any, limit: int = 60) -> str:
    """A short description of a received value, safe for any value (no deep repr)."""
    if isinstance(value, (str, bytes)):
        return repr(value[:limit]) + ("..." if len(value) > limit else "")
    if value is None or isinstance(value, (bool, int, float)):
        return repr(value)[:limit]
    return f"a {type(value).__name__}"


def pack(value: Any, what: str = "value") -> bytes:
    """Encode ``value`` as msgpack, or raise `EncodeError` naming the key that cannot travel.

    Refused as well: what msgpack could pack but receivers refuse or cannot echo back (map keys
    other than str or bytes, lists or maps over `MAX_ITEMS` items, nesting over `MAX_DEPTH`).
    """
    try:
        data = msgpack.packb(value, use_bin_type=True)
    except Exception as exc:
        bad = _find_unencodable(value)
        where = f" at '{bad}'" if bad else ""
        raise EncodeError(f"cannot encode {what}{where}: {type(exc).__name__}: {exc}") from None
    if isinstance(value, (dict, list, tuple)) and _has_bad_key_or_size(value):
        raise EncodeError(f"cannot encode {what} at '{_find_unencodable(value)}'")
    return data


def encode(msg: Message) -> list:
    """Frames for ``msg``: the header first, then its raw frames unchanged."""
    if len(msg.frames) > MAX_RAW_FRAMES:
        raise EncodeError(f"{len(msg.frames)} raw frames is over the limit of {MAX_RAW_FRAMES}")
    header: dict[str, Any] = {"v": PROTOCOL_VERSION, "op": msg.op, "id": msg.id if msg.id is not None else next_id()}
    if msg.re is not None:
        header["re"] = msg.re
        header["rc"] = msg.rc or "OK"
    header["b"] = msg.body
    return [pack(header, f"message '{msg.op}'"), *msg.frames]


def decode(frames: Sequence[Any], max_header: int = MAX_HEADER_BYTES) -> Message:
    """Decode the frames of one message (without routing identity).

    Raises:
        FrameError: the frames are not a valid flrunner message; the text says why.
    """
    if not frames:
        raise FrameError("empty message")
    if len(frames) > MAX_RAW_FRAMES + 1:
        raise FrameError(f"{len(frames) - 1} raw frames is over the limit of {MAX_RAW_FRAMES}")
    head = frames[0]
    raw = head.bytes if hasattr(head, "bytes") else bytes(head)
    header = unpack(raw, max_header)
    if not isinstance(header, dict):
        raise FrameError(f"header must be a map, got {type(header).__name__}")
    # Never repr() a received value whole: it may be huge or nested too deep for repr.
    v = header.get("v")
    if not isinstance(v, int) or isinstance(v, bool) or v != PROTOCOL_VERSION:
        raise FrameError(f"header field 'v': unsupported protocol version {_show(v)} "
                         f"(this side speaks {PROTOCOL_VERSION})")
    op = header.get("op")
    if not isinstance(op, str) or not op:
        raise FrameError(f"header field 'op' must be a non-empty string, got {_show(op)}")
    mid = header.get("id")
    if not isinstance(mid, int) or isinstance(mid, bool):
        raise FrameError(f"header field 'id' must be an integer, got {_show(mid)}")
    re_ = header.get("re")
    if re_ is not None and (not isinstance(re_, int) or isinstance(re_, bool)):
        raise FrameError(f"header field 're' must be an integer, got {_show(re_)}")
    rc = header.get("rc")
    if rc is not None and not isinstance(rc, str):
        raise FrameError(f"header field 'rc' must be a string, got {_show(rc)}")
    body = header.get("b", {})
    if not isinstance(body, dict):
        raise FrameError(f"header field 'b' must be a map, got {type(body).__name__}")
    return Message(op=op, body=body, id=mid, re=re_, rc=rc, frames=list(frames[1:]))


def peek_id(frames: Sequence[Any]) -> int | None:
    """Best-effort message id of an undecodable message, so an error reply can reference it.

    Only small headers are looked at; extension values are read as None here (never trusted,
    only skipped) so that a message refused for carrying one can still be answered.
    """
    try:
        head = frames[0]
        raw = head.bytes if hasattr(head, "bytes") else bytes(head)
        if len(raw) > 4096:
            return None
        header = msgpack.unpackb(raw, ext_hook=lambda code, data: None, **{**_limits(4096), "max_ext_len": 4096})
        mid = header.get("id") if isinstance(header, dict) else None
        return mid if isinstance(mid, int) and not isinstance(mid, bool) else None
    except Exception:
        return None
