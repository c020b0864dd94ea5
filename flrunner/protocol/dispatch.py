"""`Dispatcher`: the one place a received request becomes a call to its handler, and whatever
happens there becomes an answer.

The parent (on each of its sockets), a job process (for what its parent pushes) and a site agent
(likewise) serve requests through it the same way: the op is looked up in the channel, the
sender is authorized, the fields are validated, the handler is called, and its result is the
answer. An unknown op, a wrong field, a refused sender or any error a handler raises is answered
with its reply code and a reason (a `FlrunnerError` with its own code, anything else as
``ERROR``); nothing escapes to the caller, which keeps serving.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable

from flrunner.errors import FlrunnerError, Rc
from flrunner.protocol.op import Channel, Op
from flrunner.transport.wire import Message

log = logging.getLogger(__name__)


@dataclass
class Request:
    """A validated request.

    Attributes:
        op: its operation.
        msg: the message as received (its frames are the raw payload, untouched).
        args: its body's fields, absent optional ones as None.
        peer: who sent it, as the receiver knows it (a routing identity on the parent).
        user_id: the name bound to the sender's CURVE key (None without CURVE).
        frame: the first frame as received (CURVE sockets), for the connection it came on.
        respond: sends an answer to this request (for a handler that answers later).
    """

    op: Op
    msg: Message
    args: dict
    respond: Callable[[Message], Any]
    peer: Any = None
    user_id: str | None = None
    frame: Any = field(default=None, repr=False)

    def answer(self, frames: list | None = None, rc: Rc = Rc.OK, **values: Any) -> None:
        """Answer now (or later, from a callback: the handler returned None)."""
        self.respond(self.op.answer(self.msg, frames, rc, **values))

    def refuse(self, rc: Rc, reason: str) -> None:
        """Answer with an error code and the reason."""
        self.respond(self.op.answer(self.msg, None, rc, reason=reason))


#: A handler gets the request and returns the answer's body (or ``(body, frames)``), or None
#: when it answers later with `Request.answer` (or for a request that is never answered).
Handler = Callable[[Request], Any]
#: Called before the handler: raises `Unauthorized` (or another coded error) to refuse.
Authorize = Callable[[Request], None]


class Dispatcher:
    """Serves the requests of one channel.

    Args:
        channel: the ops this dispatcher serves.
        name: for logs (``"jobs socket"``, ``"site agent"``).
        authorize: called with each request before its handler (None: everyone may).
        on_refused: called with (request message, error) for each request answered with an
            error, to count or log bad input without flooding (None: logged at INFO).
    """

    def __init__(self, channel: Channel, name: str, authorize: Authorize | None = None,
                 on_refused: Callable[[Message, FlrunnerError], None] | None = None) -> None:
        self.channel = channel
        self.name = name
        self.authorize = authorize
        self.on_refused = on_refused
        self._handlers: dict[str, Handler] = {}

    def on(self, op: Op, handler: Handler) -> None:
        """Serve ``op`` with ``handler``."""
        if op not in self.channel:
            raise ValueError(f"op '{op.name}' is not on the {self.channel.name} channel")
        self._handlers[op.name] = handler

    def dispatch(self, msg: Message, respond: Callable[[Message], Any], peer: Any = None,
                 user_id: str | None = None, frame: Any = None) -> None:
        """Serve one received request; ``respond`` sends an answer back to its sender.

        An op that is never answered (``reply`` None: a push, a notice) gets no answer, not even
        an error; its refusal is only counted (``on_refused``).
        """
        op: Op | None = None
        try:
            op = self.channel.get(msg.op)
            request = Request(op, msg, {}, respond, peer, user_id, frame)
            if self.authorize is not None:
                self.authorize(request)  # it looks at op.needs_auth
            request.args = op.validate(msg.body)
            handler = self._handlers.get(op.name)
            if handler is None:
                raise FlrunnerError(f"op '{op.name}' is not served by the {self.name}")
            result = handler(request)
        except FlrunnerError as exc:
            if self.on_refused is not None:
                self.on_refused(msg, exc)
            else:
                log.info("%s: '%s' refused (%s): %s", self.name, msg.op[:60], exc.rc, exc)
            if op is None or op.reply is not None:
                respond(Message(msg.op, {"reason": str(exc)}, re=msg.id, rc=exc.rc))
            return
        except Exception as exc:  # a handler bug must not stop the receiver
            log.exception("%s: the handler of '%s' failed", self.name, msg.op[:60])
            if self.on_refused is not None:
                self.on_refused(msg, FlrunnerError(f"internal error: {type(exc).__name__}: {exc}"))
            if op is None or op.reply is not None:
                respond(Message(msg.op, {"reason": f"internal error: {type(exc).__name__}: {exc}"}, re=msg.id,
                                rc=Rc.ERROR))
            return
        if result is None:
            return
        body, frames = result if isinstance(result, tuple) else (result, [])
        respond(Message(msg.op, body, re=msg.id, rc=Rc.OK, frames=list(frames)))
