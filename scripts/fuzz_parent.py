#!/usr/bin/env python3
"""Throw a large, bounded volume of malformed traffic at a live parent, and check it keeps serving.

Starts a real parent and a real site in a temporary workspace, then sends, round-robin to the
three sockets (sites, jobs, admin) from raw ZeroMQ peers:

- random bytes, random multi-frame messages, truncated messages, oversized frames;
- deeply nested msgpack (in the header, the body, a field);
- every field of every operation of the socket with a value of the wrong type, missing, or
  with unknown fields next to it; header fields (v, op, id, re, rc, b) of the wrong type;
- unknown ops; replies to requests never sent;
- on the sites socket: another site's token (a site logged in by the fuzzer, presented from
  another connection); on the jobs socket: hellos for a running job with made-up secrets.

Then a job that fuzzes the jobs socket from the inside, as an authenticated job process: wrong
types in every field of every job op, unknown ops, stray replies, a hello for another running
job (with a secret it cannot know), requests to sites outside its job (aux, check_resources,
start_client_job), and a check that the site tokens it sees are not the sites' real tokens.

Every ``--check-every`` inputs per socket it checks that the parent still serves: it is alive,
answers an admin ping (on a fresh connection too) and lets a new site log in and out. At the end
a plain job must complete and the running "victim" job must be untouched. Prints how many inputs
each socket got and what came back; exits 1 if the parent stopped serving at any point.

Usage: python scripts/fuzz_parent.py [--count 50000] [--seconds 600] [--seed 0] [--check-every 2500]
Deterministic for a given --seed (the inputs; reply counts depend on timing). Every process it
starts is ended before it exits.
"""

from __future__ import annotations

import argparse
import collections
import json
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import msgpack
import zmq

import benchlib as B
from flrunner import protocol as P
from flrunner.admin import AdminClient
from flrunner.errors import FlrunnerError
from flrunner.wire import Message, decode, encode, next_id

SOCKETS = ("sites", "jobs", "admin")
#: Admin ops a fuzzer must not send well-formed: they would legitimately stop the parent or a job.
ADMIN_UNSAFE = {"shutdown", "abort"}

# --- values of every type -------------------------------------------------------------------------

POOL: list[Any] = [None, True, False, 0, -1, 1, 2**31, 2**63 - 1, -(2**63), 2**64 - 1, 1.5, -0.0, float("inf"),
                   float("nan"), "", "x", "é" * 50, "x" * 5000, b"", b"\x00\xff" * 20, [], [1, "a", None], [[[]]],
                   {}, {"a": 1}, {"": None}, {b"k": b"v"}, {"nested": {"deeper": [1, {"x": [2]}]}}]


def _type_ok(value: Any, field: P.Field) -> bool:
    if isinstance(value, bool):
        return bool in field.types
    return isinstance(value, field.types)


def wrong_values(field: P.Field) -> list[Any]:
    return [v for v in POOL if not _type_ok(v, field)]


def good_value(field: P.Field) -> Any:
    for t, v in ((str, "fuzz"), (int, 1), (float, 1.0), (dict, {}), (list, []), (bool, False)):
        if t in field.types:
            return v
    return None


def nested(depth: int, kind: str) -> bytes:
    """Raw msgpack of ``depth`` nested one-element arrays (or maps) around an empty one."""
    if kind == "array":
        return b"\x91" * depth + b"\x90"
    return b"\x81\xa1a" * depth + b"\x80"


def packed(header: dict) -> bytes:
    return msgpack.packb(header, use_bin_type=True)


# --- input generators -------------------------------------------------------------------------------

