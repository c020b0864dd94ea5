"""Start-up kits and the parent's allowlist: their layout, their formats, and their loaders.

``flrunner provision --out DIR`` (see `flrunner.security.provisioning`) lays out one FL project::

    DIR/                          0700
      parent/                     0700  the parent's kit
        kit.json                  {"format": 1, "name": "parent", "role": "parent",
                                   "endpoint": <sites endpoint>, "admin_endpoint": <admin endpoint>,
                                   "created": <ISO time>}
        parent.key                the parent's public certificate (ZeroMQ format)
        parent.key_secret   0600  the parent's secret certificate
        allowlist.json            {"format": 1, "participants": {NAME: {"role": "site"|"admin",
                                   "public_key": <Z85>, "added": <ISO time>}}}
        revoked.json              same shape; each entry also has "revoked" (ISO time) and "reason"
        allowed/NAME.key          public certificate of each allowlisted participant
        revoked/NAME.key          public certificate of each revoked participant
      <site or admin NAME>/       0700  one kit per participant
        kit.json                  {"format": 1, "name": NAME, "role": "site"|"admin",
                                   "endpoint": <the parent endpoint it connects to>, "created": ...}
        NAME.key                  its public certificate
        NAME.key_secret     0600  its secret certificate
        parent.key                the parent's public certificate

Certificates are pyzmq's (`zmq.auth.create_certificates` / `zmq.auth.load_certificate`), so
``allowed/`` also works as a ``zmq.auth`` certificate directory. It does not bind a key to a
name, though: the parent must use `load_allowlist`, whose answer maps each key to one name and
role, e.g. from a ``zmq.auth`` credentials callback and an overridden ``curve_user_id``.

``allowlist.json`` is the authority; ``revoked.json`` overrides it (a key or name in both is
refused, so a revocation interrupted between the two writes still holds). Both files are only
ever replaced whole, by ``rename``: a reader sees the old or the new file, never half of one.

Revocation takes effect in a running parent when it reloads: the parent re-reads the allowlist
(`load_allowlist`) on SIGHUP and whenever `allowlist_files` change. Because writers replace the
files by rename, watch the parent kit directory or compare ``(st_ino, st_mtime_ns)`` of each
file, not an inotify watch on the old inode; on a reload that fails (malformed file, bad
permissions) keep refusing everyone the old list no longer allows, and log the error.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, NamedTuple

from flrunner.job import ALL_SITES, NAME_RE, SERVER
from flrunner.security.errors import InvalidEndpoint, InvalidName, KitError
from flrunner.security.keys import (
    check_not_writable_by_others,
    is_z85_key,
    public_key_path,
    read_public_key,
    read_secret_key,
    secret_key_path,
)

#: Version of kit.json, allowlist.json and revoked.json; loaders refuse any other.
FORMAT = 1
KIT_FILE = "kit.json"
ALLOWLIST_FILE = "allowlist.json"
REVOKED_FILE = "revoked.json"
ALLOWED_DIR = "allowed"
REVOKED_DIR = "revoked"
#: The parent's name, and its kit's folder name in a project.
PARENT = "parent"
DEFAULT_ENDPOINT = "tcp://127.0.0.1:8002"
#: Names a participant cannot take: the job model's ``server`` and ``@ALL``, and the parent's folder.
RESERVED_NAMES = frozenset({SERVER, ALL_SITES, PARENT})

_ENDPOINT_RE = re.compile(r"^(tcp://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):[0-9]{1,5}|ipc://\S+)$")


class Role(str, Enum):
    """What a key may do at the parent."""

    PARENT = "parent"
    SITE = "site"
    ADMIN = "admin"


class Participant(NamedTuple):
    """The identity an allowlisted key is bound to."""

    name: str
    role: Role


@dataclass(frozen=True)
class Kit:
    """One participant's start-up kit, loaded and checked.

    Attributes:
        path: the kit directory.
        name: the participant's name (``"parent"`` for the parent).
        role: parent, site or admin.
        public_key: its CURVE public key (Z85).
        secret_key: its CURVE secret key (Z85); never shown in ``repr``.
        parent_public_key: the key to set as ``CURVE_SERVERKEY`` (the parent's own key in its kit).
        endpoint: where the participant connects (sites or admin endpoint); in the parent's kit,
            the sites endpoint handed to sites at provisioning, for information.
    """

    path: Path
    name: str
    role: Role
    public_key: bytes
    secret_key: bytes = field(repr=False)
    parent_public_key: bytes
    endpoint: str


def validate_name(name: str) -> str:
    """Return ``name`` if a site or admin may be called so, else raise `InvalidName`.

    The rule is the site-name rule of job folders (`flrunner.job.NAME_RE`), minus ``server``,
    ``@ALL`` and ``parent``.
    """
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise InvalidName(f"'{str(name)[:64]}' is not a valid participant name: use 1 to 128 of "
                          f"A-Z a-z 0-9 _ . @ -, starting with a letter or digit")
    if name in RESERVED_NAMES:
        raise InvalidName(f"'{name}' is reserved and cannot name a participant")
    return name


def validate_endpoint(endpoint: str) -> str:
    """Return ``endpoint`` if participants can connect to it (``tcp://HOST:PORT`` or ``ipc://PATH``)."""
    if not isinstance(endpoint, str) or not _ENDPOINT_RE.match(endpoint):
        raise InvalidEndpoint(f"'{str(endpoint)[:200]}' is not an endpoint to connect to: use tcp://HOST:PORT or ipc://PATH")
    return endpoint


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from ``path``, with `KitError` naming the file when it is missing or malformed."""
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except FileNotFoundError:
        raise KitError(path, "missing") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise KitError(path, f"not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise KitError(path, "not a JSON object")
    if doc.get("format") != FORMAT:
        raise KitError(path, f"field 'format': expected {FORMAT}, got {doc.get('format')!r}")
    return doc


def _field(path: Path, doc: dict, key: str, kind: type = str) -> Any:
    value = doc.get(key)
    if not isinstance(value, kind):
        raise KitError(path, f"field '{key}': expected {kind.__name__}, got {value!r}")
    return value


def load_kit(path: str | os.PathLike) -> Kit:
    """Load and check the kit in directory ``path`` (a parent's, a site's or an admin's).

    Raises:
        KitError: a missing or malformed file (named in the message), or keys that do not match.
        InsecurePermissions: a secret key with group/other permissions, or a kit directory or
            ``kit.json`` that group or others may write.
    """
    kit_dir = Path(path).absolute()
    if not kit_dir.is_dir():
        raise KitError(kit_dir, "no such kit directory")
    check_not_writable_by_others(kit_dir)
    kit_file = kit_dir / KIT_FILE
    doc = read_json(kit_file)
    check_not_writable_by_others(kit_file)
    try:
        role = Role(_field(kit_file, doc, "role"))
    except ValueError:
        raise KitError(kit_file, f"field 'role': expected one of {[r.value for r in Role]}, "
                                 f"got {doc['role']!r}") from None
    name = _field(kit_file, doc, "name")
    if role is Role.PARENT:
        if name != PARENT:
            raise KitError(kit_file, f"field 'name': a parent kit is named '{PARENT}', got {name!r}")
    else:
        try:
            validate_name(name)
        except InvalidName as exc:
            raise KitError(kit_file, f"field 'name': {exc}") from None
    try:
        endpoint = validate_endpoint(_field(kit_file, doc, "endpoint"))
    except InvalidEndpoint as exc:
        raise KitError(kit_file, f"field 'endpoint': {exc}") from None

    public_key = read_public_key(public_key_path(kit_dir, name))
    secret_public, secret_key = read_secret_key(secret_key_path(kit_dir, name))
    if secret_public != public_key:
        raise KitError(secret_key_path(kit_dir, name),
                       f"does not hold the key of {public_key_path(kit_dir, name).name}")
    parent_key = public_key if role is Role.PARENT else read_public_key(public_key_path(kit_dir, PARENT))
    return Kit(path=kit_dir, name=name, role=role, public_key=public_key, secret_key=secret_key,
               parent_public_key=parent_key, endpoint=endpoint)


def allowlist_files(parent_kit_dir: str | os.PathLike) -> tuple[Path, Path]:
    """The files whose change means the parent should reload its allowlist."""
    d = Path(parent_kit_dir).absolute()
    return d / ALLOWLIST_FILE, d / REVOKED_FILE


def read_entries(path: Path) -> dict[str, dict[str, Any]]:
    """The checked ``participants`` of an allowlist.json or revoked.json (missing file: none).

    Each entry is a dict with at least ``role`` (a `Role` value, not parent) and ``public_key``.
    """
    if not path.exists():
        return {}
    doc = read_json(path)
    check_not_writable_by_others(path)
    entries = _field(path, doc, "participants", dict)
    keys: dict[str, str] = {}
    for name, entry in entries.items():
        where = f"participants.{str(name)[:64]}"
        try:
            validate_name(name)
        except InvalidName as exc:
            raise KitError(path, f"field '{where}': {exc}") from None
        if not isinstance(entry, dict):
            raise KitError(path, f"field '{where}': expected an object, got {entry!r}")
        if entry.get("role") not in (Role.SITE.value, Role.ADMIN.value):
            raise KitError(path, f"field '{where}.role': expected 'site' or 'admin', got {entry.get('role')!r}")
        key = entry.get("public_key")
        if not isinstance(key, str) or not is_z85_key(key):
            raise KitError(path, f"field '{where}.public_key': not a 40-character Z85 CURVE key")
        if key in keys:
            raise KitError(path, f"field '{where}.public_key': the same key is bound to '{keys[key]}'")
        keys[key] = name
    return entries


def load_allowlist(parent_kit_dir: str | os.PathLike) -> dict[bytes, Participant]:
    """The participants the parent may let in: ``{public key (Z85 bytes): (name, role)}``.

    Revoked participants are left out, by name and by key. A parent kit with no participants
    yet gives ``{}``.

    Raises:
        KitError: ``allowlist.json`` missing or malformed, or ``revoked.json`` malformed (the
            message names the file and the field).
        InsecurePermissions: the parent kit directory or one of the two files is writable by
            group or others.
    """
    allow_file, revoked_file = allowlist_files(parent_kit_dir)
    if not allow_file.parent.is_dir():
        raise KitError(allow_file.parent, "no such parent kit directory")
    check_not_writable_by_others(allow_file.parent)
    if not allow_file.exists():
        raise KitError(allow_file, "missing")
    active = read_entries(allow_file)
    revoked = read_entries(revoked_file)
    revoked_keys = {e["public_key"] for e in revoked.values()}
    return {entry["public_key"].encode("ascii"): Participant(name, Role(entry["role"]))
            for name, entry in active.items()
            if name not in revoked and entry["public_key"] not in revoked_keys}
