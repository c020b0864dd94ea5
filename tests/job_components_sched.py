"""Workflows and site components for the scheduling and site-liveness tests
(tests/test_scheduling.py). Copied into each test job's ``custom/`` folder and written only
against the NVFlare-style API, like third-party job code.
"""

import os
import time

from flrunner import Controller, EventType, FLComponent, Shareable
try:  # in a job: next to job_components.py in its custom/ folder
    from job_components import _write
except ImportError:  # imported by the tests as part of the tests package
    from .job_components import _write


def _report(engine, progress):
    engine.set_run_progress(progress)
    engine.update_job_run_status()


def _replies(replies):
    return {s: {"rc": r.get_return_code(), "reason": r.get_header("reason"),
                "data": {k: v for k, v in r.items() if k != "__headers__"}} for s, r in replies.items()}


# --- server side --------------------------------------------------------------------------------------


class AuxThenHold(Controller):
    """Sends ``topic`` to every site of the job, writes the replies to aux.json, reports
    ``{"aux": "done"}``, then holds (keeping its sites and resources) until ``hold_file`` exists."""

    def __init__(self, topic="echo", hold_file=None, timeout=10.0, seconds=30.0):
        super().__init__()
        self.topic = topic
        self.hold_file = hold_file
        self.timeout = timeout
        self.seconds = seconds

    def control_flow(self, abort_signal, fl_ctx):
        engine = fl_ctx.get_engine()
        replies = engine.send_aux_request([], self.topic, Shareable({"x": 1}), self.timeout, fl_ctx)
        _write(fl_ctx, "aux.json", _replies(replies))
        _report(engine, {"aux": "done"})
        end = time.time() + self.seconds
        while self.hold_file and not os.path.exists(self.hold_file):
            if abort_signal.triggered or time.time() > end:
                raise RuntimeError(f"{self.hold_file} never appeared")
            abort_signal.wait(0.02)


class WatchSites(Controller):
    """Syncs the site list once, then watches ``get_clients()`` until it equals ``until``,
    reporting every change as progress. Counts the ``sync_clients`` requests made after the first
    sync: get_clients() must stay current from the parent's pushes alone (no polling)."""

    def __init__(self, until=(), seconds=20.0):
        super().__init__()
        self.until = sorted(until)
        self.seconds = seconds

    def control_flow(self, abort_signal, fl_ctx):
        engine = fl_ctx.get_engine()
        engine.sync_clients_from_main_process()
        syncs = []
        request = engine.link.request

        def counting_request(msg, *args, **kwargs):
            if msg.op == "sync_clients":
                syncs.append(time.time())
            return request(msg, *args, **kwargs)

        engine.link.request = counting_request
        seen = None
        history = []
        end = time.time() + self.seconds
        try:
            while time.time() < end and not abort_signal.triggered:
                names = sorted(c.name for c in engine.get_clients())
                if names != seen:
                    seen = names
                    history.append(names)
                    _report(engine, {"sites": names})
                    if names == self.until:
                        break
                abort_signal.wait(0.01)
        finally:
            engine.link.request = request
        _write(fl_ctx, "watch.json", {"history": history, "syncs_after_first": len(syncs)})
        if seen != self.until:
            raise RuntimeError(f"never saw {self.until}; last {seen}")


class WatchClientEntries(Controller):
    """Records every distinct ``get_clients()`` list (name, a digest of the token, the login time)
    in clients.json until ``stop_file`` exists: a registry that churns a site (a new token, a new
    login time) shows as a second entry, even when the names stay the same."""

    def __init__(self, stop_file, seconds=60.0):
        super().__init__()
        self.stop_file = stop_file
        self.seconds = seconds

    def control_flow(self, abort_signal, fl_ctx):
        import hashlib

        engine = fl_ctx.get_engine()
        engine.sync_clients_from_main_process()
        history = []
        end = time.time() + self.seconds
        while not os.path.exists(self.stop_file):
            if abort_signal.triggered or time.time() > end:
                raise RuntimeError(f"{self.stop_file} never appeared")
            entries = sorted([c.name, hashlib.sha256(c.token.encode()).hexdigest()[:12], c.last_connect_time]
                             for c in engine.get_clients())
            if not history or entries != history[-1]:
                history.append(entries)
                _write(fl_ctx, "clients.json", history)
            abort_signal.wait(0.01)


