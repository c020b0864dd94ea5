"""Serving an aux request and mapping outcomes to reply Shareables, the same on every side.

A job's engine serves its sites' requests and a site serves its jobs' requests the same way
(`serve_request`): open the request if it came sealed, run the topic's handler, and answer —
sealed back to the sender if the request was. Whatever keeps a handler from answering becomes a
reply Shareable with NVIDIA FLARE's return code and a ``reason`` header (`handler_reply`):
``BAD_REQUEST_DATA`` for a request that does not decode, ``TOPIC_UNKNOWN``,
``EXECUTION_EXCEPTION``, ``EXECUTION_RESULT_ERROR``. On the requesting side, a routed reply
that came as a wire error code (no reply in time, an unknown or offline peer, ...) becomes the
Shareable NVIDIA FLARE's callers expect (`failure_reply`, `reply_from`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from flrunner.aux.payload import decode_shareable, encode_shareable
from flrunner.errors import EncodeError, FlrunnerError, FrameError, Rc
from flrunner.security.errors import SealedError
from flrunner.shareable import ReturnCode, Shareable, make_reply
from flrunner.transport.wire import Message

if TYPE_CHECKING:
    from flrunner.aux.secure import SealedFrom
    from flrunner.protocol import Request

#: Header of a failure reply Shareable that says why there is no real reply.
REASON_HEADER = "reason"

#: Reasons should be read, not stored: a handler's exception text is cut to this length.
MAX_REASON = 2000

#: A topic's handler, bound to its context: request -> its reply (a Shareable, or it is refused).
TopicHandler = Callable[[Shareable], Any]

_RC_TO_RETURN_CODE = {
    Rc.TIMEOUT: ReturnCode.TIMEOUT,
    Rc.NOT_FOUND: ReturnCode.NOT_FOUND,
    Rc.UNAVAILABLE: ReturnCode.COMMUNICATION_ERROR,
    Rc.UNAUTHORIZED: ReturnCode.UNAUTHENTICATED,
    Rc.BAD_REQUEST: ReturnCode.BAD_REQUEST_DATA,
}


# --- the requesting side: wire reply codes as NVIDIA FLARE return codes ---------------------------

def failure_reply(rc: str, reason: str) -> Shareable:
    """The reply Shareable standing in for a peer's answer that did not come (or came as an error).

    Its return code says why (``TIMEOUT``, ``NOT_FOUND`` for an unknown target,
    ``COMMUNICATION_ERROR`` for an offline or departed one, …) and header ``reason`` says more.
    """
    return make_reply(_RC_TO_RETURN_CODE.get(rc, ReturnCode.ERROR), {REASON_HEADER: reason})  # type: ignore[call-overload]


def reply_from(msg: Message) -> Shareable:
    """The Shareable in a routed reply: the peer's payload, or a `failure_reply`."""
    if msg.rc not in (None, Rc.OK):
        return failure_reply(msg.rc or Rc.ERROR, str(msg.body.get("reason", msg.rc)))
    try:
        return decode_shareable(msg.frames)
    except FrameError as exc:
        return failure_reply(Rc.BAD_REQUEST, f"undecodable reply: {exc}")


# --- the serving side -------------------------------------------------------------------------------

def handler_reply(frames: list, handler: TopicHandler | None, *, unknown: str, returned_by: str,
                  on_exception: Callable[[], None]) -> Shareable:
    """The reply of a topic's handler to a request, or a reply saying why there is none.

    Args:
        frames: the request's payload frames (opened, if it came sealed).
        handler: the topic's handler; None if the receiver has none for it.
        unknown: the reason given for a topic without a handler.
        returned_by: who is named when the handler returns something other than a Shareable.
        on_exception: called (inside the ``except``, so it may log the traceback) when the handler
            raises.
    """
    try:
        request = decode_shareable(frames)
    except FlrunnerError as exc:
        return failure_reply(Rc.BAD_REQUEST, f"undecodable request: {exc}")
    if handler is None:
        return make_reply(ReturnCode.TOPIC_UNKNOWN, {REASON_HEADER: unknown})
    try:
        reply = handler(request)
    except Exception as exc:
        on_exception()
        return make_reply(ReturnCode.EXECUTION_EXCEPTION, {REASON_HEADER: f"{type(exc).__name__}: {exc}"[:MAX_REASON]})
    if not isinstance(reply, Shareable):
        return make_reply(ReturnCode.EXECUTION_RESULT_ERROR,
                          {REASON_HEADER: f"{returned_by} returned {type(reply).__name__}, not a Shareable"})
    return reply


def serve_request(req: Request, sealed_from: Callable[[], SealedFrom], reply_to: Callable[[list], Shareable], *,
                  cannot_open: str, cannot_travel: str, on_refused: Callable[[SealedError], None]) -> None:
    """Serve one aux request (an op with fields ``fire_and_forget`` and ``sealed_key``) and answer it.

    A sealed request that does not open is answered with the reason, in the clear (never payload),
    and its handler never runs; a reply that cannot be encoded is answered ``ERROR`` with the
    reason. A fire-and-forget request is never answered.

    Args:
        req: the request, as the dispatcher validated it (answered through it).
        sealed_from: the keys of a sealed request's sender and receiver; raises `SealedError` when
            there are none that may open it (called only for a sealed request).
        reply_to: the reply to the opened payload frames (`handler_reply`).
        cannot_open: the start of the reason a sealed request that does not open is refused with.
        cannot_travel: the start of the reason an unencodable reply is refused with.
        on_refused: told of each sealed request that does not open (to log it, throttled).
    """
    fire_and_forget, sealed_key = req.args["fire_and_forget"], req.args["sealed_key"]
    try:
        keys = None if sealed_key is None else sealed_from()
        frames = req.msg.frames if keys is None else keys.open(req.msg.frames, sealed_key)
    except SealedError as exc:
        on_refused(exc)
        if not fire_and_forget:
            req.refuse(exc.rc, f"{cannot_open}: {exc}")
        return
    reply = reply_to(frames)
    if fire_and_forget:
        return
    try:
        out = encode_shareable(reply)
    except EncodeError as exc:
        req.refuse(Rc.ERROR, f"{cannot_travel}: {exc}")
        return
    req.answer(out if keys is None else keys.seal_reply(out, req.msg.frames))


__all__ = ["MAX_REASON", "REASON_HEADER", "TopicHandler", "failure_reply", "handler_reply", "reply_from",
           "serve_request"]
