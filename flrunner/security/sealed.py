"""Sealed aux payloads: end-to-end encryption between a job's engine and its sites.

The parent routes aux requests and replies between a job process and sites; with
``send_aux_request(..., secure=True)`` it routes ciphertext it has no key for. The keys are
Curve25519 key pairs: a site's is its provisioned CURVE key pair (the same 32-byte keys ZeroMQ
writes in Z85), a job process's is ephemeral, made when it first needs one and never written.
The primitives are libsodium's, through PyNaCl: ``crypto_box`` (X25519 + XSalsa20-Poly1305) to
seal for a key pair, ``crypto_secretbox`` for the bulk.

A request to many sites is encrypted once: its frames are packed into one msgpack blob and
encrypted with a fresh random key (`seal_request`), and only that 32-byte key is sealed for each
site, with a box from the job's secret key to the site's public key. So a fan-out still sends
one large frame, forwarded to every site as it is, plus a small sealed key per site. A reply
goes to one key only, so it is sealed with a box directly (`seal_reply`). Opening a box checks
both ends: a site's reply that opens with the job's secret key and the site's public key was
sealed by the holder of that site's secret key.

Each sealed payload is bound to a context, sealed inside it and checked on opening: a request to
its job, topic and direction (`request_context` from the engine to sites, `site_request_context`
from a site to the engine), a reply to the very request it answers (`reply_context`: the
request's nonce and authentication tag). So the parent, which cannot read a payload, cannot
deliver it elsewhere either: not to another job's handler or another topic, and not as the reply
to another request.

Everything here is a pure function of bytes; keys are raw 32-byte ``bytes``. Whatever does not
open raises `SealedError`, naming what failed and never echoing the input.
"""

from __future__ import annotations

import functools
from typing import Any, Mapping, Sequence

import msgpack
from nacl.exceptions import CryptoError
from nacl.public import Box, PrivateKey, PublicKey
from nacl.secret import SecretBox
from nacl.utils import random as random_bytes

from flrunner.security.curve import KEY_BYTES, key_from_z85, new_secret_key, public_key_of
from flrunner.security.errors import SealedError

#: Length of one site's sealed key in a request: nonce, the 32-byte key, and the MAC.
SEALED_KEY_BYTES = Box.NONCE_SIZE + SecretBox.KEY_SIZE + SecretBox.MACBYTES
#: A request ciphertext's nonce and authentication tag: what its replies are bound to.
REQUEST_ID_BYTES = SecretBox.NONCE_SIZE + SecretBox.MACBYTES
#: Most frames a sealed blob may hold (a Shareable's map and its large binary values).
MAX_FRAMES = 64


def request_context(job_id: str, topic: str) -> bytes:
    """What a sealed aux request is bound to: its job and its topic."""
    return msgpack.packb(["aux-request", job_id, topic], use_bin_type=True)


def site_request_context(job_id: str, topic: str) -> bytes:
    """What a site's sealed aux request to its job's engine is bound to: its job, its topic, and its
    direction. A box between two key pairs opens with either side's secret key, so without the
    direction a request could be sent back to its own sender as if the other side had sealed it."""
    return msgpack.packb(["aux-request-to-engine", job_id, topic], use_bin_type=True)


def reply_context(request_blob: Any) -> bytes:
    """What a sealed reply is bound to: the request it answers, named by its ciphertext's nonce and
    authentication tag (its first `REQUEST_ID_BYTES`). The nonce is random and the tag
    authenticates the whole ciphertext, so no other request has both; unlike a digest of the
    whole request, this costs nothing for a 10 MB one."""
    buf = request_blob.buffer if hasattr(request_blob, "buffer") else memoryview(request_blob)  # zmq.Frame: no copy
    return b"aux-reply\0" + bytes(buf[:REQUEST_ID_BYTES])


# --- requests: one ciphertext for every site, a sealed key per site ---------------------------------


def seal_request(frames: Sequence[Any], sender_secret: bytes, recipients: Mapping[str, bytes], *,
                 context: bytes = b"") -> tuple[bytes, dict[str, bytes]]:
    """Encrypt ``frames`` once for several recipients.

    Args:
        frames: the payload frames (`flrunner.aux.payload.encode_shareable`).
        sender_secret: the sender's secret key.
        recipients: ``{name: public key}``.
        context: what the payload is bound to (`request_context`); opening checks it.

    Returns:
        (the ciphertext, to send to every recipient; ``{name: sealed key}``, each one's own).
    """
    data_key = random_bytes(SecretBox.KEY_SIZE)
    blob = bytes(SecretBox(data_key).encrypt(_pack(frames, context)))
    sealed = {name: bytes(_box(sender_secret, public, f"'{name}'").encrypt(data_key))
              for name, public in recipients.items()}
    return blob, sealed


