"""Curve25519 keys as raw 32-byte ``bytes``, made and converted without libsodium's Python binding.

A job process makes its sealing key pair at start (its public key goes in its hello), but most
jobs never seal anything: importing PyNaCl costs a fresh process about 10 ms, so the key pair is
made with what a job process has loaded anyway — ``os.urandom`` for the secret key (every
32-byte string is one) and libzmq's ``curve_public`` for the public key, the same X25519 base
point multiplication libsodium does. `flrunner.security.sealed` (PyNaCl) is imported only when a
payload is sealed or opened.
"""

from __future__ import annotations

import os

import zmq
from zmq.utils import z85

from flrunner.security.errors import SealedError

#: Length of a raw Curve25519 key, public or secret.
KEY_BYTES = 32


def new_secret_key() -> bytes:
    """A fresh random secret key (a job process's ephemeral sealing key)."""
    return os.urandom(KEY_BYTES)


def public_key_of(secret_key: bytes) -> bytes:
    """The public key that belongs to ``secret_key``.

    Raises:
        SealedError: ``secret_key`` is not 32 bytes.
    """
    if not isinstance(secret_key, bytes) or len(secret_key) != KEY_BYTES:
        raise SealedError(f"a secret key is {KEY_BYTES} bytes")
    return z85.decode(zmq.curve_public(z85.encode(secret_key)))


def key_from_z85(key: str | bytes) -> bytes:
    """The raw 32-byte key of a Z85 CURVE key (as in a kit, or a site's registry entry)."""
    try:
        raw = z85.decode(key)
    except (ValueError, TypeError, KeyError):  # KeyError: a character outside Z85's alphabet
        raise SealedError("not a Z85 key (wrong length or characters)") from None
    if len(raw) != KEY_BYTES:
        raise SealedError(f"a Z85 key decodes to {KEY_BYTES} bytes, this one to {len(raw)}")
    return raw
