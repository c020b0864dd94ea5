"""`Op`: one operation of the protocol, owning both ends of it; `Channel`: the ops one kind of
peer sends on one socket.

An op says what its request carries (`Op.fields`), what its answer carries (`Op.reply`), whether
the sender must have authenticated, and what it is for (its ``doc``, which is its documentation).
The sending side builds its messages through it (`Op.message`, `Op.call`, `Op.send`, `Op.start`),
so a misspelt or missing field fails at the sender; the receiving side validates a request with
it (`Op.validate`, through `flrunner.protocol.dispatch.Dispatcher`) and builds the answer with it
(`Op.answer`); the caller checks the answer's shape with it (`Op.check_reply`).

A port is what carries messages: the job process's `child.session.ParentSession`, a site's
`flrunner.transport.link.Link`, an admin's `flrunner.transport.dealer.DealerClient`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterator, Mapping, Protocol

from flrunner.errors import BadRequest, FrameError, Rc, error_for_rc
from flrunner.protocol.fields import Field
from flrunner.transport.wire import Message

if TYPE_CHECKING:  # the link (and ZeroMQ) is not loaded by whoever only reads op definitions
    from flrunner.transport.link import Call


class Port(Protocol):
    """What carries an op's messages to the peer (see the module docstring)."""

    def request(self, msg: Message, timeout: float = ...) -> Message: ...

    def send(self, msg: Message) -> object: ...


class CallPort(Port, Protocol):
    """A port that also collects several answers to one request (aux: one per site)."""

    def call(self, msg: Message) -> Call: ...


@dataclass(frozen=True, eq=False)  # each op is one object: compared and hashed by identity
class Op:
    """One operation: its name, its request and reply fields, and its documentation.

    Attributes:
        name: the ``op`` of the message header.
        doc: what it does, for people (the CLI's help for admin ops).
        fields: the request body's fields.
        reply: the fields of an OK answer (checked by the caller; others are ignored), or None for
            an op that is never answered (a push, a fire-and-forget message).
        needs_auth: whether the sender must have authenticated first.
    """

    name: str
    doc: str
    fields: Mapping[str, Field] = field(default_factory=dict)
    reply: Mapping[str, Field] | None = field(default_factory=dict)
    needs_auth: bool = True

    # --- the sending side ------------------------------------------------------------------------
    def message(self, frames: list | None = None, **values: Any) -> Message:
        """A request of this op (the port gives it its id). Absent or None values are left out.

        Raises:
            TypeError: a value for a field this op does not have, or a required one missing
                (a bug at the sender, not bad input).
        """
        unknown = [k for k in values if k not in self.fields]
        if unknown:
            raise TypeError(f"op '{self.name}' has no field(s) {', '.join(sorted(unknown))}")
        body = {k: v for k, v in values.items() if v is not None}
        missing = [k for k, spec in self.fields.items() if spec.required and k not in body]
        if missing:
            raise TypeError(f"op '{self.name}' needs field(s) {', '.join(missing)}")
        return Message(self.name, body, frames=list(frames or []))

    def call(self, port: Port, *, wait: float | None = None, frames: list | None = None, **values: Any) -> Message:
        """Send a request through ``port`` and return its (checked) answer.

        ``wait`` is how long to wait for it (the port's default if None).

        Raises:
            RequestTimeout: no answer in time.
            FlrunnerError: the peer answered with an error code (the subclass the code names),
                or an answer of the wrong shape (`FrameError`).
        """
        msg = self.message(frames, **values)
        reply = port.request(msg) if wait is None else port.request(msg, timeout=wait)
        self.check_reply(reply)
        return reply

    def send(self, port: Port, frames: list | None = None, **values: Any) -> None:
        """Send without waiting for an answer."""
        port.send(self.message(frames, **values))

    def start(self, port: CallPort, frames: list | None = None, **values: Any) -> Call:
        """Send a request whose answers (any number) collect in the returned `Call`."""
        return port.call(self.message(frames, **values))

    def check_reply(self, reply: Message) -> dict:
        """The body of an answer to this op, its declared fields checked.

        Raises:
            FlrunnerError: the answer is an error (the subclass its code names).
            FrameError: an OK answer whose fields do not have this op's reply shape.
        """
        if reply.rc not in (None, Rc.OK):
            raise error_for_rc(reply.rc or Rc.ERROR, str(reply.body.get("reason", reply.rc)))
        for name, spec in (self.reply or {}).items():
            value = reply.body.get(name)
            if value is None:
                if spec.required:
                    raise FrameError(f"the answer to '{self.name}' has no field '{name}'")
                continue
            try:
                spec.check(self.name, name, value)
            except BadRequest as exc:
                raise FrameError(f"the answer to {exc}") from None
        return reply.body

    # --- the receiving side ------------------------------------------------------------------------
    def validate(self, body: Mapping[str, Any]) -> dict:
        """Check ``body`` against the fields; return a dict with absent optional fields as None.

        Raises:
            BadRequest: a missing or unknown field, or one of the wrong type or size (named).
        """
        out: dict[str, Any] = {}
        for name, spec in self.fields.items():
            if name not in body or body[name] is None:
                if spec.required:
                    raise BadRequest(f"op '{self.name}': missing field '{name}'")
                out[name] = None
                continue
            spec.check(self.name, name, body[name])
            out[name] = body[name]
        # Keys may be str or bytes (msgpack bin): sort by text, and list only a few.
        unknown = sorted(str(k)[:60] for k in body if k not in self.fields)
        if unknown:
            more = f" and {len(unknown) - 10} more" if len(unknown) > 10 else ""
            raise BadRequest(f"op '{self.name}': unknown field(s) {', '.join(unknown[:10])}{more}")
        return out

    def answer(self, request: Message, frames: list | None = None, rc: Rc = Rc.OK, **values: Any) -> Message:
        """The answer to ``request`` (an error answer carries ``reason``)."""
        return Message(request.op, values, re=request.id, rc=rc, frames=list(frames or []))


class Channel:
    """The ops one kind of peer sends on one socket (what a job process asks of its parent, what
    the parent pushes to a site, ...).

    Args:
        name: for people (``"jobs"``, ``"to a site"``).
        ops: its operations, each with a name unique in the channel.
    """

    def __init__(self, name: str, *ops: Op) -> None:
        self.name = name
        self._ops = {op.name: op for op in ops}
        if len(self._ops) != len(ops):
            raise ValueError(f"channel {name}: two ops with one name")

    def get(self, name: str) -> Op:
        """The op called ``name``. Raises `BadRequest` naming the known ones."""
        try:
            return self._ops[name]
        except KeyError:
            known = ", ".join(sorted(self._ops))
            raise BadRequest(f"unknown op '{name[:60]}' on the {self.name} channel (known: {known})") from None

    def __contains__(self, op: Op | str) -> bool:
        name = op.name if isinstance(op, Op) else op
        return self._ops.get(name) is op if isinstance(op, Op) else name in self._ops

    def __iter__(self) -> Iterator[Op]:
        return iter(self._ops.values())

    def __repr__(self) -> str:
        return f"Channel({self.name!r}, {', '.join(self._ops)})"