class AuxWaitOnSite(Controller):
    """Sends ``topic`` to ``site`` with a long ``timeout`` and records the reply and how long it
    took in aux_wait.json."""

    def __init__(self, site, topic="hang", timeout=30.0):
        super().__init__()
        self.site = site
        self.topic = topic
        self.timeout = timeout

    def control_flow(self, abort_signal, fl_ctx):
        engine = fl_ctx.get_engine()
        engine.sync_clients_from_main_process()
        start = time.monotonic()
        replies = engine.send_aux_request([self.site], self.topic, Shareable({"x": 1}), self.timeout, fl_ctx)
        _write(fl_ctx, "aux_wait.json", {"replies": _replies(replies), "elapsed": time.monotonic() - start})


class ResourceCalls(Controller):
    """Waits for ``site`` to log in, then calls the engine's resource API on it as a workflow
    would, writing each result to resources.json:

    check (reserves), check again (the spec no longer fits), cancel, check (fits again),
    start_client_job with the reservation, check (the running job keeps it), aux to the site.
    """

    def __init__(self, site, spec, seconds=15.0):
        super().__init__()
        self.site = site
        self.spec = spec
        self.seconds = seconds

    def control_flow(self, abort_signal, fl_ctx):
        engine = fl_ctx.get_engine()
        end = time.time() + self.seconds
        engine.sync_clients_from_main_process()
        while self.site not in [c.name for c in engine.get_clients()]:
            if abort_signal.triggered or time.time() > end:
                raise RuntimeError(f"site {self.site} never logged in")
            abort_signal.wait(0.02)
        job_id = fl_ctx.get_job_id()
        reqs = {self.site: dict(self.spec)}
        r = {}
        first = engine.check_client_resources(None, reqs, fl_ctx)
        r["first"] = [first[self.site][0], bool(first[self.site][1])]
        second = engine.check_client_resources(None, reqs, fl_ctx)
        r["second"] = [second[self.site][0], second[self.site][1]]
        engine.cancel_client_resources(first, reqs, fl_ctx)
        third = engine.check_client_resources(None, reqs, fl_ctx)
        r["after_cancel"] = [third[self.site][0], bool(third[self.site][1])]
        started = engine.start_client_job(job_id, {self.site: third[self.site][1]}, fl_ctx)
        r["start"] = {s: [ok, reason] for s, (ok, reason) in started.items()}
        fourth = engine.check_client_resources(None, reqs, fl_ctx)
        r["while_running"] = [fourth[self.site][0], fourth[self.site][1]]
        replies = engine.send_aux_request([self.site], "echo", Shareable({"x": 7}), 10.0, fl_ctx)
        r["aux"] = _replies(replies)
        _write(fl_ctx, "resources.json", r)


# --- site side ---------------------------------------------------------------------------------------


class HangExecutor(FLComponent):
    """Writes ``marker`` when a request arrives, then holds it until the job stops (abort) or
    ``seconds`` pass."""

    def __init__(self, marker, seconds=20.0):
        super().__init__()
        self.marker = marker
        self.seconds = seconds

    def execute(self, task_name, shareable, fl_ctx, abort_signal):
        with open(self.marker, "w") as f:
            f.write(fl_ctx.get_identity_name())
        abort_signal.wait(self.seconds)
        return Shareable({"late": True})


class SlowEndRun(FLComponent):
    """Takes ``seconds`` to handle END_RUN on the site (saving a model, say)."""

    def __init__(self, seconds=1.5):
        super().__init__()
        self.seconds = seconds

    def handle_event(self, event_type, fl_ctx):
        if event_type == EventType.END_RUN:
            time.sleep(self.seconds)
