"""Workflows and site-side components for the aux-messaging tests (tests/test_aux.py).

Copied into each test job's ``custom/`` folders and loaded as ``job_components_aux.<Class>``, so
it is written only against the NVFlare-style API a third-party job uses. Every workflow writes
what it saw to a JSON file in the job's run dir; the tests read that file once the job ended.
Site-side code that waits (a slow or hanging handler) waits on the job's abort signal, so the
end of the job ends the wait; only ``hang_hard`` ignores it, standing for stuck third-party code.
"""

import hashlib
import os
import threading
import time

from flrunner import Controller, EventType, FLComponent, ReturnCode, Shareable, make_reply
try:  # in a job: next to job_components.py in its custom/ folder
    from job_components import _expect_error, _write
except ImportError:  # imported by the tests as part of the tests package
    from .job_components import _expect_error, _write


def _data(shareable):
    """The data of a Shareable that JSON can hold (binary values become their sha256 and length)."""
    out = {}
    for k, v in shareable.items():
        if k == "__headers__":
            continue
        if isinstance(v, (bytes, bytearray, memoryview)):
            v = {"sha256": hashlib.sha256(v).hexdigest(), "len": len(v)}
        out[k] = v
    return out


def _summary(replies):
    return {site: {"rc": r.get_return_code(), "reason": r.get_header("reason"), "data": _data(r)}
            for site, r in replies.items()}


def _registration_errors(engine, existing_topic):
    """What registering a duplicate topic, an empty topic and a non-callable handler raise."""

    def handler(topic, request, fl_ctx):
        return Shareable()

    return {
        "duplicate": _expect_error(lambda: engine.register_aux_message_handler(existing_topic, handler), ValueError),
        "empty": _expect_error(lambda: engine.register_aux_message_handler("", handler), ValueError),
        "none_topic": _expect_error(lambda: engine.register_aux_message_handler(None, handler), ValueError),
        "not_callable": _expect_error(lambda: engine.register_aux_message_handler("fresh-topic", 42), TypeError),
    }


def _progress(engine, message, **extra):
    engine.set_run_progress({"message": message, **extra})
    engine.update_job_run_status()


# --- server side ------------------------------------------------------------------------------------


class AuxCalls(Controller):
    """Makes ``calls`` one after the other and writes, for each, how long it took and what came back.

    Each call is ``{"topic", "targets" (None: every site of the job), "timeout", "payload", "hex"}``
    (``hex``: binary values of the payload, given as hex strings since a job's config is JSON;
    ``blob_mb``: adds that many MB of random bytes as ``blob``; ``text_mb``: a string that long as
    ``text``). First it reports progress ``ready``, then waits until ``wait_sites`` are all in
    ``get_clients()`` and ``wait_gone`` have all left it (the test starts or stops them).
    """

    def __init__(self, calls, out="aux.json", wait_sites=(), wait_gone=(), wait_limit=15.0):
        super().__init__()
        self.calls = calls
        self.out = out
        self.wait_sites = set(wait_sites)
        self.wait_gone = set(wait_gone)
        self.wait_limit = wait_limit

    def _wait_clients(self, engine, abort_signal, done, what):
        deadline = time.monotonic() + self.wait_limit
        while not done({c.name for c in engine.get_clients()}):
            if time.monotonic() > deadline or abort_signal.triggered:
                raise RuntimeError(f"gave up waiting for {what}; clients: {[c.name for c in engine.get_clients()]}")
            abort_signal.wait(0.02)

    def control_flow(self, abort_signal, fl_ctx):
        engine = fl_ctx.get_engine()
        engine.sync_clients_from_main_process()
        _progress(engine, "ready")
        self._wait_clients(engine, abort_signal, lambda names: self.wait_sites <= names, f"sites {self.wait_sites}")
        self._wait_clients(engine, abort_signal, lambda names: not (self.wait_gone & names),
                           f"sites {self.wait_gone} to leave")
        results = []
        for call in self.calls:
            payload = dict(call.get("payload") or {})
            payload.update({k: bytes.fromhex(v) for k, v in (call.get("hex") or {}).items()})
            if call.get("blob_mb"):
                payload["blob"] = os.urandom(int(call["blob_mb"] * 2**20))
            if call.get("text_mb"):
                payload["text"] = "x" * int(call["text_mb"] * 2**20)
            t0 = time.monotonic()
            replies = engine.send_aux_request(call.get("targets"), call["topic"], Shareable(payload),
                                              call.get("timeout", 10.0), fl_ctx)
            results.append({"elapsed": time.monotonic() - t0, "returned_at": time.time(),
                            "replies": _summary(replies)})
        _write(fl_ctx, self.out, results)


