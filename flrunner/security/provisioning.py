"""Provisioning: create a project's CURVE identities and start-up kits; revoke a participant.

`provision` creates the parent's kit on first use and one kit per new site or admin; run again
on the same directory, it adds new participants and touches nothing else: existing kits and keys
stay byte-identical, and the parent's kit only gains the new ``allowed/NAME.key`` files and a
rewritten ``allowlist.json``. `revoke` moves a participant from ``allowlist.json`` to
``revoked.json`` and keeps its kit for the record. The layout and the file formats are described
in `flrunner.security.kit`.

A running parent picks up either change when it reloads its allowlist: it re-reads it with
`flrunner.security.kit.load_allowlist` on SIGHUP and when `allowlist_files` change (see the
notes on atomic replacement there).

Every request is checked in full before anything is written, so a refused request leaves the
project as it was. Kits are built in a private staging directory and renamed into place, and
runs on one project are serialised with ``flock`` on the project directory.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from flrunner.security.errors import InvalidName, KitError, ParticipantExists, UnknownParticipant
from flrunner.security.keys import DIR_MODE, PUBLIC_MODE, create_keypair, make_private_dir, public_key_path
from flrunner.security.kit import (
    ALLOWED_DIR,
    ALLOWLIST_FILE,
    DEFAULT_ENDPOINT,
    FORMAT,
    KIT_FILE,
    PARENT,
    REVOKED_DIR,
    REVOKED_FILE,
    Kit,
    Role,
    load_kit,
    read_entries,
    read_json,
    validate_endpoint,
    validate_name,
)
from flrunner.util.fsutil import atomic_write, fsync_dir


class Status(str, Enum):
    """What provisioning or revocation did to one participant."""

    CREATED = "created"
    #: Exactly re-requested: nothing changed.
    EXISTS = "exists"
    #: Its kit was made by a run that stopped before the allowlist was written; now allowlisted.
    RESTORED = "restored"
    REVOKED = "revoked"
    ALREADY_REVOKED = "already-revoked"


@dataclass(frozen=True)
class Report:
    """One participant's outcome."""

    name: str
    role: Role
    status: Status
    kit: Path
    public_key: bytes
    endpoint: str | None

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "role": self.role.value, "status": self.status.value, "kit": str(self.kit),
                "public_key": self.public_key.decode("ascii"), "endpoint": self.endpoint}