def open_request(frames: Sequence[Any], sealed_key: bytes, recipient_secret: bytes, sender_public: bytes, *,
                 context: bytes = b"") -> list[bytes]:
    """The payload frames of a sealed request, opened with the recipient's secret key.

    Raises:
        SealedError: not one ciphertext frame, a malformed key, a key or ciphertext that does
            not open (tampered with, or sealed by or for another key), or a payload sealed for
            another ``context``.
    """
    blob = _single(frames, "request")
    try:
        data_key = _box(recipient_secret, sender_public, "the sender").decrypt(sealed_key)
    except CryptoError:
        raise SealedError("its sealed key does not open with this site's key and the sender's key "
                          "(tampered with, or sealed for another key)") from None
    try:
        plain = SecretBox(data_key).decrypt(blob)
    except CryptoError:
        raise SealedError("its payload does not open with its key (tampered with)") from None
    return _unpack(plain, context)


# --- replies: sealed to one key ---------------------------------------------------------------------


def seal_reply(frames: Sequence[Any], sender_secret: bytes, recipient_public: bytes, *,
               context: bytes = b"") -> list[bytes]:
    """``frames`` sealed from the sender's key pair to ``recipient_public``: one ciphertext frame,
    bound to ``context`` (`reply_context` of the request it answers)."""
    return [bytes(_box(sender_secret, recipient_public, "the recipient").encrypt(_pack(frames, context)))]


def open_reply(frames: Sequence[Any], recipient_secret: bytes, sender_public: bytes, *,
               context: bytes = b"") -> list[bytes]:
    """The frames of a sealed reply, opened only if ``sender_public``'s holder sealed them for ``context``.

    Raises:
        SealedError: not one ciphertext frame, one that does not open (tampered with, or not
            sealed by that sender for this key), or one sealed for another ``context``.
    """
    blob = _single(frames, "reply")
    try:
        plain = _box(recipient_secret, sender_public, "the sender").decrypt(blob)
    except CryptoError:
        raise SealedError("it does not open with the sender's key (tampered with, or sealed by another key)") from None
    return _unpack(plain, context)


# --- helpers ----------------------------------------------------------------------------------------


def _private(secret_key: bytes) -> PrivateKey:
    try:
        return _private_key(bytes(secret_key))
    except (CryptoError, TypeError):
        raise SealedError(f"a secret key is {KEY_BYTES} bytes") from None


@functools.lru_cache(maxsize=64)
def _private_key(secret_key: bytes) -> PrivateKey:
    return PrivateKey(secret_key)


def _box(own_secret: bytes, their_public: bytes, whose: str) -> Box:
    """A box between two key pairs; a malformed (or low-order) public key is named by ``whose``."""
    own = _private(own_secret)
    try:
        return _shared_box(own, bytes(their_public))
    except (CryptoError, TypeError):
        raise SealedError(f"the public key of {whose} is not a {KEY_BYTES}-byte Curve25519 key") from None


@functools.lru_cache(maxsize=1024)
def _shared_box(own: PrivateKey, their_public: bytes) -> Box:
    """Making a box computes the two key pairs' shared key (~45 µs): once per pair of keys, not
    once per message and site."""
    return Box(own, PublicKey(their_public))


def _frame_bytes(frame: Any) -> bytes:
    return frame.bytes if hasattr(frame, "bytes") else bytes(frame)


def _single(frames: Sequence[Any], what: str) -> bytes:
    if len(frames) != 1:
        raise SealedError(f"a sealed {what} is one ciphertext frame, this one has {len(frames)}")
    return _frame_bytes(frames[0])


def _pack(frames: Sequence[Any], context: bytes) -> bytes:
    if len(frames) > MAX_FRAMES:
        raise SealedError(f"{len(frames)} frames is over the limit of {MAX_FRAMES} for a sealed payload")
    return msgpack.packb([bytes(context)] + [_frame_bytes(f) for f in frames], use_bin_type=True)


def _unpack(plain: bytes, context: bytes) -> list[bytes]:
    """The frames packed by `_pack` for ``context``. The plaintext was authenticated, but is still
    decoded with limits."""
    try:
        items = msgpack.unpackb(plain, raw=False, max_bin_len=len(plain), max_array_len=MAX_FRAMES + 1, max_str_len=0,
                                max_map_len=0, max_ext_len=0)
    except Exception as exc:
        raise SealedError(f"its opened payload is not a list of frames ({type(exc).__name__})") from None
    if not isinstance(items, list) or not items or not all(isinstance(f, bytes) for f in items):
        raise SealedError("its opened payload is not a list of frames")
    if items[0] != context:
        raise SealedError("it was sealed for another request, job or topic (replayed or redirected on the way)")
    return items[1:]


__all__ = ["KEY_BYTES", "SEALED_KEY_BYTES", "MAX_FRAMES", "new_secret_key", "public_key_of", "key_from_z85",
           "request_context", "site_request_context", "reply_context", "seal_request", "open_request", "seal_reply",
           "open_reply"]
