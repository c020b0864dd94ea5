"""Workflows for tests/test_pressure.py: jobs that keep calling their engine while the parent is
killed, paused or short of disk."""

import collections
import os
import time

from flrunner import Controller, Shareable

from job_components import _write


def _run_dir(fl_ctx):
    return fl_ctx.get_engine().get_workspace().get_run_dir(fl_ctx.get_job_id())


class CallsThroughRestarts(Controller):
    """Calls the engine in a loop until ``stop`` exists in the run dir: an aux request to
    ``site``, a client sync and a durable progress update per round. Any exception ends the job
    (FINISHED:EXECUTION_EXCEPTION). Reports ``{"round", "rcs": {return code: count}}`` as
    progress each round, and writes the same to calls.json at the end."""

    def __init__(self, site, interval=0.05, timeout=5.0, seconds=120.0):
        super().__init__()
        self.site = site
        self.interval = interval
        self.timeout = timeout
        self.seconds = seconds

    def control_flow(self, abort_signal, fl_ctx):
        engine = fl_ctx.get_engine()
        stop = os.path.join(_run_dir(fl_ctx), "stop")
        rcs = collections.Counter()
        end = time.time() + self.seconds
        n = 0
        while not os.path.exists(stop) and time.time() < end and not abort_signal.triggered:
            n += 1
            reply = engine.send_aux_request([self.site], "echo", Shareable({"n": n}), self.timeout, fl_ctx)[self.site]
            rcs[reply.get_return_code()] += 1
            engine.sync_clients_from_main_process()
            engine.set_run_progress({"round": n, "rcs": dict(rcs)})
            engine.update_job_run_status()
            abort_signal.wait(self.interval)
        _write(fl_ctx, "calls.json", {"round": n, "rcs": dict(rcs)})


class RunUntilGo(Controller):
    """Reports ``{"beat": n}`` as progress every ``interval`` s until ``go`` exists in the run dir
    (then completes), or until aborted."""

    def __init__(self, interval=0.2, seconds=120.0):
        super().__init__()
        self.interval = interval
        self.seconds = seconds

    def control_flow(self, abort_signal, fl_ctx):
        engine = fl_ctx.get_engine()
        go = os.path.join(_run_dir(fl_ctx), "go")
        end = time.time() + self.seconds
        n = 0
        while not os.path.exists(go) and time.time() < end:
            n += 1
            engine.set_run_progress({"beat": n})
            engine.update_job_run_status()
            if abort_signal.wait(self.interval):
                return


class Chatty(Controller):
    """Writes ``mb`` megabytes of lines to stdout as fast as it can, half of them from a process it
    starts (its output goes to the job's log too), then prints ``chatty done`` and completes."""

    def __init__(self, mb=200):
        super().__init__()
        self.mb = mb

    def control_flow(self, abort_signal, fl_ctx):
        import subprocess
        import sys

        line = "x" * 1023 + "\n"
        half = self.mb * 512  # lines of 1 KiB in half the megabytes
        child = subprocess.Popen([sys.executable, "-c", f"import sys\nfor _ in range({half}): sys.stdout.write({line!r})"])
        for _ in range(half):
            sys.stdout.write(line)
            if abort_signal.triggered:
                break
        child.wait()
        print("chatty done", flush=True)
