"""Encoding of a Shareable into frames, with large binary values as separate raw frames.

A Shareable travels as ``{"h": headers, "d": data}``. Any ``bytes``/``bytearray``/``memoryview``
value of at least `INLINE_LIMIT` bytes is not copied into the msgpack frame: it is sent as its
own ZeroMQ frame (zero-copy) and the map holds a small extension value pointing at it. The
parent routes these frames without decoding them; only the engine and the site decode payloads,
with the same limits as every other decoder (no pickle, extension types other than the frame
reference refused).
"""

from __future__ import annotations

from typing import Any, Sequence

import msgpack

from flrunner.errors import EncodeError, FrameError
from flrunner.shareable import Shareable
from flrunner.transport.wire import MAX_HEADER_BYTES, find_unencodable, has_bad_key_or_size

#: Binary values at least this large travel as their own frame.
INLINE_LIMIT = 64 * 1024
#: msgpack extension code of a frame reference inside a payload (never valid in a header).
FRAME_REF = 1
MAX_PAYLOAD_FRAMES = 63


def encode_shareable(shareable: Shareable) -> list:
    """Frames for a Shareable: the msgpack map first, then the large binary values.

    Raises:
        EncodeError: a value cannot travel (or would be refused by the receiver); the message
            names its key.
    """
    frames: list = []
    body = _extract_big_bytes(shareable.wire_parts(), frames)
    if len(frames) > MAX_PAYLOAD_FRAMES:
        raise EncodeError(f"Shareable has {len(frames)} large binary values; at most {MAX_PAYLOAD_FRAMES} can travel")
    try:
        head = msgpack.packb(body, use_bin_type=True)
    except Exception as exc:
        bad = find_unencodable(shareable.wire_parts())
        raise EncodeError(f"cannot encode Shareable{f' at {bad!r}' if bad else ''}: {exc}") from None
    if has_bad_key_or_size(body):
        raise EncodeError(f"cannot encode Shareable at {find_unencodable(shareable.wire_parts())!r}")
    if len(head) > MAX_HEADER_BYTES:
        raise EncodeError(f"Shareable is {len(head)} bytes without its large binary values, over the receiver's "
                          f"limit of {MAX_HEADER_BYTES}; put bulk data in bytes values (they travel as raw frames)")
    return [head, *frames]


def _extract_big_bytes(value: Any, frames: list) -> Any:
    """A copy of the container structure with big binary values replaced by frame references."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        if len(value) >= INLINE_LIMIT:
            frames.append(value)
            return msgpack.ExtType(FRAME_REF, (len(frames) - 1).to_bytes(4, "big"))
        return bytes(value) if not isinstance(value, bytes) else value
    if isinstance(value, dict):
        return {k: _extract_big_bytes(v, frames) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_extract_big_bytes(v, frames) for v in value]
    return value


def decode_shareable(frames: Sequence[Any], max_bytes: int = MAX_HEADER_BYTES) -> Shareable:
    """The Shareable carried by ``frames`` (as produced by `encode_shareable`).

    Large values come back as ``bytes`` (one copy out of the ZeroMQ frame).

    Raises:
        FrameError: the frames are not a valid payload.
    """
    if not frames:
        raise FrameError("aux message without a payload frame")
    head = frames[0]
    raw = head.bytes if hasattr(head, "bytes") else bytes(head)
    if len(raw) > max_bytes:
        raise FrameError(f"payload map of {len(raw)} bytes is over the {max_bytes}-byte limit")
    rest = frames[1:]

    def ext_hook(code: int, data: bytes) -> Any:
        if code != FRAME_REF or len(data) != 4:
            raise FrameError(f"msgpack extension type {code} is not allowed in a payload")
        index = int.from_bytes(data, "big")
        if index >= len(rest):
            raise FrameError(f"payload refers to frame {index} but carries {len(rest)}")
        f = rest[index]
        return f.bytes if hasattr(f, "bytes") else bytes(f)

    try:
        wire = msgpack.unpackb(raw, raw=False, strict_map_key=True, ext_hook=ext_hook, max_str_len=max_bytes,
                               max_bin_len=max_bytes, max_array_len=1_000_000, max_map_len=1_000_000)
    except FrameError:
        raise
    except Exception as exc:
        raise FrameError(f"undecodable payload ({type(exc).__name__})") from None
    try:
        return Shareable.from_wire(wire)
    except Exception as exc:
        raise FrameError(f"payload is not a Shareable: {exc}") from None
