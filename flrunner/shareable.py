"""Shareable: the dict that travels between a job's engine and its sites, as in NVIDIA FLARE."""

from __future__ import annotations

from typing import Any

from flrunner.errors import BadRequest
from flrunner.transport.wire import pack


class ReturnCode:
    """Return codes carried in a Shareable's headers (NVFlare's names and values)."""

    OK = "OK"
    BAD_PEER_CONTEXT = "BAD_PEER_CONTEXT"
    BAD_REQUEST_DATA = "BAD_REQUEST_DATA"
    BAD_TASK_DATA = "BAD_TASK_DATA"
    COMMUNICATION_ERROR = "COMMUNICATION_ERROR"
    ERROR = "ERROR"
    EXECUTION_EXCEPTION = "EXECUTION_EXCEPTION"
    EXECUTION_RESULT_ERROR = "EXECUTION_RESULT_ERROR"
    HANDLER_EXCEPTION = "HANDLER_EXCEPTION"
    MISSING_PEER_CONTEXT = "MISSING_PEER_CONTEXT"
    RUN_MISMATCH = "RUN_MISMATCH"
    TASK_ABORTED = "TASK_ABORTED"
    TASK_UNKNOWN = "TASK_UNKNOWN"
    TASK_UNSUPPORTED = "TASK_UNSUPPORTED"
    TIMEOUT = "TIMEOUT"
    TOPIC_UNKNOWN = "TOPIC_UNKNOWN"
    UNAUTHENTICATED = "UNAUTHENTICATED"
    UNSAFE_JOB = "UNSAFE_JOB"
    SERVICE_UNAVAILABLE = "SERVICE_UNAVAILABLE"
    SERVER_NOT_READY = "SERVER_NOT_READY"
    NOT_FOUND = "NOT_FOUND"


class ReservedHeaderKey:
    HEADERS = "__headers__"
    RC = "__rc__"
    TOPIC = "__topic__"
    PEER_NAME = "__peer_name__"


class Shareable(dict):
    """A dict of data plus a separate dict of headers (return code, topic, peer)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.setdefault(ReservedHeaderKey.HEADERS, {})

    def _headers(self) -> dict:
        headers = self.get(ReservedHeaderKey.HEADERS)
        if not isinstance(headers, dict):
            headers = {}
            self[ReservedHeaderKey.HEADERS] = headers
        return headers

    def set_header(self, key: str, value: Any) -> None:
        self._headers()[key] = value

    def get_header(self, key: str, default: Any = None) -> Any:
        return self._headers().get(key, default)

    def get_headers(self) -> dict:
        return dict(self._headers())

    def set_return_code(self, rc: str) -> None:
        self.set_header(ReservedHeaderKey.RC, rc)

    def get_return_code(self, default: str = ReturnCode.OK) -> str:
        return self.get_header(ReservedHeaderKey.RC, default)

    def wire_parts(self) -> dict:
        """``{"h": headers, "d": data}`` without checking that it can be encoded."""
        return {"h": self.get_headers(), "d": {k: v for k, v in self.items() if k != ReservedHeaderKey.HEADERS}}

    def to_wire(self) -> dict:
        """``{"h": headers, "d": data}``; raises `EncodeError` naming a key msgpack cannot take."""
        wire = self.wire_parts()
        pack(wire, "Shareable")  # fail here, at the sender, naming the key
        return wire

    @classmethod
    def from_wire(cls, wire: Any) -> Shareable:
        if not isinstance(wire, dict) or not isinstance(wire.get("h", {}), dict) \
                or not isinstance(wire.get("d", {}), dict):
            raise BadRequest("a Shareable travels as a map {'h': headers map, 'd': data map}")
        s = cls(wire.get("d", {}))
        s[ReservedHeaderKey.HEADERS] = dict(wire.get("h", {}))
        return s


def make_reply(rc: str, headers: dict | None = None) -> Shareable:
    """An empty Shareable carrying return code ``rc`` (and extra headers)."""
    reply = Shareable()
    for k, v in (headers or {}).items():
        reply.set_header(k, v)
    reply.set_return_code(rc)
    return reply