class Inputs:
    """The malformed inputs for one socket, drawn from a seeded generator."""

    def __init__(self, socket_name: str, table: P.OpTable, rnd: random.Random, tokens: Callable[[], dict]) -> None:
        self.socket_name = socket_name
        self.ops = [op for op in table if not (socket_name == "admin" and op.name in ADMIN_UNSAFE)]
        self.all_ops = list(table)
        self.rnd = rnd
        self.tokens = tokens
        self.kinds: list[tuple[str, Callable[[], list[bytes]]]] = [
            ("random bytes", self.random_bytes), ("random frames", self.random_frames),
            ("truncated", self.truncated), ("deep nesting", self.deep), ("wrong field type", self.wrong_field),
            ("missing/unknown field", self.missing_or_unknown), ("wrong header type", self.wrong_header),
            ("unknown op", self.unknown_op), ("reply never asked for", self.stray_reply),
            ("huge value", self.huge_value),
        ]
        if socket_name == "sites":
            self.kinds.append(("another site's token", self.stolen_token))
        if socket_name == "jobs":
            self.kinds.append(("another job's secret", self.foreign_hello))
        self._field_cycle = self._every_field()

    def next(self, i: int) -> tuple[str, list[bytes]]:
        if i % 5000 == 4999:
            return "oversized frame", self.oversized()
        name, make = self.kinds[i % len(self.kinds)]
        return name, make()

    def _body(self, op: P.Op) -> dict:
        body = {name: good_value(f) for name, f in op.fields.items()}
        if "token" in op.fields and self.socket_name == "sites":
            body["token"] = self.tokens().get("fuzz-a", "")
        return body

    def _msg(self, op: str, body: Any, **header: Any) -> list[bytes]:
        h = {"v": 1, "op": op, "id": next_id(), "b": body, **header}
        return [packed(h)]

    def random_bytes(self) -> list[bytes]:
        return [self.rnd.randbytes(self.rnd.randrange(0, 512))]

    def random_frames(self) -> list[bytes]:
        return [self.rnd.randbytes(self.rnd.randrange(0, 64)) for _ in range(self.rnd.randrange(2, 80))]

    def truncated(self) -> list[bytes]:
        op = self.rnd.choice(self.ops)
        whole = self._msg(op.name, self._body(op))[0]
        return [whole[:self.rnd.randrange(0, len(whole))]]

    def deep(self) -> list[bytes]:
        depth = self.rnd.choice([100, 600, 1100, 5000, 100_000])
        kind = self.rnd.choice(["array", "map"])
        op = self.rnd.choice(self.ops)
        where = self.rnd.choice(["body", "field", "header"])
        mid = next_id()
        if where == "header":  # the whole header is one nested array
            return [nested(depth, kind)]
        head = {"v": 1, "op": op.name, "id": mid}
        prefix = packed(head)
        # Re-open the header map with one more entry: "b" -> nested, or "b" -> {field: nested}.
        n = len(head) + 1
        raw = bytes([0x80 | n]) + prefix[1:] + b"\xa1b"
        if where == "body":
            return [raw + nested(depth, kind)]
        name = self.rnd.choice(list(op.fields) or ["x"])
        return [raw + b"\x81" + packed(name) + nested(depth, kind)]

    def _every_field(self) -> Iterator[tuple[P.Op, str, Any]]:
        """Every (op, field, wrong value), round after round (the order shuffled by the seed)."""
        # Every value is of a wrong type, so even abort and shutdown are refused before they act.
        combos = [(op, name, v) for op in self.all_ops for name, f in op.fields.items() for v in wrong_values(f)]
        while True:
            self.rnd.shuffle(combos)
            yield from combos

    def wrong_field(self) -> list[bytes]:
        op, name, value = next(self._field_cycle)
        body = self._body(op)
        body[name] = value
        return self._msg(op.name, body)

    def missing_or_unknown(self) -> list[bytes]:
        op = self.rnd.choice(self.ops)
        body = self._body(op)
        if body and self.rnd.random() < 0.5:
            body.pop(self.rnd.choice(list(body)))
        else:
            body[self.rnd.choice(["extra", "", "b", "x" * 300])] = self.rnd.choice(POOL)
        if self.socket_name == "admin" and op.name in ADMIN_UNSAFE:
            body["unknown"] = 1  # always refused
        return self._msg(op.name, body)

    def wrong_header(self) -> list[bytes]:
        op = self.rnd.choice(self.ops)
        key = self.rnd.choice(["v", "op", "id", "re", "rc", "b"])
        h = {"v": 1, "op": op.name, "id": next_id(), "b": self._body(op)}
        h[key] = self.rnd.choice([v for v in POOL if not (key == "b" and isinstance(v, dict))])
        if key == "rc":
            h["re"] = self.rnd.randrange(1 << 40)
        if self.rnd.random() < 0.2:
            h = {self.rnd.choice([1, b"op", "op", None.__class__.__name__]): h}  # the map inside another
        try:
            return [packed(h)]
        except (ValueError, TypeError, OverflowError):
            return [b"\x85\xa1v\x01"]

    def unknown_op(self) -> list[bytes]:
        name = self.rnd.choice(["", "x" * self.rnd.randrange(1, 20_000), "LOGIN", "hello\x00", "..", "🙃",
                                self.rnd.randbytes(8).hex()])
        return self._msg(name, {"x": 1}) if name else self._msg("", {})

    def stray_reply(self) -> list[bytes]:
        op = self.rnd.choice(self.all_ops)
        return self._msg(op.name, {"token": "t", "site": "fuzz-a", "ok": True}, re=self.rnd.randrange(1 << 62),
                         rc=self.rnd.choice(["OK", "ERROR", "BAD_REQUEST", "", "x" * 100]))

    def huge_value(self) -> list[bytes]:
        op = self.rnd.choice(self.ops)
        body = self._body(op)
        # The admin socket's MAXMSGSIZE is 1 MiB (over it, see `oversized`).
        size = self.rnd.choice([10_000, 200_000, 1_500_000 if self.socket_name != "admin" else 500_000])
        key = self.rnd.choice(list(body) or ["x"])
        body[key] = self.rnd.choice(["y" * size, b"z" * size, list(range(size // 10)),
                                     {str(i): i for i in range(size // 100)}])
        if self.socket_name == "admin" and op.name in ADMIN_UNSAFE:
            body["unknown"] = 1
        return self._msg(op.name, body)

    def oversized(self) -> list[bytes]:
        limit = (1 << 20) if self.socket_name == "admin" else (16 << 20)
        return self._msg("ping", {"pad": "x" * (limit + 1024)})

    def stolen_token(self) -> list[bytes]:
        """fuzz-a's token, presented from another connection (this fuzzing peer)."""
        token = self.tokens().get("fuzz-a", "")
        op = self.rnd.choice(["heartbeat", "aux"])
        body = {"token": token} if op == "heartbeat" else \
            {"token": token, "job_id": self.tokens().get("victim", "x"), "topic": "t", "timeout": 0.1}
        return self._msg(op, body)

    def foreign_hello(self) -> list[bytes]:
        return self._msg("hello", {"job_id": self.tokens().get("victim", "x"),
                                   "secret": self.rnd.randbytes(24).hex(), "pid": self.rnd.randrange(1, 1 << 22)})


# --- the in-job fuzzer (runs as a job's workflow, authenticated on the jobs socket) ---------------------

JOB_FUZZER = r'''
import json, os, random, time
from flrunner import Controller, FlrunnerError, Shareable
from flrunner import protocol as P
from flrunner.wire import Message, next_id

POOL = [None, True, 0, -1, 2**63 - 1, 1.5, "", "x", "x" * 5000, b"\x00", [], [1, "a"], {}, {"a": 1}]


def _ok(value, field):
    if isinstance(value, bool):
        return bool in field.types
    return isinstance(value, field.types)


class JobSocketFuzzer(Controller):
    """Fuzzes the jobs socket as an authenticated job process; writes a report to ``report``."""

    def __init__(self, count, seed, info, report):
        super().__init__()
        self.count, self.seed, self.info, self.report = int(count), int(seed), info, report

    def control_flow(self, abort_signal, fl_ctx):
        engine = fl_ctx.get_engine()
        link = engine.link
        rnd = random.Random(self.seed)
        info = json.load(open(self.info))
        rcs, kinds, problems = {}, {}, []
        skip = {"run_status"}  # a well-typed run_status could finish this job: fuzzed with wrong types only
        combos = [(op, name, v) for op in P.JOB_OPS for name, f in op.fields.items() for v in POOL if not _ok(v, f)]

        def ask(kind, op, body, timeout=5.0):
            kinds[kind] = kinds.get(kind, 0) + 1
            try:
                link.request(op, body, timeout=timeout)
                rc = "OK"
            except FlrunnerError as exc:
                rc = getattr(exc, "rc", "ERROR")
            rcs[rc] = rcs.get(rc, 0) + 1
            return rc

        for i in range(self.count):
            if abort_signal.triggered:
                break
            k = i % 6
            if k == 0:
                op, name, value = combos[i // 6 % len(combos)]
                body = {n: ("x" if str in f.types else 1 if int in f.types else {} if dict in f.types else [])
                        for n, f in op.fields.items() if f.required}
                body[name] = value
                if op.name == "hello":
                    body.setdefault("secret", "wrong")
                rc = ask("wrong field type", op.name, body)
                if op.name not in ("heartbeat", "sync_clients", "hello") and rc == "OK":
                    problems.append(f"{op.name} with {name}={value!r:.40} accepted")
            elif k == 1:
                rc = ask("unknown op", rnd.choice(["frob", "x" * 3000, "HELLO", "abort", "login"]), {"a": 1})
                if rc != "BAD_REQUEST":
                    problems.append(f"unknown op answered {rc}")
            elif k == 2:
                kinds["reply never asked for"] = kinds.get("reply never asked for", 0) + 1
                link.reply(Message("aux", id=rnd.randrange(1 << 62)), {"site": "fuzz-a"},
                           rc=rnd.choice(["OK", "ERROR"]))
            elif k == 3:
                rc = ask("another job's secret", "hello", {"job_id": info["victim"], "secret": rnd.randbytes(24).hex(),
                                                           "pid": os.getpid()})
                if rc != "UNAUTHORIZED":
                    problems.append(f"hello for another job answered {rc}")
            elif k == 4:
                targets = [rnd.choice(info["outside"])]
                op = rnd.choice(["aux", "check_resources", "start_client_job"])
                if op == "aux":
                    kinds["site outside the job"] = kinds.get("site outside the job", 0) + 1
                    replies = engine.send_aux_request(targets, "t", Shareable({"x": 1}), 2.0, fl_ctx)
                    for site, reply in replies.items():
                        rc = reply.get_return_code()
                        rcs["aux:" + str(rc)] = rcs.get("aux:" + str(rc), 0) + 1
                        if rc == "OK":
                            problems.append(f"aux to {site} outside the job was delivered")
                else:
                    body = {"resource_reqs": {targets[0]: {}}} if op == "check_resources" else {"sites": targets}
                    rc = ask("site outside the job", op, body)
                    if rc == "OK":
                        problems.append(f"{op} for {targets} outside the job accepted")
            else:
                op = rnd.choice([o for o in P.JOB_OPS if o.name not in skip])
                body = {n: rnd.choice(POOL) for n in op.fields}
                body[rnd.choice(["junk", "b", ""])] = rnd.choice(POOL)
                ask("random body", op.name, body)
        clients = engine.sync_clients_from_main_process()
        leaked = [c.name for c in clients if c.token and c.token in info["real_tokens"]]
        if leaked:
            problems.append(f"the job sees the real tokens of {leaked}")
        with open(self.report, "w") as f:
            json.dump({"inputs": sum(kinds.values()), "kinds": kinds, "replies": rcs, "problems": problems}, f)
'''


def make_job(root: Path, name: str, server_workflow: dict, site_app: bool, custom: dict[str, str]) -> Path:
    """A job folder: a server app with one workflow and, optionally, an empty site app for fuzz-site."""
    job = root / name
    (job / "app_server" / "config").mkdir(parents=True)
    (job / "app_server" / "custom").mkdir()
    for fname, text in custom.items():
        (job / "app_server" / "custom" / fname).write_text(text)
    (job / "app_server" / "config" / "config_fed_server.json").write_text(json.dumps(
        {"format_version": 2, "workflows": [server_workflow]}))
    deploy_map: dict[str, list[str]] = {"app_server": ["server"]}
    if site_app:
        (job / "app_site" / "config").mkdir(parents=True)
        (job / "app_site" / "config" / "config_fed_client.json").write_text(json.dumps(
            {"format_version": 2, "components": [], "executors": []}))
        deploy_map["app_site"] = ["fuzz-site"]
    (job / "meta.json").write_text(json.dumps({"name": name, "deploy_map": deploy_map}))
    return job


SLEEP_WF = '''
from flrunner import Controller


class Sleep(Controller):
    def __init__(self, seconds=0.0):
        super().__init__()
        self.seconds = seconds

    def control_flow(self, abort_signal, fl_ctx):
        abort_signal.wait(self.seconds)
'''


# --- processes ------------------------------------------------------------------------------------

class World:
    """The parent and site processes of one fuzzing run, in a temporary folder."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.ws = root / "ws"
        self.procs = B.Processes(root)
        self.parent: B.ParentProc | None = None

    def start(self) -> dict:
        self.parent = B.ParentProc(self.procs, self.ws, "parent", ["--site-timeout", "30"], abort_grace=1,
                                   log_level=None, admin_timeout=10)
        self.info = self.parent.info
        self.site = self.procs.spawn(["-m", "flrunner", "site", "--name", "fuzz-site", "--server", self.info["sites"]],
                                     "site")
        return self.info

    def stop(self) -> None:
        # Job processes and whatever else runs in the temporary folder (each in its own session) are swept too.
        self.procs.end_all(grace=20, sweeps=25)


# --- the run --------------------------------------------------------------------------------------

class Peer:
    """A raw DEALER on one socket that sends inputs and tallies what comes back."""

    def __init__(self, ctx: zmq.Context, endpoint: str) -> None:
        self.ctx = ctx
        self.endpoint = endpoint
        self.replies: collections.Counter = collections.Counter()
        self.undecodable = 0
        self._open()

    def _open(self) -> None:
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.SNDTIMEO, 10_000)  # a parent that stops reading fails the run, never hangs it
        self.sock.setsockopt(zmq.SNDHWM, 200)
        self.sock.connect(self.endpoint)

    def send(self, frames: list[bytes]) -> None:
        self.sock.send_multipart(frames)

    def drain(self) -> None:
        while self.sock.poll(0):
            frames = self.sock.recv_multipart()
            try:
                msg = decode(frames)
            except FlrunnerError:
                self.undecodable += 1
                continue
            self.replies[msg.rc or msg.op] += 1

    def reopen(self) -> None:
        self.sock.close(0)
        self._open()


def request(sock: zmq.Socket, op: str, body: dict, timeout: float = 10.0) -> Message:
    mid = next_id()
    sock.send_multipart(encode(Message(op, body, id=mid)))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if sock.poll(int(max(0.0, deadline - time.monotonic()) * 1000)):
            msg = decode(sock.recv_multipart())
            if msg.re == mid:
                return msg
    raise TimeoutError(f"no reply to '{op}' within {timeout}s")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--count", type=int, default=50_000,
                    help="inputs in all (split over the three sockets and the in-job fuzzer)")
    ap.add_argument("--seconds", type=float, default=600.0, help="stop sending after this long")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--check-every", type=int, default=2500, help="inputs per socket between serving checks")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder (logs, workspace)")
    args = ap.parse_args()

    rnd = random.Random(args.seed)
    root = Path(tempfile.mkdtemp(prefix="flrunner-fuzz-"))
    world = World(root)
    ctx = zmq.Context()
    failures: list[str] = []
    checks = 0
    sent = {name: collections.Counter() for name in SOCKETS}
    peers: dict[str, Peer] = {}
    job_report: dict = {}
    start = time.monotonic()
    try:
        info = world.start()
        admin = world.parent.admin
        deadline = time.monotonic() + 30
        while not any(c["name"] == "fuzz-site" for c in admin.clients()):
            if time.monotonic() > deadline:
                raise SystemExit("the site did not log in")
            time.sleep(0.05)

        # Two sites of the fuzzer's own, for the stolen-token inputs; a victim job that must stay untouched.
        own = {name: ctx.socket(zmq.DEALER) for name in ("fuzz-a", "fuzz-b")}
        for sock in own.values():
            sock.setsockopt(zmq.LINGER, 0)
            sock.connect(info["sites"])
        tokens: dict[str, str] = {}

        def login_own() -> None:
            for name, sock in own.items():
                while sock.poll(0):
                    sock.recv_multipart()
                tokens[name] = request(sock, "login", {"name": name}).body["token"]

        login_own()
        victim_job = make_job(root, "victim", {"id": "wf", "path": "fuzz_sleep.Sleep", "args": {"seconds": 3600}},
                              False, {"fuzz_sleep.py": SLEEP_WF})
        tokens["victim"] = admin.submit(victim_job)
        deadline = time.monotonic() + 30
        while admin.status(tokens["victim"])["status"] != "RUNNING":
            if time.monotonic() > deadline:
                raise SystemExit("the victim job did not start")
            time.sleep(0.05)

        def serving(where: str) -> bool:
            nonlocal checks
            checks += 1
            try:
                if world.parent.proc.poll() is not None:
                    raise RuntimeError(f"the parent exited with {world.parent.proc.returncode}")
                if admin.ping()["pid"] != world.parent.pid:
                    raise RuntimeError("admin ping answered by another process")
                with AdminClient(info["admin"], timeout=10) as fresh:
                    fresh.ping()
                probe = ctx.socket(zmq.DEALER)
                probe.setsockopt(zmq.LINGER, 0)
                probe.connect(info["sites"])
                try:
                    reply = request(probe, "login", {"name": f"probe-{checks}"})
                    if reply.rc != "OK":
                        raise RuntimeError(f"a site login was refused: {reply.rc} {reply.body}")
                    if request(probe, "logout", {"token": reply.body["token"]}).rc != "OK":
                        raise RuntimeError("a site logout was refused")
                finally:
                    probe.close(0)
                return True
            except Exception as exc:
                failures.append(f"{where}: the parent stopped serving: {type(exc).__name__}: {exc}")
                return False

        # Raw peers, round-robin over the three sockets.
        share = args.count // 4
        raw_total = share * 3
        gens = {name: Inputs(name, table, random.Random(rnd.random()), lambda: tokens)
                for name, table in (("sites", P.SITE_OPS), ("jobs", P.JOB_OPS), ("admin", P.ADMIN_OPS))}
        peers = {name: Peer(ctx, info[name]) for name in SOCKETS}
        i = 0
        ok = True
        while i < raw_total and ok:
            if time.monotonic() - start > args.seconds:
                break
            name = SOCKETS[i % 3]
            n = i // 3
            kind, frames = gens[name].next(n)
            try:
                peers[name].send(frames)
            except zmq.Again:
                failures.append(f"{name}: the parent stopped reading (send timed out at input {n})")
                break
            sent[name][kind] += 1
            if kind == "oversized frame" and name == "admin":
                peers[name].reopen()  # libzmq drops a peer that sends over MAXMSGSIZE
            if n % 64 == 0:
                peers[name].drain()
            if kind == "another site's token" and n % 50 == 0:
                login_own()  # the stolen token may have moved fuzz-a's session: log both in again
            i += 1
            if i % (3 * args.check_every) == 0:
                ok = serving(f"after {i} raw inputs")
        for p in peers.values():
            p.drain()
        if ok:
            ok = serving(f"after {i} raw inputs")

        # Another site's token, explicitly: fuzz-b's connection presents fuzz-a's token.
        stolen: dict[str, str] = {}
        if ok:
            login_own()
            reply = request(own["fuzz-b"], "heartbeat", {"token": tokens["fuzz-a"]})
            stolen["heartbeat with fuzz-a's token from fuzz-b's connection"] = reply.rc or "?"
            reply = request(own["fuzz-a"], "heartbeat", {"token": tokens["fuzz-a"]})
            stolen["fuzz-a's own heartbeat afterwards"] = reply.rc or "?"

        # The in-job fuzzer: an authenticated job process, with a site app on fuzz-site.
        job_inputs = 0
        if ok and time.monotonic() - start < args.seconds:
            login_own()
            jinfo = root / "job-info.json"
            jinfo.write_text(json.dumps({"victim": tokens["victim"], "outside": ["fuzz-a", "fuzz-b", "no-such-site"],
                                         "real_tokens": [tokens["fuzz-a"], tokens["fuzz-b"]]}))
            report = root / "job-report.json"
            fuzz_job = make_job(root, "job-fuzzer", {"id": "wf", "path": "fuzz_job.JobSocketFuzzer", "args": {
                "count": args.count - raw_total, "seed": args.seed, "info": str(jinfo), "report": str(report)}},
                True, {"fuzz_job.py": JOB_FUZZER})
            job_id = admin.submit(fuzz_job)
            deadline = time.monotonic() + max(60.0, args.seconds - (time.monotonic() - start) + 60)
            while True:
                job = admin.status(job_id)
                if job["status"].startswith("FINISHED:"):
                    break
                if time.monotonic() > deadline or not serving("during the in-job fuzzer"):
                    failures.append(f"the in-job fuzzer job did not end (last {job['status']})")
                    admin.abort(job_id)
                    break
                time.sleep(0.5)
            if job["status"] != "FINISHED:COMPLETED":
                failures.append(f"the in-job fuzzer job ended {job['status']}: {job['history'][-1]['reason'][:500]}")
            if report.exists():
                job_report = json.loads(report.read_text())
                job_inputs = job_report["inputs"]
                failures += [f"jobs socket (in-job): {p}" for p in job_report["problems"]]

        # The end: a plain job completes, the victim was untouched, the parent still serves.
        if serving("at the end"):
            plain = make_job(root, "plain", {"id": "wf", "path": "fuzz_sleep.Sleep", "args": {"seconds": 0}}, False,
                             {"fuzz_sleep.py": SLEEP_WF})
            job_id = admin.submit(plain)
            deadline = time.monotonic() + 60
            while not (job := admin.status(job_id))["status"].startswith("FINISHED:") and time.monotonic() < deadline:
                time.sleep(0.1)
            if job["status"] != "FINISHED:COMPLETED":
                failures.append(f"a plain job after fuzzing ended {job['status']}")
            victim = admin.status(tokens["victim"])
            if victim["status"] != "RUNNING" or len(victim["history"]) != 3:
                failures.append(f"the victim job was disturbed: {victim['status']}, {victim['history'][3:]}")
            admin.abort(tokens["victim"], "fuzzing is over")
        admin.close()
    except Exception as exc:  # a parent that stops answering surfaces here: report it, then clean up
        failures.append(f"the run stopped: {type(exc).__name__}: {exc}")
    finally:
        for p in peers.values():
            p.sock.close(0)
        for sock in (own.values() if "own" in locals() else []):
            sock.close(0)
        ctx.term()
        world.stop()
        left = B.processes_under(root)
        if left:
            failures.append(f"processes left behind: {[p.pid for p in left]}")
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)

    elapsed = time.monotonic() - start
    print(f"fuzzed a live parent for {elapsed:.1f}s with seed {args.seed}")
    print(f"{'socket':<16}{'inputs':>8}  replies (by code)")
    for name in SOCKETS:
        replies = dict(peers[name].replies) if name in peers else {}
        print(f"{name:<16}{sum(sent[name].values()):>8}  {json.dumps(replies, sort_keys=True)}")
    if job_report:
        print(f"{'jobs (in-job)':<16}{job_inputs:>8}  {json.dumps(job_report['replies'], sort_keys=True)}")
    total = sum(sum(c.values()) for c in sent.values()) + (job_report.get("inputs", 0) if job_report else 0)
    print(f"{'total':<16}{total:>8}")
    kinds = collections.Counter()
    for c in sent.values():
        kinds.update(c)
    if job_report:
        kinds.update({f"{k} (in-job)": v for k, v in job_report["kinds"].items()})
    print("inputs by kind: " + ", ".join(f"{k} {v}" for k, v in sorted(kinds.items())))
    print(f"serving checks: {checks} (admin ping, fresh admin connection, site login and logout)")
    for what, rc in (stolen if "stolen" in locals() else {}).items():
        print(f"another site's token: {what}: {rc}")
    if failures:
        print("FAILED: the parent did not keep serving correctly:")
        for f in failures:
            print(f"  - {f}")
        return 1
    print("OK: the parent kept serving; a plain job completed; the victim job was untouched; no process left")
    return 0


if __name__ == "__main__":
    sys.exit(main())
