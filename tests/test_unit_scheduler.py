"""Unit tests of `parent.jobs.scheduler.Scheduler` with a scripted `SiteApps`, a real `SiteRegistry`, a
real `JobStore` in a temporary folder and real `Timers` on a fake clock.

The fake sites answer synchronously, or (``defer``) only when the test releases their answers,
which is how a try stays "in flight" as it does in the parent while sites are asked.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import pytest

from flrunner.errors import LaunchError
from flrunner.status import RunStatus
from flrunner.workspace import Workspace
from parent.config import ParentConfig
from parent.jobs.held_writes import HeldWrites
from parent.jobs.store import JobStore
from flrunner.job import job_from_meta
from parent.jobs.lifecycle import JobLifecycle
from parent.jobs.running import RunningJobs
from parent.launchers.base import Launcher, LaunchSpec
from parent.sites.registry import SiteRegistry
from parent.jobs.scheduler import Scheduler
from parent.loop.timers import Timers

from .support import FakeClock

SUBMITTED = RunStatus.SUBMITTED
ALL = {"app": ["@ALL"]}
SERVER_ONLY = {"app_server": ["server"]}


class FakeSiteJobs:
    """`SiteApps` whose sites answer from a script.

    ``lacking[site]`` makes the site refuse a resource check with that reason (others fit and get
    a token); ``start_fails[site]`` makes it refuse to start. With ``defer`` set, answers wait in
    ``pending`` until `release` delivers them, in order.
    """

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.lacking: dict[str, str] = {}
        #: (job id, site, spec) -> why it does not fit, or None; overrides ``lacking`` when set.
        self.judge: Callable[[str, str, dict], str | None] | None = None
        self.start_fails: dict[str, str] = {}
        self.defer = False
        self.pending: list[tuple[str, str, Callable[[], None]]] = []
        self.checks: list[tuple[str, dict, float]] = []
        self.cancels: list[dict[str, str]] = []
        self.starts: list[tuple[str, list[str], dict[str, str]]] = []
        self.stops: list[tuple[str, list[str], str]] = []
        self._n = 0

    def check_resources(self, job_id: str, reqs: dict[str, dict], done, timeout: float | None = None) -> None:
        self.checks.append((job_id, dict(reqs), self.clock()))
        results = {}
        for site in sorted(reqs):
            refusal = self.judge(job_id, site, reqs[site]) if self.judge else self.lacking.get(site)
            if refusal is not None:
                results[site] = (False, {"token": None, "reason": refusal})
            else:
                self._n += 1
                results[site] = (True, {"token": f"tok-{site}-{self._n}", "reason": "reserved"})
        self._answer("check", job_id, lambda: done(results))

    def cancel_resources(self, tokens: dict[str, str]) -> None:
        self.cancels.append(dict(tokens))

    def start(self, job, sites: list[str], tokens: dict[str, str], done, timeout: float | None = None) -> None:
        self.starts.append((job.job_id, list(sites), dict(tokens)))
        results = {s: (False, {"reason": self.start_fails[s]}) if s in self.start_fails else (True, {"started": True})
                   for s in sites}
        self._answer("start", job.job_id, lambda: done(results))

    def stop(self, job_id: str, sites: list[str], reason: str) -> None:
        self.stops.append((job_id, list(sites), reason))

    def _answer(self, what: str, job_id: str, deliver: Callable[[], None]) -> None:
        if self.defer:
            self.pending.append((what, job_id, deliver))
        else:
            deliver()

    def release(self, what: str | None = None, job_id: str | None = None) -> None:
        """Deliver the first pending answer (of that kind / job, if given)."""
        for i, (w, j, deliver) in enumerate(self.pending):
            if (what is None or w == what) and (job_id is None or j == job_id):
                del self.pending[i]
                deliver()
                return
        raise AssertionError(f"no pending {what or 'answer'} for {job_id or 'any job'}: {self.pending}")

    def cancelled_tokens(self) -> set[str]:
        return {t for c in self.cancels for t in c.values()}


class QuietEvents:
    """`parent.events.Events` that tells nobody."""

    def status_changed(self, rec) -> None:
        pass

    def ask_to_abort(self, job_id: str, reason: str) -> bool:
        return False

    def job_ended(self, job_id: str, how: str, restarting: bool) -> None:
        pass

    def writes_stored(self, rec) -> None:
        pass

    def sites_changed(self, base: int, revision: int, changes: list) -> None:
        pass


class Harness:
    """A scheduler wired as `JobLifecycle` wires it, with fakes around it."""

    def __init__(self, tmp_path: Path, sites: tuple[str, ...] = (), **config) -> None:
        config.setdefault("schedule_attempts", 10)
        config.setdefault("schedule_backoff", 1.0)
        config.setdefault("schedule_backoff_max", 30.0)
        self.config = ParentConfig(workspace=str(tmp_path), **config)
        self.clock = FakeClock()
        self.timers = Timers(clock=self.clock)
        self.store = HeldWrites(JobStore(str(tmp_path / "jobs.db")), self.timers, events=QuietEvents())
        self.registry = SiteRegistry(30.0, clock=self.clock)
        self.site_apps = FakeSiteJobs(self.clock)
        self.running: dict[str, set[str]] = {}
        self.launched: list[tuple[str, set[str]]] = []
        self.scheduler = Scheduler(self.config, self.store, self.registry, self.site_apps, self.timers, self._launch,
                                   self._give_up, lambda: len(self.running),
                                   lambda job_id: job_from_meta(job_id, self.store.get(job_id, with_history=False).meta))
        self._n = 0
        for s in sites:
            self.registry.login(s, s.encode())

    def close(self) -> None:
        self.store.store.close()

    # --- what the job domain does around the scheduler -------------------------------------------------
    def _launch(self, job_id: str, sites: set[str]) -> None:
        self.store.transition(job_id, RunStatus.DISPATCHED, "launched")
        self.running[job_id] = set(sites)
        self.launched.append((job_id, set(sites)))

    def _give_up(self, job_id: str, status: RunStatus, reason: str) -> None:
        self.store.transition(job_id, status, reason)

    def submit(self, deploy_map: dict | None = None, **meta) -> str:
        self._n += 1
        job_id = f"job-{self._n}"
        self.store.add(job_id, job_id, "/nowhere", {"name": job_id, "deploy_map": deploy_map or ALL, **meta})
        self.scheduler.add(job_id)
        return job_id

    def abort(self, job_id: str) -> None:
        """`Aborts.abort` of a job that has no process yet."""
        self.scheduler.remove(job_id)
        self.store.transition(job_id, RunStatus.FINISHED_ABORTED, "aborted by admin")

    def finish(self, job_id: str) -> None:
        """`Endings.on_exit`: the job's process is gone; resources may have freed up."""
        del self.running[job_id]
        self.store.transition(job_id, RunStatus.FINISHED_COMPLETED, "done")
        self.scheduler.kick(resources_changed=True)

    def login(self, site: str) -> None:
        """A site logs in; the parent's registry listener kicks the scheduler."""
        self.registry.login(site, site.encode())
        self.scheduler.kick(resources_changed=True)

    # --- time and queries -----------------------------------------------------------------------------
    def advance(self, dt: float) -> None:
        self.clock.now += dt
        self.timers.run_due()

    def next_timer(self) -> float:
        return self.timers.timeout(cap=1e9)

    def status(self, job_id: str) -> RunStatus:
        return self.store.get(job_id).status

    def last_reason(self, job_id: str) -> str:
        return self.store.get(job_id).history[-1]["reason"]

    def checks_of(self, job_id: str) -> list[tuple[str, dict, float]]:
        return [c for c in self.site_apps.checks if c[0] == job_id]


