"""The site registry: who is logged in, with which token, and a revision for every change.

Every login, logout and expiry bumps ``revision`` and appends the change to a bounded log, so a
job process that synced at revision R can be sent just the changes since R. Sites are kept in
last-heard order, so expiring silent sites costs O(expired), not O(sites).
"""

from __future__ import annotations

import secrets
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Callable

from flrunner.client import Client
from flrunner.errors import Unauthorized

ADDED = "add"
REMOVED = "remove"


@dataclass
class SiteRecord:
    name: str
    token: str
    identity: bytes
    login_time: float
    last_seen: float
    props: dict = field(default_factory=dict)

    def to_client(self) -> Client:
        return Client(self.name, self.token, self.login_time, self.props)


class SiteRegistry:
    """Logged-in sites.

    Args:
        timeout: seconds of silence after which `expire` drops a site.
        clock: monotonic seconds (injected for tests).
        wall: epoch seconds, for the times reported to users.
        change_log: how many changes are kept for delta syncs.
    """

    def __init__(self, timeout: float, clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time, change_log: int = 4096) -> None:
        self.timeout = timeout
        self.clock = clock
        self.wall = wall
        self.revision = 0
        self._sites: OrderedDict[str, SiteRecord] = OrderedDict()
        self._by_token: dict[str, str] = {}
        self._changes: deque[tuple[int, dict]] = deque(maxlen=change_log)
        self.listeners: list[Callable[[int, int, list[dict]], None]] = []

    def __len__(self) -> int:
        return len(self._sites)

    def __contains__(self, name: str) -> bool:
        return name in self._sites

    def get(self, name: str) -> SiteRecord | None:
        return self._sites.get(name)

    def login(self, name: str, identity: bytes, props: dict | None = None) -> SiteRecord:
        """Register ``name`` with a fresh token; a site logging in again replaces its old session."""
        changes = []
        old = self._sites.pop(name, None)
        if old is not None:
            self._by_token.pop(old.token, None)
            changes.append({"op": REMOVED, "name": name})
        now = self.clock()
        rec = SiteRecord(name, secrets.token_urlsafe(24), identity, self.wall(), now, dict(props or {}))
        self._sites[name] = rec
        self._by_token[rec.token] = name
        changes.append({"op": ADDED, "client": rec.to_client().to_dict(with_token=True)})
        self._record(changes)
        return rec

    def authenticate(self, token: str) -> SiteRecord:
        name = self._by_token.get(token)
        if name is None:
            raise Unauthorized("unknown or expired site token; log in again")
        return self._sites[name]

    def heartbeat(self, token: str, identity: bytes | None = None) -> SiteRecord:
        rec = self.authenticate(token)
        rec.last_seen = self.clock()
        if identity is not None:
            rec.identity = identity
        self._sites.move_to_end(rec.name)
        return rec

    def logout(self, token: str) -> SiteRecord:
        rec = self.authenticate(token)
        self._remove([rec.name])
        return rec

    def remove(self, name: str) -> bool:
        """Drop a site by name (its access was revoked); False if it was not logged in."""
        if name not in self._sites:
            return False
        self._remove([name])
        return True

    def expire(self) -> list[str]:
        """Drop the sites silent for longer than the timeout; return their names."""
        limit = self.clock() - self.timeout
        gone = []
        for name, rec in self._sites.items():
            if rec.last_seen >= limit:
                break
            gone.append(name)
        if gone:
            self._remove(gone)
        return gone

    def _remove(self, names: list[str]) -> None:
        for name in names:
            rec = self._sites.pop(name)
            self._by_token.pop(rec.token, None)
        self._record([{"op": REMOVED, "name": n} for n in names])

    def _record(self, changes: list[dict]) -> None:
        base = self.revision
        self.revision += 1
        self._changes.append((self.revision, {"base": base, "changes": changes}))
        for listener in self.listeners:
            listener(base, self.revision, changes)

    def clients(self, with_tokens: bool = True) -> list[dict]:
        return [rec.to_client().to_dict(with_token=with_tokens) for rec in self._sites.values()]

    def changes_since(self, revision: int) -> list[dict] | None:
        """Every change after ``revision`` in order, or None if the log no longer reaches back."""
        if revision == self.revision:
            return []
        if revision > self.revision or not self._changes or self._changes[0][1]["base"] > revision:
            return None
        out: list[dict] = []
        for rev, entry in self._changes:
            if rev > revision:
                out.extend(entry["changes"])
        return out

    def names(self) -> list[str]:
        """The logged-in sites' names, in last-heard order."""
        return list(self._sites)

    def listing(self) -> list[dict]:
        """The registry for admins: no tokens."""
        now = self.clock()
        wall = self.wall()
        return [{"name": r.name, "last_seen": wall - (now - r.last_seen), "login_time": r.login_time,
                 "props": r.props} for r in self._sites.values()]