class ConcurrentCalls(Controller):
    """``threads`` workflow threads each make ``calls`` requests at once to every site; each
    request carries its own token and a random delay (0-``max_delay`` s per site), so replies
    come back out of order. Writes how many replies carried the right token from the right
    site, and the first mismatches."""

    def __init__(self, threads=4, calls=10, max_delay=0.05, out="concurrent.json"):
        super().__init__()
        self.threads = threads
        self.calls = calls
        self.max_delay = max_delay
        self.out = out

    def control_flow(self, abort_signal, fl_ctx):
        import random

        engine = fl_ctx.get_engine()
        sites = sorted(c.name for c in engine.get_clients())
        good, bad, lock = [0], [], threading.Lock()

        def caller(i):
            for j in range(self.calls):
                token = f"{i}-{j}"
                delays = {s: random.uniform(0, self.max_delay) for s in sites}
                replies = engine.send_aux_request(None, "sleep", Shareable({"token": token, "delays": delays}), 10.0,
                                                  fl_ctx)
                with lock:
                    for site, r in replies.items():
                        if r.get_return_code() == ReturnCode.OK and r.get("token") == token and r.get("site") == site:
                            good[0] += 1
                        else:
                            bad.append({"token": token, "site": site, "rc": r.get_return_code(), "got": _data(r)})
                    missing = set(sites) - set(replies)
                    bad.extend({"token": token, "site": s, "rc": "MISSING"} for s in missing)

        workers = [threading.Thread(target=caller, args=(i,)) for i in range(self.threads)]
        t0 = time.monotonic()
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        _write(fl_ctx, self.out, {"sites": sites, "good": good[0], "bad": bad[:10], "bad_count": len(bad),
                                  "elapsed": time.monotonic() - t0})


class BlobRoundTrip(Controller):
    """Sends ``size_mb`` MB of random bytes to ``targets``; each site hashes them and sends them back.

    Writes the original's sha256 and, per site, the return code, the hash the site computed and
    the hash and length of the bytes that came back.
    """

    def __init__(self, size_mb=50, targets=None, timeout=60.0, out="blob.json"):
        super().__init__()
        self.size = int(size_mb * 1024 * 1024)
        self.targets = targets
        self.timeout = timeout
        self.out = out

    def control_flow(self, abort_signal, fl_ctx):
        engine = fl_ctx.get_engine()
        blob = os.urandom(self.size)
        sha = hashlib.sha256(blob).hexdigest()
        t0 = time.monotonic()
        replies = engine.send_aux_request(self.targets, "blob", Shareable({"blob": blob, "note": "raw frame"}),
                                          self.timeout, fl_ctx)
        elapsed = time.monotonic() - t0
        result = {"sha256": sha, "len": len(blob), "elapsed": elapsed, "replies": {}}
        for site, r in replies.items():
            back = r.get("blob")
            result["replies"][site] = {
                "rc": r.get_return_code(), "reason": r.get_header("reason"), "site_sha256": r.get("sha256"),
                "site_len": r.get("len"), "back_type": type(back).__name__,
                "back_sha256": hashlib.sha256(back).hexdigest() if isinstance(back, bytes) else None,
                "back_len": len(back) if isinstance(back, bytes) else None}
        _write(fl_ctx, self.out, result)


class FireAndForget(Controller):
    """Sends topic ``ff`` with ``timeout=0`` and with ``fire_and_forget_aux_request``; each site
    acks every one it gets with an ``ff_ack`` aux request to this engine. Writes what both calls
    returned, how long they took, and the acks (waiting up to ``ack_limit`` s for all of them)."""

    def __init__(self, targets=None, delay=1.0, ack_limit=10.0, out="ff.json"):
        super().__init__()
        self.targets = targets
        self.delay = delay
        self.ack_limit = ack_limit
        self.out = out
        self.acks = []
        self.cond = threading.Condition()

    def start_controller(self, fl_ctx):
        fl_ctx.get_engine().register_aux_message_handler("ff_ack", self._ack)

    def _ack(self, topic, request, fl_ctx):
        with self.cond:
            self.acks.append({"site": request.get("site"), "tag": request.get("tag"),
                              "peer": fl_ctx.get_prop("__peer_name__")})
            self.cond.notify_all()
        return make_reply(ReturnCode.OK)

    def control_flow(self, abort_signal, fl_ctx):
        engine = fl_ctx.get_engine()
        targets = self.targets or sorted(c.name for c in engine.get_clients())
        result = {}
        t0 = time.monotonic()
        request = Shareable({"tag": "timeout0", "delay": self.delay})
        result["timeout0"] = engine.send_aux_request(targets, "ff", request, 0, fl_ctx)
        result["timeout0_elapsed"] = time.monotonic() - t0
        t0 = time.monotonic()
        request = Shareable({"tag": "api", "delay": self.delay})
        result["api"] = engine.fire_and_forget_aux_request(targets, "ff", request, fl_ctx)
        result["api_elapsed"] = time.monotonic() - t0
        with self.cond:
            self.cond.wait_for(lambda: len(self.acks) >= 2 * len(targets), self.ack_limit)
            result["acks"] = list(self.acks)
        _write(fl_ctx, self.out, result)