@pytest.fixture
def make(tmp_path: Path):
    made: list[Harness] = []

    def factory(sites: tuple[str, ...] = (), **config) -> Harness:
        folder = tmp_path / f"h{len(made)}"
        folder.mkdir()
        h = Harness(folder, sites, **config)
        made.append(h)
        return h

    yield factory
    for h in made:
        h.close()


GPU = {"num_gpus": 1}
NO_GPU = "not enough num_gpus: wants 1, 0 free of 0"


# --- a job that cannot get its sites --------------------------------------------------------------------

def test_lacking_resources_leave_the_job_submitted_and_cancel_the_partial_reservations(make):
    h = make(("s1", "s2"))
    h.site_apps.lacking["s2"] = NO_GPU
    job = h.submit(min_clients=2, resource_spec={"s1": GPU, "s2": GPU})
    assert h.status(job) is SUBMITTED
    [(_, reqs, _)] = h.checks_of(job)
    assert reqs == {"s1": GPU, "s2": GPU}
    assert h.site_apps.cancels == [{"s1": "tok-s1-1"}]
    assert h.site_apps.starts == [] and h.launched == []
    assert job in h.scheduler
    w = h.scheduler.waiting[job]
    assert not w.in_flight and w.attempts == 1
    assert "s2: " + NO_GPU in w.last_reason and "needs 2 site(s), 1 can run it" in w.last_reason


