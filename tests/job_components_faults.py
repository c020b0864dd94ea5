"""Workflows and components for the fault tests (``tests/test_faults.py``).

Copied into each test job's ``custom/`` folder like ``job_components.py`` and referenced as
``job_components_faults.Class``. They leave evidence in the job's run dir (files written with
plain ``write()`` calls, so they survive a ``kill -9`` of the job process) for the test to check
against the parent's job store.
"""

import json
import logging
import os
import signal
import subprocess
import sys
import time

from flrunner import Controller, EventType, FLComponent, FlrunnerError, RunStatus


def _run_dir(fl_ctx):
    return fl_ctx.get_engine().get_workspace().get_run_dir(fl_ctx.get_job_id())


def _write_json(path, data):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(data, f)
    os.replace(tmp, path)


class Ticker(Controller):
    """Reports progress ``{"step": i}`` every ``interval`` seconds (0: as fast as the parent acks).

    After each `update_job_run_status` returns (the parent acknowledged the update, so it is
    durable in the store) the line ``"<step> <time.time()>"`` is appended to ``ack_file`` in the
    run dir. Ends after ``steps`` steps, or earlier once ``finish_file`` exists in the run dir, or
    when aborted.
    """

    def __init__(self, steps=50, interval=0.1, ack_file="acked.txt", finish_file=None):
        super().__init__()
        self.steps = int(steps)
        self.interval = float(interval)
        self.ack_file = ack_file
        self.finish_file = finish_file

    def control_flow(self, abort_signal, fl_ctx):
        engine = fl_ctx.get_engine()
        run_dir = _run_dir(fl_ctx)
        finish = os.path.join(run_dir, self.finish_file) if self.finish_file else None
        with open(os.path.join(run_dir, self.ack_file), "a", buffering=1) as acked:
            for i in range(1, self.steps + 1):
                if abort_signal.triggered or (finish and os.path.exists(finish)):
                    return
                engine.set_run_progress({"message": f"step {i}/{self.steps}", "step": i})
                engine.update_job_run_status()
                acked.write(f"{i} {time.time():.6f}\n")
                if self.interval:
                    abort_signal.wait(self.interval)


class SpawnDetached(Controller):
    """Starts three ``sleep 600`` processes that try to escape the job's process group:

    - ``plain``: an ordinary child (same process group);
    - ``session``: a child in a session of its own (``setsid``);
    - ``orphan``: in a session of its own, and orphaned at once (its parent exits), so it is not
      even a descendant of the job process any more.

    Reports their pids as progress (``message: "spawned"``), then runs until aborted, until
    ``go_file`` exists in the run dir, or for ``seconds``. A ``stubborn`` one ignores the abort
    and SIGTERM (only SIGKILL ends it).
    """

    def __init__(self, seconds=60.0, go_file="go", stubborn=False):
        super().__init__()
        self.seconds = float(seconds)
        self.go_file = go_file
        self.stubborn = stubborn

    def control_flow(self, abort_signal, fl_ctx):
        engine = fl_ctx.get_engine()
        if self.stubborn:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        plain = subprocess.Popen(["sleep", "600"])
        session = subprocess.Popen(["sleep", "600"], start_new_session=True)
        # The orphan must not hold the pipe its parent prints on, or run() waits for it.
        out = subprocess.run([sys.executable, "-c", "import subprocess; print(subprocess.Popen(['sleep', '600'], "
                              "start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).pid)"],
                             capture_output=True, text=True, check=True, timeout=30)
        engine.set_run_progress({"message": "spawned", "plain": plain.pid, "session": session.pid,
                                 "orphan": int(out.stdout)})
        engine.update_job_run_status()
        go = os.path.join(_run_dir(fl_ctx), self.go_file)
        end = time.time() + self.seconds
        while time.time() < end and not os.path.exists(go):
            if abort_signal.wait(0.05) and not self.stubborn:
                return
            if self.stubborn:
                time.sleep(0.05)