def _utc(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def _replace_file(path: Path, data: bytes, mode: int = PUBLIC_MODE) -> None:
    """Write ``path`` whole and atomically (temp file + rename): readers never see half of it."""
    atomic_write(path, data, mode)


def _json_bytes(doc: dict) -> bytes:
    return (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode("utf-8")


def _write_new_json(path: Path, doc: dict) -> None:
    with open(path, "xb") as f:
        f.write(_json_bytes(doc))
    os.chmod(path, PUBLIC_MODE)


_STAGING_PREFIX = ".new-"


@contextmanager
def _project_lock(out: Path) -> Iterator[None]:
    # flock on the directory itself: no lock file to leave behind or to confuse with a kit.
    fd = os.open(out, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        # Every run stages under this lock, so a staging directory seen now belongs to a run
        # that was killed; it may hold a secret key nobody will use.
        for leftover in out.glob(f"{_STAGING_PREFIX}*"):
            shutil.rmtree(leftover, ignore_errors=True)
        yield
    finally:
        os.close(fd)


@contextmanager
def _staging(out: Path, name: str) -> Iterator[Path]:
    """A fresh 0700 directory in ``out`` (dot-named: never a participant name) removed on failure."""
    stage = Path(tempfile.mkdtemp(prefix=f"{_STAGING_PREFIX}{name}.", dir=out))
    os.chmod(stage, DIR_MODE)
    try:
        yield stage
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise


def _install(stage: Path, target: Path) -> None:
    # rename() would silently replace an empty directory; we hold the project lock, so this
    # check is not racing another provision run.
    if os.path.lexists(target):
        shutil.rmtree(stage, ignore_errors=True)
        raise ParticipantExists(f"{target} exists; refusing to overwrite it")
    os.rename(stage, target)
    fsync_dir(target.parent)


def _open_project(out: Path, create: bool) -> None:
    """Make sure ``out`` is a project directory, or a directory that can become one."""
    if os.path.lexists(out / PARENT / KIT_FILE):
        return
    if out.exists():
        if not out.is_dir():
            raise KitError(out, "not a directory")
        # Leftover staging directories of a run that was killed do not make it a foreign folder.
        if any(not p.name.startswith(_STAGING_PREFIX) for p in out.iterdir()):
            raise KitError(out, f"not empty and not a flrunner project (no {PARENT}/{KIT_FILE}); "
                                f"refusing to write kits into it")
        if create:
            os.chmod(out, DIR_MODE)
        return
    if not create:
        raise KitError(out, "no such project directory")
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        make_private_dir(out)
    except FileExistsError:  # another run created it first; its content is checked under the lock
        pass


def _create_parent(out: Path, endpoint: str, admin_endpoint: str, now: float) -> Kit:
    with _staging(out, PARENT) as stage:
        create_keypair(stage, PARENT, metadata={"name": PARENT, "role": Role.PARENT.value})
        _write_new_json(stage / KIT_FILE, {"format": FORMAT, "name": PARENT, "role": Role.PARENT.value,
                                           "endpoint": endpoint, "admin_endpoint": admin_endpoint,
                                           "created": _utc(now)})
        _write_new_json(stage / ALLOWLIST_FILE, {"format": FORMAT, "participants": {}})
        _write_new_json(stage / REVOKED_FILE, {"format": FORMAT, "participants": {}})
        make_private_dir(stage / ALLOWED_DIR)
        make_private_dir(stage / REVOKED_DIR)
    _install(stage, out / PARENT)
    return load_kit(out / PARENT)


def _create_participant(out: Path, name: str, role: Role, endpoint: str, now: float) -> bytes:
    with _staging(out, name) as stage:
        public_key = create_keypair(stage, name, metadata={"name": name, "role": role.value})
        shutil.copyfile(public_key_path(out / PARENT, PARENT), public_key_path(stage, PARENT))
        os.chmod(public_key_path(stage, PARENT), PUBLIC_MODE)
        _write_new_json(stage / KIT_FILE, {"format": FORMAT, "name": name, "role": role.value,
                                           "endpoint": endpoint, "created": _utc(now)})
    _install(stage, out / name)
    return public_key


@dataclass
class _Plan:
    name: str
    role: Role
    status: Status
    endpoint: str
    public_key: bytes = b""


def _requested(sites: Iterable[str], admins: Iterable[str]) -> list[tuple[str, Role]]:
    wanted: dict[str, Role] = {}
    for role, names in ((Role.SITE, sites), (Role.ADMIN, admins)):
        for name in names:
            validate_name(name)
            if wanted.get(name, role) is not role:
                raise InvalidName(f"'{name}' is requested as both site and admin; a name has one role")
            wanted[name] = role
    return list(wanted.items())


def _plan(out: Path, name: str, role: Role, endpoint: str | None, default_endpoint: str,
          active: dict[str, dict], revoked: dict[str, dict]) -> _Plan:
    """Decide what to do for one requested participant, or raise why not; writes nothing."""
    kit_dir = out / name
    if name in revoked:
        raise ParticipantExists(f"'{name}' was revoked ({revoked[name].get('revoked', '?')}); its kit is kept "
                                f"for the record at {kit_dir}; provision it under a new name")
    if not os.path.lexists(kit_dir):
        if name in active:
            raise ParticipantExists(f"'{name}' is in {out / PARENT / ALLOWLIST_FILE} but its kit {kit_dir} is "
                                    f"missing; restore the kit, or revoke '{name}' and use a new name")
        return _Plan(name, role, Status.CREATED, endpoint or default_endpoint)
    try:
        kit = load_kit(kit_dir)
    except KitError as exc:
        raise ParticipantExists(f"{kit_dir} exists and is not a usable kit ({exc}); refusing to overwrite it") from None
    if kit.role is not role:
        raise ParticipantExists(f"'{name}' already exists as {kit.role.value}; refusing to make it {role.value}")
    if kit.name != name:
        raise ParticipantExists(f"{kit_dir} holds the kit of '{kit.name}', not '{name}'")
    if endpoint is not None and endpoint != kit.endpoint:
        raise ParticipantExists(f"'{name}' exists with endpoint {kit.endpoint}; refusing to change it to {endpoint}")
    entry = active.get(name)
    if entry is None:
        return _Plan(name, role, Status.RESTORED, kit.endpoint, kit.public_key)
    if entry["role"] != role.value or entry["public_key"].encode("ascii") != kit.public_key:
        raise KitError(out / PARENT / ALLOWLIST_FILE, f"entry '{name}' does not match the kit in {kit_dir}")
    return _Plan(name, role, Status.EXISTS, kit.endpoint, kit.public_key)


def default_admin_endpoint(sites_endpoint: str) -> str:
    """The remote admin endpoint next to a sites endpoint: the next tcp port, or ``<path>-admin`` for ipc."""
    if sites_endpoint.startswith("ipc://"):
        return sites_endpoint + "-admin"
    host, port = sites_endpoint.rsplit(":", 1)
    return f"{host}:{int(port) + 1 if int(port) < 65535 else int(port) - 1}"


def provision(out: str | os.PathLike, sites: Iterable[str] = (), admins: Iterable[str] = (),
              endpoint: str | None = None, admin_endpoint: str | None = None,
              clock: Callable[[], float] = time.time) -> list[Report]:
    """Create the project in ``out`` if needed, and a kit for each site and admin not there yet.

    Args:
        out: the project directory (created 0700; an existing one must be a project or empty).
        sites: names of sites to provision.
        admins: names of admins to provision.
        endpoint: the parent's sites endpoint written into new site kits. Default: the one in
            the parent's kit, or ``tcp://127.0.0.1:8002`` for a new project.
        admin_endpoint: the parent's admin endpoint written into new admin kits. Default: the
            one in the parent's kit, or for a new project the sites endpoint's next port
            (``tcp://127.0.0.1:8003`` by default; see `default_admin_endpoint`).
        clock: the time source for the ``created``/``added`` stamps.

    Returns:
        The parent's report, then one per requested participant, in request order.

    Raises:
        InvalidName: a name is malformed, reserved, or requested as both site and admin.
        InvalidEndpoint: an endpoint is not ``tcp://HOST:PORT`` or ``ipc://PATH``.
        ParticipantExists: a name exists with another role or endpoint, was revoked, or its
            directory is not a kit; nothing was written.
        KitError: ``out`` is neither a project nor empty, or the parent's kit is broken.
    """
    wanted = _requested(sites, admins)
    for ep in (endpoint, admin_endpoint):
        if ep is not None:
            validate_endpoint(ep)
    out = Path(out).absolute()
    now = clock()
    _open_project(out, create=True)
    with _project_lock(out):
        parent_dir = out / PARENT
        project_admin_endpoint: str | None = None
        if os.path.lexists(parent_dir):
            parent = load_kit(parent_dir)
            if parent.role is not Role.PARENT:
                raise KitError(parent_dir / KIT_FILE, f"field 'role': expected 'parent', got '{parent.role.value}'")
            parent_status = Status.EXISTS
            parent_doc = read_json(parent_dir / KIT_FILE)
            project_admin_endpoint = parent_doc.get("admin_endpoint") or parent.endpoint
            validate_endpoint(project_admin_endpoint)
        else:
            parent = None
            parent_status = Status.CREATED
        site_default = endpoint or (parent.endpoint if parent else DEFAULT_ENDPOINT)
        admin_default = admin_endpoint or project_admin_endpoint or default_admin_endpoint(site_default)

        active = read_entries(parent_dir / ALLOWLIST_FILE) if parent else {}
        revoked = read_entries(parent_dir / REVOKED_FILE) if parent else {}
        plans = [_plan(out, name, role, endpoint if role is Role.SITE else admin_endpoint,
                       site_default if role is Role.SITE else admin_default, active, revoked)
                 for name, role in wanted]

        if parent is None:
            parent = _create_parent(out, site_default, admin_default, now)
        for plan in plans:
            if plan.status is Status.CREATED:
                plan.public_key = _create_participant(out, plan.name, plan.role, plan.endpoint, now)
        changed = [p for p in plans if p.status in (Status.CREATED, Status.RESTORED)]
        if changed:
            # The allowed/ mirror first, allowlist.json (the authority) last.
            for plan in changed:
                _replace_file(public_key_path(parent_dir / ALLOWED_DIR, plan.name),
                              public_key_path(out / plan.name, plan.name).read_bytes())
            doc = read_json(parent_dir / ALLOWLIST_FILE)
            for plan in changed:
                doc["participants"][plan.name] = {"role": plan.role.value,
                                                  "public_key": plan.public_key.decode("ascii"), "added": _utc(now)}
            _replace_file(parent_dir / ALLOWLIST_FILE, _json_bytes(doc))

    reports = [Report(PARENT, Role.PARENT, parent_status, parent.path, parent.public_key, parent.endpoint)]
    reports += [Report(p.name, p.role, p.status, out / p.name, p.public_key, p.endpoint) for p in plans]
    return reports


def revoke(out: str | os.PathLike, name: str, reason: str | None = None,
           clock: Callable[[], float] = time.time) -> Report:
    """Take ``name`` out of the parent's allowlist and record it in ``revoked.json``.

    The participant's kit stays in ``out/NAME`` for the record; its public certificate moves
    from ``parent/allowed/`` to ``parent/revoked/``. ``revoked.json`` is written before
    ``allowlist.json``, so an interrupted revocation still refuses the key. Revoking twice
    reports `Status.ALREADY_REVOKED` and changes nothing.

    Raises:
        InvalidName: ``name`` is the parent.
        UnknownParticipant: no participant of that name was provisioned in ``out``.
        KitError: ``out`` is not a project, or its parent kit is broken.
    """
    if name == PARENT:
        raise InvalidName("the parent cannot be revoked; make a new project instead")
    validate_name(name)
    out = Path(out).absolute()
    parent_dir = out / PARENT
    if not (parent_dir / KIT_FILE).exists():
        raise KitError(out, f"not a flrunner project (no {PARENT}/{KIT_FILE})")
    with _project_lock(out):
        allow_file, revoked_file = parent_dir / ALLOWLIST_FILE, parent_dir / REVOKED_FILE
        active, revoked = read_entries(allow_file), read_entries(revoked_file)
        entry = active.get(name)
        if entry is None and name in revoked:
            e = revoked[name]
            return Report(name, Role(e["role"]), Status.ALREADY_REVOKED, out / name, e["public_key"].encode("ascii"),
                          None)
        if entry is None:
            # A kit whose provisioning stopped before the allowlist: revoke it all the same, so
            # a later run cannot restore it.
            try:
                kit = load_kit(out / name) if os.path.lexists(out / name) else None
            except KitError:
                kit = None
            if kit is None or kit.role is Role.PARENT:
                raise UnknownParticipant(f"'{str(name)[:64]}' is not a participant of {out} (not in {allow_file})")
            entry = {"role": kit.role.value, "public_key": kit.public_key.decode("ascii")}

        now = clock()
        rdoc: dict[str, Any] = (read_json(revoked_file) if revoked_file.exists()
                                else {"format": FORMAT, "participants": {}})
        rdoc["participants"][name] = {**entry, "revoked": _utc(now), "reason": reason}
        _replace_file(revoked_file, _json_bytes(rdoc))
        if name in active:
            adoc = read_json(allow_file)
            del adoc["participants"][name]
            _replace_file(allow_file, _json_bytes(adoc))
        revoked_dir = parent_dir / REVOKED_DIR
        if not revoked_dir.exists():
            make_private_dir(revoked_dir)
        mirror = public_key_path(parent_dir / ALLOWED_DIR, name)
        if mirror.exists():
            os.replace(mirror, public_key_path(revoked_dir, name))
            fsync_dir(mirror.parent)
        endpoint = None
        try:
            endpoint = read_json(out / name / KIT_FILE).get("endpoint")
        except KitError:
            pass
    return Report(name, Role(entry["role"]), Status.REVOKED, out / name, entry["public_key"].encode("ascii"), endpoint)