def test_retries_back_off_exponentially_then_end_can_not_schedule_naming_each_site(make):
    h = make(("s1", "s2", "s3"), schedule_attempts=5, schedule_backoff=1.0)
    h.site_apps.lacking.update({"s1": NO_GPU, "s2": "not enough mem_gb: wants 64, 16 free of 16"})
    t0 = h.clock()
    job = h.submit(min_clients=2, resource_spec={"s1": GPU, "s2": {"mem_gb": 64}, "s3": GPU})
    for n in range(1, 5):
        delay = h.next_timer()
        h.advance(delay - 0.001)  # not a moment early
        assert len(h.checks_of(job)) == n
        h.advance(0.001)
        assert len(h.checks_of(job)) == n + 1
    assert [round(t - t0, 6) for _, _, t in h.checks_of(job)] == [0, 1, 3, 7, 15]
    assert h.status(job) is RunStatus.FINISHED_CAN_NOT_SCHEDULE
    reason = h.last_reason(job)
    assert "not scheduled after 5 tries" in reason
    assert "s1: " + NO_GPU in reason
    assert "s2: not enough mem_gb: wants 64, 16 free of 16" in reason
    assert "needs 2 site(s), 1 can run it" in reason
    # Every try gave back what it reserved on s3; nothing was started or launched.
    assert len(h.site_apps.cancels) == 5 and all(set(c) == {"s3"} for c in h.site_apps.cancels)
    assert h.site_apps.starts == [] and h.launched == []
    assert job not in h.scheduler
    h.advance(1000)
    h.scheduler.kick(resources_changed=True)
    assert len(h.checks_of(job)) == 5


def test_back_off_is_capped(make):
    h = make(("s1",), schedule_attempts=6, schedule_backoff=1.0, schedule_backoff_max=3.0)
    h.site_apps.lacking["s1"] = NO_GPU
    t0 = h.clock()
    job = h.submit(resource_spec={"s1": GPU})
    while job in h.scheduler:
        h.advance(h.next_timer())
    assert [round(t - t0, 6) for _, _, t in h.checks_of(job)] == [0, 1, 3, 6, 9, 12]
    assert h.status(job) is RunStatus.FINISHED_CAN_NOT_SCHEDULE


def test_resources_changed_retries_at_once_a_plain_kick_waits_for_the_back_off(make):
    h = make(("s1",))
    h.site_apps.lacking["s1"] = NO_GPU
    job = h.submit(resource_spec={"s1": GPU})
    h.scheduler.kick()
    assert len(h.checks_of(job)) == 1
    del h.site_apps.lacking["s1"]
    h.scheduler.kick(resources_changed=True)
    assert len(h.checks_of(job)) == 2
    assert h.launched == [(job, {"s1"})]
    assert h.site_apps.starts == [(job, ["s1"], {"s1": "tok-s1-1"})]
    # The back-off timer left behind by the failed try is harmless.
    h.advance(h.next_timer())
    assert len(h.checks_of(job)) == 2


def test_a_try_in_flight_is_not_started_twice(make):
    h = make(("s1",))
    h.site_apps.defer = True
    job = h.submit(resource_spec={"s1": GPU})
    h.scheduler.kick(resources_changed=True)
    h.advance(100)
    assert len(h.checks_of(job)) == 1
    h.site_apps.release("check")
    h.site_apps.release("start")
    assert h.launched == [(job, {"s1"})]


