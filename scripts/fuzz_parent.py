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
answers an admin ping (on a fresh connection too) and lets a new site log in and out.

Then well-formed messages at the wrong time, from real peers (`IllTimed`), each checked for the
documented answer, followed by a ping and a real job that must complete; what the parent
acknowledged (histories, finished jobs' records, submitted jobs) must never change (`Ledger`):

- admin ``abort`` of an unknown job, of a queued job (twice), of a running job twice, of a
  finished one, of a job launched (DISPATCHED) whose process has not said hello yet (it is
  SIGSTOPped until the abort is answered);
- job-socket ``hello`` replays, acting as a real job process with its own secret (the job's code
  reads it and writes it to its run dir; no back door): from another connection with a wrong
  secret, a wrong pid, for another job, with the right secret (the job process must get its
  connection back), with the secret of a job that ended and of a process replaced after a crash,
  then ``run_status``, ``aux``, ``sync_clients`` after them;
- from inside a job process: its hello again, its final status, then other statuses (CONFLICT),
  the same final status again, aux to sites, a hello and a heartbeat; the store keeps the first;
- sites: heartbeat, logout and aux with a token after its logout; aux to a job that ended.

Then ``--restarts`` times: kill -9 of the parent while malformed traffic (a thread on the three
sockets), submits, an abort and real jobs (status updates as fast as acked, aux to a site every
50 ms) are in flight; meanwhile a job ends, a job process dies, two are SIGSTOPped (one aborted
during re-adoption). A new parent starts on the workspace as ``scripts/flrunner-supervisor`` would
(``python -m flrunner parent --workspace W``; the first one with the cold launcher) and is fuzzed in
turn; every job must be re-adopted or end with the right status and a reason, none is left
launched without a live process, nothing acknowledged is lost (jobs.db is read while no parent
runs), and the jobs that ran across the restart complete. At the end a plain job must complete
and the "victim" job must be untouched but for its re-adoptions; last, a shutdown while submits
are in flight: the parent exits 0, leaves every job final or SUBMITTED and no process, and the
next parent runs what was left queued.

Prints how many inputs each socket got and what came back, every ill-timed message with its
answer, the figures noted (re-adoption time, ...) and each finding with the parent.log lines about
its job; exits 1 if the parent stopped serving at any point or anything was found.

With ``--kit`` it fuzzes the surfaces added for security instead, against a parent started with
a kit (``flrunner provision --site s1 --site s2 --admin a1``, then ``flrunner parent --kit DIR/parent
--admin tcp://... --jobs tcp://...``):

- the sites socket over CURVE with site s1's real key: the malformed inputs above, logins as
  another name, oversized fields, and s1's aux requests to a job it has an app in, with garbage
  in ``sealed_key``, a ``sender_key`` (a job's field), and sealed with s1's real key but wrong in
  one way each (direction, topic, job, key sizes, tampered bytes, frames); valid sealed requests
  too, whose sealed replies must open. A well-behaved s1 session on another connection runs that
  job's app and must never be disturbed;
- the remote admin socket over CURVE with admin a1's key: the malformed inputs above, and submits
  that must all be refused: garbage uploads (random, truncated, '..', absolute paths, links,
  devices, huge declared sizes, many members, garbage job files) and folders named by path;
- the tcp jobs socket over CURVE with random client keys: hellos with wrong secrets (for running
  jobs, with their real pids), sealing keys of wrong sizes and types, every op before a hello;
- strangers that must get no answer at all: no CURVE, a wrong server key, a key not on the
  allowlist or of the other role, raw TCP bytes.

Every ``--check-every`` inputs per socket the parent must still serve: alive, the local and a
fresh remote admin answer, the real site agent s2 is still in the session it started with, s1's
session and two running jobs are untouched, and no upload is left in ``<workspace>/uploads``.
Then three targeted probes (uploads that inflate to gigabytes; an upload of many empty files; a
job folder whose meta.json nests 600 levels), and at the end a real job uploaded by the remote
admin, with an app on s2, must complete. The submit queue, audit.log (an entry for every answered
submit and abort, no fuzzed submit accepted) and the folders an upload could escape to are
checked too. Prints the inputs per socket and kind, the replies, what was wrong with any of them,
the targeted probes' figures, and the ERROR lines and tracebacks of parent.log; exits 1 on any
problem.

Usage: python scripts/fuzz_parent.py [--kit] [--quick] [--count 50000] [--seconds 600] [--seed 0]
                                     [--check-every 2500] [--restarts 3] [--keep]
Deterministic for a given --seed (the inputs; reply counts depend on timing). Every process it
starts is ended before it exits (each in its own process group; job processes by a sweep of the
temporary folder).
"""

from __future__ import annotations

import argparse
import collections
import gzip
import io
import itertools
import json
import os
import random
import re
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import uuid
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

import msgpack
import psutil
import zmq
from nacl.public import Box, PrivateKey, PublicKey
from nacl.secret import SecretBox

import benchlib as B
from flrunner.protocol import Channel, Field, Op, Rc, admin_ops, aux_ops, job_ops, site_ops  # noqa: F401
from flrunner.admin.client import AdminClient, StatusFeed
from flrunner.errors import BadRequest, FlrunnerError, NotFound, NotReady, ParentUnavailable
from flrunner.aux.payload import decode_shareable, encode_shareable
from flrunner.security import sealed
from flrunner.security.kit import load_kit
from flrunner.shareable import ReturnCode, Shareable
from flrunner.transport.wire import Message, decode, encode, next_id

SOCKETS = ("sites", "jobs", "admin")
#: Admin ops a fuzzer must not send well-formed: they would legitimately stop the parent or a job.
ADMIN_UNSAFE = {"shutdown", "abort"}

# --- values of every type -------------------------------------------------------------------------

POOL: list[Any] = [None, True, False, 0, -1, 1, 2**31, 2**63 - 1, -(2**63), 2**64 - 1, 1.5, -0.0, float("inf"),
                   float("nan"), "", "x", "é" * 50, "x" * 5000, b"", b"\x00\xff" * 20, [], [1, "a", None], [[[]]],
                   {}, {"a": 1}, {"": None}, {b"k": b"v"}, {"nested": {"deeper": [1, {"x": [2]}]}}]


def _type_ok(value: Any, field: Field) -> bool:
    if isinstance(value, bool):
        return bool in field.types
    return isinstance(value, field.types)


def wrong_values(field: Field) -> list[Any]:
    return [v for v in POOL if not _type_ok(v, field)]


def good_value(field: Field) -> Any:
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


def login_body(name: str, instance: str, **fields: Any) -> dict:
    """A site login of the fuzzer's own sites, as one agent ``instance`` (where the protocol has it, the
    same instance logging in again keeps its session; another one is refused while it is alive)."""
    if "instance" in site_ops.LOGIN.fields:
        fields["instance"] = instance
    return {"name": name, **fields}


# --- input generators -------------------------------------------------------------------------------

class Inputs:
    """The malformed inputs for one socket, drawn from a seeded generator."""

    def __init__(self, socket_name: str, table: Channel, rnd: random.Random, tokens: Callable[[], dict],
                 max_frame: int | None = None) -> None:
        self.socket_name = socket_name
        self.max_frame = max_frame
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

    def _body(self, op: Op) -> dict:
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

    def _every_field(self) -> Iterator[tuple[Op, str, Any]]:
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
        limit = self.max_frame or ((1 << 20) if self.socket_name == "admin" else (16 << 20))
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
from flrunner.protocol import Channel, Field, Op, Rc, admin_ops, aux_ops, job_ops, site_ops  # noqa: F401
from flrunner.transport.wire import Message, next_id

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
        combos = [(op, name, v) for op in job_ops.FROM_JOB for name, f in op.fields.items() for v in POOL if not _ok(v, f)]

        def ask(kind, op, body, timeout=5.0):
            kinds[kind] = kinds.get(kind, 0) + 1
            try:
                link.request(Message(op, body), timeout=timeout)
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
                link.reply(Message("aux", {"site": "fuzz-a"}, re=rnd.randrange(1 << 62), rc=rnd.choice(["OK", "ERROR"])))
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
                op = rnd.choice([o for o in job_ops.FROM_JOB if o.name not in skip])
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


def make_job(root: Path, name: str, server_workflow: dict, site_app: bool, custom: dict[str, str],
             sites: Sequence[str] = ("fuzz-site",)) -> Path:
    """A job folder: a server app with one workflow and, optionally, an empty site app for ``sites``."""
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
        deploy_map["app_site"] = list(sites)
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

#: The workflows of the ill-timed and restart phases, copied into each job's custom folder as
#: ``fuzz_timing.py``. They talk to the outside through files in their run dir: a job is told to
#: finish by a file ``finish``, and writes what it saw as JSON (``secret.json``, ``link.json``,
#: ``late.json``, ``acked.json``, ``aux.json``).
TIMING_WF = r'''
import gc, json, os, time

import zmq

from flrunner import Controller, FlrunnerError, Shareable
from flrunner.transport.wire import Message, decode, encode, next_id


def run_dir(fl_ctx):
    return fl_ctx.get_engine().get_workspace().get_run_dir(fl_ctx.get_job_id())


def write_json(path, data, mode=0o644):
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f)
    os.replace(tmp, path)


def own_session():
    """This job process's session with the parent. It keeps the job's secret (to say hello again
    after a parent restart), so the job's own code can read it: the secret tells jobs apart, it does
    not hide a job from its own code (tests/job_components_impostor.py reads it the same way). Its
    ``link`` is the raw connection: requests on it get the parent's own answers, where the engine's
    calls may wait through a refusal."""
    for obj in gc.get_objects():
        if type(obj).__name__ == "ParentSession" and isinstance(getattr(obj, "_secret", None), str):
            return obj
    raise RuntimeError("no ParentSession holding a secret in this job process (child/session.py changed?)")


def finished(fl_ctx):
    return os.path.exists(os.path.join(run_dir(fl_ctx), "finish"))


def rc_of(fn):
    """(reply code, reason) of a request: OK, the parent's error code, or the client's own error."""
    try:
        fn()
        return "OK", ""
    except FlrunnerError as exc:
        return getattr(exc, "rc", "ERROR"), str(exc)[:300]
    except Exception as exc:
        return "EXCEPTION", f"{type(exc).__name__}: {exc}"[:300]


def raw_request(endpoint, op, body, timeout=5.0):
    """One request on a connection of its own; the reply's (code, reason)."""
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.linger = 0
    try:
        sock.connect(endpoint)
        mid = next_id()
        sock.send_multipart(encode(Message(op, body, id=mid)))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if sock.poll(int((deadline - time.monotonic()) * 1000) + 1):
                reply = decode(sock.recv_multipart())
                if reply.re == mid:
                    return reply.rc, str(reply.body.get("reason", ""))[:300]
        return "NO_ANSWER", f"no reply within {timeout}s"
    finally:
        sock.close()


class Hold(Controller):
    """Runs until a file ``finish`` appears in its run dir (or ``seconds`` pass); with ``reveal`` it
    first writes what the fuzzer needs to act as this job process (``secret.json``, 0600), and keeps
    using its connection through the engine (``link.json``: the requests that worked, failed, or
    were slow, with the times they were sent)."""

    def __init__(self, seconds=600.0, reveal=False):
        super().__init__()
        self.seconds, self.reveal = float(seconds), bool(reveal)

    def control_flow(self, abort_signal, fl_ctx):
        engine = fl_ctx.get_engine()
        here = run_dir(fl_ctx)
        if self.reveal:
            session = own_session()
            write_json(os.path.join(here, "secret.json"), {
                "job_id": fl_ctx.get_job_id(), "secret": session._secret, "pid": os.getpid(),
                "endpoint": session.link.endpoint}, mode=0o600)
        link = {"ok": 0, "failed": 0, "last_ok_sent": None, "errors": [], "slow": []}
        deadline = time.monotonic() + self.seconds
        while time.monotonic() < deadline and not abort_signal.triggered and not finished(fl_ctx):
            if self.reveal:
                sent = time.time()
                rc, reason = rc_of(engine.sync_clients_from_main_process)
                took = time.time() - sent
                if rc == "OK":
                    link["ok"] += 1
                    link["last_ok_sent"] = sent
                else:
                    link["failed"] += 1
                    link["errors"] = (link["errors"] + [[sent, rc, reason]])[-20:]
                if took > 0.25:
                    link["slow"] = (link["slow"] + [[sent, took]])[-20:]
                write_json(os.path.join(here, "link.json"), link)
            abort_signal.wait(0.05)


class Stubborn(Controller):
    """Ignores abort requests (and SIGTERM, which only triggers them) until ``finish`` appears."""

    def __init__(self, seconds=600.0):
        super().__init__()
        self.seconds = float(seconds)

    def control_flow(self, abort_signal, fl_ctx):
        deadline = time.monotonic() + self.seconds
        while time.monotonic() < deadline and not finished(fl_ctx):
            time.sleep(0.05)


class Ticker(Controller):
    """Reports progress {"step": i} as fast as the parent acknowledges it; after each ack writes
    ``acked.json``; ends when ``finish`` appears. A status update that raises fails the job."""

    def control_flow(self, abort_signal, fl_ctx):
        engine = fl_ctx.get_engine()
        path = os.path.join(run_dir(fl_ctx), "acked.json")
        step = 0
        while not abort_signal.triggered and not finished(fl_ctx):
            step += 1
            engine.set_run_progress({"step": step})
            engine.update_job_run_status()
            write_json(path, {"step": step})
            time.sleep(0.005)


class AuxLoop(Controller):
    """Sends an aux request to ``site`` every ``interval`` seconds until ``finish`` appears, counting
    the replies' return codes in ``aux.json``. A call that raises fails the job."""

    def __init__(self, site, interval=0.05, timeout=2.0):
        super().__init__()
        self.site, self.interval, self.timeout = site, float(interval), float(timeout)

    def control_flow(self, abort_signal, fl_ctx):
        engine = fl_ctx.get_engine()
        path = os.path.join(run_dir(fl_ctx), "aux.json")
        counts, i = {}, 0
        while not abort_signal.triggered and not finished(fl_ctx):
            i += 1
            replies = engine.send_aux_request([self.site], "fuzz-echo", Shareable({"i": i}), self.timeout, fl_ctx)
            for reply in replies.values():
                rc = str(reply.get_return_code())
                counts[rc] = counts.get(rc, 0) + 1
            write_json(path, counts)
            abort_signal.wait(self.interval)


class LateTalker(Controller):
    """Well-formed but ill-timed messages from an authenticated job process: its hello replayed (on
    its own connection and on another one), then its own final status followed by other statuses,
    the same final status again, aux to sites, a hello and a heartbeat. Writes each step's
    (what, expected codes, code got, reason) to ``late.json`` as it goes."""

    def __init__(self, site, outside):
        super().__init__()
        self.site, self.outside = site, outside

    def control_flow(self, abort_signal, fl_ctx):
        engine = fl_ctx.get_engine()
        session = own_session()
        link = session.link
        path = os.path.join(run_dir(fl_ctx), "late.json")
        steps = []
        secret = session._secret
        hello = {"job_id": fl_ctx.get_job_id(), "secret": secret, "pid": os.getpid(),
                 "sealing_key": engine.sealing_public_key()}

        def step(what, expected, rc, reason=""):
            steps.append({"what": what, "expected": list(expected), "got": rc, "reason": reason})
            write_json(path, {"steps": steps, "done": False})

        def ask(op, body):
            return rc_of(lambda: link.request(Message(op, body), timeout=5.0))

        def status(status, progress=None, error=None):
            return ask("run_status", {"status": status, "progress": progress, "error": error})

        step("hello again on its own connection, same secret", ["OK"], *ask("hello", hello))
        step("sync_clients after that replayed hello", ["OK"], *ask("sync_clients", {"since": None}))
        step("hello from a second connection of the job process, wrong secret", ["UNAUTHORIZED"],
             *raw_request(link.endpoint, "hello", {**hello, "secret": "not-" + secret[4:], "sealing_key": None}))
        step("sync_clients on its own connection after that", ["OK"], *ask("sync_clients", {"since": None}))
        step("hello from a second connection, right secret, another pid", ["UNAUTHORIZED"],
             *raw_request(link.endpoint, "hello", {**hello, "pid": os.getpid() + 100_000, "sealing_key": None}))
        step("heartbeat on its own connection after that", ["OK"], *ask("heartbeat", {}))
        step("run_status FINISHED:COMPLETED (its first final status)", ["OK"],
             *status("FINISHED:COMPLETED", {"step": "first final"}))
        step("run_status FINISHED:EXECUTION_EXCEPTION after the final status", ["CONFLICT"],
             *status("FINISHED:EXECUTION_EXCEPTION", None, "a late error"))
        step("run_status FINISHED:ABORTED after the final status", ["CONFLICT"], *status("FINISHED:ABORTED"))
        step("run_status RUNNING after the final status", ["CONFLICT"], *status("RUNNING", {"step": "late"}))
        step("run_status FINISHED:ABNORMAL (never the job process's to report)", ["BAD_REQUEST"],
             *status("FINISHED:ABNORMAL"))
        step("run_status FINISHED:COMPLETED a second time, other progress and an error", ["OK"],
             *status("FINISHED:COMPLETED", {"step": "second final"}, "a late error"))
        step("run_status with progress only, after the final status", ["OK"], *status(None, {"step": "late"}))
        # Its own site still gets the request (the process runs until it exits): any return code
        # is an answer ("*"), only an exception or no reply is not. A site outside the job: NOT_FOUND.
        for target, expected, what in ((self.site, "*", "its site"),
                                       (self.outside, "NOT_FOUND", "a site outside the job")):
            try:
                replies = engine.send_aux_request([target], "fuzz-late", Shareable({"late": True}), 3.0, fl_ctx)
                rc = str(replies[target].get_return_code()) if target in replies else f"no reply ({sorted(replies)})"
            except Exception as exc:
                rc = f"EXCEPTION {type(exc).__name__}: {exc}"[:300]
            step(f"aux to {what} after the final status", [expected], rc)
        step("hello again after the final status", ["OK", "UNAUTHORIZED"], *ask("hello", hello))
        step("heartbeat after the final status", ["OK", "UNAUTHORIZED"], *ask("heartbeat", {}))
        write_json(path, {"steps": steps, "done": True})
'''


# --- processes ------------------------------------------------------------------------------------

def free_port() -> int:
    """A tcp port of 127.0.0.1 that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class World:
    """The parent and site processes of one fuzzing run, in a temporary folder.

    Every parent runs on the same workspace and sites endpoint, as ``scripts/flrunner-supervisor``
    restarts one (``python -m flrunner parent --workspace W ...``), so the sites and the job
    processes of a parent find its successor.
    """

    #: Every parent's ``--abort-grace`` and ``--term-grace`` (seconds).
    ABORT_GRACE = 1.0
    TERM_GRACE = 1.0

    def __init__(self, root: Path) -> None:
        self.root = root
        self.ws = root / "ws"
        self.procs = B.Processes(root)
        self.parent: B.ParentProc | None = None
        self.parents = 0
        self.sites_endpoint = f"tcp://127.0.0.1:{free_port()}"

    def start(self) -> dict:
        self.start_parent()
        self.site = self.procs.spawn(["-m", "flrunner", "site", "--name", "fuzz-site", "--server", self.info["sites"]],
                                     "site")
        return self.info

    def start_parent(self, *options: str) -> B.ParentProc:
        """Start a parent on the workspace (it serves when this returns); the previous one's admin
        client is closed."""
        previous = self.parent
        self.parents += 1
        name = "parent" if self.parents == 1 else f"parent{self.parents}"
        self.parent = B.ParentProc(self.procs, self.ws, name, ["--site-timeout", "30", "--sites", self.sites_endpoint,
                                                              *options], abort_grace=self.ABORT_GRACE,
                                   term_grace=self.TERM_GRACE, log_level=None, admin_timeout=10)
        if previous is not None:
            previous.admin.close()
        self.info = self.parent.info
        return self.parent

    def kill9(self) -> None:
        """kill -9 the parent (its job processes live on)."""
        assert self.parent is not None
        self.parent.proc.kill()
        self.parent.proc.wait()

    def stop(self) -> None:
        # Job processes and whatever else runs in the temporary folder (each in its own session) are swept too.
        self.procs.end_all(grace=20, sweeps=25)


# --- the run --------------------------------------------------------------------------------------

#: Checks a reply to one input; returns what is wrong with it, or None.
Check = Callable[[Message], Optional[str]]


class Peer:
    """A raw DEALER on one socket that sends inputs and tallies what comes back.

    Args:
        ctx: the ZeroMQ context.
        endpoint: the socket to fuzz.
        curve: ``(public key, secret key, server key)`` to connect as a CURVE client, or None.
        forbid_ok: every ``OK`` reply is a problem (a peer that never authenticated).

    A reply to an input sent with `expect` is checked when it is drained; whatever is wrong goes
    to ``problems`` (counted by text). So does any ``ERROR`` reply: the parent's code for an
    exception nobody named, which malformed input should never cause.
    """

    #: Inputs whose replies are still awaited; beyond this the oldest are forgotten.
    MAX_EXPECTED = 20_000

    def __init__(self, ctx: zmq.Context, endpoint: str, curve: tuple[bytes, bytes, bytes] | None = None,
                 forbid_ok: bool = False) -> None:
        self.ctx = ctx
        self.endpoint = endpoint
        self.curve = curve
        self.forbid_ok = forbid_ok
        self.replies: collections.Counter = collections.Counter()
        self.undecodable = 0
        self.expected: dict[int, tuple[str, Check]] = {}
        self.answered: collections.Counter = collections.Counter()
        self.problems: collections.Counter = collections.Counter()
        self._open()

    def _open(self) -> None:
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.SNDTIMEO, 10_000)  # a parent that stops reading fails the run, never hangs it
        self.sock.setsockopt(zmq.SNDHWM, 200)
        if self.curve is not None:
            self.sock.curve_publickey, self.sock.curve_secretkey, self.sock.curve_serverkey = self.curve
        self.sock.connect(self.endpoint)

    def send(self, frames: list[bytes]) -> None:
        self.sock.send_multipart(frames)

    def expect(self, mid: int, kind: str, check: Check) -> None:
        """Check the reply to message ``mid`` (an input of ``kind``) when it comes."""
        if len(self.expected) >= self.MAX_EXPECTED:
            del self.expected[next(iter(self.expected))]
        self.expected[mid] = (kind, check)

    def drain(self) -> None:
        while self.sock.poll(0):
            frames = self.sock.recv_multipart()
            try:
                msg = decode(frames)
            except FlrunnerError:
                self.undecodable += 1
                continue
            self.replies[msg.rc or msg.op] += 1
            if not msg.is_reply or msg.rc == Rc.RATE_LIMITED:
                continue
            expected = self.expected.pop(msg.re, None)
            if expected is not None:
                kind, check = expected
                self.answered[kind] += 1
                problem = check(msg)
                if problem:
                    self.problems[f"{kind}: {problem}"] += 1
            elif msg.rc == Rc.ERROR:
                self.problems[f"'{msg.op[:40]}' answered ERROR: {reason_of(msg)}"] += 1
            elif self.forbid_ok and msg.rc == Rc.OK:
                self.problems[f"'{msg.op[:40]}' answered OK to a peer that never said a valid hello"] += 1

    def reopen(self, curve: tuple[bytes, bytes, bytes] | None = None) -> None:
        """A new connection (with new CURVE keys if given): replies to the old one are not awaited."""
        self.sock.close(0)
        self.expected.clear()
        if curve is not None:
            self.curve = curve
        self._open()


_UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def reason_of(msg: Message, limit: int = 160) -> str:
    """The reason an error reply gives, short, with job ids replaced (so equal problems count together)."""
    reason = msg.body.get("reason") if isinstance(msg.body, dict) else None
    text = reason if isinstance(reason, str) else str(msg.body)[:limit]
    return _UUID_RE.sub("<job id>", text)[:limit]


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


# --- well-formed, ill-timed messages; a restart of the parent; a shutdown ---------------------------------

#: What a message may be answered: a wire code, "*" (any answer at all), or NO_ANSWER (none in time).
NO_ANSWER = "NO_ANSWER"


@dataclass
class Verdict:
    """One ill-timed message: what was sent when, the answers the documentation allows, the answer."""

    phase: str
    what: str
    expected: tuple[str, ...]
    got: str
    reason: str = ""
    job_id: str | None = None

    @property
    def ok(self) -> bool:
        if "*" in self.expected:
            return not self.got.startswith(("EXCEPTION", "no reply", NO_ANSWER))
        return self.got in self.expected


class Verdicts:
    """The verdicts and findings of the ill-timed, restart and shutdown phases."""

    def __init__(self) -> None:
        self.items: list[Verdict] = []
        #: (what is wrong, the job it concerns): each is a finding, and fails the run.
        self.findings: list[tuple[str, str | None]] = []
        self.notes: list[str] = []

    def expect(self, phase: str, what: str, expected: Sequence[str], got: str, reason: str = "",
               job_id: str | None = None) -> bool:
        """Record the answer ``got`` to an ill-timed message; a finding if it is not ``expected``."""
        verdict = Verdict(phase, what, tuple(expected), got, reason, job_id)
        self.items.append(verdict)
        if not verdict.ok:
            self.findings.append((f"{phase}: {what}: expected {'/'.join(expected)}, got {got}"
                                  + (f" ({reason[:300]})" if reason else ""), job_id))
        return verdict.ok

    def problem(self, phase: str, text: str, job_id: str | None = None) -> None:
        self.findings.append((f"{phase}: {text}", job_id))

    def note(self, text: str) -> None:
        self.notes.append(text)


def admin_rc(admin: AdminClient, op: str, **body: Any) -> tuple[str, str, dict]:
    """(reply code, reason, body) of one admin request (``op`` named, well formed); NO_ANSWER if the
    parent did not answer."""
    try:
        return Rc.OK, "", admin.call(admin_ops.FROM_ADMIN.get(op), **body)
    except ParentUnavailable as exc:
        return NO_ANSWER, str(exc), {}
    except FlrunnerError as exc:
        return exc.rc, str(exc), {}


def raw_rc(sock: zmq.Socket, op: str, body: dict, timeout: float = 5.0) -> tuple[str, str]:
    """(reply code, reason) of one request on a raw DEALER; NO_ANSWER if none came in time."""
    try:
        msg = request(sock, op, body, timeout)
    except TimeoutError as exc:
        return NO_ANSWER, str(exc)
    return msg.rc or "?", reason_of(msg, 300)


def dealer(ctx: zmq.Context, endpoint: str) -> zmq.Socket:
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    return sock


def submit_retrying(admin: AdminClient, folder: Path, timeout: float = 60.0) -> str:
    """Submit, and submit again while the parent answers NOT_READY (it is re-adopting jobs)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return admin.submit(folder)
        except NotReady:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def is_final(job: dict) -> bool:
    return job["status"].startswith("FINISHED:")


def alive(pid: int | None) -> bool:
    """Whether ``pid`` is a live process (a zombie is not)."""
    if not pid:
        return False
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def stopped(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_STOPPED
    except psutil.Error:
        return False


def signal_pid(pid: int | None, sig: int) -> None:
    if pid:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def stored_progress(ws: Path, job_id: str) -> tuple[Any, str | None]:
    """(progress, None) of a job as jobs.db holds it, read while no parent runs; (None, why) if it
    cannot be read (the store's schema may have changed)."""
    try:
        db = sqlite3.connect(f"file:{ws / 'jobs.db'}?mode=ro", uri=True, timeout=5)
        try:
            row = db.execute("SELECT progress FROM jobs WHERE job_id=?", (job_id,)).fetchone()
        finally:
            db.close()
        return (json.loads(row[0]) if row and row[0] else None), None
    except (sqlite3.Error, ValueError, TypeError) as exc:
        return None, f"{type(exc).__name__}: {exc}"


def log_lines(ws: Path, needle: str, limit: int = 6) -> list[str]:
    """The last ``limit`` lines of parent.log (every parent's) that mention ``needle``."""
    try:
        lines = (ws / "parent.log").read_text(errors="replace").splitlines()
    except OSError:
        return []
    return [line[:300] for line in lines if needle in line][-limit:]


def error_tail(job: dict, lines: int = 3) -> str:
    """The end of a job's execution error (where it was raised, and what), to quote in a finding."""
    text = [line.strip() for line in (job.get("error") or "").splitlines() if line.strip()]
    return f"; its error ends: {' | '.join(text[-lines:])}" if text else ""


def brief(history: list[dict]) -> str:
    return " -> ".join(f"{h['status']} ({h['reason'][:60]})" for h in history)


class Ledger:
    """What the parent acknowledged, as last seen: every job's history and a finished job's record.

    `check` compares the parent's answers with it: a job never disappears, its history only grows
    (no acknowledged entry is lost or changed), its status is its last entry's, and a finished job
    keeps its status, progress and error (its exit code and signal may be filled in once).
    """

    def __init__(self) -> None:
        self.jobs: dict[str, dict] = {}
        #: Job ids the parent acknowledged at submit: each must be in the store.
        self.submitted: set[str] = set()

    def check(self, admin: AdminClient) -> list[tuple[str, str]]:
        """What contradicts the ledger now, as (problem, job id); the ledger then takes the new state."""
        problems: list[tuple[str, str]] = []
        listed = {j["job_id"] for j in admin.jobs()}
        for job_id in sorted((self.jobs.keys() | self.submitted) - listed):
            was = self.jobs.get(job_id, {}).get("status", "acknowledged at submit")
            problems.append((f"job {job_id} ({was}) is gone from the store", job_id))
        for job_id in sorted(listed):
            try:
                job = admin.status(job_id)
            except NotFound:
                problems.append((f"job {job_id} is listed but its status is NOT_FOUND", job_id))
                continue
            old = self.jobs.get(job_id)
            if old is not None:
                problems += [(p, job_id) for p in self._compare(old, job)]
            elif job["history"] and job["status"] != job["history"][-1]["status"]:
                problems.append((f"job {job_id}: status {job['status']} but its last history entry is "
                                 f"{job['history'][-1]['status']}", job_id))
            self.jobs[job_id] = job
        return problems

    @staticmethod
    def _compare(old: dict, new: dict) -> list[str]:
        job_id, problems = new["job_id"], []
        before, after = old["history"], new["history"]
        if after[:len(before)] != before:
            problems.append(f"job {job_id}: acknowledged history entries were lost or changed: was "
                            f"[{brief(before)}], now [{brief(after)}]")
        if after and new["status"] != after[-1]["status"]:
            problems.append(f"job {job_id}: status {new['status']} but its last history entry is {after[-1]['status']}")
        if is_final(old):
            for key in ("status", "progress", "error"):
                if new[key] != old[key]:
                    problems.append(f"job {job_id}: its {key} changed after it ended {old['status']}: "
                                    f"{str(old[key])[:100]!r} -> {str(new[key])[:100]!r}")
            for key in ("exit_code", "signal"):
                if old[key] is not None and new[key] != old[key]:
                    problems.append(f"job {job_id}: its {key} changed after it ended: {old[key]} -> {new[key]}")
            if len(after) != len(before):
                problems.append(f"job {job_id}: its history grew after it ended {old['status']}: "
                                f"{brief(after[len(before):])}")
        return problems


class Traffic(threading.Thread):
    """Malformed inputs on the three sockets from a thread of its own, about ``rate`` a second on
    each, while the main thread does something else (kills and restarts the parent). Sends never
    block: an input the parent cannot take now (it is down) is counted as dropped. Its peers
    reconnect by themselves to a new parent on the same endpoints."""

    def __init__(self, info: dict, tokens: dict[str, str], seed: float, rate: float) -> None:
        super().__init__(name="traffic", daemon=True)
        self.info, self.tokens, self.seed, self.rate = dict(info), tokens, seed, rate
        self.sent: collections.Counter = collections.Counter()
        self.dropped: collections.Counter = collections.Counter()
        self.replies: collections.Counter = collections.Counter()
        self.problems: collections.Counter = collections.Counter()
        self.error: str | None = None
        self._stop_event = threading.Event()

    def total(self) -> int:
        return sum(self.sent.values())

    def stop(self) -> None:
        self._stop_event.set()
        self.join(15)

    def run(self) -> None:
        rnd = random.Random(self.seed)
        ctx = zmq.Context()
        peers: dict[str, Peer] = {}
        try:
            gens = {name: Inputs(name, table, random.Random(rnd.random()), lambda: self.tokens)
                    for name, table in (("sites", site_ops.FROM_SITE), ("jobs", job_ops.FROM_JOB), ("admin", admin_ops.FROM_ADMIN))}
            peers = {name: Peer(ctx, self.info[name]) for name in SOCKETS}
            n, due = 0, time.monotonic()
            while not self._stop_event.is_set():
                for name in SOCKETS:
                    kind, frames = gens[name].next(n)
                    if kind == "oversized frame":  # libzmq would drop the connection: not what this thread is for
                        continue
                    try:
                        peers[name].sock.send_multipart(frames, zmq.NOBLOCK)
                        self.sent[name] += 1
                    except zmq.Again:
                        self.dropped[name] += 1
                n += 1
                if n % 16 == 0:
                    for peer in peers.values():
                        peer.drain()
                due += 1 / self.rate
                self._stop_event.wait(max(0.0, due - time.monotonic()))
        except Exception as exc:  # reported with the phase's findings
            self.error = f"{type(exc).__name__}: {exc}"
        finally:
            for name, peer in peers.items():
                try:
                    peer.drain()
                except Exception:
                    pass
                self.replies.update({f"{name}:{rc}": n for rc, n in peer.replies.items()})
                self.problems.update({f"{name}: {what}": n for what, n in peer.problems.items()})
                peer.sock.close(0)
            ctx.term()


class Submitter(threading.Thread):
    """Submits one job folder again and again on an admin connection of its own (every
    ``interval`` seconds, at most ``limit`` acknowledged), recording what each submit was answered
    and when it was sent."""

    def __init__(self, endpoint: str, folder: Path, interval: float, limit: int, timeout: float = 5.0) -> None:
        super().__init__(name="submitter", daemon=True)
        self.endpoint, self.folder, self.interval, self.limit, self.timeout = endpoint, folder, interval, limit, timeout
        #: (time sent, job id) of each acknowledged submit.
        self.acked: list[tuple[float, str]] = []
        #: (time sent, reply code) of each answer, OK ones too.
        self.answers: list[tuple[float, str]] = []
        self.error: str | None = None
        self._stop_event = threading.Event()

    def stop(self) -> None:
        self._stop_event.set()
        self.join(self.timeout + 10)

    def run(self) -> None:
        try:
            with AdminClient(self.endpoint, timeout=self.timeout) as admin:
                while not self._stop_event.is_set() and len(self.acked) < self.limit:
                    sent = time.time()
                    try:
                        job_id = admin.submit(self.folder)
                    except ParentUnavailable:
                        self.answers.append((sent, NO_ANSWER))
                    except FlrunnerError as exc:
                        self.answers.append((sent, exc.rc))
                    else:
                        self.acked.append((sent, job_id))
                        self.answers.append((sent, Rc.OK))
                    self._stop_event.wait(self.interval)
        except Exception as exc:  # reported with the phase's findings
            self.error = f"{type(exc).__name__}: {exc}"


class IllTimed:
    """Well-formed messages at the wrong time, from real authenticated peers where that matters; a
    parent killed (-9) and restarted in the middle of fuzzing traffic and real jobs; a shutdown
    while submits are in flight.

    After each message the parent must answer the documented code, answer a ping (the same
    process) and take a real job that completes (checked at the end of each phase); and nothing it
    acknowledged may change (`Ledger`). What is wrong goes to `Verdicts.findings`.

    Job processes are acted as with their own secret: the job's code (``fuzz_timing.Hold`` with
    ``reveal``) reads it from its session with the parent and writes it to its run dir, or acts
    from inside the job (``fuzz_timing.LateTalker``). The product has no back door for this.
    """

    SITE = "fuzz-site"

    def __init__(self, world: World, ctx: zmq.Context, own: dict[str, zmq.Socket], tokens: dict[str, str],
                 login_own: Callable[[], None], quick: bool, seed: int) -> None:
        self.world, self.ctx, self.own, self.tokens, self.login_own = world, ctx, own, tokens, login_own
        self.quick, self.seed = quick, seed
        self.v = Verdicts()
        self.ledger = Ledger()
        self.src = world.root / "timing-jobs"
        self.src.mkdir(exist_ok=True)
        self._folders: dict[str, Path] = {}
        #: The real jobs submitted after ill-timed messages, not yet seen to complete: (where, job id).
        self.probes: list[tuple[str, str]] = []
        self.probes_done = 0
        self.pings = 0
        self.restarts = 0
        self.traffic_sent = 0
        #: Threads and stopped processes to end if the run stops half-way.
        self._threads: list[Any] = []
        self._stopped_pids: set[int] = set()

    @property
    def admin(self) -> AdminClient:
        assert self.world.parent is not None
        return self.world.parent.admin

    # --- helpers -------------------------------------------------------------------------------------------
    def folder(self, name: str, workflow: str = "Hold", args: dict | None = None, sites: Sequence[str] = (),
               meta: dict | None = None) -> Path:
        """A job folder of the ``fuzz_timing`` workflows (``meta``: more meta.json fields), made once
        and submitted as often as needed."""
        if name not in self._folders:
            folder = make_job(self.src, name, {"id": "wf", "path": f"fuzz_timing.{workflow}", "args": args or {}},
                              bool(sites), {"fuzz_timing.py": TIMING_WF}, sites=sites)
            if meta:
                (folder / "meta.json").write_text(json.dumps({**json.loads((folder / "meta.json").read_text()),
                                                              **meta}))
            self._folders[name] = folder
        return self._folders[name]

    def probe_folder(self) -> Path:
        return self.folder("t-probe", "Hold", {"seconds": 0})

    def serving(self, where: str) -> bool:
        """After an ill-timed message: the same parent answers a ping and takes a real job (whose
        completion `settle_probes` checks)."""
        self.pings += 1
        rc, reason, body = admin_rc(self.admin, "ping")
        if rc != Rc.OK or body.get("pid") != self.world.parent.pid:
            self.v.problem("serving", f"{where}: the parent did not answer a ping ({rc} {reason} {body})")
            return False
        try:
            self.probes.append((where, submit_retrying(self.admin, self.probe_folder())))
        except FlrunnerError as exc:
            self.v.problem("serving", f"{where}: a real job was refused: {type(exc).__name__}: {exc}")
            return False
        return True

    def settle_probes(self, timeout: float = 60.0) -> None:
        """Every real job submitted by `serving` must complete."""
        deadline = time.monotonic() + timeout
        for where, job_id in self.probes:
            job = wait_job(self.admin, job_id, is_final, max(1.0, deadline - time.monotonic()))
            if job["status"] != "FINISHED:COMPLETED":
                self.v.problem("serving", f"{where}: a real job submitted then ended {job['status']} "
                                          f"({job['history'][-1]['reason'][:200]})", job_id)
        self.probes_done += len(self.probes)
        self.probes.clear()

    def check_ledger(self, where: str) -> None:
        for problem, job_id in self.ledger.check(self.admin):
            self.v.problem(where, problem, job_id)

    def submit_running(self, folder: Path, timeout: float = 60.0) -> tuple[str, dict]:
        job_id = submit_retrying(self.admin, folder)
        job = wait_job(self.admin, job_id, lambda j: j["status"] == "RUNNING" or is_final(j), timeout)
        if job["status"] != "RUNNING":
            raise RuntimeError(f"job {job_id} ({folder.name}) did not start: {job['status']} {brief(job['history'])}")
        return job_id, job

    def run_dir(self, job_id: str) -> Path:
        return self.world.ws / "jobs" / job_id

    def finish(self, job_id: str) -> None:
        (self.run_dir(job_id) / "finish").touch()

    def end(self) -> None:
        """Stop what the phases started (on any exit): threads, and stopped processes go on."""
        for thread in self._threads:
            thread.stop()
        for pid in self._stopped_pids:
            signal_pid(pid, signal.SIGCONT)

    # --- 1. admin aborts at the wrong time ----------------------------------------------------------------------
    def aborts(self) -> None:
        phase = "admin abort"
        admin = self.admin
        for job_id in (str(uuid.uuid4()), "no-such-job"):
            rc, reason, _ = admin_rc(admin, "abort", job_id=job_id, reason="fuzz: unknown")
            self.v.expect(phase, f"abort of an unknown job '{job_id}'", [Rc.NOT_FOUND], rc, reason)
            self.serving(f"after an abort of unknown job {job_id}")

        # A queued job: its only site never logs in, so it waits SUBMITTED (scheduling retries with back-off).
        queued = submit_retrying(admin, self.folder("t-queued", "Hold", {"seconds": 600}, sites=["absent-site"]))
        status = admin.status(queued)["status"]
        if status != "SUBMITTED":
            self.v.problem(phase, f"a job for a site that is not logged in is {status}, not SUBMITTED", queued)
        rc, reason, body = admin_rc(admin, "abort", job_id=queued, reason="fuzz: queued")
        if self.v.expect(phase, "abort of a queued (SUBMITTED) job", [Rc.OK], rc, reason, queued):
            if body["job"]["status"] != "FINISHED:ABORTED":
                self.v.problem(phase, f"abort of a queued job answered OK with the job {body['job']['status']}: "
                                      f"README says a queued job is aborted at once", queued)
        self.serving("after an abort of a queued job")
        rc, reason, _ = admin_rc(admin, "abort", job_id=queued, reason="fuzz: queued, again")
        self.v.expect(phase, "abort of that job again (now FINISHED:ABORTED)", [Rc.CONFLICT], rc, reason, queued)
        job = admin.status(queued)
        if any(h["status"] in ("DISPATCHED", "RUNNING") for h in job["history"]):
            self.v.problem(phase, f"a job aborted while queued was launched: {brief(job['history'])}", queued)
        self.serving("after a second abort of a queued job")

        # A running job, aborted twice: the second abort changes nothing. The job ignores aborts (it
        # ends at the SIGKILL of the escalation), so the second one surely comes while it is under way.
        running, _ = self.submit_running(self.folder("t-stubborn", "Stubborn"))
        rc, reason, _ = admin_rc(admin, "abort", job_id=running, reason="fuzz: first abort")
        self.v.expect(phase, "abort of a running job", [Rc.OK], rc, reason, running)
        rc, reason, _ = admin_rc(admin, "abort", job_id=running, reason="fuzz: second abort")
        self.v.expect(phase, "abort of that job again while its abort is under way", [Rc.OK], rc, reason, running)
        self.serving("after two aborts of a running job")
        job = wait_job(admin, running, is_final, 30)
        asked = [h for h in job["history"] if h["reason"].startswith("abort requested")]
        if job["status"] != "FINISHED:ABORTED" or len(asked) != 1 or "first abort" not in job["history"][-1]["reason"]:
            self.v.problem(phase, f"a job aborted twice ended {job['status']} with history [{brief(job['history'])}]: "
                                  f"expected FINISHED:ABORTED, one abort request, the first abort's reason", running)
        rc, reason, _ = admin_rc(admin, "abort", job_id=running, reason="fuzz: after the end")
        self.v.expect(phase, "abort of a job that ended FINISHED:ABORTED", [Rc.CONFLICT], rc, reason, running)
        self.serving("after an abort of a finished job")

    def abort_dispatched(self, tries: int = 3) -> None:
        """Abort a job whose process was launched (DISPATCHED) but has not said hello: the process is
        SIGSTOPped as soon as the status feed says DISPATCHED, then continued after the abort, so its
        hello reaches a parent that has already been asked to abort it."""
        phase = "admin abort"
        admin = self.admin
        with StatusFeed(self.world.info["admin"], timeout=10) as feed:
            for attempt in range(1, tries + 1):
                job_id = submit_retrying(admin, self.folder("t-hold", "Hold", {"seconds": 600}))
                pid = None
                deadline = time.monotonic() + 30
                while pid is None and time.monotonic() < deadline:
                    ev = feed.next(1.0)
                    if ev is not None and ev["job_id"] == job_id and ev["status"] in ("DISPATCHED", "RUNNING"):
                        pid = ev["pid"]
                        signal_pid(pid, signal.SIGSTOP)
                        self._stopped_pids.add(pid)
                # The hello may have left before the stop: caught only if no RUNNING follows.
                moved = False
                until = time.monotonic() + 0.5
                while time.monotonic() < until:
                    ev = feed.next(max(0.0, until - time.monotonic()))
                    moved = moved or (ev is not None and ev["job_id"] == job_id and ev["status"] != "DISPATCHED")
                job = admin.status(job_id)
                if pid is None or moved or job["status"] != "DISPATCHED" or not stopped(pid):
                    signal_pid(pid, signal.SIGCONT)
                    admin_rc(admin, "abort", job_id=job_id, reason="fuzz: missed the DISPATCHED window")
                    continue
                rc, reason, body = admin_rc(admin, "abort", job_id=job_id, reason="fuzz: dispatched, no hello yet")
                self.v.expect(phase, "abort of a DISPATCHED job whose process has not said hello", [Rc.OK], rc,
                              reason, job_id)
                rc, reason, _ = admin_rc(admin, "abort", job_id=job_id, reason="fuzz: dispatched, again")
                self.v.expect(phase, "abort of that job again", [Rc.OK], rc, reason, job_id)
                signal_pid(pid, signal.SIGCONT)  # its hello now reaches a parent that has its abort
                self.serving("after aborts of a DISPATCHED job")
                job = wait_job(admin, job_id, lambda j: is_final(j) and not alive(pid), 30)
                if job["status"] != "FINISHED:ABORTED":
                    self.v.problem(phase, f"a job aborted while DISPATCHED (its process then went on and said hello) "
                                          f"ended {job['status']}: {brief(job['history'])}", job_id)
                if alive(pid):
                    self.v.problem(phase, f"the process {pid} of a job aborted while DISPATCHED outlived it", job_id)
                self.v.note(f"abort of a DISPATCHED job before its hello: caught at try {attempt}; the job ended "
                            f"{job['status']} ({job['history'][-1]['reason'][:100]})")
                return
        self.v.note(f"abort of a DISPATCHED job before its hello: not exercised (the process said hello before it "
                    f"could be stopped, {tries} tries)")

    # --- 2. hello replays, and a job's secret after it ended ---------------------------------------------------
    def hello_replays(self, victim: str) -> None:
        phase = "jobs socket, hello replays"
        admin = self.admin
        job_id, _ = self.submit_running(self.folder("t-reveal", "Hold", {"seconds": 600, "reveal": True}))
        here = self.run_dir(job_id)
        B.wait_until(lambda: (here / "secret.json").exists() and (here / "link.json").exists(), 30,
                     "the job to write its secret")
        secret = json.loads((here / "secret.json").read_text())
        mine = {"job_id": job_id, "secret": secret["secret"], "pid": secret["pid"]}
        victim_pid = admin.status(victim)["pid"]
        history = len(admin.status(job_id)["history"])
        other = dealer(self.ctx, self.world.info["jobs"])
        later = dealer(self.ctx, self.world.info["jobs"])
        try:
            t0 = time.time()
            for what, op, body, expected in (
                    ("hello from another connection, wrong secret", "hello",
                     {**mine, "secret": "x" + mine["secret"][1:]}, Rc.UNAUTHORIZED),
                    ("hello from another connection, right secret, another pid", "hello",
                     {**mine, "pid": mine["pid"] + 100_000}, Rc.UNAUTHORIZED),
                    ("hello for another running job (the victim) with this job's secret", "hello",
                     {"job_id": victim, "secret": mine["secret"], "pid": victim_pid}, Rc.UNAUTHORIZED),
                    ("heartbeat on that connection (no valid hello)", "heartbeat", {}, Rc.UNAUTHORIZED)):
                self.v.expect(phase, what, [expected], *raw_rc(other, op, body), job_id=job_id)
                self.serving(f"after {what}")
            # The job's own connection must not have noticed.
            t1 = time.time()
            link = B.wait_until(lambda: (lambda l: l if l and (l["last_ok_sent"] or 0) > t1 else None)(
                read_json(here / "link.json")), 15, "the job's own requests after the refused hellos")
            disturbed = [e for e in link["errors"] if e[0] >= t0] + [s for s in link["slow"] if s[0] >= t0]
            if disturbed:
                self.v.problem(phase, f"refused hellos from another connection disturbed the job's own connection "
                                      f"(refused or slow requests: {disturbed[:3]})", job_id)
            rc, reason = raw_rc(self.own["fuzz-a"], "aux", {"token": self.tokens["fuzz-a"], "job_id": job_id,
                                                            "topic": "fuzz", "timeout": 2.0})
            self.v.expect(phase, "site aux to this running server-only job (the control)", [Rc.OK], rc, reason,
                          job_id)

            # With the right secret another connection is the job's: the secret is the proof.
            t2 = time.time()
            # (The job process may take its connection back at once: its next request is refused, and
            # it says hello again.)
            for what, op, expected in (
                    ("hello from another connection with the job's secret and pid", "hello", [Rc.OK]),
                    ("the same hello again on that connection", "hello", [Rc.OK]),
                    ("heartbeat on that connection (UNAUTHORIZED once the job process said hello again)",
                     "heartbeat", [Rc.OK, Rc.UNAUTHORIZED])):
                self.v.expect(phase, what, expected, *raw_rc(other, op, mine if op == "hello" else {}), job_id=job_id)
                self.serving(f"after {what}")
            # The job process learns it (a refused request or heartbeat) and says hello again.
            t3 = time.time()
            failed = (read_json(here / "link.json") or {}).get("failed", 0)
            try:
                link = B.wait_until(lambda: (lambda l: l if l and (l["last_ok_sent"] or 0) > t3 else None)(
                    read_json(here / "link.json")), 20, "the job process to take its connection back", interval=0.05)
                refused = sorted({e[1] for e in link["errors"] if e[0] >= t2})
                slowest = max([s[1] for s in link["slow"] if s[0] >= t2], default=0.0)
                self.v.note(f"hello replay: after another connection said hello with a job's secret, the job process "
                            f"was refused {link['failed'] - failed} request(s) ({', '.join(refused) or '-'}), its "
                            f"slowest request took {slowest:.1f}s, and a request sent {link['last_ok_sent'] - t3:.1f}s "
                            f"later worked")
            except TimeoutError:
                self.v.problem(phase, "the job process never got its connection back after another connection said "
                                      "hello with its secret", job_id)
            self.v.expect(phase, "heartbeat on the other connection once the job process said hello again",
                          [Rc.UNAUTHORIZED], *raw_rc(other, "heartbeat", {}), job_id=job_id)
            job = admin.status(job_id)
            if job["status"] != "RUNNING" or len(job["history"]) != history:
                self.v.problem(phase, f"hello replays changed the job: {job['status']}, "
                                      f"[{brief(job['history'][history:])}]", job_id)

            self.finish(job_id)
            job = wait_job(admin, job_id, lambda j: is_final(j) and not alive(secret["pid"]), 30)
            if job["status"] != "FINISHED:COMPLETED":
                self.v.problem(phase, f"the job whose secret was replayed ended {job['status']}: "
                                      f"{job['history'][-1]['reason'][:200]}", job_id)
            self.check_ledger(phase)
            ended = "the secret of a job that ended"
            for sock, what in ((other, "on the connection that was the job's"), (later, "on a new connection")):
                # CONFLICT tells the job's own process (the secret proves it) that its job has ended.
                self.v.expect(phase, f"hello with {ended}, {what} (UNAUTHORIZED, or CONFLICT: the job ended)",
                              [Rc.UNAUTHORIZED, Rc.CONFLICT], *raw_rc(sock, "hello", mine), job_id=job_id)
                self.v.expect(phase, f"hello for a job that ended with a wrong secret, {what} (tells nothing)",
                              [Rc.UNAUTHORIZED], *raw_rc(sock, "hello", {**mine, "secret": "x" + mine["secret"][1:]}),
                              job_id=job_id)
                for op, body in (("run_status", {"status": "FINISHED:ABORTED", "error": "forged"}),
                                 ("aux", {"targets": [self.SITE], "topic": "fuzz", "timeout": 1.0}),
                                 ("sync_clients", {})):
                    self.v.expect(phase, f"{op} after a hello with {ended}, {what}", [Rc.UNAUTHORIZED],
                                  *raw_rc(sock, op, body), job_id=job_id)
            rc, reason = raw_rc(self.own["fuzz-a"], "aux", {"token": self.tokens["fuzz-a"], "job_id": job_id,
                                                            "topic": "fuzz", "timeout": 2.0})
            self.v.expect("sites socket", "site aux to a job that ended", [Rc.NOT_FOUND], rc, reason, job_id)
            self.serving("after messages for a job that ended")
            self.check_ledger(phase)
        finally:
            other.close(0)
            later.close(0)

    def replaced_process(self) -> None:
        """The secret of a job process that crashed and was replaced (``max_restarts``) is refused."""
        phase = "jobs socket, hello replays"
        job_id, _ = self.submit_running(self.folder("t-reveal-restart", "Hold", {"seconds": 600, "reveal": True},
                                                    meta={"max_restarts": 1}))
        path = self.run_dir(job_id) / "secret.json"
        first = B.wait_until(lambda: read_json(path), 30, "the job to write its secret")
        path.unlink()
        signal_pid(first["pid"], signal.SIGKILL)
        second = B.wait_until(lambda: read_json(path), 30, "the job's new process to write its secret")
        job = self.admin.status(job_id)
        if job["status"] != "RUNNING" or not any(h["reason"].startswith("restarted") for h in job["history"]):
            self.v.problem(phase, f"a job with max_restarts whose process was killed: {brief(job['history'])}", job_id)
        sock = dealer(self.ctx, self.world.info["jobs"])
        try:
            old = {"job_id": job_id, "secret": first["secret"]}
            for what, pid in (("its old pid", first["pid"]), ("the new process's pid", second["pid"])):
                self.v.expect(phase, f"hello with the secret of a job process replaced after a crash, {what}",
                              [Rc.UNAUTHORIZED], *raw_rc(sock, "hello", {**old, "pid": pid}), job_id=job_id)
                self.serving("after a hello with the secret of a replaced job process")
        finally:
            sock.close(0)
        self.finish(job_id)
        job = wait_job(self.admin, job_id, lambda j: is_final(j) and not alive(second["pid"]), 30)
        if job["status"] != "FINISHED:COMPLETED":
            self.v.problem(phase, f"the restarted job ended {job['status']}: {brief(job['history'])}", job_id)

    # --- 3. a job process's own messages after its final status ------------------------------------------------
    def late_talker(self) -> None:
        phase = "jobs socket, after the final status"
        job_id = submit_retrying(self.admin, self.folder("t-late", "LateTalker", {"site": self.SITE,
                                                                                  "outside": "fuzz-a"}, [self.SITE]))
        job = wait_job(self.admin, job_id, lambda j: is_final(j) and not alive(j["pid"]), 60)
        report = read_json(self.run_dir(job_id) / "late.json")
        if report is None:
            self.v.problem(phase, f"the job wrote no late.json; it ended {job['status']}: "
                                  f"{job['history'][-1]['reason'][:300]}", job_id)
            return
        for step in report["steps"]:
            self.v.expect(phase, step["what"], step["expected"], step["got"], step["reason"], job_id)
        if not report["done"]:
            self.v.problem(phase, f"the job process was ended before its last ill-timed message (after "
                                  f"{len(report['steps'])}); it ended {job['status']}", job_id)
        finals = [h for h in job["history"] if h["status"].startswith("FINISHED:")]
        first = ("FINISHED:COMPLETED", {"step": "first final"}, None, 1)
        if (job["status"], job["progress"], job["error"], len(finals)) != first:
            self.v.problem(phase, f"the store did not keep the first final status: {job['status']}, progress "
                                  f"{job['progress']}, error {str(job['error'])[:100]!r}, "
                                  f"history [{brief(job['history'])}]", job_id)
        self.serving("after a job's messages after its final status")

    # --- 4. a site's token after its logout -------------------------------------------------------------------
    def site_after_logout(self, victim: str) -> None:
        phase = "sites socket, after logout"
        before = {c["name"]: c for c in self.admin.clients()}
        sock = dealer(self.ctx, self.world.info["sites"])
        try:
            instance = uuid.uuid4().hex[:16]
            login = request(sock, "login", login_body("fuzz-c", instance))
            self.v.expect(phase, "login of fuzz-c", [Rc.OK], login.rc or "?", reason_of(login))
            old = login.body.get("token", "")
            self.v.expect(phase, "logout", [Rc.OK], *raw_rc(sock, "logout", {"token": old}))
            for what, op, body in (
                    ("heartbeat with the token after logout", "heartbeat", {"token": old}),
                    ("logout again with that token", "logout", {"token": old}),
                    ("aux to a running job with that token", "aux",
                     {"token": old, "job_id": victim, "topic": "fuzz", "timeout": 1.0})):
                self.v.expect(phase, what, [Rc.UNAUTHORIZED], *raw_rc(sock, op, body))
                self.serving(f"after {what}")
            again = request(sock, "login", login_body("fuzz-c", instance))
            self.v.expect(phase, "login again", [Rc.OK], again.rc or "?", reason_of(again))
            new = again.body.get("token", "")
            if new == old:
                self.v.problem(phase, "a site that logged out and in again got the same token")
            self.v.expect(phase, "heartbeat with the token of the first session", [Rc.UNAUTHORIZED],
                          *raw_rc(sock, "heartbeat", {"token": old}))
            self.v.expect(phase, "heartbeat with the new token", [Rc.OK], *raw_rc(sock, "heartbeat", {"token": new}))
            self.v.expect(phase, "logout with the new token", [Rc.OK], *raw_rc(sock, "logout", {"token": new}))
            after = {c["name"]: c for c in self.admin.clients()}
            if "fuzz-c" in after:
                self.v.problem(phase, "fuzz-c is still in the registry after its logout")
            if self.SITE in before and after.get(self.SITE, {}).get("login_time") != before[self.SITE]["login_time"]:
                self.v.problem(phase, f"the real site {self.SITE} lost its session meanwhile")
            self.serving("after a site's messages after its logout")
        finally:
            sock.close(0)

    # --- 5. kill -9 of the parent in the middle of it all, and a new parent -----------------------------------------
    def restart(self, number: int, launcher: str, victim: str, adopt_window: float, traffic_seconds: float) -> None:
        phase = f"restart {number} ({launcher} launcher)"
        admin = self.admin
        folders = {
            "ticker": self.folder("t-ticker", "Ticker"),
            "aux loop": self.folder("t-aux", "AuxLoop", {"site": self.SITE}, [self.SITE]),
            "ends while the parent is down": self.folder("t-hold", "Hold", {"seconds": 600}),
            "killed while the parent is down": self.folder("t-hold", "Hold", {"seconds": 600}),
            "stopped, never back": self.folder("t-hold", "Hold", {"seconds": 600}),
            "stopped, aborted during re-adoption": self.folder("t-hold", "Hold", {"seconds": 600}),
            "ignores aborts, aborted just before the kill": self.folder("t-stubborn", "Stubborn"),
        }
        jobs: dict[str, str] = {}
        pids: dict[str, int] = {}
        for name, folder in folders.items():
            jobs[name], job = self.submit_running(folder)
            pids[name] = job["pid"]
        here = {name: self.run_dir(job_id) for name, job_id in jobs.items()}
        B.wait_until(lambda: (here["ticker"] / "acked.json").exists() and (here["aux loop"] / "aux.json").exists(), 30,
                     "the ticker and the aux loop to get going")

        traffic = Traffic(self.world.info, self.tokens, self.seed * 1000 + number, rate=150.0)
        submitter = Submitter(self.world.info["admin"], self.probe_folder(), interval=0.5,
                              limit=12 if self.quick else 40, timeout=3.0)
        self._threads += [traffic, submitter]
        traffic.start()
        submitter.start()
        B.wait_until(lambda: traffic.total() >= 300 and submitter.acked, 30, "fuzzing traffic and submits to flow")
        for name in ("stopped, never back", "stopped, aborted during re-adoption"):
            signal_pid(pids[name], signal.SIGSTOP)
            self._stopped_pids.add(pids[name])
        self.check_ledger(f"{phase}, before the kill")
        stubborn = jobs["ignores aborts, aborted just before the kill"]
        rc, reason, _ = admin_rc(admin, "abort", job_id=stubborn, reason="fuzz: just before the kill")
        self.v.expect(phase, "abort of a running job just before the parent is killed", [Rc.OK], rc, reason, stubborn)
        old_pid = self.world.parent.pid
        t_kill = time.time()
        self.world.kill9()
        self.restarts += 1

        # While no parent runs: one job ends, one job process dies; what was acknowledged is on disk.
        self.finish(jobs["ends while the parent is down"])
        signal_pid(pids["killed while the parent is down"], signal.SIGKILL)
        acked_step = (read_json(here["ticker"] / "acked.json") or {}).get("step", 0)
        stored, why = stored_progress(self.world.ws, jobs["ticker"])
        if why is not None:
            self.v.note(f"{phase}: jobs.db could not be read directly ({why}); the acked-progress check was skipped")
        elif (stored or {}).get("step", 0) < acked_step:
            self.v.problem(phase, f"an acknowledged status update was lost: the job process was answered for step "
                                  f"{acked_step}, jobs.db holds {stored}", jobs["ticker"])
        t0 = time.monotonic()
        self.world.start_parent("--adopt-window", f"{adopt_window:g}", "--launcher", launcher)
        admin = self.admin
        serving_after = time.monotonic() - t0
        # A job whose process has not said hello to the new parent (it is stopped) is aborted.
        aborted = jobs["stopped, aborted during re-adoption"]
        rc, reason, body = admin_rc(admin, "abort", job_id=aborted, reason="fuzz: during re-adoption")
        self.v.expect(phase, "abort of a job not yet re-adopted by the new parent", [Rc.OK], rc, reason, aborted)
        rc, reason, _ = admin_rc(admin, "abort", job_id=aborted, reason="fuzz: during re-adoption, again")
        self.v.expect(phase, "abort of that job again", [Rc.OK], rc, reason, aborted)
        self.serving(f"right after restart {number}")

        # Things settle: every job re-adopted or ended.
        must_end = {"ends while the parent is down": ("FINISHED:COMPLETED",),
                    "killed while the parent is down": ("FINISHED:ABNORMAL",),
                    "stopped, never back": ("FINISHED:ABNORMAL",),
                    "stopped, aborted during re-adoption": ("FINISHED:ABORTED",),
                    "ignores aborts, aborted just before the kill": ("FINISHED:ABORTED",)}
        must_run = {"ticker": jobs["ticker"], "aux loop": jobs["aux loop"], "victim": victim}
        grace = World.ABORT_GRACE + World.TERM_GRACE + 5  # and some slack

        def readopted(job: dict) -> list[dict]:
            return [h for h in job["history"] if h["reason"].startswith("re-adopted") and h["time"] > t_kill]

        def settled() -> bool:
            ended = [admin.status(jobs[n]) for n in must_end]
            if not all(readopted(admin.status(j)) for j in must_run.values()) or not admin.ping().get("ready"):
                return False
            # An abort lost with the old parent shows as a re-adopted job that nothing ends.
            return all(is_final(j) or j["job_id"] == stubborn and readopted(j) and
                       time.time() - readopted(j)[-1]["time"] > grace for j in ended)

        try:
            B.wait_until(settled, adopt_window + grace + 10, "the jobs to be re-adopted or ended", interval=0.1)
        except TimeoutError:
            pass
        readopted_at = []
        for name, job_id in must_run.items():
            job = admin.status(job_id)
            marks = readopted(job)
            if job["status"] != "RUNNING" or not marks:
                self.v.problem(phase, f"the {name} job did not run on across the restart: {job['status']}, "
                                      f"[{brief(job['history'])}]{error_tail(job)}", job_id)
            else:
                readopted_at.append(marks[-1]["time"])
        started = read_json(self.world.ws / "parent.json") or {}
        if readopted_at and started.get("started"):
            self.v.note(f"{phase}: the new parent served {serving_after:.2f}s after it was started; its running jobs "
                        f"were all re-adopted {max(readopted_at) - started['started']:.2f}s after it started")
        for name, wanted in must_end.items():
            job = admin.status(jobs[name])
            if job["status"] not in wanted:
                what = (f"an abort acknowledged just before the kill was lost: the job was re-adopted and is still "
                        f"{job['status']} {grace:.0f}s later (abort and term graces {World.ABORT_GRACE:g}s and "
                        f"{World.TERM_GRACE:g}s), and nothing will end it"
                        if name.startswith("ignores aborts") and not is_final(job) else
                        f"ended {job['status']}, expected {'/'.join(wanted)}")
                self.v.problem(phase, f"the job that {name}: {what}: [{brief(job['history'])}]", jobs[name])
            elif not job["history"][-1]["reason"].strip():
                self.v.problem(phase, f"the job that {name} ended {job['status']} without a reason", jobs[name])
            finals = [h for h in job["history"] if h["status"].startswith("FINISHED:")]
            if len(finals) > 1:
                self.v.problem(phase, f"the job that {name} has {len(finals)} final statuses", jobs[name])
        self.check_orphans(phase)
        self.check_ledger(f"{phase}, after it")
        for _, job_id in submitter.acked:
            self.ledger.submitted.add(job_id)
        self.check_ledger(f"{phase}: submits acknowledged around the kill")

        # Keep fuzzing the new parent, then end the jobs that ran across the restart.
        mark = traffic.total()
        B.wait_until(lambda: traffic.total() >= mark + traffic_seconds * traffic.rate * len(SOCKETS) * 0.8,
                     traffic_seconds * 3 + 10, "fuzzing traffic to the new parent")
        traffic.stop()
        submitter.stop()
        self._threads = [t for t in self._threads if t not in (traffic, submitter)]
        self.traffic_sent += traffic.total()
        if traffic.error or submitter.error:
            self.v.problem(phase, f"a fuzzing thread failed: {traffic.error or submitter.error}")
        for what, n in traffic.problems.most_common():
            self.v.problem(phase, f"fuzzing traffic across the restart: {what} (x{n})")
        answers = collections.Counter(rc for _, rc in submitter.answers)
        odd = {rc: n for rc, n in answers.items() if rc not in (Rc.OK, Rc.NOT_READY, NO_ANSWER)}
        if odd:
            self.v.problem(phase, f"submits around the restart were answered {odd}")
        self.v.note(f"{phase}: fuzzing traffic {traffic.total()} inputs ({sum(traffic.dropped.values())} dropped while "
                    f"no parent took them), submits {dict(answers)}")
        for name in ("ticker", "aux loop"):
            self.finish(jobs[name])
        for name in ("ticker", "aux loop"):
            was_running = self.ledger.jobs.get(jobs[name], {}).get("status") == "RUNNING"
            job = wait_job(admin, jobs[name], lambda j: is_final(j) and not alive(j["pid"]), 60)
            if job["status"] != "FINISHED:COMPLETED" and was_running:  # else reported above
                self.v.problem(phase, f"the {name} job, run across the restart, ended {job['status']} when told to "
                                      f"finish{error_tail(job)}", jobs[name])
        last = (read_json(here["ticker"] / "acked.json") or {}).get("step")
        ticker = admin.status(jobs["ticker"])
        if ticker["status"] == "FINISHED:COMPLETED" and (ticker["progress"] or {}).get("step") != last:
            self.v.problem(phase, f"the ticker's last acknowledged step is {last}, the store says {ticker['progress']}",
                           jobs["ticker"])
        self.v.note(f"{phase}: the aux loop's replies by return code: {read_json(here['aux loop'] / 'aux.json')}")
        if not is_final(admin.status(stubborn)):  # what a lost abort leaves: end it now
            admin_rc(admin, "abort", job_id=stubborn, reason="fuzz: the abort before the restart was lost")
            self.finish(stubborn)
        if alive(old_pid):
            self.v.problem(phase, f"the killed parent {old_pid} is alive")
        self.serving(f"after restart {number}")
        self.settle_probes()
        self.check_ledger(f"{phase}, at its end")

    def check_orphans(self, phase: str) -> None:
        """No job is shown launched (DISPATCHED, RUNNING) without a live process."""
        for job in self.admin.jobs():
            if job["status"] in ("DISPATCHED", "RUNNING") and not alive(job["pid"]):
                full = self.admin.status(job["job_id"])
                if full["status"] in ("DISPATCHED", "RUNNING"):
                    self.v.problem(phase, f"job {job['job_id']} is {full['status']} but its process {job['pid']} is "
                                          f"gone: [{brief(full['history'])}]", job["job_id"])

    # --- 6. shutdown while submits are in flight ------------------------------------------------------------------
    def shutdown(self) -> None:
        phase = "shutdown with submits in flight"
        admin = self.admin
        running = [self.submit_running(self.folder("t-hold", "Hold", {"seconds": 600}))[0] for _ in range(2)]
        running.append(self.submit_running(self.folder("t-stubborn", "Stubborn"))[0])
        # Each well under the admin rate limit (500 messages/s a peer), so none is answered RATE_LIMITED.
        submitters = [Submitter(self.world.info["admin"], self.probe_folder(), interval=0.005, limit=8, timeout=3.0)
                      for _ in range(3)]
        self._threads += submitters
        for s in submitters:
            s.start()
        B.wait_until(lambda: sum(len(s.acked) for s in submitters) >= 3, 30, "submits to flow")
        proc = self.world.parent.proc
        rc, reason, body = admin_rc(admin, "shutdown")
        t_shutdown = time.time()
        self.v.expect(phase, "shutdown while submits are in flight and jobs run", [Rc.OK], rc, reason)
        try:
            code = proc.wait(60)
        except subprocess.TimeoutExpired:
            code = None
        t_exit = time.time()
        for s in submitters:
            s.stop()
        self._threads = [t for t in self._threads if t not in submitters]
        if code != 0:
            self.v.problem(phase, f"the parent did not exit 0 after a shutdown (exit {code}, "
                                  f"{t_exit - t_shutdown:.1f}s after it)")
            return
        self.v.note(f"{phase}: the parent exited 0 {t_exit - t_shutdown:.2f}s after the shutdown was answered")
        if (self.world.ws / "parent.json").exists():
            self.v.problem(phase, "parent.json is still there after a graceful stop")
        ours = {p.pid for p in self.world.procs.procs if p.poll() is None}  # the site agent

        def left() -> list[str]:
            out = []
            for p in B.processes_under(self.world.root):
                try:
                    if p.pid not in ours:
                        out.append(f"{p.pid} {' '.join(p.cmdline())[:60]}")
                except psutil.Error:
                    pass
            return out

        try:
            B.wait_until(lambda: not left(), 5, "the parent's processes to be gone")
        except TimeoutError:
            self.v.problem(phase, f"processes left after the parent stopped: {left()}")
        answers = collections.Counter(rc for s in submitters for sent, rc in s.answers if sent > t_shutdown)
        odd = {rc: n for rc, n in answers.items() if rc not in (Rc.OK, Rc.CONFLICT, Rc.NOT_READY, NO_ANSWER)}
        if odd:
            self.v.problem(phase, f"submits sent after the shutdown were answered {odd}")
        acked = [job_id for s in submitters for _, job_id in s.acked]
        self.ledger.submitted.update(acked)

        # What the parent left, seen by the next one: every job final or SUBMITTED when it stopped.
        self.world.start_parent()
        admin = self.admin
        left_submitted: list[str] = []
        for brief_job in admin.jobs():
            job = admin.status(brief_job["job_id"])
            at_stop = [h for h in job["history"] if h["time"] <= t_exit]
            status = at_stop[-1]["status"] if at_stop else "?"
            if status == "SUBMITTED":
                left_submitted.append(job["job_id"])
            elif not status.startswith("FINISHED:"):
                self.v.problem(phase, f"job {job['job_id']} was {status} when the parent stopped: "
                                      f"[{brief(job['history'])}]", job["job_id"])
        for job_id in running:
            job = admin.status(job_id)
            if job["status"] != "FINISHED:ABORTED" or "parent shutdown" not in job["history"][-1]["reason"]:
                self.v.problem(phase, f"a job running at the shutdown ended {job['status']} "
                                      f"({job['history'][-1]['reason'][:120]}), not FINISHED:ABORTED by the shutdown",
                               job_id)
        known = {j["job_id"] for j in admin.jobs()}
        orphans = sorted(p.name for p in (self.world.ws / "jobs").iterdir() if p.name not in known)
        if orphans:
            self.v.problem(phase, f"run dirs of jobs the store does not know: {orphans[:5]}")
        self.check_ledger(phase)
        self.v.note(f"{phase}: {len(acked)} submits acknowledged, answers after the shutdown {dict(answers)}; "
                    f"{len(left_submitted)} job(s) left SUBMITTED, run by the next parent")
        for job_id in left_submitted:
            self.probes.append(("a job left SUBMITTED by the shutdown", job_id))
        self.serving("on the parent started after the shutdown")
        self.settle_probes(120)
        self.check_orphans(f"{phase}, on the next parent")
        self.check_ledger(f"{phase}, on the next parent")

    # --- the report -----------------------------------------------------------------------------------------
    def findings(self) -> list[str]:
        """What went wrong, each with the parent.log lines (of every parent) about its job: read
        before the workspace is removed."""
        out = []
        for text, job_id in self.v.findings:
            lines = log_lines(self.world.ws, job_id, 8) if job_id else []
            out.append(text + "".join(f"\n      parent.log: {line}" for line in lines))
        return out

    def print_report(self) -> None:
        """Every ill-timed message and its answer, by phase, and the figures noted on the way."""
        print(f"ill-timed messages: {len(self.v.items)} checked ({sum(not v.ok for v in self.v.items)} wrong), "
              f"{self.pings} pings and {self.probes_done} real jobs after them; {self.restarts} parent restart(s) "
              f"(kill -9) with {self.traffic_sent} fuzzing inputs across them")
        by_phase: dict[str, list[Verdict]] = {}
        for v in self.v.items:
            by_phase.setdefault(v.phase, []).append(v)
        for phase, items in by_phase.items():
            print(f"  {phase}:")
            for v in items:
                print(f"    {'ok ' if v.ok else 'BAD'} {v.what}: {v.got}"
                      + ("" if v.ok else f" (expected {'/'.join(v.expected)})"))
        for note in self.v.notes:
            print(f"  {note}")


def run_plain(args: argparse.Namespace) -> int:
    """Fuzz a parent without a kit (plaintext sockets, ipc jobs socket); 0 if it served throughout."""
    rnd = random.Random(args.seed)
    root = Path(tempfile.mkdtemp(prefix="flrunner-fuzz-"))
    world = World(root)
    ctx = zmq.Context()
    failures: list[str] = []
    checks = 0
    sent = {name: collections.Counter() for name in SOCKETS}
    peers: dict[str, Peer] = {}
    job_report: dict = {}
    timing: IllTimed | None = None
    findings: list[str] = []
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
        instances = {name: uuid.uuid4().hex[:16] for name in own}

        def login_own() -> None:
            for name, sock in own.items():
                while sock.poll(0):
                    sock.recv_multipart()
                reply = request(sock, "login", login_body(name, instances[name]))
                if reply.rc != Rc.OK:
                    raise RuntimeError(f"the fuzzer's own site {name} could not log in: {reply.rc} {reason_of(reply)}")
                tokens[name] = reply.body["token"]

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
                if world.parent.admin.ping()["pid"] != world.parent.pid:
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
                for name, table in (("sites", site_ops.FROM_SITE), ("jobs", job_ops.FROM_JOB), ("admin", admin_ops.FROM_ADMIN))}
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

        # Well-formed messages at the wrong time, from real peers; then kill -9 of the parent in the
        # middle of fuzzing traffic and real jobs, and a new parent on the workspace (a cold one first:
        # what an operator runs after an upgrade), fuzzed in turn.
        if ok:
            timing = IllTimed(world, ctx, own, tokens, login_own, args.quick, args.seed)
            timing.check_ledger("before the ill-timed messages")
            login_own()
            timing.aborts()
            timing.abort_dispatched()
            timing.hello_replays(tokens["victim"])
            timing.replaced_process()
            timing.late_talker()
            timing.site_after_logout(tokens["victim"])
            timing.settle_probes()
            timing.check_orphans("ill-timed messages")
            timing.check_ledger("ill-timed messages")
            for n in range(1, args.restarts + 1):
                if not ok:
                    break
                timing.restart(n, "cold" if n % 2 else "warm", tokens["victim"], adopt_window=4.0,
                               traffic_seconds=2.0 if args.quick else 10.0)
                login_own()
                ok = serving(f"after restart {n}")
            admin = world.parent.admin

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
            restarts = timing.restarts if timing is not None else 0
            extra = victim["history"][3:]  # each restart adds its re-adoption
            if victim["status"] != "RUNNING" or len(extra) != restarts or \
                    not all(h["reason"].startswith("re-adopted") for h in extra):
                failures.append(f"the victim job was disturbed: {victim['status']}, {extra}")
            admin.abort(tokens["victim"], "fuzzing is over")
            # Last, as it stops the parent: a shutdown while submits are in flight, seen by the next one.
            if timing is not None:
                timing.shutdown()
    except Exception as exc:  # a parent that stops answering surfaces here: report it, then clean up
        failures.append(f"the run stopped: {type(exc).__name__}: {exc}")
    finally:
        if timing is not None:
            timing.end()
        if world.parent is not None:
            world.parent.admin.close()
        for p in peers.values():
            p.sock.close(0)
        for sock in (own.values() if "own" in locals() else []):
            sock.close(0)
        ctx.term()
        world.stop()
        left = B.processes_under(root)
        if left:
            failures.append(f"processes left behind: {[p.pid for p in left]}")
        if timing is not None:
            findings = timing.findings()
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
    if timing is not None:
        timing.print_report()
    if failures or findings:
        if failures:
            print("FAILED: the parent did not keep serving correctly:")
            for f in failures:
                print(f"  - {f}")
        if findings:
            print(f"FINDINGS: {len(findings)} ill-timed message(s) or restart check(s) went wrong:")
            for f in findings:
                print(f"  - {f}")
        return 1
    print("OK: the parent kept serving; a plain job completed; the victim job was untouched; ill-timed messages got "
          "their documented answers; restarts lost nothing acknowledged; no process left")
    return 0


# --- provisioned mode (--kit): the surfaces added for security --------------------------------------------

#: The participants of the run's project. s1's key fuzzes the sites socket (and, on a connection of
#: its own, answers as a well-behaved s1 that runs an app of the "s1-job"); s2 is a real site
#: agent that must stay logged in throughout; a1's key fuzzes the remote admin socket.
FUZZ_SITE, GOOD_SITE, FUZZ_ADMIN = "s1", "s2", "a1"
KIT_SURFACES = ("sites", "jobs", "remote-admin")
#: Messages and bytes a second the fuzzer sends each socket (None: no limit): under the parent's
#: per-peer limits (2000 messages/s on sites, 500/s and 8 MiB/s on admin), so inputs are served
#: rather than dropped by the rate limiter.
PACE: dict[str, tuple[float | None, float | None]] = {
    "sites": (1500.0, 40 * B.MB), "jobs": (None, 256 * B.MB), "remote-admin": (400.0, 6 * B.MB)}
#: Where an escaped upload member would land: any file by this name under the run's folder fails the run.
ESCAPE_MARK = "ESCAPED-BY-FUZZ"
#: The topic of s1's aux requests to its job (the job's engine has no handler: it answers TOPIC_UNKNOWN).
AUX_TOPIC = "fuzz"


class Pacer:
    """A token bucket on the sender's side: ``rate`` messages and ``byte_rate`` bytes a second
    (None: unlimited), with bursts of half a second's worth."""

    def __init__(self, rate: float | None, byte_rate: float | None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.rate, self.byte_rate, self.clock = rate, byte_rate, clock
        self.messages = (rate or 0.0) / 2
        self.bytes = (byte_rate or 0.0) / 2
        self.last = clock()

    def ready(self) -> bool:
        now = self.clock()
        elapsed, self.last = now - self.last, now
        if self.rate:
            self.messages = min(self.rate / 2, self.messages + elapsed * self.rate)
        if self.byte_rate:
            self.bytes = min(self.byte_rate / 2, self.bytes + elapsed * self.byte_rate)
        return (not self.rate or self.messages >= 1) and (not self.byte_rate or self.bytes >= 0)

    def spend(self, size: int) -> None:
        self.messages -= 1
        self.bytes -= size


@dataclass
class Probe:
    """One input: its kind, its frames, and (if its reply is checked) its message id and the check."""

    kind: str
    frames: list[bytes]
    mid: int | None = None
    check: Check | None = None


def probe(kind: str, op: str, body: Any, frames: Sequence[bytes] = (), check: Check | None = None) -> Probe:
    """A well-framed message (header packed as given, bytes as msgpack bin) followed by raw ``frames``."""
    mid = next_id()
    return Probe(kind, [packed({"v": 1, "op": op, "id": mid, "b": body}), *frames], mid, check)


def expect_rc(*allowed: str) -> Check:
    """The reply's code must be one of ``allowed``."""
    def check(msg: Message) -> str | None:
        return None if msg.rc in allowed else f"answered {msg.rc}, expected {'/'.join(allowed)} ({reason_of(msg)})"
    return check


def refused(msg: Message) -> str | None:
    """The input must not be accepted."""
    return f"accepted: {str(msg.body)[:160]}" if msg.rc == Rc.OK else None


def flip(data: bytes, rnd: random.Random) -> bytes:
    """``data`` with one bit flipped."""
    i = rnd.randrange(len(data))
    return data[:i] + bytes([data[i] ^ (1 << rnd.randrange(8))]) + data[i + 1:]


# --- s1's well-behaved session -----------------------------------------------------------------------

class SiteResponder(threading.Thread):
    """Site s1's well-behaved session, on its own connection with s1's kit: it logs in, heartbeats,
    reserves resources and "starts" a job's site app when asked (without running it), answers aux
    requests, and keeps the job keys it is sent. A session the fuzzing disturbed shows as
    ``logins`` above 1 (it logs in again when the parent forgets it).
    """

    def __init__(self, ctx: zmq.Context, endpoint: str, kit: Any) -> None:
        super().__init__(name="s1-session", daemon=True)
        self.ctx, self.endpoint, self.kit = ctx, endpoint, kit
        self.token: str | None = None
        self.logins = 0
        self.heartbeats_refused = 0
        self.job_keys: dict[str, bytes] = {}
        self.pushes: collections.Counter = collections.Counter()
        self.logged_in = threading.Event()
        self.error: str | None = None
        self.instance = uuid.uuid4().hex[:16]
        self._stop_event = threading.Event()

    def stop(self) -> None:
        self._stop_event.set()
        self.join(10)

    def run(self) -> None:
        sock = self.ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.curve_publickey, sock.curve_secretkey, sock.curve_serverkey = (
            self.kit.public_key, self.kit.secret_key, self.kit.parent_public_key)
        sock.connect(self.endpoint)
        interval, next_beat, login_sent = 5.0, 0.0, float("-inf")
        try:
            while not self._stop_event.is_set():
                now = time.monotonic()
                if self.token is None and now - login_sent > 5.0:
                    login_sent = now
                    body = login_body(FUZZ_SITE, self.instance, pid=os.getpid(), jobs=list(self.job_keys),
                                      resources={"num_cpus": 4, "mem_gb": 4.0, "num_gpus": 0})
                    self._send(sock, Message("login", body, id=next_id()))
                elif self.token is not None and now >= next_beat:
                    next_beat = now + interval
                    self._send(sock, Message("heartbeat", {"token": self.token}, id=next_id()))
                if not sock.poll(100):
                    continue
                msg = decode(sock.recv_multipart())
                if msg.is_reply:
                    if msg.op == "login" and msg.rc == Rc.OK:
                        self.token, self.logins = msg.body["token"], self.logins + 1
                        interval = float(msg.body.get("heartbeat_interval", 5.0))
                        next_beat = time.monotonic() + interval
                        self.job_keys.update(msg.body.get("job_keys") or {})
                        self.logged_in.set()
                    elif msg.op == "heartbeat" and msg.rc != Rc.OK:
                        self.heartbeats_refused += 1
                        self.token, login_sent = None, float("-inf")
                    continue
                self._serve_push(sock, msg)
        except Exception as exc:  # reported by the serving checks
            self.error = f"{type(exc).__name__}: {exc}"
        finally:
            sock.close(0)

    def _serve_push(self, sock: zmq.Socket, msg: Message) -> None:
        self.pushes[msg.op] += 1
        body = msg.body
        if msg.op == "job_key":
            self.job_keys[body["job_id"]] = body["key"]
        elif msg.op == "check_resources":
            self._send(sock, Message(msg.op, {"token": f"r-{FUZZ_SITE}", "reason": None}, re=msg.id, rc=Rc.OK))
        elif msg.op == "start_job":
            if body.get("job_key"):
                self.job_keys[body["job_id"]] = body["job_key"]
            self._send(sock, Message(msg.op, {"started": True}, re=msg.id, rc=Rc.OK))
        elif msg.op == "aux":
            if not body.get("fire_and_forget"):
                self._send(sock, Message(msg.op, {}, re=msg.id, rc=Rc.OK,
                                         frames=encode_shareable(Shareable({"site": FUZZ_SITE}))))
        elif msg.op not in ("stop_job", "cancel_resources"):
            self._send(sock, Message(msg.op, {"reason": f"unknown op {msg.op}"}, re=msg.id, rc=Rc.BAD_REQUEST))

    @staticmethod
    def _send(sock: zmq.Socket, msg: Message) -> None:
        try:
            sock.send_multipart(encode(msg), zmq.NOBLOCK)
        except zmq.Again:
            pass


# --- the sites socket, as s1 ------------------------------------------------------------------------

class Sealer:
    """s1's secure aux requests to its job's engine, sealed with s1's real key: valid ones (their
    sealed replies must open, with the engine's TOPIC_UNKNOWN inside) and ones that are wrong in
    one way each (the engine must refuse them with BAD_REQUEST and serve on)."""

    TAMPERED = ("wrong direction", "other topic", "other job", "short data key", "long data key", "not a list",
                "empty list", "items not bytes", "too many frames inside", "ciphertext flipped", "sealed key flipped",
                "two frames", "no frame", "sealed by another key")

    def __init__(self, secret_key: bytes, rnd: random.Random) -> None:
        self.secret = sealed.key_from_z85(secret_key)
        self.rnd = rnd
        self.variants = itertools.cycle(("valid", "garbage payload", *self.TAMPERED))

    def next(self, job_id: str, job_key: bytes, other_job: str) -> tuple[str, list[bytes], bytes, Check]:
        """(variant, frames, sealed key, check of the reply) of the next variant."""
        variant = next(self.variants)
        payload = [bytes(f) for f in encode_shareable(Shareable({"probe": self.rnd.randrange(1 << 30)}))]
        context = sealed.site_request_context(job_id, AUX_TOPIC)
        if variant in ("valid", "garbage payload"):
            frames = payload if variant == "valid" else [self.rnd.randbytes(self.rnd.randrange(1, 300))]
            blob, keys = sealed.seal_request(frames, self.secret, {"job": job_key}, context=context)
            want = ReturnCode.TOPIC_UNKNOWN if variant == "valid" else None
            return variant, [blob], keys["job"], self._opens(blob, job_key, want)
        data_key = self.rnd.randbytes(SecretBox.KEY_SIZE)
        box = Box(PrivateKey(self.secret), PublicKey(job_key))

        def blob_of(items: list) -> bytes:
            return bytes(SecretBox(data_key).encrypt(msgpack.packb(items, use_bin_type=True)))

        blob, key = blob_of([context, *payload]), bytes(box.encrypt(data_key))
        frames = [blob]
        if variant == "wrong direction":
            frames = [blob_of([sealed.request_context(job_id, AUX_TOPIC), *payload])]
        elif variant == "other topic":
            frames = [blob_of([sealed.site_request_context(job_id, AUX_TOPIC + "-other"), *payload])]
        elif variant == "other job":
            frames = [blob_of([sealed.site_request_context(other_job, AUX_TOPIC), *payload])]
        elif variant == "short data key":
            key = bytes(box.encrypt(data_key[:self.rnd.choice([0, 5, 31])]))
        elif variant == "long data key":
            key = bytes(box.encrypt(data_key + data_key))
        elif variant == "not a list":
            frames = [bytes(SecretBox(data_key).encrypt(self.rnd.choice(
                [self.rnd.randbytes(64), msgpack.packb({"a": 1}), msgpack.packb("x"), b""])))]
        elif variant == "empty list":
            frames = [blob_of([])]
        elif variant == "items not bytes":
            frames = [blob_of([context, "text", 5, None])]
        elif variant == "too many frames inside":
            frames = [blob_of([context] + [b"x"] * (sealed.MAX_FRAMES + 2))]
        elif variant == "ciphertext flipped":
            frames = [flip(blob, self.rnd)]
        elif variant == "sealed key flipped":
            key = flip(key, self.rnd)
        elif variant == "two frames":
            frames = [blob, blob]
        elif variant == "no frame":
            frames = []
        elif variant == "sealed by another key":
            key = bytes(Box(PrivateKey.generate(), PublicKey(job_key)).encrypt(data_key))
        return variant, frames, key, expect_rc(Rc.BAD_REQUEST)

    def _opens(self, blob: bytes, job_key: bytes, want: str | None) -> Check:
        """The reply is OK and sealed for s1 by the job's key, for this very request; with ``want``,
        the engine's return code inside is that one (else any code but OK)."""
        def check(msg: Message) -> str | None:
            if msg.rc != Rc.OK:
                return f"answered {msg.rc} ({reason_of(msg)})"
            try:
                frames = sealed.open_reply(msg.frames, self.secret, job_key, context=sealed.reply_context(blob))
                rc = decode_shareable(frames).get_return_code()
            except FlrunnerError as exc:
                return f"the sealed reply does not open: {exc}"
            if (want is not None and rc != want) or (want is None and rc == ReturnCode.OK):
                return f"the engine's sealed reply says {rc}"
            return None
        return check


class SiteInputs:
    """The sites socket's own inputs, from a connection with s1's real key; the aux ones use the
    token of s1's well-behaved session (never in a well-formed heartbeat or logout, which would
    move or end that session)."""

    def __init__(self, rnd: random.Random, session: SiteResponder, jobs: dict[str, str], sealer: Sealer) -> None:
        self.rnd = rnd
        self.session = session
        self.jobs = jobs
        self.sealer = sealer
        self.i = 0
        self._wrong_aux = itertools.cycle([(name, v) for name, f in aux_ops.FROM_SITE.fields.items() if name != "token"
                                           for v in wrong_values(f)])
        self.kinds: list[Callable[[], Probe]] = [
            self.login_as_another, self.oversized_field, self.aux_sealed_key, self.aux_sealed, self.aux_sender_key,
            self.aux_wrong_type, self.aux_elsewhere, self.aux_sealed, self.aux_plain_garbage]

    def next(self) -> Probe:
        self.i += 1
        return self.kinds[self.i % len(self.kinds)]()

    @property
    def token(self) -> str:
        return self.session.token or "no-session"

    def _aux(self, job_id: str, **fields: Any) -> dict:
        return {"token": self.token, "job_id": job_id, "topic": AUX_TOPIC, "timeout": 5.0, **fields}

    def login_as_another(self) -> Probe:
        name = self.rnd.choice([GOOD_SITE, FUZZ_ADMIN, "parent", "server", "@ALL", "S1", "s1 ", " s1", "s1\x00",
                                "s1/..", "x" * 128, "é", f"fuzz-{self.rnd.randrange(1 << 20)}"])
        body: dict[str, Any] = {"name": name}
        if self.rnd.random() < 0.5:
            body.update(pid=self.rnd.randrange(1, 1 << 22), resources={"num_cpus": 1}, jobs=list(self.jobs.values()))
        return probe("login as another name", "login", body, check=expect_rc(Rc.UNAUTHORIZED))

    def oversized_field(self) -> Probe:
        op, name, limit = self.rnd.choice([("login", "name", 128), ("login", "jobs", 10_000),
                                           ("heartbeat", "token", 128), ("logout", "token", 128), ("aux", "token", 128),
                                           ("aux", "job_id", 128), ("aux", "topic", 256), ("aux", "sealed_key", 128)])
        # (A list over the decoder's 1,000,000 items is undecodable, and dropped unanswered.)
        size = limit + self.rnd.choice([1, 2, limit] if name == "jobs" else [1, 2, limit, 100 * limit])
        value: Any = "x" * size
        if name == "jobs":
            value = ["j"] * size
        elif name == "sealed_key":
            value = self.rnd.randbytes(size)
        body = {"login": {"name": FUZZ_SITE}, "heartbeat": {"token": "unused"}, "logout": {"token": "unused"},
                "aux": self._aux(self.jobs["s1-job"])}[op]
        body[name] = value
        # The token is checked before the body (an oversized one is simply unknown).
        rc = Rc.UNAUTHORIZED if name == "token" else Rc.BAD_REQUEST
        return probe(f"oversized field ({op}.{name})", op, body, check=expect_rc(rc))

    def aux_sealed_key(self) -> Probe:
        """Garbage in 'sealed_key': refused by the parent (type, size), or by the job's engine."""
        where = self.rnd.choices(["s1-job", "victim", "none"], [7, 2, 1])[0]
        job_id = self.jobs.get(where, f"no-such-job-{self.rnd.randrange(1000)}")
        key: Any = self.rnd.choice([self.rnd.randbytes(self.rnd.choice([0, 1, 24, 40, 71, 72, 73, 100, 128])),
                                    self.rnd.randbytes(self.rnd.choice([129, 500, 4096])),
                                    "k" * 72, 72, [b"k"], {"k": b"k"}, True, 1.5])
        frames = [self.rnd.randbytes(self.rnd.randrange(0, 200)) for _ in range(self.rnd.randrange(0, 3))]
        if not isinstance(key, bytes) or len(key) > 128:
            rc = Rc.BAD_REQUEST  # by the parent
        else:
            rc = {"s1-job": Rc.BAD_REQUEST, "victim": Rc.UNAUTHORIZED, "none": Rc.NOT_FOUND}[where]
            if where == "s1-job" and self.rnd.random() < 0.1:  # refused by the engine, which answers nothing
                return probe("aux: garbage sealed_key, fire and forget", "aux",
                             self._aux(job_id, sealed_key=key, fire_and_forget=True), frames)
        return probe("aux: garbage sealed_key", "aux", self._aux(job_id, sealed_key=key), frames, expect_rc(rc))

    def aux_sealed(self) -> Probe:
        """A request sealed with s1's real key for its job's key, valid or wrong in one way."""
        job_key = self.session.job_keys.get(self.jobs["s1-job"])
        if job_key is None:
            return self.aux_sealed_key()
        variant, frames, key, check = self.sealer.next(self.jobs["s1-job"], job_key, self.jobs["victim"])
        return probe(f"aux: sealed, {variant}", "aux", self._aux(self.jobs["s1-job"], sealed_key=key), frames, check)

    def aux_sender_key(self) -> Probe:
        """'sender_key' belongs to a job's aux request, not to a site's."""
        body = self._aux(self.jobs["s1-job"], sender_key=self.rnd.randbytes(self.rnd.choice([32, 0, 200])))
        if self.rnd.random() < 0.5:
            body["sealed_key"] = self.rnd.randbytes(72)
        return probe("aux: sender_key", "aux", body, [self.rnd.randbytes(64)], expect_rc(Rc.BAD_REQUEST))

    def aux_wrong_type(self) -> Probe:
        name, value = next(self._wrong_aux)
        body = self._aux(self.jobs["s1-job"])
        body[name] = value
        return probe("aux: field of a wrong type", "aux", body, [b"x"], expect_rc(Rc.BAD_REQUEST))

    def aux_elsewhere(self) -> Probe:
        """A job s1 has no app in, or no job at all."""
        job_id, rc = self.rnd.choice([(self.jobs["victim"], Rc.UNAUTHORIZED), ("", Rc.NOT_FOUND),
                                      ("no-such-job", Rc.NOT_FOUND), ("../" + self.jobs["s1-job"], Rc.NOT_FOUND)])
        return probe("aux: a job it is not in", "aux", self._aux(job_id), [self.rnd.randbytes(32)], expect_rc(rc))

    def aux_plain_garbage(self) -> Probe:
        """A plain request with garbage frames: the engine answers (with a failure inside), never ERROR."""
        frames = [self.rnd.randbytes(self.rnd.randrange(0, 300)) for _ in range(self.rnd.randrange(0, 4))]
        return probe("aux: plain, garbage payload", "aux", self._aux(self.jobs["s1-job"]), frames,
                     expect_rc(Rc.OK, Rc.BAD_REQUEST))


# --- the tcp jobs socket, with random client keys ------------------------------------------------------

class JobInputs:
    """The jobs socket's own inputs, from a peer with a random CURVE key that never knows a job's
    secret: hellos with wrong secrets (for running jobs, with their real pids), sealing keys of
    every wrong size and type, garbage hellos, and every other op before a hello."""

    def __init__(self, rnd: random.Random, jobs: dict[str, str], pids: dict[str, int]) -> None:
        self.rnd = rnd
        self.jobs = jobs
        self.pids = pids
        self.i = 0
        self._before = itertools.cycle(self._before_hello_bodies())
        self.kinds: list[Callable[[], Probe]] = [self.wrong_secret, self.sealing_key_size, self.sealing_key_type,
                                                 self.before_hello, self.garbage_hello, self.before_hello]

    def next(self) -> Probe:
        self.i += 1
        return self.kinds[self.i % len(self.kinds)]()

    def _job(self) -> tuple[str, int]:
        name = self.rnd.choice(["victim", "s1-job", "victim", "s1-job", "none"])
        job_id = self.jobs.get(name, str(uuid.UUID(int=self.rnd.getrandbits(128))))
        return job_id, self.pids.get(name, self.rnd.randrange(1, 1 << 22))

    def _secret(self) -> str:
        return self.rnd.choice([self.rnd.randbytes(32).hex()[:43], "", "x" * 256, "\x00" * 43, "secret"])

    def wrong_secret(self) -> Probe:
        job_id, pid = self._job()
        body: dict[str, Any] = {"job_id": job_id, "secret": self._secret(), "pid": pid}
        if self.rnd.random() < 0.5:
            body["sealing_key"] = self.rnd.randbytes(32)
        return probe("hello: wrong secret", "hello", body, check=expect_rc(Rc.UNAUTHORIZED))

    def sealing_key_size(self) -> Probe:
        job_id, pid = self._job()
        size = self.rnd.choice([0, 1, 16, 31, 33, 40, 64, 72, 128, 129, 1000, 70_000])
        return probe("hello: sealing_key of a wrong size", "hello", {
            "job_id": job_id, "secret": self._secret(), "pid": pid, "sealing_key": self.rnd.randbytes(size)},
            check=expect_rc(Rc.BAD_REQUEST))

    def sealing_key_type(self) -> Probe:
        job_id, pid = self._job()
        key = self.rnd.choice(["k" * 40, "k" * 32, 32, 1.5, True, [self.rnd.randbytes(32)], {"k": b"k"}])
        return probe("hello: sealing_key of a wrong type", "hello", {
            "job_id": job_id, "secret": self._secret(), "pid": pid, "sealing_key": key},
            check=expect_rc(Rc.BAD_REQUEST))

    def garbage_hello(self) -> Probe:
        body = {name: self.rnd.choice(POOL) for name in job_ops.HELLO.fields if self.rnd.random() < 0.8}
        if self.rnd.random() < 0.3:
            body[self.rnd.choice(["token", "job", "", "secret "])] = self.rnd.choice(POOL)
        return probe("hello: garbage", "hello", body, check=refused)

    def _before_hello_bodies(self) -> list[tuple[str, dict]]:
        victim = self.jobs["victim"]
        return [("sync_clients", {}), ("sync_clients", {"since": 0}),
                ("run_status", {"status": "FINISHED:COMPLETED", "progress": {"round": 1}, "error": None}),
                ("heartbeat", {}),
                ("aux", {"targets": [FUZZ_SITE, GOOD_SITE], "topic": AUX_TOPIC, "timeout": 1.0}),
                ("aux", {"topic": AUX_TOPIC, "timeout": 1.0, "sealed": {FUZZ_SITE: bytes(72)},
                         "sender_key": bytes(32)}),
                ("aux", {"topic": AUX_TOPIC, "timeout": 1.0, "fire_and_forget": True}),
                ("check_resources", {"resource_reqs": {FUZZ_SITE: {"num_cpus": 1}}}),
                ("cancel_resources", {"tokens": {FUZZ_SITE: f"r-{FUZZ_SITE}"}}),
                ("start_client_job", {"sites": [FUZZ_SITE, GOOD_SITE], "tokens": {FUZZ_SITE: "r"}}),
                ("run_status", {"status": "FINISHED:ABORTED", "error": f"forged for {victim}"})]

    def before_hello(self) -> Probe:
        op, body = next(self._before)
        # Refused before anything is done, so even a fire-and-forget aux is answered.
        return probe(f"before hello: {op}", op, body, [b"payload"] if op == "aux" else (), expect_rc(Rc.UNAUTHORIZED))


# --- the remote admin socket, as a1 ----------------------------------------------------------------------

def member(name: str, data: bytes = b"", kind: bytes = tarfile.REGTYPE, linkname: str = "",
           size: int | None = None) -> tuple[tarfile.TarInfo, bytes | None]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode = kind, linkname, 0o644
    if kind in (tarfile.CHRTYPE, tarfile.BLKTYPE):
        info.devmajor, info.devminor = 1, 3
    if kind == tarfile.REGTYPE:
        info.size = len(data) if size is None else size
        return info, data
    return info, None


def tar_gz(entries: Sequence[tuple[tarfile.TarInfo, bytes | None]], level: int = 1) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", compresslevel=level, format=tarfile.PAX_FORMAT) as tar:
        for info, data in entries:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def tar_block(info: tarfile.TarInfo, data: bytes | None) -> bytes:
    """One member as tar bytes: its header, then its data padded to a whole block."""
    data = data or b""
    return info.tobuf(tarfile.PAX_FORMAT) + data + bytes(-len(data) % tarfile.BLOCKSIZE)


def _header_valid(block: bytes) -> bool:
    try:
        tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
        return True
    except tarfile.HeaderError:
        return False


def empty_members(count: int) -> bytes:
    """A tar.gz of ``count`` empty files (about 6 bytes each once compressed): nothing to unpack,
    by the unpacked-size cap, which counts bytes only."""
    comp = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)  # gzip framing
    parts = [comp.compress(tarfile.TarInfo(f"e/{i}").tobuf(tarfile.USTAR_FORMAT)) for i in range(count)]
    return b"".join(parts) + comp.compress(bytes(2 * tarfile.BLOCKSIZE)) + comp.flush()


def folder_entries(folder: Path) -> list[tuple[tarfile.TarInfo, bytes | None]]:
    """The files of a job folder, as upload members (without meta.json: a caller adds its own)."""
    return [member(str(p.relative_to(folder)), p.read_bytes()) for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != "meta.json"]


def zeros_bomb(members: int, member_size: int = 200 * B.MB) -> bytes:
    """A tar.gz of ``members`` files of zeros, each under the unpacked-size cap, all of them over it:
    a few hundred KiB that inflate to ``members * member_size`` bytes. The gzip stream is built of
    concatenated gzip members (which readers take as one stream), so the zeros compress once."""
    zeros = gzip.compress(bytes(member_size), 9)
    parts = []
    for i in range(members):
        info = tarfile.TarInfo(f"zeros-{i}")
        info.size = member_size
        parts += [gzip.compress(info.tobuf(tarfile.PAX_FORMAT)), zeros]
    parts.append(gzip.compress(bytes(1024)))
    return b"".join(parts)


class AdminInputs:
    """The remote admin socket's own inputs (a1's key): submits of uploads that must all be refused
    (garbage, truncated, paths leaving the folder, links, devices, huge declared sizes, many members,
    garbage job files) and submits naming folders on the parent's machine."""

    def __init__(self, rnd: random.Random, good_job: Path, root: Path, many: int) -> None:
        self.rnd = rnd
        self.good_job = good_job
        self.root = root
        self.i = 0
        self.meta = json.loads((good_job / "meta.json").read_text())
        self.files = folder_entries(good_job)
        self.good = tar_gz([member("meta.json", json.dumps(self.meta).encode()), *self.files])
        # Costly to build: once.
        self.many = tar_gz([member(f"many/{i // 100}/f{i}", b"x") for i in range(many)] + self.files)
        kinds = [self.random_bytes, self.gzip_garbage, self.truncated, self.dot_dot, self.absolute, self.symlink,
                 self.hard_link, self.special_file, self.huge_declared, self.corrupt_header, self.garbage_meta,
                 self.garbage_config, self.conflicting, self.extra_frames, self.empty_upload, self.upload_and_job_dir,
                 self.remote_job_dir, self.deep_folders, self.abort_unknown, self.status_unknown]
        self.kinds: list[Callable[[], Probe]] = kinds * 4 + [self.many_members]

    def next(self) -> Probe:
        self.i += 1
        return self.kinds[self.i % len(self.kinds)]()

    def _submit(self, kind: str, frames: list[bytes], **body: Any) -> Probe:
        body.setdefault("name", self.rnd.choice(["fuzz", "../../fuzz", "x" * 256, "", "é" * 80, "a\x00b"]))
        # NOT_READY: the parent reads a few submissions at a time and asks the rest to come back.
        return probe(f"submit: {kind}", "submit", body, frames, expect_rc(Rc.BAD_REQUEST, Rc.NOT_READY))

    def _with(self, *extra: tuple[tarfile.TarInfo, bytes | None], meta: bool = True) -> bytes:
        head = [member("meta.json", json.dumps(self.meta).encode())] if meta else []
        entries = [*head, *self.files, *extra]
        self.rnd.shuffle(entries)
        return tar_gz(entries)

    def _escapee(self) -> str:
        return f"{ESCAPE_MARK}-{self.rnd.randrange(1 << 30)}"

    def random_bytes(self) -> Probe:
        return self._submit("random bytes", [self.rnd.randbytes(self.rnd.choice([1, 10, 512, 65536]))])

    def gzip_garbage(self) -> Probe:
        return self._submit("gzip of garbage", [gzip.compress(self.rnd.randbytes(self.rnd.randrange(1, 4096)))])

    def truncated(self) -> Probe:
        # Not within the last 100 bytes: they hold the tar's zero padding and the gzip trailer, and
        # tarfile reads the members without them (the CRC is never checked; the content is whole).
        return self._submit("truncated tar.gz", [self.good[:self.rnd.randrange(1, len(self.good) - 100)]])

    def dot_dot(self) -> Probe:
        name = self.rnd.choice([f"../{self._escapee()}", f"app_server/../../{self._escapee()}",
                                f"a/b/../../../{self._escapee()}", f"{'../' * 12}tmp/{self._escapee()}", ".."])
        kind = tarfile.DIRTYPE if name == ".." or self.rnd.random() < 0.2 else tarfile.REGTYPE
        return self._submit("member with '..'", [self._with(member(name, b"escaped", kind))])

    def absolute(self) -> Probe:
        name = self.rnd.choice([f"{self.root}/{self._escapee()}", f"//{self.root}/{self._escapee()}",
                                f"/./{self.root}/./{self._escapee()}", f"/{self._escapee()}"])
        return self._submit("absolute path", [self._with(member(name, b"escaped"))])

    def symlink(self) -> Probe:
        target = self.rnd.choice(["/etc/passwd", "../../..", str(self.root), "meta.json", "/"])
        link = member("app_server/custom/link", kind=tarfile.SYMTYPE, linkname=target)
        extra = [link]
        if self.rnd.random() < 0.5:  # and a file written through the link
            extra.append(member(f"app_server/custom/link/{self._escapee()}", b"x"))
        return self._submit("symlink", [self._with(*extra)])

    def hard_link(self) -> Probe:
        target = self.rnd.choice(["/etc/passwd", "meta.json", f"../../{self._escapee()}"])
        return self._submit("hard link", [self._with(member("app_server/custom/hard", kind=tarfile.LNKTYPE,
                                                            linkname=target))])

    def special_file(self) -> Probe:
        kind = self.rnd.choice([tarfile.CHRTYPE, tarfile.BLKTYPE, tarfile.FIFOTYPE])
        return self._submit("device or fifo", [self._with(member("app_server/custom/dev", kind=kind))])

    def huge_declared(self) -> Probe:
        """A member whose header declares far more bytes than the upload holds."""
        size = self.rnd.choice([(256 << 20) + 1, 1 << 33, 1 << 40, 10 ** 15])
        info, _ = member("app_server/custom/huge.bin", size=size)
        data = tar_block(*member("meta.json", json.dumps(self.meta).encode())) + info.tobuf(tarfile.PAX_FORMAT)
        data += self.rnd.randbytes(self.rnd.choice([0, 10, 512, 4096]))
        return self._submit("huge declared size", [gzip.compress(data, 1)])

    def corrupt_header(self) -> Probe:
        raw = bytearray(gzip.decompress(self._with()))
        at = self.rnd.choice([0, 100, 124, 148, 156, 257, 345])  # name, mode, size, checksum, type, magic, prefix
        for k in range(self.rnd.randrange(1, 12)):
            raw[at + k] = self.rnd.randrange(256)
        # The checksum is a plain sum of the header's bytes, which a random change may leave as it
        # was (a renamed member, still a valid job): change one byte more until tarfile refuses it.
        while _header_valid(bytes(raw[:tarfile.BLOCKSIZE])):
            raw[at] = (raw[at] + 1) % 256
        return self._submit("corrupt tar header", [gzip.compress(bytes(raw), 1)])

    def many_members(self) -> Probe:
        return self._submit("many members", [self.many])

    def deep_folders(self) -> Probe:
        depth = self.rnd.choice([100, 1000, 2100])  # the last one is over PATH_MAX
        return self._submit("deeply nested folders", [self._with(member("d/" * depth + "f", b"x"), meta=False)])

    def garbage_meta(self) -> Probe:
        text: bytes = self.rnd.choice([
            self.rnd.randbytes(200), b"", b"[]", b"null", b"\"meta\"", b"{\"name\": 5}",
            b"[" * 100_000 + b"]" * 100_000, b"{\"name\": \"x\", \"deploy_map\": " + b"9" * 5000 + b"}",
            json.dumps({**self.meta, "deploy_map": []}).encode(),
            json.dumps({**self.meta, "deploy_map": {"../app_server": ["server"]}}).encode(),
            json.dumps({**self.meta, "deploy_map": {"app_server": ["server"], "app_server2": ["server"]}}).encode(),
            json.dumps({**self.meta, "min_clients": -1}).encode(),
            json.dumps({**self.meta, "name": "x" * 200}).encode(),
            b" " * (5 << 20)])
        return self._submit("garbage meta.json", [tar_gz([member("meta.json", text), *self.files])])

    def garbage_config(self) -> Probe:
        cfg = "app_server/config/config_fed_server.json"
        text: bytes = self.rnd.choice([
            self.rnd.randbytes(100), b"{", b"{\"format_version\": 3, \"workflows\": []}", b"{\"workflows\": []}",
            b"{\"workflows\": [{\"id\": 1}]}", b"{\"workflows\": NaN}", b"{" * 60_000,
            b"{\"workflows\": [{\"id\": \"w\", \"path\": \"nodots\"}]}",
            b"{\"workflows\": [{\"id\": \"w\", \"path\": \"../../x.y\"}]}"])
        files = [e for e in self.files if e[0].name != cfg]
        return self._submit("garbage server config", [tar_gz([member("meta.json", json.dumps(self.meta).encode()),
                                                               member(cfg, text), *files])])

    def conflicting(self) -> Probe:
        a, b = self.rnd.choice([("app_server", "app_server/config/x.json"), ("meta.json/x", "meta.json"),
                                ("app_server/custom", "app_server/custom/fuzz_sleep.py")])
        return self._submit("conflicting members", [tar_gz([member(a, b"file"), member(b, b"file"), *self.files])])

    def extra_frames(self) -> Probe:
        """The first frame is the upload: garbage first, a valid folder after it."""
        return self._submit("garbage upload, then a valid one", [self.rnd.randbytes(100), self.good])

    def empty_upload(self) -> Probe:
        return self._submit("empty upload frame", [b""])

    def upload_and_job_dir(self) -> Probe:
        return self._submit("upload and job_dir", [self.good], job_dir=str(self.good_job))

    def _unknown_job(self) -> str:
        return self.rnd.choice([str(uuid.UUID(int=self.rnd.getrandbits(128))), "", "../jobs", "*", "%", "x" * 128])

    def abort_unknown(self) -> Probe:
        return probe("abort: unknown job", "abort", {"job_id": self._unknown_job(), "reason": "fuzz"},
                     check=expect_rc(Rc.NOT_FOUND))

    def status_unknown(self) -> Probe:
        return probe("status: unknown job", "status", {"job_id": self._unknown_job()}, check=expect_rc(Rc.NOT_FOUND))

    def remote_job_dir(self) -> Probe:
        """A folder on the parent's machine, named by a remote admin: always refused, even a valid one."""
        job_dir = self.rnd.choice([str(self.good_job), str(self.good_job), "/etc", "/", "../../etc", "job", ""])
        return probe("submit: job_dir (remote)", "submit", {"job_dir": job_dir}, check=expect_rc(Rc.BAD_REQUEST))


# --- connections that must get no answer ---------------------------------------------------------------

def zmtp_greeting(mechanism: bytes) -> bytes:
    """A ZMTP 3.0 greeting (signature, version, mechanism, as-server, filler)."""
    return b"\xff" + bytes(8) + b"\x7f" + b"\x03\x00" + mechanism.ljust(20, b"\0") + b"\x00" + bytes(31)


def zmtp_frame(data: bytes, command: bool = False) -> bytes:
    flags = 0x04 if command else 0x00
    if len(data) < 256:
        return bytes([flags, len(data)]) + data
    return bytes([flags | 0x02]) + len(data).to_bytes(8, "big") + data


def zmtp_command(name: bytes, body: bytes) -> bytes:
    return zmtp_frame(bytes([len(name)]) + name + body, command=True)


def tcp_address(endpoint: str) -> tuple[str, int]:
    host, port = endpoint.split("://", 1)[1].rsplit(":", 1)
    return host, int(port)


class Strangers:
    """Peers the parent must not answer: no CURVE, a wrong server key, a key that is not on the
    allowlist (or has the other role), and raw TCP bytes that are not a CURVE handshake.

    Each round opens them all at once, sends each a well-formed request, waits ``wait`` seconds
    for anything to come back, and closes them.
    """

    def __init__(self, ctx: zmq.Context, info: dict, kits: dict[str, Any], rnd: random.Random) -> None:
        self.ctx, self.info, self.kits, self.rnd = ctx, info, kits, rnd
        self.sent: collections.Counter = collections.Counter()
        self.answered: collections.Counter = collections.Counter()

    def _variants(self) -> list[tuple[str, str, tuple[bytes, bytes, bytes] | None, str, dict]]:
        s1, a1 = self.kits[FUZZ_SITE], self.kits[FUZZ_ADMIN]
        server = s1.parent_public_key
        stranger_pub, stranger_sec = zmq.curve_keypair()
        wrong_server, _ = zmq.curve_keypair()
        sites, admin, jobs = self.info["sites"], self.info["remote_admin"], self.info["jobs"]
        login = {"name": FUZZ_SITE}
        hello = {"job_id": "x", "secret": "x", "pid": 1}
        return [
            ("sites: no CURVE", sites, None, "login", login),
            ("sites: s1's key, wrong server key", sites, (s1.public_key, s1.secret_key, wrong_server), "login", login),
            ("sites: key not on the allowlist", sites, (stranger_pub, stranger_sec, server), "login", login),
            ("sites: admin a1's key", sites, (a1.public_key, a1.secret_key, server), "login", {"name": FUZZ_ADMIN}),
            ("remote-admin: no CURVE", admin, None, "ping", {}),
            ("remote-admin: a1's key, wrong server key", admin, (a1.public_key, a1.secret_key, wrong_server),
             "ping", {}),
            ("remote-admin: key not on the allowlist", admin, (stranger_pub, stranger_sec, server), "ping", {}),
            ("remote-admin: site s1's key", admin, (s1.public_key, s1.secret_key, server), "ping", {}),
            ("jobs: no CURVE", jobs, None, "hello", hello),
            ("jobs: wrong server key", jobs, (stranger_pub, stranger_sec, wrong_server), "heartbeat", {}),
        ]

    def _raw(self, endpoint: str) -> list[tuple[str, bytes]]:
        ping = packed({"v": 1, "op": "ping", "id": next_id(), "b": {}})
        null = zmtp_greeting(b"NULL") + zmtp_command(
            b"READY", bytes([11]) + b"Socket-Type" + (6).to_bytes(4, "big") + b"DEALER") + zmtp_frame(ping)
        return [("raw bytes", self.rnd.randbytes(self.rnd.randrange(1, 2000))),
                ("ZMTP NULL handshake and a message", null),
                ("CURVE greeting, garbage HELLO",
                 zmtp_greeting(b"CURVE") + zmtp_command(b"HELLO", self.rnd.randbytes(194))),
                ("CURVE greeting, truncated", zmtp_greeting(b"CURVE")[:self.rnd.randrange(1, 64)])]

    def round(self, wait: float = 1.0) -> None:
        socks: list[tuple[str, zmq.Socket]] = []
        raws: list[tuple[str, socket.socket]] = []
        try:
            for kind, endpoint, curve, op, body in self._variants():
                sock = self.ctx.socket(zmq.DEALER)
                sock.setsockopt(zmq.LINGER, 0)
                if curve is not None:
                    sock.curve_publickey, sock.curve_secretkey, sock.curve_serverkey = curve
                sock.connect(endpoint)
                sock.send_multipart(encode(Message(op, body, id=next_id())), zmq.NOBLOCK)
                socks.append((kind, sock))
                self.sent[kind] += 1
            for name in KIT_SURFACES:
                endpoint = self.info["remote_admin" if name == "remote-admin" else name]
                for what, data in self._raw(endpoint):
                    raw = socket.create_connection(tcp_address(endpoint), timeout=2)
                    raws.append((f"{name}: {what}", raw))
                    self.sent[f"{name}: {what}"] += 1
                    try:
                        raw.sendall(data)
                    except OSError:  # libzmq may close at the first wrong byte, while the rest is sent
                        pass
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline:
                for kind, sock in socks:
                    if sock.poll(0):
                        sock.recv_multipart()
                        self.answered[kind] += 1
                time.sleep(0.02)
            for kind, raw in raws:
                raw.setblocking(False)
                got = b""
                try:
                    while chunk := raw.recv(65536):
                        got += chunk
                except (BlockingIOError, ConnectionError):
                    pass
                # The parent's greeting (64 bytes) and handshake errors may come; a header of ours may not.
                if b"\xa2re" in got[64:] or b"\xa1b" in got[64:]:
                    self.answered[kind] += 1
        finally:
            for _, sock in socks:
                sock.close(0)
            for _, raw in raws:
                raw.close()


# --- fuzzing one socket ------------------------------------------------------------------------------

class Surface:
    """One socket under fuzzing: its peer, the generic malformed inputs and its own, alternately.

    Args:
        name: the socket's name in the report.
        peer: the connection the inputs go through.
        generic: the malformed inputs of any socket (`Inputs`).
        own: the next of the socket's own inputs.
        rekey: new CURVE keys for the peer, every `REKEY_EVERY` inputs (None: the same keys throughout).
        window: checked inputs that may await their replies at once. The remote admin socket's
            submits are unpacked one at a time, off the parent's loop, behind a queue with no
            bound; without a window the fuzzer would measure that queue, not the parent.
    """

    REKEY_EVERY = 400

    def __init__(self, name: str, peer: Peer, generic: Inputs, own: Callable[[], Probe],
                 rekey: Callable[[], tuple[bytes, bytes, bytes]] | None = None, window: int = 2000) -> None:
        self.name, self.peer, self.generic, self.own, self.rekey = name, peer, generic, own, rekey
        self.window = window
        self.sent: collections.Counter = collections.Counter()
        self.n = 0

    def ready(self) -> bool:
        """Whether fewer than ``window`` checked inputs await their replies (draining them first)."""
        if len(self.peer.expected) >= self.window:
            self.peer.drain()
        return len(self.peer.expected) < self.window

    def send_next(self) -> int:
        """Send the next input; return its size in bytes (0 for one the parent's libzmq drops unread)."""
        n, self.n = self.n, self.n + 1
        if n % 2 == 0:
            kind, frames = self.generic.next(n // 2)
            item = Probe(kind, frames)
        else:
            item = self.own()
        if item.kind == "oversized frame":
            self.settle(5.0)  # libzmq drops a peer that sends over MAXMSGSIZE: first get what is owed
        self.peer.send(item.frames)
        self.sent[item.kind] += 1
        if item.check is not None and item.mid is not None:
            self.peer.expect(item.mid, item.kind, item.check)
        if item.kind == "oversized frame":
            self.peer.reopen()
            return 0
        if self.rekey is not None and n % self.REKEY_EVERY == self.REKEY_EVERY - 1:
            # Closing discards what is still queued: wait until the inputs so far were answered
            # (the last one is checked, and a peer's messages arrive in order).
            self.settle(5.0)
            self.peer.reopen(self.rekey())
            self.sent["(a new connection with a new key)"] += 1
        if n % 64 == 0:
            self.peer.drain()
        return sum(len(f) for f in item.frames)

    def settle(self, timeout: float) -> None:
        """Drain replies until every checked input was answered, or ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            self.peer.drain()
            if not self.peer.expected or time.monotonic() > deadline:
                return
            time.sleep(0.05)



# --- the provisioned world ----------------------------------------------------------------------------

class KitWorld:
    """A provisioned project (s1, s2, a1) and a parent started with its kit, serving CURVE on the
    sites, remote admin and tcp jobs sockets, with a real site agent as s2; in a temporary folder."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.project = root / "project"
        self.ws = root / "ws"
        self.procs = B.Processes(root)
        self.parent: B.ParentProc | None = None
        self.kits: dict[str, Any] = {}

    def start(self) -> dict:
        prov = self.procs.spawn(["-m", "flrunner", "provision", "--out", str(self.project), "--site", FUZZ_SITE,
                                 "--site", GOOD_SITE, "--admin", FUZZ_ADMIN], "provision")
        if prov.wait(60) != 0:
            raise RuntimeError(f"flrunner provision failed:\n{self.procs.output('provision')}")
        self.kits = {name: load_kit(self.project / name) for name in (FUZZ_SITE, GOOD_SITE, FUZZ_ADMIN)}
        self.parent = B.ParentProc(self.procs, self.ws, "parent", [
            "--kit", str(self.project / "parent"), "--admin", "tcp://127.0.0.1:*", "--jobs", "tcp://127.0.0.1:*",
            "--site-timeout", "30"], abort_grace=1, log_level=None, admin_timeout=10)
        self.info = self.parent.info
        self.site = self.procs.spawn(["-m", "flrunner", "site", "--kit", str(self.project / GOOD_SITE),
                                      "--server", self.info["sites"]], f"site-{GOOD_SITE}")
        return self.info

    def remote_admin(self, timeout: float = 10.0) -> AdminClient:
        return AdminClient.with_kit(self.project / FUZZ_ADMIN, self.info["remote_admin"], timeout=timeout)

    def staging_left(self) -> list[str]:
        uploads = self.ws / "uploads"
        return sorted(p.name for p in uploads.iterdir()) if uploads.is_dir() else []

    def escaped(self) -> list[str]:
        """Files an upload put outside its staging folder (found anywhere under the run's folder or /)."""
        found = list(self.root.rglob(f"{ESCAPE_MARK}-*"))
        for folder in (Path("/"), Path("/tmp")):
            found += folder.glob(f"{ESCAPE_MARK}-*")
        return [str(p) for p in found]

    def stop(self) -> list[str]:
        return self.procs.end_all(grace=20, sweeps=25)


def _tidy(text: str, limit: int = 200) -> str:
    """A log message to count and print: job ids and upload names elided, control characters escaped."""
    text = _UUID_RE.sub("<job id>", re.sub(r"upload '.*' (failed|by)", r"upload '<name>' \1", text))[:limit]
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def log_problems(path: Path) -> tuple[int, int, collections.Counter]:
    """(ERROR lines, tracebacks, {what: count}) of a log: each ERROR line's message (job ids elided)
    with the exception that ends the traceback following it, if any."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return 0, 0, collections.Counter()
    errors, tracebacks, found = 0, 0, collections.Counter()
    for i, line in enumerate(lines):
        if line.startswith("Traceback"):
            tracebacks += 1
        if " ERROR " not in line:
            continue
        errors += 1
        what = _tidy(line.split(" ERROR ", 1)[1])
        if i + 1 < len(lines) and lines[i + 1].startswith("Traceback"):
            j = i + 2
            while j < len(lines) and (not lines[j] or lines[j].startswith((" ", "Traceback", "During", "The above"))):
                j += 1
            if j < len(lines):
                what += " -> " + _tidy(lines[j])
        found[what] += 1
    return errors, tracebacks, found


def probe_bombs(world: KitWorld, sizes: tuple[int, int]) -> tuple[str, str | None]:
    """Two uploads of zeros in members under the unpacked-size cap, all of them over it: if the time
    to refuse them grows with what they inflate to, the cap does not bound the work."""
    took = []
    with world.remote_admin(timeout=300) as admin:
        for members in sizes:
            bomb = zeros_bomb(members)
            t0 = time.monotonic()
            try:
                admin.submit_upload(bomb, "zeros")
                return "decompression bombs: accepted", f"an upload inflating to {members * 200} MiB was accepted"
            except FlrunnerError:
                took.append((len(bomb), members * 200, time.monotonic() - t0))
    line = "decompression bombs refused: " + ", ".join(f"{packed_size >> 10} KiB -> {mib} MiB in {t:.2f}s"
                                                        for packed_size, mib, t in took)
    (small_size, small_mib, small_t), (big_size, big_mib, big_t) = took
    if big_t > 0.5 and big_t > 1.5 * small_t:
        per_mib = big_t / (big_size / B.MB)
        return line, (f"{line}: the time grows with the inflated size, so the unpacked-size cap (checked after "
                      f"tarfile.getmembers() inflated the whole stream) does not bound the work: about "
                      f"{per_mib * 64:.0f}s of the single submit worker per 64 MiB upload (the remote admin's "
                      f"limit), during which every submit, local ones too, waits")
    return line, None


def peak_rss_mb(pid: int) -> float:
    """The peak resident memory of a process so far (VmHWM), in MiB."""
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024


def probe_members(world: KitWorld, count: int) -> tuple[str, str | None]:
    """An upload of ``count`` empty files: bytes do not bound them, so the entry cap must; an
    upload over it must be refused as it is read, before files are created."""
    from flrunner.util.bundles import MAX_BUNDLE_ENTRIES

    upload = empty_members(count)
    peak = peak_rss_mb(world.parent.pid)
    with world.remote_admin(timeout=600) as admin:
        t0 = time.monotonic()
        try:
            admin.submit_upload(upload, "members")
            return f"{count} empty members: accepted", f"an upload of {count} empty files and no meta.json was accepted"
        except FlrunnerError as exc:
            took, reason = time.monotonic() - t0, str(exc)[:100]
    grew = peak_rss_mb(world.parent.pid) - peak
    line = (f"{count} empty members ({len(upload) >> 10} KiB upload): refused after {took:.1f}s, the parent's peak "
            f"memory grew {grew:.0f} MiB ({reason})")
    if count > MAX_BUNDLE_ENTRIES and "entries" not in reason:
        return line, f"{line}: not refused by the entry cap of {MAX_BUNDLE_ENTRIES}"
    return line, None


def probe_deep_meta(world: KitWorld, root: Path) -> tuple[str, str | None]:
    """A valid job folder whose meta.json nests 600 levels (JSON reads it; the wire carries 512)."""
    deep = make_job(root, "deep-meta", {"id": "wf", "path": "fuzz_sleep.Sleep", "args": {"seconds": 0}},
                    False, {"fuzz_sleep.py": SLEEP_WF})
    meta = json.loads((deep / "meta.json").read_text())
    (deep / "meta.json").write_text(json.dumps(meta)[:-1] + ', "extra": ' + "[" * 600 + "]" * 600 + "}")
    with world.remote_admin() as admin:
        try:
            job_id = admin.submit(deep)
        except FlrunnerError as exc:
            return f"a meta.json nested 600 levels: refused at submit ({str(exc)[:120]})", None
        job = wait_job(admin, job_id, lambda j: j["status"].startswith("FINISHED"), 60)
    line = f"a meta.json nested 600 levels: accepted, then {job['status']} ({job['history'][-1]['reason'][:120]})"
    if job["status"] == "FINISHED:COMPLETED":
        return line, None
    return line, (f"a job folder whose meta.json nests 600 levels (over the wire's 512) was accepted at submit, then "
                  f"ended {job['status']}: {job['history'][-1]['reason'][:200]}")


#: The folders the run itself uploads; an accepted submit of anything else is a problem.
OWN_UPLOADS = frozenset({"victim", "s1-job", "plain", "deep-meta"})


def audit_problems(ws: Path, answered: collections.Counter) -> tuple[str, list[str]]:
    """What audit.log says of the remote admin's commands: every line is JSON, every submit and
    abort the fuzzer was answered is there, and no submit was accepted but the run's own uploads."""
    entries, bad = [], 0
    try:
        lines = (ws / "audit.log").read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        lines = []
    for line in lines:
        try:
            entries.append(json.loads(line))
        except ValueError:
            bad += 1
    mine = [e for e in entries if isinstance(e, dict) and e.get("who") == FUZZ_ADMIN]
    by_op = collections.Counter(e.get("op") for e in mine)
    accepted = [e for e in mine if e.get("op") == "submit" and e.get("result") == "OK"]
    foreign = [e for e in accepted if e.get("args", {}).get("name") not in OWN_UPLOADS]
    aborted = [e for e in mine if e.get("op") == "abort" and e.get("result") == "OK"]
    want = {op: sum(n for kind, n in answered.items() if kind.startswith(f"{op}:")) for op in ("submit", "abort")}
    summary = (f"audit.log: {len(entries)} entries, {bad} not JSON; by {FUZZ_ADMIN}: {by_op['submit']} submits "
               f"({len(accepted)} accepted, all the run's own: {not foreign}), {by_op['abort']} aborts "
               f"({len(aborted)} done)")
    problems = []
    if bad:
        problems.append(f"audit.log: {bad} line(s) are not JSON")
    for op, n in want.items():
        if by_op[op] < n:
            problems.append(f"audit.log: {by_op[op]} {op} entries by {FUZZ_ADMIN}, but {n} {op}s were answered")
    if foreign:
        problems.append(f"audit.log: {len(foreign)} fuzzed submit(s) accepted: {[e.get('args') for e in foreign][:3]}")
    if aborted:
        problems.append(f"audit.log: {FUZZ_ADMIN}'s fuzzing aborted {len(aborted)} job(s)")
    return summary, problems


def wait_job(admin: AdminClient, job_id: str, done: Callable[[dict], bool], timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        job = admin.status(job_id)
        if done(job) or time.monotonic() > deadline:
            return job
        time.sleep(0.1)


def print_kit_report(args: argparse.Namespace, elapsed: float, surfaces: dict[str, Surface],
                     strangers: Strangers | None, session: SiteResponder | None, checks: int,
                     log_summary: tuple[int, int, collections.Counter], job_logs: collections.Counter,
                     notes: list[str]) -> None:
    print(f"fuzzed the provisioned surfaces of a live parent for {elapsed:.1f}s with seed {args.seed}")
    print(f"{'surface':<16}{'inputs':>8}{'checked':>9}{'unanswered':>11}  replies (by code)")
    for name, s in surfaces.items():
        print(f"{name:<16}{sum(s.sent.values()):>8}{sum(s.peer.answered.values()):>9}{len(s.peer.expected):>11}  "
              f"{json.dumps(dict(s.peer.replies), sort_keys=True)}")
    if strangers is not None:
        print(f"{'strangers':<16}{sum(strangers.sent.values()):>8}  answered: {sum(strangers.answered.values())}")
    for name, s in surfaces.items():
        print(f"{name} inputs by kind: " + ", ".join(f"{k} {v}" for k, v in sorted(s.sent.items())))
        waiting = collections.Counter(kind for kind, _ in s.peer.expected.values())
        if waiting:
            print(f"{name} inputs still unanswered at the end, by kind: {json.dumps(dict(waiting), sort_keys=True)}")
    if strangers is not None:
        print("strangers by kind: " + ", ".join(f"{k} {v}" for k, v in sorted(strangers.sent.items())))
    print(f"serving checks: {checks} (parent alive, local and fresh remote admin ping, a real job uploaded by the "
          f"remote admin completes, {GOOD_SITE} in its first session, {FUZZ_SITE}'s session and both jobs "
          f"undisturbed, no staging folder left)")
    if session is not None:
        print(f"{FUZZ_SITE}'s well-behaved session: {session.logins} login(s), pushes "
              f"{json.dumps(dict(session.pushes), sort_keys=True)}")
    if "sites" in surfaces:
        answered = surfaces["sites"].peer.answered
        valid = answered["aux: sealed, valid"] + answered["aux: sealed, garbage payload"]
        tampered = sum(n for kind, n in answered.items() if kind.startswith("aux: sealed, ")) - valid
        print(f"secure aux from {FUZZ_SITE} to its job's engine: {valid} sealed requests answered with sealed replies "
              f"(checked to open), {tampered} tampered ones answered (checked to be refused)")
    for note in notes:
        print(note)
    errors, tracebacks, found = log_summary
    print(f"parent.log: {errors} ERROR line(s), {tracebacks} traceback(s)")
    for what, n in found.most_common(15):
        print(f"  {n:>6} x {what}")
    if job_logs:
        print("job logs (ERROR lines):")
        for what, n in job_logs.most_common(10):
            print(f"  {n:>6} x {what}")


def run_kit(args: argparse.Namespace) -> int:
    """Fuzz the provisioned surfaces of a live parent; print the tallies; 0 if it served throughout."""
    rnd = random.Random(args.seed)
    root = Path(tempfile.mkdtemp(prefix="flrunner-fuzz-kit-"))
    world = KitWorld(root)
    ctx = zmq.Context()
    failures: list[str] = []
    findings: list[str] = []
    surfaces: dict[str, Surface] = {}
    strangers: Strangers | None = None
    session: SiteResponder | None = None
    remote: AdminClient | None = None
    checks = 0
    start = time.monotonic()
    log_summary: tuple[int, int, collections.Counter] = (0, 0, collections.Counter())
    notes: list[str] = []
    queue_waits: list[float] = []
    real_jobs: list[str] = []
    try:
        info = world.start()
        local = world.parent.admin
        remote = world.remote_admin()
        s2 = B.wait_until(lambda: next((c for c in local.clients() if c["name"] == GOOD_SITE), None), 30,
                          f"site {GOOD_SITE} to log in")
        session = SiteResponder(ctx, info["sites"], world.kits[FUZZ_SITE])
        session.start()
        if not session.logged_in.wait(30):
            raise RuntimeError(f"{FUZZ_SITE}'s session did not log in: {session.error}")

        # Two jobs that must stay untouched, both uploaded by the remote admin: the victim, with an
        # app on s2 (so s1 may not address it), and the s1-job, with an app on s1 (where s1's aux
        # requests go).
        sleeper = {"fuzz_sleep.py": SLEEP_WF}
        jobs = {"victim": remote.submit(make_job(root, "victim", {"id": "wf", "path": "fuzz_sleep.Sleep",
                                                                   "args": {"seconds": 3600}}, True, sleeper,
                                                 sites=[GOOD_SITE])),
                "s1-job": remote.submit(make_job(root, "s1-job", {"id": "wf", "path": "fuzz_sleep.Sleep",
                                                                   "args": {"seconds": 3600}}, True, sleeper,
                                                 sites=[FUZZ_SITE]))}
        for name, job_id in jobs.items():
            job = wait_job(local, job_id, lambda j: j["status"] == "RUNNING" or j["status"].startswith("FINISHED"), 60)
            if job["status"] != "RUNNING":
                raise RuntimeError(f"the {name} job did not start: {job['status']} {job['history'][-1]}")
        B.wait_until(lambda: jobs["s1-job"] in session.job_keys, 30, "the s1-job's key to reach s1")
        baseline = {name: len(local.status(job_id)["history"]) for name, job_id in jobs.items()}
        running = {j["job_id"]: j["pid"] for j in local.ps()["jobs"]}
        pids = {name: running[job_id] for name, job_id in jobs.items()}
        good_job = make_job(root, "plain", {"id": "wf", "path": "fuzz_sleep.Sleep", "args": {"seconds": 0}}, True,
                            sleeper, sites=[GOOD_SITE])

        s1, a1 = world.kits[FUZZ_SITE], world.kits[FUZZ_ADMIN]
        server_key = s1.parent_public_key
        fake_tokens = lambda: {"fuzz-a": "not-a-token", "victim": jobs["victim"]}  # noqa: E731

        def generic(name: str, table: Channel, max_frame: int | None = None) -> Inputs:
            gen = Inputs(name, table, random.Random(rnd.random()), fake_tokens, max_frame)
            gen.kinds = [k for k in gen.kinds if k[0] != "another site's token"]
            return gen

        def new_job_key() -> tuple[bytes, bytes, bytes]:
            public, secret = zmq.curve_keypair()
            return public, secret, server_key

        surfaces = {
            "sites": Surface("sites", Peer(ctx, info["sites"], (s1.public_key, s1.secret_key, server_key)),
                             generic("sites", site_ops.FROM_SITE),
                             SiteInputs(random.Random(rnd.random()), session, jobs,
                                        Sealer(s1.secret_key, random.Random(rnd.random()))).next),
            "jobs": Surface("jobs", Peer(ctx, info["jobs"], new_job_key(), forbid_ok=True),
                            generic("jobs", job_ops.FROM_JOB), JobInputs(random.Random(rnd.random()), jobs, pids).next,
                            rekey=new_job_key),
            "remote-admin": Surface("remote-admin", Peer(ctx, info["remote_admin"], (a1.public_key, a1.secret_key,
                                                                                      server_key)),
                                    generic("admin", admin_ops.FROM_ADMIN, max_frame=64 * B.MB),
                                    AdminInputs(random.Random(rnd.random()), good_job, root, many=1000).next,
                                    window=24),
        }
        strangers = Strangers(ctx, info, world.kits, random.Random(rnd.random()))

        def serving(where: str, final: bool = False) -> bool:
            """The parent still serves: alive, local and (fresh) remote admin answer, a real job
            uploaded by the remote admin (with an app on s2) completes, s2 is still in the session
            it started with, s1's session and both jobs are undisturbed, no upload is left in staging."""
            nonlocal checks
            checks += 1
            try:
                if world.parent.proc.poll() is not None:
                    raise RuntimeError(f"the parent exited with {world.parent.proc.returncode}")
                if local.ping()["pid"] != world.parent.pid:
                    raise RuntimeError("the local admin ping was answered by another process")
                with world.remote_admin(timeout=300 if final else 120) as fresh:
                    if fresh.ping()["pid"] != world.parent.pid:
                        raise RuntimeError("the remote admin ping was answered by another process")
                    # An empty upload is refused by the submit worker: its answer comes after every
                    # submit queued before it.
                    t0 = time.monotonic()
                    try:
                        fresh.call(admin_ops.SUBMIT, frames=[b""], name="queue-probe")
                        raise RuntimeError("an empty upload was accepted")
                    except BadRequest:
                        queue_waits.append(time.monotonic() - t0)
                    real_job = fresh.submit(good_job)
                job = wait_job(local, real_job, lambda j: j["status"].startswith("FINISHED"), 90)
                if job["status"] != "FINISHED:COMPLETED":
                    raise RuntimeError(f"a real job uploaded by the remote admin ended {job['status']}: "
                                       f"{job['history'][-1]['reason'][:300]}")
                real_jobs.append(real_job)
                clients = {c["name"]: c for c in local.clients()}
                if GOOD_SITE not in clients:
                    raise RuntimeError(f"the real site {GOOD_SITE} is no longer logged in")
                if clients[GOOD_SITE]["login_time"] != s2["login_time"]:
                    raise RuntimeError(f"the real site {GOOD_SITE} had to log in again")
                if session.error or session.logins != 1 or FUZZ_SITE not in clients:
                    raise RuntimeError(f"{FUZZ_SITE}'s well-behaved session was disturbed: {session.logins} logins, "
                                       f"{session.heartbeats_refused} heartbeats refused, error {session.error}")
                for name, job_id in jobs.items():
                    job = local.status(job_id)
                    if job["status"] != "RUNNING" or len(job["history"]) != baseline[name]:
                        raise RuntimeError(f"the {name} job was disturbed: {job['status']}, "
                                           f"{job['history'][baseline[name]:]}")
                # Submits are unpacked one at a time off the loop: give the queue time to drain.
                if world.staging_left():
                    B.wait_until(lambda: not world.staging_left(), 120 if final else 60,
                                 "the uploads' staging folders to be removed")
                return True
            except Exception as exc:
                failures.append(f"{where}: the parent did not keep serving: {type(exc).__name__}: {exc}")
                return False

        # The rounds: the three sockets in turn, each at its pace; every check_every inputs per
        # socket a round of strangers, then the serving checks.
        per_surface = args.count // len(surfaces)
        order = list(surfaces.values())
        pacers = {s.name: Pacer(*PACE[s.name]) for s in order}
        ok, sent, next_check = True, 0, args.check_every * len(order)
        while ok and any(s.n < per_surface for s in order) and time.monotonic() - start < args.seconds:
            progressed = False
            for surface in order:
                if surface.n >= per_surface or not surface.ready() or not pacers[surface.name].ready():
                    continue
                try:
                    size = surface.send_next()
                except zmq.Again:
                    failures.append(f"{surface.name}: the parent stopped reading (send timed out at input {surface.n})")
                    ok = False
                    break
                pacers[surface.name].spend(size)
                progressed, sent = True, sent + 1
            if not progressed:
                for surface in order:
                    surface.peer.drain()
                time.sleep(0.002)
            if ok and sent >= next_check:
                next_check += args.check_every * len(order)
                strangers.round()
                ok = serving(f"after {sent} inputs")
        for surface in order:
            surface.settle(10.0)
        if ok:
            strangers.round()
            ok = serving(f"after {sent} inputs (all sent)")

        # Targeted probes: uploads that inflate to gigabytes, and a valid job folder with a
        # meta.json nested deeper than a message may be.
        if ok:
            for line, finding in (probe_bombs(world, (2, 5) if args.quick else (2, 10)),
                                  probe_members(world, 20_000 if args.quick else 50_000),
                                  probe_deep_meta(world, root)):
                notes.append(line)
                if finding:
                    findings.append(finding)

        # The end: the serving checks once more; the two jobs were untouched until now and end when
        # aborted; nothing was left in staging or written outside it.
        if ok and serving("at the end", final=True):
            for name, job_id in jobs.items():
                local.abort(job_id, "fuzzing is over")
                job = wait_job(local, job_id, lambda j: j["status"].startswith("FINISHED"), 30)
                if job["status"] != "FINISHED:ABORTED":
                    failures.append(f"the {name} job, aborted after fuzzing, ended {job['status']}")
        escaped = world.escaped()
        if escaped:
            failures.append(f"upload members were written outside the staging folder: {escaped[:5]}")
        if world.staging_left():
            failures.append(f"staging folders left in {world.ws / 'uploads'}: {world.staging_left()[:5]}")
    except Exception as exc:  # a parent that stops answering surfaces here: report it, then clean up
        failures.append(f"the run stopped: {type(exc).__name__}: {exc}")
    finally:
        if remote is not None:
            remote.close()
        if world.parent is not None:
            world.parent.admin.close()
        for surface in surfaces.values():
            surface.peer.sock.close(0)
        if session is not None:
            session.stop()
        ctx.term()
        world.stop()
        left = B.processes_under(root)
        if left:
            failures.append(f"processes left behind: {[p.pid for p in left]}")
        log_summary = log_problems(world.ws / "parent.log")
        job_logs = collections.Counter()
        for log in sorted(world.ws.glob("jobs/*/log.txt")):
            job_logs.update(log_problems(log)[2])
        notes.append(f"real jobs uploaded by the remote admin at the serving checks: {len(real_jobs)} completed")
        if queue_waits:
            notes.append(f"submit queue at the serving checks: an empty upload was answered within "
                         f"{max(queue_waits):.2f}s (median {statistics.median(queue_waits):.2f}s)")
        if "remote-admin" in surfaces:
            audit_summary, audit_issues = audit_problems(world.ws, surfaces["remote-admin"].peer.answered)
            notes.append(audit_summary)
            failures += audit_issues
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)

    print_kit_report(args, time.monotonic() - start, surfaces, strangers, session, checks, log_summary, job_logs, notes)
    problems = [f"{name}: {what} (x{n})" for name, s in surfaces.items() for what, n in s.peer.problems.most_common()]
    if strangers is not None:
        problems += [f"strangers: {kind} was answered (x{n})" for kind, n in strangers.answered.items()]
    errors, tracebacks, _ = log_summary
    if errors or tracebacks:
        problems.append(f"parent.log: {errors} ERROR line(s), {tracebacks} traceback(s)")
    if failures or findings or problems:
        print("FAILED:")
        for f in failures + findings + problems:
            print(f"  - {f}")
        return 1
    print("OK: the parent kept serving every check; a real job completed; no upload escaped or stayed in staging; "
          "no process left")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kit", action="store_true",
                    help="provisioned mode: fuzz the CURVE sites, remote admin and tcp jobs sockets of a parent "
                         "started with a kit (see the module's docstring)")
    ap.add_argument("--quick", action="store_true",
                    help="a short run (under a minute): --count 3000 --check-every 500 --seconds 30 --restarts 1 "
                         "unless given")
    ap.add_argument("--count", type=int, default=None,
                    help="inputs in all (default 50000; plain mode: split over the three sockets and the in-job "
                         "fuzzer; --kit: over the three provisioned sockets, besides the strangers and probes)")
    ap.add_argument("--seconds", type=float, default=None, help="stop sending after this long (default 600)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--check-every", type=int, default=None,
                    help="inputs per socket between serving checks (default 2500)")
    ap.add_argument("--restarts", type=int, default=None,
                    help="plain mode: how many times the parent is killed (-9) and restarted in the middle of "
                         "fuzzing (default 1 with --quick, else 3)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder (logs, workspace)")
    args = ap.parse_args()
    quick = {"count": 3000, "seconds": 30.0, "check_every": 500, "restarts": 1}
    full = {"count": 50_000, "seconds": 600.0, "check_every": 2500, "restarts": 3}
    for name, value in (quick if args.quick else full).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    # A SIGTERM unwinds like an error, so every process started is ended on the way out.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    return run_kit(args) if args.kit else run_plain(args)


if __name__ == "__main__":
    sys.exit(main())
