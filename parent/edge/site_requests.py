"""Requests from the parent to sites.

`SiteGateway.request` pushes a request to a logged-in site and calls back with its reply or with
why there is none (offline, timeout, the site left); `gather` asks several sites at once.
`parent.jobs.site_apps` uses it for what jobs need of sites. Nothing here blocks: every outcome
arrives as a callback on the parent's loop.
"""

from __future__ import annotations

import logging
from typing import Callable

from flrunner.protocol import Rc
from flrunner.transport.wire import Message


from parent.edge.awaited import OnFail, OnReply, AwaitedReplies
from parent.sites.registry import SiteRegistry
from parent.edge.endpoint import RouterEndpoint

log = logging.getLogger(__name__)

#: {site: (ok, detail dict)} once every site answered or failed.
Results = dict[str, tuple[bool, dict]]


class SiteGateway:
    """Pushes requests to sites and routes their replies."""

    def __init__(self, endpoint: RouterEndpoint, registry: SiteRegistry, awaited: AwaitedReplies) -> None:
        self.endpoint = endpoint
        self.registry = registry
        self.awaited = awaited

    def request(self, site: str, msg: Message, timeout: float, on_reply: OnReply, on_fail: OnFail,
                job_id: str | None = None, prepared: tuple[int, list] | None = None) -> None:
        """Push request ``msg`` (built by its op) to a site; ``prepared`` (`RouterEndpoint.prepare`)
        sends one encoding of it to several sites."""
        rec = self.registry.get(site)
        if rec is None:
            on_fail(Rc.UNAVAILABLE, f"site '{site}' is not logged in")
            return
        mid = self.endpoint.push(rec.identity, msg, prepared)
        if mid is None:
            on_fail(Rc.UNAVAILABLE, f"site '{site}' cannot be reached")
            return
        self.awaited.expect(self.endpoint.name, rec.identity, mid, timeout, on_reply, on_fail, site=site,
                                job_id=job_id)

    def send(self, site: str, msg: Message) -> bool:
        """Push ``msg`` without expecting a reply; False if the site is not logged in."""
        rec = self.registry.get(site)
        if rec is None:
            return False
        return self.endpoint.push(rec.identity, msg) is not None

    def gather(self, sites: list[str], request_for: Callable[[str], Message], timeout: float,
               done: Callable[[Results], None], job_id: str | None = None) -> None:
        """Ask every site its request (``request_for(site)``); call ``done`` once with each site's
        (ok, reply body or {"reason"})."""
        results: Results = {}
        if not sites:
            done(results)
            return

        def finish(site: str, ok: bool, detail: dict) -> None:
            results[site] = (ok, detail)
            if len(results) == len(sites):
                done(results)

        for site in sites:
            self.request(site, request_for(site), timeout,
                         lambda msg, s=site: finish(s, msg.rc == Rc.OK, dict(msg.body)),
                         lambda rc, reason, s=site: finish(s, False, {"reason": f"{rc}: {reason}"}), job_id=job_id)


__all__ = ["OnFail", "OnReply", "Results", "SiteGateway"]