def test_a_waiting_job_never_blocks_a_later_job_that_fits(make):
    h = make(("s1",))
    h.site_apps.judge = lambda job_id, site, spec: (
        "not enough num_gpus: wants 2, 1 free of 1" if spec.get("num_gpus", 0) > 1 else None)
    waiting = h.submit(resource_spec={"s1": {"num_gpus": 2}})
    fits = h.submit(resource_spec={"s1": {"num_gpus": 1}})
    assert h.launched == [(fits, {"s1"})]
    assert h.status(waiting) is SUBMITTED
    h.advance(h.next_timer())
    assert len(h.checks_of(waiting)) == 2 and h.status(waiting) is SUBMITTED


def test_a_later_job_that_fits_starts_while_an_earlier_one_keeps_waiting(make):
    h = make(("s1", "s2"))
    # s2 is full for everyone: the first job needs s2, the second only s1.
    h.site_apps.lacking["s2"] = NO_GPU
    first = h.submit(resource_spec={"s2": GPU}, mandatory_clients=["s2"])
    second = h.submit({"app_server": ["server"], "app_site": ["s1"]}, resource_spec={"s1": GPU})
    assert h.launched == [(second, {"s1"})]
    assert h.status(first) is SUBMITTED
    # Retried on its own schedule; the running job did not stop it from being tried.
    h.advance(h.next_timer())
    assert len(h.checks_of(first)) == 2 and h.status(first) is SUBMITTED


def test_a_waiting_job_whose_try_is_in_flight_does_not_starve_a_later_job(make):
    h = make(("s1", "s2"), max_concurrent_jobs=1)
    h.site_apps.defer = True
    h.site_apps.lacking["s2"] = NO_GPU
    waiting = h.submit({"app_server": ["server"], "app_site": ["s2"]}, resource_spec={"s2": GPU})
    fits = h.submit({"app_server": ["server"], "app_site": ["s1"]})  # arrives while the other's try is in flight
    assert h.checks_of(fits) == []
    h.site_apps.release("check", waiting)  # the waiting job's try fails: its slot is free again at once
    assert len(h.checks_of(fits)) == 1
    h.site_apps.release("check", fits)
    h.site_apps.release("start", fits)
    assert h.launched == [(fits, {"s1"})]
    assert h.status(waiting) is SUBMITTED


def test_a_waiting_job_whose_extra_try_is_in_flight_does_not_hold_up_a_later_job(make):
    h = make(("s1", "s2"), max_concurrent_jobs=1)
    h.site_apps.lacking["s2"] = NO_GPU
    waiting = h.submit({"app_server": ["server"], "app_site": ["s2"]}, resource_spec={"s2": GPU})
    h.site_apps.defer = True
    h.login("s3")  # resources may have changed: an extra try of the waiting job, now in flight
    fits = h.submit({"app_server": ["server"], "app_site": ["s1"]})
    assert h.checks_of(fits) == []
    h.site_apps.release("check", waiting)  # the extra try fails: its slot is free again at once
    assert len(h.checks_of(fits)) == 1


# --- concurrency --------------------------------------------------------------------------------------------

def test_the_concurrency_limit_counts_tries_in_flight(make):
    h = make(("s1",), max_concurrent_jobs=2)
    h.site_apps.defer = True
    a, b, c = h.submit(), h.submit(), h.submit()
    assert [j for j, _, _ in h.site_apps.checks] == [a, b]
    h.site_apps.release("check", a)
    h.site_apps.release("check", b)
    assert [j for j, _, _ in h.site_apps.starts] == [a, b]
    h.scheduler.kick(resources_changed=True)
    assert h.checks_of(c) == []  # two tries in flight fill the limit
    h.site_apps.release("start", a)
    h.scheduler.kick(resources_changed=True)
    assert h.checks_of(c) == []  # one running and one in flight
    h.site_apps.release("start", b)
    assert set(h.running) == {a, b}
    h.scheduler.kick(resources_changed=True)
    assert h.checks_of(c) == []  # two running
    h.finish(a)
    assert len(h.checks_of(c)) == 1
    h.site_apps.release("check", c)
    h.site_apps.release("start", c)
    assert set(h.running) == {b, c}


def test_nothing_is_tried_while_the_scheduler_is_paused(make):
    h = make(("s1",))
    h.scheduler.pause()
    job = h.submit()
    h.scheduler.kick(resources_changed=True)
    assert h.site_apps.checks == []
    h.scheduler.resume()
    assert h.launched == [(job, {"s1"})]


