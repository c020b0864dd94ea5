"""Hostile job code for the abuse tests (tests/test_abuse.py).

Copied into each test job's ``custom/`` folder and loaded as ``job_components_abuse.<Class>``.
Unlike the other test components these reach past the NVFlare-style API into the job process's
own objects, as hostile job code may: the flood talks on the process's link to the parent, and
the secrets probe finds the job secret where the process keeps it for a later hello.
"""

import gc
import os
import time
from collections import Counter

from flrunner import Controller
from flrunner.transport.wire import Message

try:  # in a job: next to job_components.py in its custom/ folder
    from job_components import _write
except ImportError:  # imported by the tests as part of the tests package
    from .job_components import _write


def _run_dir(fl_ctx):
    return fl_ctx.get_engine().get_workspace().get_run_dir(fl_ctx.get_job_id())


class FloodParent(Controller):
    """Sends the parent heartbeats carrying ``kib`` KiB of raw bytes each, ``per_second`` a second,
    for ``min_seconds`` and then until a file named ``stop`` appears in the run dir (or ``seconds``
    pass).

    Writes ``limited.json`` (the reason) at the first ``RATE_LIMITED`` reply, and at the end
    ``flood.json``: the replies by return code (``none`` for a message never answered), the first
    ``RATE_LIMITED`` reason, the message size and how long the flood lasted.
    """

    def __init__(self, kib=128, per_second=400, min_seconds=0.0, seconds=60.0):
        super().__init__()
        self.blob = b"\0" * (kib * 1024)
        self.per_second = per_second
        self.min_seconds = min_seconds
        self.seconds = seconds

    def control_flow(self, abort_signal, fl_ctx):
        link = fl_ctx.get_engine().link
        stop = os.path.join(_run_dir(fl_ctx), "stop")
        calls, reason = [], None
        t0 = time.monotonic()
        while (time.monotonic() - t0 < self.min_seconds or not os.path.exists(stop)) \
                and time.monotonic() - t0 < self.seconds and not abort_signal.triggered:
            for _ in range(max(1, self.per_second // 20)):
                calls.append(link.call(Message("heartbeat", {}, frames=[self.blob])))
            time.sleep(0.05)
            if reason is None:
                reason = _first_rate_limited(calls)
                if reason is not None:
                    _write(fl_ctx, "limited.json", {"reason": reason})
        elapsed = time.monotonic() - t0
        time.sleep(2.0)  # replies to the last messages
        replies = Counter(call.replies[0].rc if call.replies else "none" for call in calls)
        for call in calls:
            link.end_call(call)
        _write(fl_ctx, "flood.json", {"replies": dict(replies), "reason": reason or _first_rate_limited(calls),
                                      "size": len(self.blob), "elapsed": elapsed})


def _first_rate_limited(calls):
    for call in calls:
        if call.replies and call.replies[0].rc == "RATE_LIMITED":
            return call.replies[0].body.get("reason")
    return None


class RevealSecrets(Controller):
    """Writes ``secrets.json``: this job process's secret (its parent session keeps it to say
    hello again to a restarted parent) and the per-job tokens of its sites, once ``expect_sites``
    are all seen; then runs until aborted (or ``seconds`` pass)."""

    def __init__(self, expect_sites=(), seconds=120.0):
        super().__init__()
        self.expect_sites = set(expect_sites)
        self.seconds = seconds

    def control_flow(self, abort_signal, fl_ctx):
        from child.session import ParentSession

        engine = fl_ctx.get_engine()
        clients = engine.sync_clients_from_main_process()
        deadline = time.monotonic() + 20
        while not self.expect_sites <= {c.name for c in clients} and time.monotonic() < deadline:
            abort_signal.wait(0.1)
            clients = engine.sync_clients_from_main_process()
        secrets = [obj._secret for obj in gc.get_objects() if isinstance(obj, ParentSession)]
        _write(fl_ctx, "secrets.json", {"job_secrets": secrets, "site_tokens": {c.name: c.token for c in clients},
                                        "pid": os.getpid()})
        abort_signal.wait(self.seconds)