class SiteToEngine(Controller):
    """The engine side of site -> engine aux.

    Registers ``hello_engine`` (answers with a greeting naming the peer), ``engine_boom``
    (raises), ``engine_unencodable`` (answers with a set) and ``engine_ff`` (records who sent
    it), tries the registration errors, waits until every site in ``expect_sites`` said
    hello on its own, then sends ``kick`` to the sites: their `SiteGreeter` answers with what the
    engine answered to them (the hello, an unknown topic, the raising handler, the unencodable
    reply) and with its own
    registration errors, and sends ``engine_ff`` fire-and-forget. Writes all of it.
    """

    def __init__(self, expect_sites=(), hello_limit=10.0, out="s2e.json"):
        super().__init__()
        self.expect_sites = set(expect_sites)
        self.hello_limit = hello_limit
        self.out = out
        self.hellos = {}
        self.ff = []
        self.cond = threading.Condition()
        self.registration = {}

    def start_controller(self, fl_ctx):
        engine = fl_ctx.get_engine()
        engine.register_aux_message_handler("hello_engine", self._hello)
        engine.register_aux_message_handler("engine_boom", self._boom)
        engine.register_aux_message_handler("engine_ff", self._ff)
        engine.register_aux_message_handler("engine_unencodable", self._unencodable)
        self.registration = _registration_errors(engine, "hello_engine")

    def _hello(self, topic, request, fl_ctx):
        peer = fl_ctx.get_prop("__peer_name__")
        with self.cond:
            self.hellos[peer] = _data(request)
            self.cond.notify_all()
        return Shareable({"greeting": f"hello {peer}", "job_id": fl_ctx.get_job_id(), "topic": topic})

    def _ff(self, topic, request, fl_ctx):
        with self.cond:
            self.ff.append([fl_ctx.get_prop("__peer_name__"), request.get("from")])
            self.cond.notify_all()
        return Shareable()

    def _unencodable(self, topic, request, fl_ctx):
        return Shareable({"bad_value": {1, 2}})

    def _boom(self, topic, request, fl_ctx):
        raise ZeroDivisionError("the engine's handler failed on purpose")

    def control_flow(self, abort_signal, fl_ctx):
        engine = fl_ctx.get_engine()
        with self.cond:
            self.cond.wait_for(lambda: self.expect_sites <= set(self.hellos), self.hello_limit)
            hellos = dict(self.hellos)
        replies = engine.send_aux_request(sorted(self.expect_sites), "kick", Shareable(), 10.0, fl_ctx)
        with self.cond:  # each site sent engine_ff (fire and forget) while serving kick
            self.cond.wait_for(lambda: len(self.ff) >= len(self.expect_sites), 5.0)
            ff = sorted(self.ff)
        _write(fl_ctx, self.out, {"registration": self.registration, "hellos": hellos, "kick": _summary(replies),
                                  "ff": ff})


# --- site side --------------------------------------------------------------------------------------

#: The tasks `SiteTasks` serves.
SITE_TASKS = ["echo", "sleep", "hang", "hang_hard", "boom", "blob", "crash", "ff", "not_a_shareable", "unencodable"]