def test_a_try_that_returns_after_shutdown_paused_the_scheduler_launches_nothing(make):
    h = make(("s1",))
    h.site_apps.defer = True
    job = h.submit(resource_spec={"s1": GPU})
    h.site_apps.release("check")
    h.scheduler.pause()  # as JobLifecycle.shutdown stops it
    h.site_apps.release("start")
    assert h.launched == []
    assert h.status(job) is SUBMITTED
    assert [stop[:2] for stop in h.site_apps.stops] == [(job, ["s1"])]
    # The next start tries it again.
    h.scheduler.resume()
    h.site_apps.release("check")
    h.site_apps.release("start")
    assert h.launched == [(job, {"s1"})]


def test_a_resource_check_that_returns_after_shutdown_gives_the_reservations_back(make):
    h = make(("s1", "s2"))
    h.site_apps.defer = True
    job = h.submit(resource_spec={"s1": GPU, "s2": GPU})
    h.scheduler.pause()
    h.site_apps.release("check")
    assert h.site_apps.cancelled_tokens() == {"tok-s1-1", "tok-s2-2"}
    assert h.site_apps.starts == [] and h.launched == []
    assert h.status(job) is SUBMITTED and job in h.scheduler


# --- min_clients and mandatory_clients --------------------------------------------------------------------

def test_min_clients_waits_without_asking_sites_then_starts_when_enough_log_in(make):
    h = make(("s1",))
    job = h.submit(min_clients=2)
    assert h.site_apps.checks == [] and h.status(job) is SUBMITTED
    assert h.scheduler.waiting[job].last_reason == "needs 2 site(s), 1 available: s1"
    h.login("s2")
    assert h.launched == [(job, {"s1", "s2"})]
    assert h.site_apps.starts == [(job, ["s1", "s2"], {})]


def test_sites_logging_in_one_by_one_do_not_use_up_the_tries_of_a_job_waiting_for_them(make):
    h = make()  # the default schedule_attempts
    sites = [f"s{i}" for i in range(1, h.config.schedule_attempts + 3)]
    job = h.submit(min_clients=len(sites))
    for s in sites:
        h.login(s)
    assert h.status(job) is RunStatus.DISPATCHED, h.last_reason(job)
    assert h.launched == [(job, set(sites))]


def test_a_failed_extra_try_on_a_resource_change_keeps_the_count_and_the_back_off(make):
    h = make(("s1",), schedule_attempts=2, schedule_backoff=1.0)
    h.site_apps.lacking["s1"] = NO_GPU
    t0 = h.clock()
    job = h.submit(resource_spec={"s1": GPU})
    for _ in range(5):
        h.scheduler.kick(resources_changed=True)
    assert len(h.checks_of(job)) == 6
    assert h.status(job) is SUBMITTED and h.scheduler.waiting[job].attempts == 1
    h.advance(h.next_timer())
    assert h.checks_of(job)[-1][2] - t0 == pytest.approx(1.0)
    assert h.status(job) is RunStatus.FINISHED_CAN_NOT_SCHEDULE
    assert "not scheduled after 2 tries" in h.last_reason(job)


def test_a_job_with_a_site_app_needs_one_site_by_default(make):
    h = make()
    job = h.submit()
    assert h.scheduler.waiting[job].last_reason == "needs 1 site(s), 0 available: none"
    h.login("s1")
    assert h.launched == [(job, {"s1"})]


def test_min_clients_met_by_the_sites_that_fit_starts_only_those(make):
    h = make(("s1", "s2", "s3"))
    h.site_apps.lacking["s3"] = NO_GPU
    job = h.submit(min_clients=2, resource_spec={s: GPU for s in ("s1", "s2", "s3")})
    assert h.launched == [(job, {"s1", "s2"})]
    [(_, sites, tokens)] = h.site_apps.starts
    assert sites == ["s1", "s2"] and set(tokens) == {"s1", "s2"}
    assert h.site_apps.cancels == []


def test_only_the_sites_of_the_deploy_map_are_asked_and_started(make):
    h = make(("s1", "s2", "s3"))
    job = h.submit({"app_server": ["server"], "app_site": ["s1", "s2", "s9"]},
                   resource_spec={"s1": GPU, "s3": GPU, "s9": GPU})
    [(_, reqs, _)] = h.checks_of(job)
    assert reqs == {"s1": GPU}  # s3 runs nothing of this job; s9 is not logged in
    assert h.launched == [(job, {"s1", "s2"})]


