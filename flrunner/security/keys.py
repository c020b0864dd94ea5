"""CURVE key pairs on disk, in ZeroMQ's certificate format, with the permission checks.

A key pair is two files written by `zmq.auth.create_certificates`: ``NAME.key`` (public) and
``NAME.key_secret`` (public and secret). Both are read back with `zmq.auth.load_certificate`, so
anything built on `zmq.auth` reads the same files. Keys are handled as Z85 ``bytes`` (40
characters), the form `zmq.auth` and the ``CURVE_*KEY`` socket options use.

The checks are ssh's: a secret key with any group or other permission bit is refused, and so is
a file or directory others may write (whoever can replace an allowlist can let themselves in).
Nothing is ever chmod-ed on load; the error says what to fix.
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

import zmq
import zmq.auth

from flrunner.security.errors import InsecurePermissions, KitError

PUBLIC_SUFFIX = ".key"
SECRET_SUFFIX = ".key_secret"
SECRET_MODE = 0o600
PUBLIC_MODE = 0o644
DIR_MODE = 0o700

_Z85_KEY_RE = re.compile(rb"^[0-9a-zA-Z.\-:+=^!/*?&<>()\[\]{}@%$#]{40}$")


def is_z85_key(value: bytes | str) -> bool:
    """Whether ``value`` is a well-formed Z85 CURVE key (40 characters, 32 bytes decoded)."""
    if isinstance(value, str):
        try:
            value = value.encode("ascii")
        except UnicodeEncodeError:
            return False
    return bool(_Z85_KEY_RE.match(value))


def public_key_path(directory: str | os.PathLike, name: str) -> Path:
    return Path(directory) / f"{name}{PUBLIC_SUFFIX}"


def secret_key_path(directory: str | os.PathLike, name: str) -> Path:
    return Path(directory) / f"{name}{SECRET_SUFFIX}"


def create_keypair(directory: str | os.PathLike, name: str, metadata: dict[str, str] | None = None) -> bytes:
    """Write a new key pair as ``directory/NAME.key`` and ``directory/NAME.key_secret``.

    ``directory`` must be a fresh 0700 directory: `zmq.auth.create_certificates` creates the
    files with the process umask, and the private directory is what keeps the secret file out
    of reach until it is chmod-ed to 0600 here.

    Returns:
        The new public key (Z85).
    """
    for path in (public_key_path(directory, name), secret_key_path(directory, name)):
        if os.path.lexists(path):
            raise KitError(path, "exists; refusing to overwrite a key")
    public_file, secret_file = zmq.auth.create_certificates(os.fspath(directory), name, metadata=metadata)
    os.chmod(secret_file, SECRET_MODE)
    os.chmod(public_file, PUBLIC_MODE)
    return read_public_key(public_file)


def read_public_key(path: str | os.PathLike) -> bytes:
    """The public key of a certificate file (either kind), checked to be a Z85 CURVE key."""
    path = Path(path)
    if not path.is_file():
        raise KitError(path, "missing public key file")
    try:
        public, _ = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        raise KitError(path, f"not a ZeroMQ certificate: {exc}") from None
    if not is_z85_key(public):
        raise KitError(path, "public-key is not a 40-character Z85 CURVE key")
    return public


def read_secret_key(path: str | os.PathLike) -> tuple[bytes, bytes]:
    """The (public, secret) keys of a ``.key_secret`` file.

    Raises:
        InsecurePermissions: the file has any group or other permission bit.
        KitError: missing, not a certificate, no secret-key, or a secret-key that does not
            belong to the file's public-key.
    """
    path = Path(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise KitError(path, "missing secret key file") from None
    if not stat.S_ISREG(st.st_mode):
        raise KitError(path, "secret key is not a regular file")
    if st.st_mode & 0o077:
        raise InsecurePermissions(path, st.st_mode, f"secret key is accessible by group or others; "
                                                    f"run chmod 600 {path}")
    try:
        public, secret = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        raise KitError(path, f"not a ZeroMQ certificate: {exc}") from None
    if not secret or not is_z85_key(secret):
        raise KitError(path, "no 40-character Z85 secret-key in the file")
    try:
        derived = zmq.curve_public(secret)
    except zmq.ZMQError:
        raise KitError(path, "secret-key is not a valid Z85 CURVE key") from None
    if derived != public:
        raise KitError(path, "public-key does not belong to the secret-key")
    return public, secret


def check_not_writable_by_others(path: str | os.PathLike) -> None:
    """Refuse a file or directory that group or others may write (they could swap its content)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise KitError(path, "missing") from None
    if st.st_mode & 0o022:
        raise InsecurePermissions(path, st.st_mode, f"writable by group or others; run chmod go-w {path}")


def make_private_dir(path: str | os.PathLike) -> None:
    """Create ``path`` as a 0700 directory (exactly 0700, whatever the umask)."""
    os.mkdir(path, DIR_MODE)
    os.chmod(path, DIR_MODE)