class SiteTasks(FLComponent):
    """A site executor whose behaviour each request chooses:

    - ``echo``: the request's data, the site and the task;
    - ``sleep``: waits ``delays[site]`` (else ``default``) seconds, then answers with ``token``;
    - ``hang``: if the site is in ``sites`` (default: every site), writes ``hanging.json`` in the
      site's run dir, then waits until the job ends;
    - ``hang_hard``: the same, but ignores the job's end (sleeps ``seconds``);
    - ``boom``: raises;
    - ``blob``: hashes the binary value ``blob`` and sends it back with the hash;
    - ``crash``: the site process exits at once (``os._exit``) if it is in ``sites``;
    - ``ff``: writes ``ff-<tag>.json``, waits ``delay`` s, then acks with ``ff_ack`` to the engine;
    - ``not_a_shareable``: returns a plain dict;
    - ``unencodable``: returns a Shareable holding a set (msgpack cannot encode it).
    """

    def execute(self, task_name, shareable, fl_ctx, abort_signal):
        site = fl_ctx.get_identity_name()
        if task_name == "echo":
            return Shareable({"echo": _data(shareable), "site": site, "task": task_name})
        if task_name == "sleep":
            delay = (shareable.get("delays") or {}).get(site, shareable.get("default", 0.0))
            t0 = time.monotonic()
            abort_signal.wait(delay)
            return Shareable({"site": site, "slept": time.monotonic() - t0, "token": shareable.get("token")})
        if task_name == "hang":
            if site not in shareable.get("sites", [site]):
                return Shareable({"site": site, "hung": False})
            _write(fl_ctx, "hanging.json", {"site": site, "pid": os.getpid()})
            abort_signal.wait(120)
            return Shareable({"site": site, "hung": True})
        if task_name == "hang_hard":  # ignores the abort signal, as stuck third-party code does
            _write(fl_ctx, "hanging.json", {"site": site, "pid": os.getpid()})
            time.sleep(float(shareable.get("seconds", 30.0)))
            return Shareable({"site": site, "hung": True})
        if task_name == "boom":
            raise KeyError(f"site {site} failed on purpose")
        if task_name == "blob":
            blob = shareable["blob"]
            return Shareable({"site": site, "sha256": hashlib.sha256(blob).hexdigest(), "len": len(blob),
                              "blob": blob})
        if task_name == "crash":
            if site in (shareable.get("sites") or []):
                os._exit(17)
            return Shareable({"site": site, "crashed": False})
        if task_name == "ff":
            tag = shareable.get("tag")
            _write(fl_ctx, f"ff-{tag}.json", {"site": site, "tag": tag})
            abort_signal.wait(float(shareable.get("delay", 0.0)))
            fl_ctx.get_engine().send_aux_request(["server"], "ff_ack", Shareable({"site": site, "tag": tag}), 10.0,
                                                 fl_ctx)
            return Shareable({"site": site})
        if task_name == "not_a_shareable":
            return {"site": site}
        if task_name == "unencodable":
            return Shareable({"site": site, "bad_value": {1, 2}})
        raise ValueError(f"unexpected task {task_name}")


class SiteGreeter(FLComponent):
    """A site component that uses its engine's aux API.

    At START_RUN it registers the ``kick`` handler, tries the registration errors, and starts a
    thread that sends ``hello_engine`` to the server until the job's engine answers OK (before
    the job process is up or its workflow has registered the handler, the reply says why not).
    ``kick`` sends ``engine_ff`` (fire and forget) and answers with the hello's outcome, what the
    engine answers to an unknown topic, to a handler that raises and to one whose reply cannot be
    encoded, and the registration errors.
    """

    def __init__(self):
        super().__init__()
        self.engine = None
        self.registration = {}
        self.hello = None
        self.hello_tries = []
        self.hello_done = threading.Event()

    def handle_event(self, event_type, fl_ctx):
        if event_type != EventType.START_RUN:
            return
        self.engine = fl_ctx.get_engine()
        self.engine.register_aux_message_handler("kick", self._kick)
        self.registration = _registration_errors(self.engine, "kick")
        threading.Thread(target=self._say_hello, daemon=True).start()

    def _say_hello(self):
        abort = self.engine.new_context().get_run_abort_signal()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not abort.triggered:
            ctx = self.engine.new_context()
            replies = self.engine.send_aux_request(["server"], "hello_engine",
                                                   Shareable({"from": ctx.get_identity_name()}), 2.0, ctx)
            reply = replies.get("server")
            rc = reply.get_return_code() if reply is not None else None
            if not self.hello_tries or self.hello_tries[-1] != rc:
                self.hello_tries.append(rc)
            if rc == ReturnCode.OK:
                self.hello = {"keys": sorted(replies), "rc": rc, "data": _data(reply)}
                break
            abort.wait(0.05)
        self.hello_done.set()

    def _kick(self, topic, request, fl_ctx):
        self.hello_done.wait(10)
        engine = fl_ctx.get_engine()
        unknown = engine.send_aux_request(["server"], "no_such_engine_topic", Shareable(), 5.0, fl_ctx)
        boom = engine.send_aux_request(["server"], "engine_boom", Shareable(), 5.0, fl_ctx)
        unencodable = engine.send_aux_request(["server"], "engine_unencodable", Shareable(), 5.0, fl_ctx)
        ff = engine.send_aux_request(["server"], "engine_ff", Shareable({"from": fl_ctx.get_identity_name()}), 0,
                                     fl_ctx)
        bad_target = _expect_error(lambda: engine.send_aux_request(["site-x"], "hello_engine", Shareable(), 1.0,
                                                                    fl_ctx), ValueError)
        return Shareable({"hello": self.hello, "hello_tries": self.hello_tries, "registration": self.registration,
                          "unknown_topic": _summary(unknown), "engine_boom": _summary(boom),
                          "engine_unencodable": _summary(unencodable), "bad_target": bad_target,
                          "ff_returned": ff})
