"""Secure aux on either side: which keys and which context seal a request and its reply.

`flrunner.security.sealed` is the cryptography; this module is how a job's engine and a site use
it. The sender of a request seals it once for all its recipients (`seal_request`) and opens each
reply with the recipient's key it sealed for (`SealedRequest.open_reply`: a reply that does not
open becomes a reply Shareable saying why). The receiver opens the request with the keys it
chose for the sender (`SealedFrom.open`: never a key the request itself names, where it can
help it) and seals its reply back, bound to that very request (`SealedFrom.seal_reply`).

A request is bound to its job, its topic and its direction (`Direction`); a reply to the request
it answers. A job process's own key pair is ephemeral (`KeyPair`); a site's is its kit's. The
key of a job's process reaches the job's sites after each hello of that process (`PeerKey`).

`flrunner.security.sealed` (PyNaCl) is imported when something is first sealed or opened:
PyNaCl costs a job process ~10 ms and its memory at start, and most jobs never seal (see
`flrunner.security.curve`). Warm job processes find it preloaded by the template.
"""

from __future__ import annotations

import enum
import threading
from dataclasses import dataclass, replace
from types import ModuleType
from typing import Any, Mapping, Sequence

from flrunner.aux.handling import failure_reply, reply_from
from flrunner.errors import Rc
from flrunner.security.curve import new_secret_key, public_key_of
from flrunner.security.errors import SealedError
from flrunner.shareable import Shareable
from flrunner.transport.wire import Message


def _sealed() -> ModuleType:
    """`flrunner.security.sealed`, imported on first use (see the module docstring)."""
    from flrunner.security import sealed

    return sealed


class Direction(enum.Enum):
    """Which way a request goes: a sealed request opens only for its own direction (a box between
    two key pairs opens with either side's secret key)."""

    TO_SITES = "from a job's engine to its sites"
    TO_ENGINE = "from a site to its job's engine"


def request_context(direction: Direction, job_id: str, topic: str) -> bytes:
    """What a sealed request is bound to: its job, its topic and its direction."""
    sealed = _sealed()
    if direction is Direction.TO_SITES:
        return sealed.request_context(job_id, topic)
    return sealed.site_request_context(job_id, topic)


class KeyPair:
    """A sealing key pair (Curve25519), thread-safe: a job process's is made when first asked for
    (at its hello) and never written; a site's is its kit's.

    Args:
        secret: the secret key (raw 32 bytes); None: a fresh one, made on first use.
    """

    def __init__(self, secret: bytes | None = None) -> None:
        self._secret = secret
        self._public: bytes | None = None
        self._lock = threading.Lock()

    @property
    def secret(self) -> bytes:
        return self._pair()[0]

    @property
    def public(self) -> bytes:
        return self._pair()[1]

    def _pair(self) -> tuple[bytes, bytes]:
        with self._lock:
            if self._secret is None:
                self._secret = new_secret_key()
            if self._public is None:
                self._public = public_key_of(self._secret)
            return self._secret, self._public


class PeerKey:
    """The public key a peer seals with, as last passed on: a job process's, which the parent sends
    the job's sites after each hello of that process (a relaunched process has a new one).

    Args:
        key: the key known at the start; None until one arrives.
    """

    def __init__(self, key: bytes | None = None) -> None:
        self._key = key

    def get(self) -> bytes | None:
        return self._key

    def set(self, key: bytes | None) -> None:
        self._key = key


# --- the requesting side ------------------------------------------------------------------------------

@dataclass(frozen=True)
class SealedRequest:
    """A request sealed once for its recipients.

    Attributes:
        frames: the one ciphertext frame, the same for every recipient.
        keys: ``{recipient: the payload's key sealed for it}``.
        recipients: ``{recipient: public key}``: a reply opens only if that key sealed it.
        secret: the sender's secret key.
        reply_context: what the replies must be bound to (this very request).
    """

    frames: list
    keys: dict[str, bytes]
    recipients: dict[str, bytes]
    secret: bytes
    reply_context: bytes

    def open_reply(self, msg: Message, recipient: str, whose: str) -> Shareable:
        """A recipient's answer: a reason in the clear (from the parent or the recipient, never
        payload), or a payload that opens only if that recipient's key sealed it for this request.

        Args:
            msg: the routed reply.
            recipient: who answered.
            whose: the recipient as reasons name it (``"site 'site-1'"``).
        """
        if msg.rc not in (None, Rc.OK):
            return reply_from(msg)
        if recipient not in self.recipients:
            return failure_reply(Rc.BAD_REQUEST, f"{whose} answered a secure request not sealed for it")
        try:
            frames = _sealed().open_reply(msg.frames, self.secret, self.recipients[recipient],
                                          context=self.reply_context)
        except SealedError as exc:
            return failure_reply(Rc.BAD_REQUEST, f"the secure reply of {whose} cannot be opened: {exc}")
        return reply_from(replace(msg, frames=frames))


def seal_request(frames: Sequence[Any], secret: bytes, recipients: Mapping[str, bytes], direction: Direction,
                 job_id: str, topic: str) -> SealedRequest:
    """Encrypt a request's payload once and seal its key for each recipient.

    Raises:
        SealedError: a key is malformed (named), or the payload has too many frames.
    """
    sealed = _sealed()
    blob, keys = sealed.seal_request(frames, secret, recipients, context=request_context(direction, job_id, topic))
    return SealedRequest([blob], keys, dict(recipients), secret, sealed.reply_context(blob))


# --- the receiving side -------------------------------------------------------------------------------

@dataclass(frozen=True)
class SealedFrom:
    """The keys that open a sealed request from one sender, and seal the reply back to it.

    Attributes:
        secret: the receiver's secret key.
        sender: the sender's public key, as the receiver knows it.
        context: what the request must be bound to (`request_context`).
    """

    secret: bytes
    sender: bytes
    context: bytes

    def open(self, frames: Sequence[Any], sealed_key: bytes) -> list:
        """The request's payload frames.

        Raises:
            SealedError: it does not open (tampered with, sealed for another key, job, topic or
                direction).
        """
        return _sealed().open_request(frames, sealed_key, self.secret, self.sender, context=self.context)

    def seal_reply(self, frames: Sequence[Any], request_frames: Sequence[Any]) -> list:
        """``frames`` sealed to the sender, bound to the request they answer (its ciphertext frames)."""
        sealed = _sealed()
        return sealed.seal_reply(frames, self.secret, self.sender, context=sealed.reply_context(request_frames[0]))


def sealed_from(secret: bytes, sender: bytes, direction: Direction, job_id: str, topic: str) -> SealedFrom:
    """The keys for a sealed request of ``topic`` in ``job_id`` that came ``direction``."""
    return SealedFrom(secret, sender, request_context(direction, job_id, topic))


__all__ = ["Direction", "KeyPair", "PeerKey", "SealedFrom", "SealedRequest", "request_context", "seal_request",
           "sealed_from"]
