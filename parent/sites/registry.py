"""The site registry: who is logged in, with which token, and a revision for every change.

Every login, logout and expiry bumps ``revision`` and appends the change to a bounded log, so a
job process that synced at revision R can be sent just the changes since R. Sites are kept in
last-heard order, so expiring silent sites costs O(expired), not O(sites).

A name is held by one site agent at a time: the agent instance that logged in. The same agent
logging in again (it thought the parent lost) resumes its session unchanged; another agent with
that name is refused until the session ends (logout, or ``timeout`` of silence).
"""

from __future__ import annotations

import math
import secrets
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Callable

from flrunner.client import Client
from flrunner.errors import Conflict, Unauthorized
from parent.events import Events

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
    #: The random id of the agent process that holds this session (None: an agent that sent none,
    #: which no later login matches). Kept out of `to_client`: jobs and admins never see it.
    instance: str | None = None

    def to_client(self) -> Client:
        return Client(self.name, self.token, self.login_time, self.props)

    def held_by(self, instance: str | None) -> bool:
        """Whether the agent ``instance`` holds this session (an agent without an id never does)."""
        return instance is not None and self.instance is not None and \
            secrets.compare_digest(instance.encode(), self.instance.encode())


class SiteRegistry:
    """Logged-in sites.

    Args:
        timeout: seconds of silence after which `expire` drops a site.
        clock: monotonic seconds (injected for tests).
        wall: epoch seconds, for the times reported to users.
        change_log: how many changes are kept for delta syncs.
        events: told of every change (`Events.sites_changed`); None: nobody is.
    """

    def __init__(self, timeout: float, clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time, change_log: int = 4096, events: Events | None = None) -> None:
        self.timeout = timeout
        self.clock = clock
        self.wall = wall
        self.revision = 0
        self._sites: OrderedDict[str, SiteRecord] = OrderedDict()
        self._by_token: dict[str, str] = {}
        self._changes: deque[tuple[int, dict]] = deque(maxlen=change_log)
        self.events = events

    def __len__(self) -> int:
        return len(self._sites)

    def __contains__(self, name: str) -> bool:
        return name in self._sites

    def get(self, name: str) -> SiteRecord | None:
        return self._sites.get(name)

    def login(self, name: str, identity: bytes, props: dict | None = None,
              instance: str | None = None) -> SiteRecord:
        """Log ``name`` in from the agent ``instance``.

        - Not logged in, or its session silent for longer than the timeout (not swept yet): a new
          session with a fresh token (one revision: the stale session's removal, then the new one).
        - Logged in from the same instance (it lost the parent for a while and logs in again): the
          session is resumed as it was, same token and login time; only ``last_seen``, the
          identity and the props are refreshed. No revision unless the props changed, and then
          one ``ADDED`` change that replaces the site's entry (same token).
        - Logged in from another instance, or either side sent none: refused.

        Raises:
            Conflict: another agent holds ``name`` and its session is alive.
        """
        now = self.clock()
        props = dict(props or {})
        old = self._sites.get(name)
        if old is not None and now - old.last_seen <= self.timeout:
            if not old.held_by(instance):
                silent = now - old.last_seen
                raise Conflict(f"site '{name}' is already logged in from another agent (pid "
                               f"{old.props.get('pid', 'unknown')}, last seen {silent:.1f}s ago); stop that agent, "
                               f"or wait up to {math.ceil(self.timeout - silent)}s for its session to expire")
            return self._resume(old, identity, props, now)
        changes = []
        if old is not None:
            del self._sites[name]
            self._by_token.pop(old.token, None)
            changes.append({"op": REMOVED, "name": name})
        rec = SiteRecord(name, secrets.token_urlsafe(24), identity, self.wall(), now, props, instance)
        self._sites[name] = rec
        self._by_token[rec.token] = name
        changes.append({"op": ADDED, "client": rec.to_client().to_dict(with_token=True)})
        self._record(changes)
        return rec

    def _resume(self, rec: SiteRecord, identity: bytes, props: dict, now: float) -> SiteRecord:
        rec.last_seen = now
        rec.identity = identity
        self._sites.move_to_end(rec.name)
        if props != rec.props:
            rec.props = props
            self._record([{"op": ADDED, "client": rec.to_client().to_dict(with_token=True)}])
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
        if self.events is not None:
            self.events.sites_changed(base, self.revision, changes)

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