class _LingerHandler(logging.Handler):
    """`logging.shutdown` flushes every handler after the final status was acknowledged: this one
    then writes its marker and keeps the process alive, standing for a slow exit."""

    def __init__(self, marker, seconds):
        super().__init__()
        self.marker = marker
        self.seconds = seconds
        self.fired = False

    def emit(self, record):
        pass

    def flush(self):
        if self.fired:
            return
        self.fired = True
        with open(self.marker + ".tmp", "w") as f:  # whole or absent: the test reads it as soon as it exists
            f.write(str(os.getpid()))
        os.replace(self.marker + ".tmp", self.marker)
        end = time.time() + self.seconds
        while time.time() < end:
            time.sleep(0.05)


class LingerAfterFinalStatus(FLComponent):
    """Keeps the job process alive for ``seconds`` after its final status was acknowledged.

    The job process calls ``logging.shutdown()`` only after the parent acknowledged the final
    status (``child/main.py``); the handler installed here blocks in that call, after writing
    ``marker`` in the run dir.
    """

    def __init__(self, marker="final-acked", seconds=60.0):
        super().__init__()
        self.marker = marker
        self.seconds = float(seconds)

    def handle_event(self, event_type, fl_ctx):
        if event_type == EventType.START_RUN:
            logging.getLogger().addHandler(_LingerHandler(os.path.join(_run_dir(fl_ctx), self.marker), self.seconds))


class FreezeParentBeforeFinalStatus(FLComponent):
    """At END_RUN (just before the job process sends its final status) stops the parent with
    SIGSTOP (``parent-frozen`` in the run dir holds its pid), so the final status sits unread in
    the parent's socket; writes ``marker`` in the run dir once the message carrying the final status has been handed to the socket.

    The test then kills the job process and resumes the parent. Instrumentation only: it wraps
    the link's send on the job process's I/O thread.
    """

    def __init__(self, marker="final-sent"):
        super().__init__()
        self.marker = marker

    def handle_event(self, event_type, fl_ctx):
        if event_type != EventType.END_RUN:
            return
        link = fl_ctx.get_engine().link.link  # the session's Link, under the calls that survive restarts
        marker = os.path.join(_run_dir(fl_ctx), self.marker)
        send = link._send

        def send_and_mark(sock, frames):
            send(sock, frames)
            head = bytes(frames[0].bytes if hasattr(frames[0], "bytes") else frames[0])
            if b"run_status" in head and b"FINISHED:" in head and not os.path.exists(marker):
                with open(marker, "w") as f:
                    f.write(str(os.getpid()))

        link._send = send_and_mark
        # The parent's pid from its parent.json (a warm launcher's job process is the child of
        # a template process, not of the parent).
        with open(fl_ctx.get_engine().get_workspace().get_parent_info_path()) as f:
            parent_pid = json.load(f)["pid"]
        with open(os.path.join(_run_dir(fl_ctx), "parent-frozen"), "w") as f:
            f.write(str(parent_pid))
        os.kill(parent_pid, signal.SIGSTOP)


class ReportAfterTheEnd(Controller):
    """Reports ``FINISHED:COMPLETED`` itself, then tries to move the finished job: other statuses,
    and new progress. Writes what the parent answered each time to ``late.json``."""

    LATE = ("RUNNING", "FINISHED:ABORTED", "FINISHED:EXECUTION_EXCEPTION", "FINISHED:ABNORMAL")

    def control_flow(self, abort_signal, fl_ctx):
        engine = fl_ctx.get_engine()
        results = {}
        engine.set_run_progress({"message": "done", "step": 1})
        engine.run_status = RunStatus.FINISHED_COMPLETED
        results["FINISHED:COMPLETED"] = engine.update_job_run_status()
        for status in self.LATE:
            engine.run_status = RunStatus(status)
            try:
                results[status] = "stored: " + str(engine.update_job_run_status())
            except FlrunnerError as exc:
                results[status] = f"{type(exc).__name__}: {exc}"
        engine.run_status = RunStatus.FINISHED_COMPLETED
        engine.set_run_progress({"message": "late progress", "step": 2})
        results["late progress"] = engine.update_job_run_status()
        _write_json(os.path.join(_run_dir(fl_ctx), "late.json"), results)
