"""`ClientMirror`: the job process's copy of the parent's site registry.

The first use fetches the registry in full; after that the parent pushes each change with the
revision it builds on (``base``) and the one it makes (``revision``), and a change that builds on
the mirror's revision is applied as it comes. A change the mirror cannot apply (it missed one)
marks it stale, and the next use fetches again. A parent that re-adopts this job after a restart
numbers its registry afresh: the mirror sees the port's `epoch` move and starts over with a full
fetch (it keeps its sites meanwhile).
"""

from __future__ import annotations

import logging
import threading

from child.port import ParentPort
from flrunner.client import Client
from flrunner.protocol import job_ops

log = logging.getLogger(__name__)


class ClientMirror:
    """The sites the parent knows, as this job process last heard (thread-safe).

    Args:
        port: the parent; None for an engine used without a parent (it knows no sites).
    """

    def __init__(self, port: ParentPort | None) -> None:
        self._port = port
        self._lock = threading.Lock()
        self._clients: dict[str, Client] = {}
        #: The registry revision the mirror is at; None before the first fetch from this parent.
        self._revision: int | None = None
        #: The newest revision a push announced: a fetch answered older than it is stale at once.
        self._pushed_revision = -1
        self._stale = False
        self._epoch = port.epoch if port is not None else 0

    @property
    def stale(self) -> bool:
        """Whether the next use fetches the registry again (in full)."""
        with self._lock:
            self._follow_readoption()
            return self._stale

    def clients(self) -> list[Client]:
        """The sites, fetched first if the mirror is not up to date."""
        if self._needs_sync():
            self.sync()
        return self.cached()

    def cached(self) -> list[Client]:
        """The sites as the mirror holds them now, without asking the parent."""
        with self._lock:
            return list(self._clients.values())

    def sync(self) -> list[Client]:
        """Fetch the registry from the parent: in full the first time, then only the changes."""
        if self._port is None:
            return self.cached()
        with self._lock:
            self._follow_readoption()
            since = None if self._stale else self._revision
        reply = job_ops.SYNC_CLIENTS.call(self._port, since=since).body
        with self._lock:
            self._follow_readoption()
            revision = reply["revision"]
            # A push handled while this request was in flight may already be newer than the
            # reply: then the reply is old news, and must neither roll the mirror back nor
            # clear a stale mark that the push set.
            if self._revision is not None and revision < self._revision:
                return list(self._clients.values())
            if "clients" in reply:
                self._clients = {d["name"]: Client.from_dict(d) for d in reply["clients"]}
            else:
                self._apply(reply["changes"])
            self._revision = revision
            self._stale = self._pushed_revision > revision
            return list(self._clients.values())

    def name_from_token(self, token: str) -> str | None:
        """The site holding ``token`` (fetching first if the mirror is not up to date), or None."""
        if self._port is not None and self._needs_sync():
            self.sync()
        with self._lock:
            for c in self._clients.values():
                if c.token and c.token == token:
                    return c.name
        return None

    def reset(self) -> None:
        """Forget the registry revision; the next use fetches in full."""
        with self._lock:
            self._forget_revision()

    def on_clients_changed(self, body: dict) -> None:
        """A push from the parent (I/O thread): apply the change, or mark the mirror stale."""
        revision, base = body.get("revision"), body.get("base")
        if not isinstance(revision, int) or not isinstance(base, int):
            log.warning("ignored a clients_changed push without integer revision/base")
            return
        with self._lock:
            self._follow_readoption()
            self._pushed_revision = max(self._pushed_revision, revision)
            if self._revision is not None and base == self._revision:
                self._apply(body.get("changes", []))
                self._revision = revision
            elif self._revision is None or revision > self._revision:
                self._stale = True

    # --- under the lock ---------------------------------------------------------------------------------
    def _needs_sync(self) -> bool:
        with self._lock:
            self._follow_readoption()
            return self._revision is None or self._stale

    def _follow_readoption(self) -> None:
        """A new parent took the job back since the last look: its revisions are not ours."""
        epoch = self._port.epoch if self._port is not None else 0
        if epoch != self._epoch:
            self._epoch = epoch
            self._forget_revision()

    def _forget_revision(self) -> None:
        self._revision = None
        self._pushed_revision = -1
        self._stale = True

    def _apply(self, changes: list) -> None:
        for change in changes:
            if change.get("op") == "add":
                c = Client.from_dict(change["client"])
                self._clients[c.name] = c
            elif change.get("op") == "remove":
                self._clients.pop(change.get("name"), None)


__all__ = ["ClientMirror"]
