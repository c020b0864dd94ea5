"""The scheduler: when a submitted job starts, and on which sites.

A job is tried as soon as it is submitted, without a polling delay, while fewer than
``max_concurrent_jobs`` are running or being started. One try of a job that needs sites:

1. the sites it can run on are those its deploy map names (or every logged-in site for
   ``@ALL``); its ``mandatory_clients`` must be logged in;
2. sites with a ``resource_spec`` are asked whether it fits, and reserve it (``check_resources``);
3. if enough sites qualify (``min_clients``, every mandatory site), their site apps are started
   (consuming the reservations); otherwise the reservations are cancelled;
4. if enough sites started, the job process is launched; otherwise the started sites are stopped.

A try that fails leaves the job ``SUBMITTED`` and retries it with exponential back-off, and at
once when resources may have freed up (a job ended, a site logged in); after
``schedule_attempts`` tries it ends ``FINISHED:CAN_NOT_SCHEDULE`` with the reason per site. A job
that waits never blocks a later job that fits: every waiting job is tried in turn.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable

from flrunner.job import Job
from flrunner.status import RunStatus
from parent.config import ParentConfig
from parent.edge.site_requests import Results
from parent.jobs.held_writes import HeldWrites
from parent.jobs.site_apps import SiteApps
from parent.loop.timers import Timer, Timers
from parent.sites.registry import SiteRegistry

log = logging.getLogger(__name__)


@dataclass
class Waiting:
    """A submitted job the scheduler has not started yet."""

    job_id: str
    attempts: int = 0
    in_flight: bool = False
    due: float = 0.0
    last_reason: str = ""
    counted: bool = True
    timer: Timer | None = field(default=None, repr=False)


class Scheduler:
    """Starts submitted jobs.

    Args:
        launch: launches the job process, with the set of sites its site app runs on.
        give_up: ends a job that cannot be scheduled (status, reason).
        running: how many job processes run now.
        job_of: the `Job` of a job id.
        paused: start paused (nothing is tried until `resume`).
    """

    def __init__(self, config: ParentConfig, store: HeldWrites, registry: SiteRegistry, site_apps: SiteApps,
                 timers: Timers, launch: Callable[[str, set[str]], None],
                 give_up: Callable[[str, RunStatus, str], object], running: Callable[[], int],
                 job_of: Callable[[str], Job], paused: bool = False) -> None:
        self.config = config
        self.store = store
        self.registry = registry
        self.site_apps = site_apps
        self.timers = timers
        self.launch = launch
        self.give_up = give_up
        self.running = running
        self.job_of = job_of
        self.waiting: OrderedDict[str, Waiting] = OrderedDict()
        self._paused = paused
        self._stopped = False
        self._kicking = False
        self._kick_again = False

    def __contains__(self, job_id: str) -> bool:
        return job_id in self.waiting

    @property
    def paused(self) -> bool:
        """Nothing is tried now (before the parent serves, and once it stops)."""
        return self._paused

    @property
    def stopped(self) -> bool:
        """The parent is stopping: nothing is started, restarted or queued any more."""
        return self._stopped

    def pause(self) -> None:
        """Try nothing until `resume`; a try in flight starts nothing when it returns."""
        self._paused = True

    def resume(self) -> None:
        """Try the waiting jobs again (not once `stop` was called)."""
        if self._paused and not self._stopped:
            self._paused = False
            self.kick()

    def stop(self) -> None:
        """The parent stops: pause for good. What waits stays ``SUBMITTED`` for the next start."""
        self._stopped = True
        self._paused = True

    def add(self, job_id: str) -> None:
        self.waiting[job_id] = Waiting(job_id)
        self.kick()

    def remove(self, job_id: str) -> None:
        """Forget a waiting job (it was aborted); a try in flight is undone when it returns."""
        w = self.waiting.pop(job_id, None)
        if w is not None and w.timer is not None:
            w.timer.cancel()

    def kick(self, resources_changed: bool = False) -> None:
        """Try every waiting job that is due (all of them when resources may have freed up)."""
        if self.paused:
            return
        if self._kicking:
            # Called back from inside a try (a failed try frees its slot): the running kick goes
            # round once more instead of recursing once per waiting job.
            self._kick_again = True
            return
        self._kicking = True
        try:
            while True:
                self._kick_again = False
                self._kick_once(resources_changed)
                if not self._kick_again or self.paused:
                    return
                resources_changed = False
        finally:
            self._kicking = False

    def _kick_once(self, resources_changed: bool) -> None:
        if self.store.holding():
            # The store refuses writes (a full disk): a job started now could not be recorded.
            # Scheduling resumes once the held writes are stored (`JobLifecycle.writes_stored`).
            return
        now = self.timers.clock()
        for w in list(self.waiting.values()):
            if self.running() + self._in_flight() >= self.config.max_concurrent_jobs:
                return
            if w.in_flight or self.waiting.get(w.job_id) is not w:
                continue
            if w.due <= now:
                self._try(w)
            elif resources_changed:
                # An extra try because something changed; it does not use up one of the job's
                # tries (sites logging in one by one must not exhaust a job waiting for them).
                self._try(w, counts=False)

    def _in_flight(self) -> int:
        return sum(1 for w in self.waiting.values() if w.in_flight)

    # --- one try ---------------------------------------------------------------------------------
    def _try(self, w: Waiting, counts: bool = True) -> None:
        w.in_flight = True
        w.counted = counts
        if counts:
            w.attempts += 1
        job = self.job_of(w.job_id)
        named, everyone = job.site_participants()
        online = [r["name"] for r in self.registry.listing()]
        site_app = everyone or bool(named)
        candidates = online if everyone else sorted(s for s in named if s in self.registry)
        missing = sorted(s for s in job.required_sites if s not in self.registry)
        if missing:
            self._retry(w, f"mandatory site(s) not logged in: {', '.join(missing)}")
            return
        pool = candidates if site_app else online
        if len(pool) < job.min_sites:
            self._retry(w, f"needs {job.min_sites} site(s), {len(pool)} available: {', '.join(pool) or 'none'}")
            return
        reqs = {s: job.resource_spec[s] for s in candidates if s in job.resource_spec}
        self.site_apps.check_resources(w.job_id, reqs, lambda results: self._checked(w, job, candidates, site_app,
                                                                                     reqs, results))

    def _checked(self, w: Waiting, job: Job, candidates: list[str], site_app: bool, reqs: dict,
                 results: Results) -> None:
        tokens = {s: d["token"] for s, (ok, d) in results.items() if ok and d.get("token")}
        if not self._still_wanted(w):
            self.site_apps.cancel_resources(tokens)
            return
        ok_sites = [s for s in candidates if s not in reqs or results.get(s, (False, {}))[0]]
        lacking = {s: d.get("reason", "no answer") for s, (ok, d) in results.items() if not ok}
        problem = self._shortfall(job, ok_sites if site_app else None, lacking)
        if problem:
            self.site_apps.cancel_resources(tokens)
            self._retry(w, problem)
            return
        if not site_app:
            self._launch(w, set())
            return
        self.site_apps.start(job, ok_sites, tokens, lambda started: self._started(w, job, started))

    def _started(self, w: Waiting, job: Job, results: Results) -> None:
        started = {s for s, (ok, _) in results.items() if ok}
        if not self._still_wanted(w):
            self.site_apps.stop(w.job_id, sorted(started), "the job was aborted before it started")
            return
        failed = {s: d.get("reason", "failed") for s, (ok, d) in results.items() if not ok}
        problem = self._shortfall(job, sorted(started), failed)
        if problem:
            self.site_apps.stop(w.job_id, sorted(started), "not enough sites started")
            self._retry(w, problem)
            return
        self._launch(w, started)

    @staticmethod
    def _shortfall(job: Job, sites: list[str] | None, problems: dict[str, str]) -> str | None:
        """Why ``sites`` are not enough for the job, naming each site's problem; None if they are."""
        detail = "; ".join(f"{s}: {r}" for s, r in sorted(problems.items()))
        if sites is None:  # a server-only job: resource checks must all pass
            return f"resources lacking: {detail}" if problems else None
        absent = sorted(set(job.required_sites) - set(sites))
        if absent:
            return f"mandatory site(s) {', '.join(absent)} cannot run it" + (f" ({detail})" if detail else "")
        if len(sites) < job.min_sites:
            return f"needs {job.min_sites} site(s), {len(sites)} can run it" + (f" ({detail})" if detail else "")
        return None

    def _still_wanted(self, w: Waiting) -> bool:
        """Whether a try that comes back should go on: the job is still waiting, still SUBMITTED,
        and the parent is not stopping (a paused scheduler leaves the job for the next start)."""
        if self.paused:
            w.in_flight = False
            return False
        if self.waiting.get(w.job_id) is not w:
            return False
        return self.store.get(w.job_id, with_history=False).status is RunStatus.SUBMITTED

    def _launch(self, w: Waiting, sites: set[str]) -> None:
        self.waiting.pop(w.job_id, None)
        self.launch(w.job_id, sites)

    def _retry(self, w: Waiting, reason: str) -> None:
        w.in_flight = False
        w.last_reason = reason
        if not w.counted:  # an extra try: the back-off schedule stays as it was
            self.kick()  # but the slot it held may let a later job in
            return
        if w.attempts >= self.config.schedule_attempts:
            self.waiting.pop(w.job_id, None)
            self.give_up(w.job_id, RunStatus.FINISHED_CAN_NOT_SCHEDULE,
                         f"not scheduled after {w.attempts} tries: {reason}")
            self.kick()
            return
        delay = min(self.config.schedule_backoff * 2 ** (w.attempts - 1), self.config.schedule_backoff_max)
        w.due = self.timers.clock() + delay
        # Why it waits is in its history, for `flrunner status`.
        self.store.add_history(w.job_id, f"waiting: {reason} (try {w.attempts} of {self.config.schedule_attempts}; "
                                         f"next in {delay:g}s)")
        log.info("job %s not scheduled (try %d): %s; next try in %.1fs", w.job_id, w.attempts, reason, delay)
        w.timer = self.timers.call_later(delay, self.kick)
        self.kick()  # the slot this try held may let a later job in

