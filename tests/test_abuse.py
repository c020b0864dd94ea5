"""Abuse with real processes: floods while others are served, and secrets that must not show.

Floods (SECURITY.md, "Hostile input"): one raw site peer or one raw admin peer floods the parent
with small messages (the per-peer message rate) or large ones (the per-peer byte rate), or a job
process floods it with large ones (the jobs socket limits bytes only), while a well-behaved site
keeps heartbeating, a job that talks to it completes, and admin requests answer. The flooder
must be told ``RATE_LIMITED`` naming the limit, at most once a second, and what the parent
accepted from it must stay within that limit. Bounds are generous: these tests check correctness
on a shared machine, not speed. (Malformed input and its floods: test_hostile.py.)

Secrets (SECURITY.md, "Jobs socket"): with a provisioned parent, a kit site and a running job,
under the warm and the cold launcher, no secret shows in any runtime process's argv (which
``ps`` shows every user) or environment.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from collections import Counter
from pathlib import Path

import psutil
import pytest
import zmq
import zmq.auth
from zmq.utils import z85

from flrunner.security.kit import load_kit
from flrunner.transport.wire import Message, decode, encode, next_id

from .support import call, raw_login, site_names, start_kit_site, wait_for

MiB = 1 << 20
#: Byte limits (RATE, BURST) of the flooded parents' site and admin peers, and of their job processes.
BYTE_LIMIT = (1 * MiB, 2 * MiB)
JOB_BYTE_LIMIT = (2 * MiB, 4 * MiB)
#: Message limits of the parent's defaults (ParentConfig.site_rate, admin_rate; bursts of twice that).
MESSAGE_RATE = {"sites": 2000, "admin": 500}
#: A large message of a byte flood.
BIG = 128 * 1024
#: How long an admin request may take while a flood goes on (s).
ADMIN_BOUND = 5.0
#: The shortest flood (s): long enough for the limiter to tell the flooder more than once.
FLOOD_SECONDS = 3.0


# --- floods ----------------------------------------------------------------------------------------

class Flood(threading.Thread):
    """A raw peer sending ``message()`` at most ``per_second`` times a second, reading every reply,
    until `finish` (and for `FLOOD_SECONDS` at least). Counts the replies by return code and keeps
    the first ``RATE_LIMITED`` reason."""

    def __init__(self, sock: zmq.Socket, message, per_second: int) -> None:
        super().__init__(daemon=True)
        self.sock = sock
        self.message = message
        self.per_second = per_second
        self.sent = 0
        self.replies: Counter[str] = Counter()
        self.reason: str | None = None
        self.limited = threading.Event()
        self.elapsed = 0.0
        self.error: BaseException | None = None
        self._halt = threading.Event()

    def run(self) -> None:
        t0 = time.monotonic()
        batch = max(1, self.per_second // 50)
        try:
            while not self._halt.is_set() or time.monotonic() - t0 < FLOOD_SECONDS:
                start = time.monotonic()
                for _ in range(batch):
                    try:
                        self.sock.send_multipart(self.message(), zmq.NOBLOCK)
                    except zmq.Again:  # the parent's queue for this peer is full
                        break
                    self.sent += 1
                self._read(0)
                time.sleep(max(0.0, batch / self.per_second - (time.monotonic() - start)))
            deadline = time.monotonic() + 2.0  # replies still on their way
            while time.monotonic() < deadline:
                self._read(100)
        except BaseException as exc:  # reported by finish()
            self.error = exc
        finally:
            self.elapsed = time.monotonic() - t0

    def _read(self, timeout_ms: int) -> None:
        while self.sock.poll(timeout_ms):
            msg = decode(self.sock.recv_multipart())
            self.replies[msg.rc] += 1
            if msg.rc == "RATE_LIMITED" and self.reason is None:
                self.reason = msg.body["reason"]
                self.limited.set()
            timeout_ms = 0

    def finish(self) -> None:
        self._halt.set()
        self.join(30)
        assert not self.is_alive(), "the flood did not stop"
        if self.error is not None:
            raise self.error

    @property
    def accepted(self) -> int:
        """Messages the parent served (each got an answer other than RATE_LIMITED)."""
        return sum(n for rc, n in self.replies.items() if rc != "RATE_LIMITED")


def option(limit: tuple[int, int]) -> str:
    """A byte limit as ``flrunner parent --*-byte-limit`` takes it: ``1M,2M``."""
    return ",".join(f"{n // MiB}M" for n in limit)


def last_seen(parent, site: str) -> float:
    return next((c["last_seen"] for c in parent.admin.clients() if c["name"] == site), 0.0)


def assert_others_served(parent, make_job, good_site: str) -> None:
    """While a flood goes on: admin requests answer within `ADMIN_BOUND`, the good site's
    heartbeats are served, and a job that sends it an aux request completes."""
    since = time.time()
    for _ in range(3):
        t0 = time.monotonic()
        assert parent.admin.ping()["pid"] == parent.pid
        parent.admin.jobs()
        assert time.monotonic() - t0 < ADMIN_BOUND
    wait_for(lambda: last_seen(parent, good_site) > since, 20, f"a heartbeat of {good_site} to be served")
    job_id = parent.admin.submit(make_job([("wf", "AuxRoundTrip", {})], sites=[good_site],
                                          site_app={"executors": [(["echo"], "EchoExecutor", {})]}))
    assert parent.wait_final(job_id, 60)["status"] == "FINISHED:COMPLETED"
    replies = json.loads((parent.workspace / "jobs" / job_id / "aux.json").read_text())
    assert {site: r["rc"] for site, r in replies.items()} == {good_site: "OK"}


def flood_message(socket_name: str, sock: zmq.Socket, kind: str):
    """What a raw flooder sends: a request the parent answers OK (a logged-in site's heartbeat,
    an admin ping), bare for a message flood, with `BIG` raw bytes for a byte flood."""
    if socket_name == "sites":
        op, body = "heartbeat", {"token": call(sock, "login", {"name": "flooder"}).body["token"]}
    else:
        op, body = "ping", {}
    frames = [b"\0" * BIG] if kind == "bytes" else []
    return lambda: encode(Message(op, body, id=next_id(), frames=frames))


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["messages", "bytes"])
@pytest.mark.parametrize("socket_name", ["sites", "admin"])
def test_a_flooding_peer_is_rate_limited_while_others_are_served(start_parent, start_site, make_job, peers,
                                                                socket_name, kind):
    parent = start_parent("--site-timeout", "4", "--site-byte-limit", option(BYTE_LIMIT),
                          "--admin-byte-limit", option(BYTE_LIMIT))
    start_site(parent, "good-site")
    sock = peers(parent.info[socket_name])
    flood = Flood(sock, flood_message(socket_name, sock, kind), per_second=20_000 if kind == "messages" else 400)
    flood.start()
    try:
        assert flood.limited.wait(30), f"no RATE_LIMITED reply; replies so far: {dict(flood.replies)}"
        assert_others_served(parent, make_job, "good-site")
    finally:
        flood.finish()
    assert flood.reason.startswith(f"rate limit of the {socket_name} socket exceeded")
    assert 2 <= flood.replies["RATE_LIMITED"] <= flood.elapsed + 1, (flood.replies, flood.elapsed)  # once a second
    if kind == "messages":
        rate = MESSAGE_RATE[socket_name]
        assert f"({rate} messages/s)" in flood.reason
        assert flood.accepted <= 2 * rate + rate * (flood.elapsed + 1), (flood.accepted, flood.elapsed)
    else:
        assert "(1 MiB/s in bursts of 2 MiB)" in flood.reason
        assert flood.accepted * BIG <= BYTE_LIMIT[1] + BYTE_LIMIT[0] * (flood.elapsed + 1) + BIG, \
            (flood.accepted, flood.elapsed)
    assert flood.accepted < flood.sent / 2, (flood.accepted, flood.sent)  # most of the flood was dropped
    assert parent.proc.poll() is None


@pytest.mark.slow
def test_a_job_flooding_the_parent_with_bytes_is_rate_limited_while_others_are_served(start_parent, start_site,
                                                                                     make_job):
    parent = start_parent("--site-timeout", "4", "--job-byte-limit", option(JOB_BYTE_LIMIT))
    start_site(parent, "good-site")
    flood_id = parent.admin.submit(make_job([("wf", "job_components_abuse.FloodParent",
                                              {"kib": BIG // 1024, "per_second": 400,
                                               "min_seconds": FLOOD_SECONDS})], name="flood"))
    run_dir = parent.workspace / "jobs" / flood_id
    limited = wait_for(lambda: _read_json(run_dir / "limited.json"), 30, "the flooding job to be rate limited")
    assert limited["reason"] == ("rate limit of the jobs socket exceeded (2 MiB/s in bursts of 4 MiB); "
                                 "messages are dropped")
    assert_others_served(parent, make_job, "good-site")
    (run_dir / "stop").touch()
    assert parent.wait_final(flood_id, 30)["status"] == "FINISHED:COMPLETED"
    flood = json.loads((run_dir / "flood.json").read_text())
    replies = flood["replies"]
    assert 2 <= replies.get("RATE_LIMITED", 0) <= flood["elapsed"] + 3, flood  # told once a second
    accepted = replies.get("OK", 0)
    rate, burst = JOB_BYTE_LIMIT
    assert accepted * flood["size"] <= burst + rate * (flood["elapsed"] + 3) + flood["size"], flood
    assert replies.get("none", 0) > accepted, replies  # most of the flood was dropped


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


# --- secrets ---------------------------------------------------------------------------------------

def started_processes(procs) -> dict[int, psutil.Process]:
    """Every live process the test started, and all their descendants (a parent's warm template
    and job processes), by pid."""
    found: dict[int, psutil.Process] = {}
    for popen in procs.started:
        try:
            root = psutil.Process(popen.pid)
            found.update((p.pid, p) for p in [root, *root.children(recursive=True)])
        except psutil.NoSuchProcess:
            continue
    return found


def exposed(pid: int) -> dict[str, bytes]:
    """What other processes can read of ``pid`` without its memory: argv (world-readable: ``ps``)
    and the environment."""
    out = {}
    for what in ("cmdline", "environ"):
        with open(f"/proc/{pid}/{what}", "rb") as f:
            out[what] = f.read()
    return out


def kit_secret_keys(project: Path) -> dict[str, str]:
    """Every secret key of the provisioning folder, as its Z85 text and as hex."""
    keys = {}
    for path in sorted(project.rglob("*.key_secret")):
        _, secret = zmq.auth.load_certificate(path)
        keys[f"{path.name} (Z85)"] = secret.decode()
        keys[f"{path.name} (hex)"] = z85.decode(secret).hex()
    return keys


def stored_secret_hash(workspace: Path, job_id: str) -> str:
    db = sqlite3.connect(f"file:{workspace / 'jobs.db'}?mode=ro", uri=True)
    try:
        return db.execute("SELECT secret_hash FROM jobs WHERE job_id = ?", (job_id,)).fetchone()[0]
    finally:
        db.close()


@pytest.mark.parametrize("launcher", ["warm", "cold"])
def test_no_secret_shows_in_any_process_argv_or_environment(start_parent, procs, project, make_job, launcher):
    options = ["--launcher", "cold"] if launcher == "cold" else []  # warm: the CLI's default
    parent = start_parent("--kit", str(project / "parent"), "--site-timeout", "60", *options)
    site = start_kit_site(procs, parent, project, "site-1")
    wait_for(lambda: site_names(parent) == ["site-1"], 15, "the kit site to log in")
    site2 = load_kit(project / "site-2")
    login = raw_login(parent.sites_endpoint, "site-2", (site2.public_key, site2.secret_key),
                      load_kit(project / "parent").public_key)
    assert login is not None and login.rc == "OK"
    site_token = login.body["token"]
    job_id = parent.admin.submit(make_job([("wf", "job_components_abuse.RevealSecrets",
                                            {"expect_sites": ["site-1", "site-2"]})], sites=["site-1"],
                                          site_app={"executors": [(["echo"], "EchoExecutor", {})]}))
    run_dir = parent.workspace / "jobs" / job_id
    revealed = wait_for(lambda: _read_json(run_dir / "secrets.json"), 30, "the job to reveal its secrets")
    [job_secret] = revealed["job_secrets"]
    assert hashlib.sha256(job_secret.encode()).hexdigest() == stored_secret_hash(parent.workspace, job_id)
    assert sorted(revealed["site_tokens"]) == ["site-1", "site-2"]
    assert site_token not in revealed["site_tokens"].values()  # a job sees per-job tokens only

    secrets = {"the job's secret": job_secret, "site-2's login token": site_token,
               **{f"the job's token for {s}": t for s, t in revealed["site_tokens"].items()},
               **kit_secret_keys(project)}
    processes = started_processes(procs)
    titles = {pid: b" ".join(exposed(pid)["cmdline"].split(b"\0")) for pid in processes}
    assert {parent.pid, site.pid, revealed["pid"]} <= set(processes)
    if launcher == "warm":
        assert revealed["pid"] in [c.pid for p in processes.values() for c in p.children()
                                   if b"flrunner-template" in titles[p.pid]], titles
    else:
        assert revealed["pid"] in [c.pid for c in psutil.Process(parent.pid).children()]
    leaks = [f"{name} in /proc/{pid}/{what} ({titles[pid].decode(errors='replace')[:80]})"
             for pid in processes for what, data in exposed(pid).items()
             for name, secret in secrets.items() if secret.encode() in data]
    assert not leaks, leaks