def test_too_few_sites_started_stops_the_started_ones_and_retries(make):
    h = make(("s1", "s2"))
    h.site_apps.start_fails["s2"] = "ERROR: ImportError: no module named trainer"
    job = h.submit(min_clients=2)
    assert h.launched == [] and h.status(job) is SUBMITTED
    assert h.site_apps.stops == [(job, ["s1"], "not enough sites started")]
    assert "s2: ERROR: ImportError: no module named trainer" in h.scheduler.waiting[job].last_reason
    del h.site_apps.start_fails["s2"]
    h.advance(h.next_timer())
    assert h.launched == [(job, {"s1", "s2"})]


def test_a_mandatory_site_that_is_offline_makes_the_job_wait_until_it_logs_in(make):
    h = make(("s1",))
    job = h.submit(mandatory_clients=["s2"])
    assert h.site_apps.checks == [] and h.status(job) is SUBMITTED
    assert h.scheduler.waiting[job].last_reason == "mandatory site(s) not logged in: s2"
    h.advance(h.next_timer())
    assert h.status(job) is SUBMITTED
    h.login("s2")
    assert h.launched == [(job, {"s1", "s2"})]


def test_an_offline_mandatory_site_ends_the_job_can_not_schedule_after_the_tries(make):
    h = make(("s1",), schedule_attempts=3)
    job = h.submit(mandatory_clients=["s2", "s3"])
    while job in h.scheduler:
        h.advance(h.next_timer())
    assert h.status(job) is RunStatus.FINISHED_CAN_NOT_SCHEDULE
    assert h.last_reason(job) == "not scheduled after 3 tries: mandatory site(s) not logged in: s2, s3"


def test_a_mandatory_site_that_lacks_resources_holds_the_job_even_when_min_clients_is_met(make):
    h = make(("s1", "s2", "s3"))
    h.site_apps.lacking["s2"] = NO_GPU
    job = h.submit(min_clients=1, mandatory_clients=["s2"], resource_spec={s: GPU for s in ("s1", "s2", "s3")})
    assert h.launched == [] and h.site_apps.starts == []
    assert h.site_apps.cancels == [{"s1": "tok-s1-1", "s3": "tok-s3-2"}]
    assert h.scheduler.waiting[job].last_reason == f"mandatory site(s) s2 cannot run it (s2: {NO_GPU})"


def test_a_mandatory_site_that_fails_to_start_stops_the_others(make):
    h = make(("s1", "s2"))
    h.site_apps.start_fails["s2"] = "TIMEOUT: no reply in time"
    job = h.submit(min_clients=1, mandatory_clients=["s2"])
    assert h.launched == []
    assert h.site_apps.stops == [(job, ["s1"], "not enough sites started")]
    assert "mandatory site(s) s2 cannot run it" in h.scheduler.waiting[job].last_reason


# --- abort while a try is in flight --------------------------------------------------------------------------

def test_abort_during_the_resource_check_cancels_the_reservations_when_it_returns(make):
    h = make(("s1", "s2", "s3"))
    h.site_apps.defer = True
    h.site_apps.lacking["s3"] = NO_GPU
    job = h.submit(resource_spec={s: GPU for s in ("s1", "s2", "s3")})
    h.abort(job)
    assert job not in h.scheduler
    h.site_apps.release("check")
    assert h.site_apps.cancelled_tokens() == {"tok-s1-1", "tok-s2-2"}
    assert h.site_apps.starts == [] and h.launched == []
    assert h.status(job) is RunStatus.FINISHED_ABORTED


def test_abort_during_the_site_start_stops_the_started_sites_when_it_returns(make):
    h = make(("s1", "s2"))
    h.site_apps.defer = True
    h.site_apps.start_fails["s2"] = "ERROR: broken"
    job = h.submit()
    h.site_apps.release("check")
    h.abort(job)
    h.site_apps.release("start")
    assert h.site_apps.stops == [(job, ["s1"], "the job was aborted before it started")]
    assert h.launched == []
    assert h.status(job) is RunStatus.FINISHED_ABORTED


