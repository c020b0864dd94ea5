"""What the parent does every ``housekeeping_interval`` on its loop, each step O(what it finds),
none of it per message:

- re-read the allowlists (with a kit) and cut off whoever lost access: a revoked site is dropped
  from the registry and its connection closed, a revoked admin's connections and status feeds
  are closed;
- drop sites silent for longer than ``site_timeout``, and admin subscriptions not renewed;
- forget the rate limiters' idle peers;
- abort job processes that stopped heartbeating (`Launching.check_heartbeats`);
- put back workspace files deleted while the parent runs (`WorkspaceWatch`);
- fold the job store's WAL back once writes are quiet (`QuietCheckpoints`).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Sequence

from parent.edge.endpoint import RouterEndpoint
from parent.edge.workspace_watch import WorkspaceWatch
from parent.handlers.admin import AdminService
from parent.handlers.sites import SitesService
from parent.jobs.launching import Launching
from parent.jobs.store import QuietCheckpoints
from parent.loop.timers import Timers
from parent.sites.registry import SiteRegistry

if TYPE_CHECKING:  # the allowlists are only loaded with a kit
    from flrunner.security.gate import Gate

log = logging.getLogger("parent")


class Housekeeping:
    """The parent's periodic chores (see the module doc).

    Args:
        timers: the loop's timers.
        interval: seconds between two rounds.
        registry: the logged-in sites.
        sites: the sites socket's service (closes a revoked site's connection).
        admin: the admin service (closes a revoked admin's connections and feeds).
        endpoints: the sockets, whose rate limiters forget idle peers.
        launching: checks the job processes' heartbeats.
        workspace_watch: puts back deleted workspace files.
        checkpoints: folds the job store's WAL back.
        site_gate: the allowlist of sites (None without a kit).
        admin_gate: the allowlist of admins (None without remote admin).
    """

    def __init__(self, timers: Timers, interval: float, registry: SiteRegistry, sites: SitesService,
                 admin: AdminService, endpoints: Sequence[RouterEndpoint], launching: Launching,
                 workspace_watch: WorkspaceWatch, checkpoints: QuietCheckpoints, site_gate: Gate | None = None,
                 admin_gate: Gate | None = None) -> None:
        self.timers = timers
        self.interval = interval
        self.registry = registry
        self.sites = sites
        self.admin = admin
        self.endpoints = list(endpoints)
        self.launching = launching
        self.workspace_watch = workspace_watch
        self.checkpoints = checkpoints
        self.site_gate = site_gate
        self.admin_gate = admin_gate

    def start(self) -> None:
        """The first round comes after one interval; each round schedules the next."""
        self.timers.call_later(self.interval, self._tick)

    def _tick(self) -> None:
        try:
            self.run()
        finally:  # whatever failed, the next tick comes
            self.timers.call_later(self.interval, self._tick)

    def run(self) -> None:
        """One round of every chore."""
        if self.site_gate is not None:
            self.site_gate.reload_if_changed()
            for name in self.site_gate.take_revoked():
                done = [what for ok, what in ((self.registry.remove(name), "dropped from the registry"),
                                              (self.sites.disconnect(name), "its connection closed")) if ok]
                if done:
                    log.warning("site %s: access revoked; %s", name, " and ".join(done))
        if self.admin_gate is not None:
            self.admin_gate.reload_if_changed()
            for name in self.admin_gate.take_revoked():
                feeds, closed = self.admin.revoke(name)
                log.warning("admin %s: access revoked; %d connection(s) closed, %d status feed(s) stopped",
                            name, closed, feeds)
        gone = self.registry.expire()
        if gone:
            log.info("site(s) silent for over %.1fs dropped: %s", self.registry.timeout, ", ".join(gone))
        self.admin.expire_subscribers()
        for endpoint in self.endpoints:
            if endpoint.limiter is not None:
                endpoint.limiter.prune()
        self.launching.check_heartbeats()
        self.workspace_watch.check()
        self.checkpoints.tick()
