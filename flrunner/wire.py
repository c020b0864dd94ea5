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

from .errors import EncodeError, FrameError

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


def _find_unencodable(value: Any, path: str) -> str | None:
    if value is None or isinstance(value, (bool, int, float, str, bytes, bytearray, memoryview)):
        return None
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            bad = _find_unencodable(item, f"{path}[{i}]")
            if bad:
                return bad
        return None
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, (str, int, bytes)):
                return f"{path} (key {k!r} of type {type(k).__name__})"
            bad = _find_unencodable(v, f"{path}.{k}" if path else str(k))
            if bad:
                return bad
        return None
    return f"{path} (type {type(value).__name__})"


def pack(value: Any, what: str = "value") -> bytes:
    """Encode ``value`` as msgpack, or raise `EncodeError` naming the key that cannot travel."""
    try:
        return msgpack.packb(value, use_bin_type=True)
    except Exception as exc:
        bad = _find_unencodable(value, "")
        where = f" at '{bad}'" if bad else ""
        raise EncodeError(f"cannot encode {what}{where}: {exc}") from None


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
    v = header.get("v")
    if v != PROTOCOL_VERSION:
        raise FrameError(f"unsupported protocol version {v!r} (this side speaks {PROTOCOL_VERSION})")
    op = header.get("op")
    if not isinstance(op, str) or not op:
        raise FrameError(f"header field 'op' must be a non-empty string, got {op!r:.60}")
    mid = header.get("id")
    if not isinstance(mid, int) or isinstance(mid, bool):
        raise FrameError(f"header field 'id' must be an integer, got {mid!r:.60}")
    re_ = header.get("re")
    if re_ is not None and (not isinstance(re_, int) or isinstance(re_, bool)):
        raise FrameError(f"header field 're' must be an integer, got {re_!r:.60}")
    rc = header.get("rc")
    if rc is not None and not isinstance(rc, str):
        raise FrameError(f"header field 'rc' must be a string, got {rc!r:.60}")
    body = header.get("b", {})
    if not isinstance(body, dict):
        raise FrameError(f"header field 'b' must be a map, got {type(body).__name__}")
    return Message(op=op, body=body, id=mid, re=re_, rc=rc, frames=list(frames[1:]))


def peek_id(frames: Sequence[Any]) -> int | None:
    """Best-effort message id of an undecodable message, so an error reply can reference it."""
    try:
        head = frames[0]
        header = unpack(head.bytes if hasattr(head, "bytes") else bytes(head), 4096)
        mid = header.get("id") if isinstance(header, dict) else None
        return mid if isinstance(mid, int) and not isinstance(mid, bool) else None
    except Exception:
        return None