def test_abort_while_waiting_for_the_back_off_cancels_the_retry(make):
    h = make(("s1",))
    h.site_apps.lacking["s1"] = NO_GPU
    job = h.submit(resource_spec={"s1": GPU})
    h.abort(job)
    h.advance(1000)
    h.scheduler.kick(resources_changed=True)
    assert len(h.checks_of(job)) == 1
    assert h.status(job) is RunStatus.FINISHED_ABORTED


def test_a_job_aborted_in_flight_no_longer_counts_against_the_limit(make):
    h = make(("s1",), max_concurrent_jobs=1)
    h.site_apps.defer = True
    first = h.submit()
    second = h.submit()
    assert h.checks_of(second) == []
    h.abort(first)
    h.scheduler.kick(resources_changed=True)
    assert len(h.checks_of(second)) == 1
    h.site_apps.release("check", first)  # the aborted try returns late: it is dropped
    h.site_apps.release("check", second)
    h.site_apps.release("start", second)
    assert h.launched == [(second, {"s1"})]


# --- server-only jobs -------------------------------------------------------------------------------------------

def test_a_server_only_job_launches_without_sites(make):
    h = make()
    job = h.submit(SERVER_ONLY)
    assert h.launched == [(job, set())]
    assert h.site_apps.starts == []


def test_a_server_only_job_never_starts_anything_on_logged_in_sites(make):
    h = make(("s1", "s2"))
    job = h.submit(SERVER_ONLY)
    assert h.launched == [(job, set())]
    assert h.site_apps.starts == [] and h.site_apps.cancels == []


def test_a_server_only_job_with_min_clients_waits_for_that_many_sites(make):
    h = make(("s1",))
    job = h.submit(SERVER_ONLY, min_clients=2)
    assert h.launched == []
    h.login("s2")
    assert h.launched == [(job, set())]
    assert h.site_apps.starts == []


# --- the job domain around the scheduler ----------------------------------------------------------------------

class NoLoop:
    """The loop's fd watching, for a test that never runs the loop."""

    def watch_fd(self, fd: int, callback) -> None:
        pass

    def unwatch_fd(self, fd: int) -> None:
        pass


class InlineLane:
    """An offload lane that runs the work at once."""

    def run(self, work, done) -> None:
        done(work(), None)


class FailingLauncher(Launcher):
    name = "failing"

    def launch(self, spec: LaunchSpec):
        raise LaunchError("cannot start python: no such file")


def test_a_launch_failure_stops_the_site_apps_the_scheduler_started(tmp_path: Path):
    folder = tmp_path / "job"
    for config in ("config_fed_server.json", "config_fed_client.json"):
        (folder / "app" / "config").mkdir(parents=True, exist_ok=True)
        (folder / "app" / "config" / config).write_text(json.dumps(
            {"format_version": 2, "workflows": [{"id": "wf", "path": "x.Y"}]}))
    (folder / "meta.json").write_text(json.dumps({"name": "j", "deploy_map": {"app": ["@ALL"]},
                                                  "resource_spec": {"s1": GPU}}))
    ws = Workspace(tmp_path / "ws")
    ws.root.mkdir()
    clock = FakeClock()
    timers = Timers(clock=clock)
    events = QuietEvents()
    store = HeldWrites(JobStore(ws.get_job_store_path()), timers, events=events)
    registry = SiteRegistry(30.0, clock=clock)
    registry.login("s1", b"s1")
    site_apps = FakeSiteJobs(clock)
    jobs = JobLifecycle(ParentConfig(workspace=str(ws.root)), ws, store, FailingLauncher(), timers, RunningJobs(clock),
                        registry, site_apps, events, loop=NoLoop(), reaper=InlineLane(), job_endpoint="ipc:///nowhere")
    try:
        jobs.start()
        job_id = jobs.submissions.submit(str(folder)).job_id
        assert site_apps.starts == [(job_id, ["s1"], {"s1": "tok-s1-1"})]
        rec = store.get(job_id)
        assert rec.status is RunStatus.FINISHED_FAILED_TO_RUN
        # The site apps the scheduler started (and the reservations they consumed) are given back.
        assert [stop[:2] for stop in site_apps.stops] == [(job_id, ["s1"])]
    finally:
        store.store.close()
