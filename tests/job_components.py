"""Components and workflows for test jobs. Copied into each test job's ``custom/`` folder, so it
is loaded the way third-party job code is: by module path from the job folder, written only
against the NVFlare-style API.
"""

import json
import os
import signal
import subprocess
import sys
import time

from flrunner import Controller, EventType, FLComponent, RunSnapshot, Shareable, Widget


def _write(fl_ctx, name, data):
    """Write ``data`` as JSON to ``name`` in the job's run dir, atomically (also used by the other
    job_components_* modules)."""
    engine = fl_ctx.get_engine()
    path = os.path.join(engine.get_workspace().get_run_dir(fl_ctx.get_job_id()), name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(data, f)
    os.replace(tmp, path)


class EventRecorder(FLComponent):
    def __init__(self, out="events.json"):
        super().__init__()
        self.out = out
        self.events = []
        self.value = 0

    def handle_event(self, event_type, fl_ctx):
        self.events.append(event_type)
        if event_type == EventType.END_RUN:
            _write(fl_ctx, self.out, self.events)

    def get_persist_state(self, fl_ctx):
        return {"value": self.value}

    def restore(self, state, fl_ctx):
        self.value = state["value"]


class ProbeWidget(Widget):
    pass


def _expect_error(fn, exc_type):
    try:
        fn()
    except exc_type as exc:
        return f"{type(exc).__name__}: {exc}"
    except Exception as exc:  # the wrong error
        return f"WRONG {type(exc).__name__}: {exc}"
    return "NO ERROR"


class EngineProbe(Controller):
    """Calls every ServerEngine method and writes what each returned to probe.json."""

    def __init__(self, expect_sites=0):
        super().__init__()
        self.expect_sites = expect_sites

    def control_flow(self, abort_signal, fl_ctx):
        engine = fl_ctx.get_engine()
        r = {}
        ctx = engine.new_context()
        r["new_context"] = [ctx.get_job_id(), ctx.get_identity_name(), ctx.get_engine() is engine]
        ctx.set_prop("sticky_key", 42, private=False, sticky=True)
        r["sticky_in_new_context"] = engine.new_context().get_prop("sticky_key")
        r["get_workspace"] = engine.get_workspace().get_run_dir(fl_ctx.get_job_id())
        r["get_component"] = type(engine.get_component("recorder")).__name__
        r["get_component_missing"] = engine.get_component("nope")
        r["get_widget"] = type(engine.get_widget("widget")).__name__
        r["get_widget_missing"] = engine.get_widget("recorder")
        engine.fire_event("custom_event", fl_ctx)
        r["fire_event"] = engine.get_component("recorder").events[-1]
        clients = engine.sync_clients_from_main_process()
        deadline = time.time() + 10
        while len(clients) < self.expect_sites and time.time() < deadline:
            abort_signal.wait(0.05)
            clients = engine.sync_clients_from_main_process()
        r["sync_clients_from_main_process"] = sorted(c.name for c in clients)
        r["get_clients"] = sorted(c.name for c in engine.get_clients())
        tok = clients[0].token if clients else ""
        r["get_client_name_from_token"] = engine.get_client_name_from_token(tok) if tok else None
        r["get_client_name_from_token_unknown"] = engine.get_client_name_from_token("bogus-token")
        engine.set_run_progress({"message": "probing", "step": 1})
        r["update_job_run_status"] = engine.update_job_run_status()
        rec = engine.get_component("recorder")
        rec.value = 7
        snap = engine.persist_components(fl_ctx, completed=False)
        r["persist_components"] = snap.get_component_snapshot("recorder")
        rec.value = 0
        loaded = RunSnapshot.load(engine.get_workspace().get_snapshot_path(fl_ctx.get_job_id()))
        engine.restore_components(loaded, fl_ctx)
        r["restore_components"] = rec.value

        def handler(topic, request, fl_ctx):
            return Shareable()

        engine.register_aux_message_handler("probe_topic", handler)
        r["register_twice"] = _expect_error(lambda: engine.register_aux_message_handler("probe_topic", handler), ValueError)
        r["register_empty_topic"] = _expect_error(lambda: engine.register_aux_message_handler("", handler), ValueError)
        r["register_not_callable"] = _expect_error(lambda: engine.register_aux_message_handler("t2", 5), TypeError)
        req = Shareable({"hello": "sites"})
        replies = engine.send_aux_request([], "no_such_topic", req, 5.0, fl_ctx)
        r["send_aux_request"] = {name: rep.get_return_code() for name, rep in replies.items()}
        r["fire_and_forget_aux_request"] = engine.fire_and_forget_aux_request([], "t", req, fl_ctx)
        checked = engine.check_client_resources(None, {"site-a": {"num_cpus": 1}, "site-b": {"num_gpus": 99}}, fl_ctx)
        r["check_client_resources"] = {s: [ok, bool(tok)] for s, (ok, tok) in checked.items()}
        engine.cancel_client_resources(checked, {}, fl_ctx)
        r["cancel_client_resources"] = "done"
        started = engine.start_client_job(fl_ctx.get_job_id(), ["site-a"], fl_ctx)
        r["start_client_job"] = {s: [ok, reason] for s, (ok, reason) in started.items()}
        _write(fl_ctx, "probe.json", r)


class Sleeper(Controller):
    """Runs until aborted (cooperative) or for ``seconds``; ``stubborn`` ignores abort and SIGTERM."""

    def __init__(self, seconds=60.0, stubborn=False, grandchild=False, progress_every=0.0):
        super().__init__()
        self.seconds = seconds
        self.stubborn = stubborn
        self.grandchild = grandchild
        self.progress_every = progress_every

    def control_flow(self, abort_signal, fl_ctx):
        engine = fl_ctx.get_engine()
        extra = {}
        if self.grandchild:
            p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
            extra["grandchild_pid"] = p.pid
        if self.stubborn:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            engine.set_run_progress({"message": "stubborn", **extra})
            engine.update_job_run_status()
            end = time.time() + self.seconds
            while time.time() < end:
                time.sleep(0.05)
            return
        engine.set_run_progress({"message": "sleeping", **extra})
        engine.update_job_run_status()
        abort_signal.wait(self.seconds)


class Progress(Controller):
    """Reports ``steps`` progress updates, each durable before the next."""

    def __init__(self, steps=5):
        super().__init__()
        self.steps = steps

    def control_flow(self, abort_signal, fl_ctx):
        engine = fl_ctx.get_engine()
        for i in range(1, self.steps + 1):
            engine.set_run_progress({"message": f"step {i}/{self.steps}", "step": i})
            engine.update_job_run_status()


class Fail(Controller):
    def control_flow(self, abort_signal, fl_ctx):
        raise RuntimeError("the workflow failed on purpose")


class Exit(Controller):
    """Leaves the process without a final status."""

    def __init__(self, code=3):
        super().__init__()
        self.code = code

    def control_flow(self, abort_signal, fl_ctx):
        os._exit(self.code)


class BadInit(Controller):
    def __init__(self):
        raise ValueError("cannot construct")


class WatchClients(Controller):
    """Syncs once, then watches get_clients() (kept current by the parent's pushes) and reports
    every change of the site set as progress, until ``until`` is seen or ``seconds`` pass."""

    def __init__(self, until=(), seconds=20.0):
        super().__init__()
        self.until = sorted(until)
        self.seconds = seconds

    def control_flow(self, abort_signal, fl_ctx):
        engine = fl_ctx.get_engine()
        engine.sync_clients_from_main_process()
        seen = None
        end = time.time() + self.seconds
        while time.time() < end and not abort_signal.triggered:
            names = sorted(c.name for c in engine.get_clients())
            if names != seen:
                seen = names
                engine.set_run_progress({"sites": names})
                engine.update_job_run_status()
                if names == self.until:
                    return
            abort_signal.wait(0.02)
        raise RuntimeError(f"never saw {self.until}; last {seen}")


class LeaveThreadRunning(Controller):
    """Completes, but leaves a non-daemon thread that would keep a normal interpreter alive."""

    def control_flow(self, abort_signal, fl_ctx):
        import threading

        threading.Thread(target=time.sleep, args=(600,), daemon=False).start()


# --- site side --------------------------------------------------------------------------------------


class EchoExecutor(FLComponent):
    """Answers a task with what it got, the site's name and the task."""

    def execute(self, task_name, shareable, fl_ctx, abort_signal):
        reply = Shareable({"echo": dict((k, v) for k, v in shareable.items() if k != "__headers__"),
                           "site": fl_ctx.get_identity_name(), "task": task_name})
        return reply


class AuxRoundTrip(Controller):
    """Sends ``topic`` to all sites (or ``targets``) and writes each reply's rc and data to aux.json."""

    def __init__(self, topic="echo", targets=None, timeout=10.0, payload=None):
        super().__init__()
        self.topic = topic
        self.targets = targets
        self.timeout = timeout
        self.payload = payload or {"x": 1}

    def control_flow(self, abort_signal, fl_ctx):
        engine = fl_ctx.get_engine()
        replies = engine.send_aux_request(self.targets, self.topic, Shareable(self.payload), self.timeout, fl_ctx)
        _write(fl_ctx, "aux.json", {s: {"rc": r.get_return_code(), "data": {k: v for k, v in r.items()
                                                                            if k != "__headers__"},
                                        "reason": r.get_header("reason")} for s, r in replies.items()})


class Leaky(Controller):
    """Leaves marks in its process (a module global, an environment variable, sys.path) and
    reports whether it found marks left by an earlier job: a forked job must see none."""

    def control_flow(self, abort_signal, fl_ctx):
        import flrunner

        engine = fl_ctx.get_engine()
        found = {"module_global": getattr(flrunner, "_leaky_mark", None),
                 "env": os.environ.get("FLRUNNER_LEAKY_MARK"),
                 "sys_path": [p for p in sys.path if p.endswith("leaky-mark")]}
        flrunner._leaky_mark = fl_ctx.get_job_id()
        os.environ["FLRUNNER_LEAKY_MARK"] = fl_ctx.get_job_id()
        sys.path.append("/nonexistent/leaky-mark")
        engine.set_run_progress({"found": found, "pid": os.getpid(), "ppid": os.getppid()})
        engine.update_job_run_status()
